""".containerignore / .dockerignore, as docker's pattern matcher reads them.

One pattern per line; ``#`` lines are comments; patterns are cleaned paths relative
to the context (a leading ``/`` is dropped); ``*``, ``?`` and ``[...]`` match within
one path component, ``**`` any number of components; ``!PATTERN`` re-includes. The
last pattern that matches a path decides, and a path is excluded when it or one of
its parent directories is matched (so ``build`` excludes ``build/x/y``).
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import NamedTuple

NAMES = (".containerignore", ".dockerignore")


class _Pattern(NamedTuple):
    regex: re.Pattern[str]
    exclude: bool  # False for a "!" exception


class Ignore:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines  # as read (the zygote builds its own matcher from them)
        self.patterns: list[_Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            if not exclude:
                line = line[1:].strip()
            clean = posixpath.normpath(line).lstrip("/")
            if clean in (".", ""):
                continue
            self.patterns.append(_Pattern(re.compile(_regex(clean)), exclude))

    @classmethod
    def for_context(cls, context: str, containerfile: str | None = None) -> Ignore:
        """The context's ignore file: ``<Containerfile>.containerignore`` or
        ``.dockerignore`` beside the file first (as podman), then the context's."""
        candidates = []
        if containerfile:
            candidates += [f"{containerfile}.containerignore", f"{containerfile}.dockerignore"]
        candidates += [os.path.join(context, n) for n in NAMES]
        for path in candidates:
            try:
                with open(path) as f:
                    return cls(f.read().splitlines())
            except FileNotFoundError:
                continue
        return cls([])

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __call__(self, path: str) -> bool:
        """Is ``path`` (relative to the context, ``/``-separated) excluded?"""
        path = posixpath.normpath(path).lstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        excluded = False
        for pattern in self.patterns:
            if any(pattern.regex.fullmatch(c) for c in candidates):
                excluded = pattern.exclude
        return excluded


def _regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # "**/" : zero or more directories
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
