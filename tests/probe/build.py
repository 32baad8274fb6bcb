"""Compile the static probe binary (probe.c) that integration tests run inside containers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("probe.c")
GCC_FLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")
MISSING_GCC = "gcc is needed to build the test probe; install the Debian packages gcc and libc6-dev"


def build_probe(dest: Path, *, source: Path = SOURCE) -> Path:
    """Compile `source` to the executable `dest`, skipping the build when it is up to date.

    The SHA-256 of the source is recorded in `<dest>.sha256`; when `dest` exists and that
    file holds the current hash, nothing is compiled. Raises RuntimeError if gcc is missing
    or the compilation fails (with gcc's stderr).
    """
    dest = Path(dest)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    stamp = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and _read_stamp(stamp) == digest:
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        _compile(source, tmp)
        tmp.chmod(0o755)
        tmp.replace(dest)  # atomic: concurrent builders never see a partial binary
    finally:
        tmp.unlink(missing_ok=True)
    _write_atomically(stamp, digest + "\n")
    return dest


def _compile(source: Path, output: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError(MISSING_GCC)
    try:
        proc = subprocess.run(
            [gcc, *GCC_FLAGS, "-o", str(output), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise RuntimeError(MISSING_GCC) from exc
    if proc.returncode != 0:
        hint = ""
        if "cannot find -lc" in proc.stderr:
            hint = " (static libc.a missing: install the Debian package libc6-dev)"
        raise RuntimeError(f"gcc failed to build {source.name}{hint}:\n{proc.stderr}")


def _read_stamp(stamp: Path) -> str | None:
    try:
        return stamp.read_text().strip()
    except OSError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
