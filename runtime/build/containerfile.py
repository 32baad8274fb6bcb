"""Containerfile (Dockerfile) parsing, as docker's parser does it.

- Parser directives (``# escape=``, ``# syntax=``) are read only at the very top: the
  first comment, blank line or instruction ends them; ``syntax`` is read and ignored
  (there is one frontend here), an unknown directive is a comment.
- A line ending in the escape character continues on the next; comment lines inside a
  continued instruction are dropped, as are empty ones.
- An instruction's arguments are in exec form when they parse as a JSON array of
  strings, else shell form.
- ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}`` are expanded in the
  instructions docker expands them in (not RUN, CMD, ENTRYPOINT, SHELL: the shell does
  that), from the stage's ARGs and ENVs; ``\\$`` is a literal dollar.

:func:`parse` gives stages of :class:`Instruction` with their file line numbers, so an
error or a failing step names ``FILE:LINE``. Expansion happens while building (it needs
the build's ARG values), through :func:`expand` and :func:`split_words`.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from ..errors import SpecError

# What docker's builder knows; anything else is an error naming the line.
INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "ENTRYPOINT", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE",
    "LABEL", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COPY", "ADD", "ONBUILD",
    "MAINTAINER",
})
EXPANDED = frozenset({"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL",
                      "USER", "VOLUME", "WORKDIR", "ARG", "ONBUILD"})
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


class ContainerfileError(SpecError):
    """A syntax error, named by file and line."""


class Instruction(NamedTuple):
    keyword: str  # upper case
    args: str  # the arguments as written (continuations joined), unexpanded
    line: int  # 1-based line of the instruction's first line
    flags: tuple[tuple[str, str], ...] = ()  # --name=value before the arguments
    json: tuple[str, ...] | None = None  # exec form, when the args are a JSON array

    @property
    def text(self) -> str:
        """The instruction as a history entry shows it."""
        flags = "".join(f"--{k}={v} " for k, v in self.flags)
        return f"{self.keyword} {flags}{self.args}".rstrip()

    def flag(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.flags:
            if key == name:
                return value
        return default


class Stage(NamedTuple):
    base: str  # as written (unexpanded): an image, "scratch", or an earlier stage's name
    name: str | None  # the AS name, lower case
    number: int
    line: int
    platform: str | None
    instructions: tuple[Instruction, ...]


class Containerfile(NamedTuple):
    path: str
    global_args: tuple[Instruction, ...]  # ARGs before the first FROM
    stages: tuple[Stage, ...]
    escape: str

    def stage(self, ref: str) -> Stage | None:
        """An earlier stage by AS name or index, for FROM and COPY --from."""
        for stage in self.stages:
            if stage.name == ref.lower() or str(stage.number) == ref:
                return stage
        return None


def parse(text: str, path: str = "Containerfile") -> Containerfile:
    lines = text.splitlines()
    escape = "\\"
    i = 0
    seen: set[str] = set()
    while i < len(lines):  # parser directives: only at the very top
        match = _DIRECTIVE.fullmatch(lines[i].strip())
        if not match:
            break
        key, value = match.group(1).lower(), match.group(2)
        if key not in ("escape", "syntax", "check"):
            break  # an unknown directive is a comment and ends the directives
        if key in seen:
            raise ContainerfileError(f"{path}:{i + 1}: only one {key} directive is allowed")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise ContainerfileError(
                    f"{path}:{i + 1}: invalid escape character {value!r}: use \\ or `")
            escape = value
        i += 1

    instructions: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        start = i
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while _continues(parts[-1], escape):
            parts[-1] = parts[-1].rstrip()[:-1]
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1  # comments and empty lines inside a continuation are dropped
            if i >= len(lines):
                break
            parts.append(lines[i].lstrip())
            i += 1
        joined = "".join(parts).strip()
        instructions.append(_instruction(joined, start + 1, path))
    return _stages(instructions, path, escape)


def _continues(line: str, escape: str) -> bool:
    line = line.rstrip()
    if not line.endswith(escape):
        return False
    # an escaped escape character at the end ("\\\\") does not continue
    run = len(line) - len(line.rstrip(escape))
    return run % 2 == 1


def _instruction(text: str, line: int, path: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = f"{more} {rest}".strip()
    keyword = keyword.upper()
    if keyword not in INSTRUCTIONS:
        raise ContainerfileError(f"{path}:{line}: unknown instruction: {keyword}")
    rest = rest.strip()
    flags: list[tuple[str, str]] = []
    if keyword in ("COPY", "ADD", "RUN", "FROM", "HEALTHCHECK"):
        while rest.startswith("--"):
            word, _, after = rest.partition(" ")
            name, eq, value = word[2:].partition("=")
            if not name:
                raise ContainerfileError(f"{path}:{line}: {keyword}: empty flag")
            if keyword == "HEALTHCHECK" and not eq:
                raise ContainerfileError(f"{path}:{line}: HEALTHCHECK: flag --{name} "
                                         "needs a value (--name=value)")
            flags.append((name, value if eq else "true"))
            rest = after.strip()
    exec_form = None
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            exec_form = tuple(parsed)
    if keyword == "SHELL" and exec_form is None:
        raise ContainerfileError(f"{path}:{line}: SHELL requires the arguments to be a "
                                 "JSON array of strings")
    if not rest and keyword not in ("RUN", "CMD", "ENTRYPOINT"):
        raise ContainerfileError(f"{path}:{line}: {keyword} requires at least one argument")
    return Instruction(keyword, rest, line, tuple(flags), exec_form)


def _stages(instructions: list[Instruction], path: str, escape: str) -> Containerfile:
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    head: Instruction | None = None

    def close() -> None:
        if head is not None and current is not None:
            base, name = _from_args(head, path)
            if name is not None and any(s.name == name for s in stages):
                raise ContainerfileError(f"{path}:{head.line}: duplicate stage name {name!r}")
            stages.append(Stage(base, name, len(stages), head.line, head.flag("platform"),
                                tuple(current)))

    for ins in instructions:
        if ins.keyword == "FROM":
            close()
            head, current = ins, []
        elif current is None:
            if ins.keyword != "ARG":
                raise ContainerfileError(
                    f"{path}:{ins.line}: {ins.keyword} before FROM: a Containerfile must "
                    "begin with FROM (only ARG may come first)")
            global_args.append(ins)
        else:
            current.append(ins)
    close()
    if not stages:
        raise ContainerfileError(f"{path}: no FROM instruction")
    return Containerfile(path, tuple(global_args), tuple(stages), escape)


def _from_args(ins: Instruction, path: str) -> tuple[str, str | None]:
    words = ins.args.split()
    if len(words) == 1:
        return words[0], None
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9._-]*", name):
            raise ContainerfileError(f"{path}:{ins.line}: invalid stage name {words[2]!r}")
        return words[0], name
    raise ContainerfileError(f"{path}:{ins.line}: FROM takes IMAGE [AS NAME]")


# --- expansion ----------------------------------------------------------------------

def expand(text: str, env: dict[str, str], escape: str = "\\") -> str:
    """Docker's word expansion for one string: variables from ``env``; an escaped
    ``$`` stays literal; unknown variables expand to nothing; ``${A:-${B}}`` nests."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if c == "$" and text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            if end < 0:
                raise SpecError(f"bad variable substitution in {text!r}: missing }}")
            body = text[i + 2:end]
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])(.*))?", body, re.S)
            if not match:
                raise SpecError(f"bad variable substitution in {text!r}")
            value = env.get(match.group(1))
            if match.group(2) == ":-":
                value = value if value else expand(match.group(3), env, escape)
            elif match.group(2) == ":+":
                value = expand(match.group(3), env, escape) if value else ""
            out.append(value or "")
            i = end + 1
            continue
        if c == "$":
            match = _NAME.match(text, i + 1)
            if match:
                out.append(env.get(match.group(0), ""))
                i = match.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split on unquoted white space, as docker does for COPY/ADD/VOLUME/EXPOSE...:
    quotes group and are removed, the escape character escapes one character."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    has = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and quote != "'":
            word.append(text[i + 1])
            has = True
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                word.append(c)
        elif c in "'\"":
            quote, has = c, True
        elif c.isspace():
            if has or word:
                words.append("".join(word))
            word, has = [], False
        else:
            word.append(c)
            has = True
        i += 1
    if quote:
        raise SpecError(f"unterminated quote in {text!r}")
    if has or word:
        words.append("".join(word))
    return words


def key_values(ins: Instruction, env: dict[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    """ENV and LABEL: ``K=V K2="v 2"`` pairs, or the legacy ``K V with spaces``."""
    first = ins.args.split(None, 1)[0]
    if "=" not in first:
        if ins.keyword == "LABEL":
            raise SpecError(f"LABEL {ins.args}: expected KEY=VALUE")
        key, _, value = ins.args.partition(" ")
        if not value.strip():
            raise SpecError(f"{ins.keyword} {ins.args}: expected KEY=VALUE or KEY VALUE")
        return [(key, expand(value.strip(), env, escape))]
    pairs = []
    for word in split_words(expand_keep_quotes(ins.args, env, escape), escape):
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise SpecError(f"{ins.keyword}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def expand_keep_quotes(text: str, env: dict[str, str], escape: str = "\\") -> str:
    """Expand variables outside single quotes, keeping the quotes for a later split."""
    out: list[str] = []
    buf: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            buf.append(c)
            if c == "'":
                out.append("".join(buf))
                buf, quote = [], ""
            i += 1
            continue
        if c == escape and i + 1 < len(text):
            nxt = text[i + 1]
            buf.append(c + nxt if nxt != "$" else escape + "$")
            i += 2
            continue
        if c == "'" and not quote:
            out.append(_expand_chunk("".join(buf), env, escape))
            buf, quote = [c], "'"
            i += 1
            continue
        if c == '"':
            quote = "" if quote == '"' else '"'
        buf.append(c)
        i += 1
    if quote == "'":
        out.append("".join(buf))
    else:
        out.append(_expand_chunk("".join(buf), env, escape))
    return "".join(out)


def _expand_chunk(text: str, env: dict[str, str], escape: str) -> str:
    """Expand, but keep ``\\$`` escaped for the later word split to unescape."""
    marker = "\x00"
    text = text.replace(escape + "$", marker)
    return expand(text, env, escape).replace(marker, escape + "$")
