"""Bootstrap a minimal root filesystem from the host's busybox-static.

For machines without a registry: ``myctr rootfs bootstrap busybox DIR`` builds a tree
with busybox, its applet links, /etc/passwd and /etc/group. It is built in a sibling
temporary directory and renamed into place, so DIR is either whole or absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from .errors import HostError, SpecError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
    "dev": 0o755, "proc": 0o555, "sys": 0o555, "tmp": 0o1777, "root": 0o700,
    "home/user": 0o755, "run": 0o755, "var/tmp": 0o1777, "mnt": 0o755,
}
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
wheel:x:10:root
users:x:100:user
user:x:1000:
nogroup:x:65534:
"""


def find_busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise HostError("busybox not found: install the Debian package busybox-static")


def applets(busybox: str) -> list[str]:
    """Paths (relative to /) of every applet, from ``busybox --list-full``."""
    try:
        out = subprocess.run([busybox, "--list-full"], capture_output=True, check=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise HostError(f"{busybox} --list-full: {exc}") from exc
    return [line.strip().lstrip("/") for line in out.stdout.splitlines() if line.strip()]


def bootstrap_busybox(dest: str | os.PathLike[str], force: bool = False,
                      busybox: str | None = None) -> Path:
    target = Path(dest).absolute()
    if target.exists() and any(target.iterdir()) and not force:
        raise SpecError(f"{target} is not empty (use --force to rebuild it)")
    busybox = busybox or find_busybox()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        _build(staging, busybox)
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(root: Path, busybox: str) -> None:
    root.mkdir(mode=0o755)
    for rel, mode in DIRS.items():
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    shutil.copy2(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    for applet in applets(busybox):
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/os-release").write_text('NAME="myctr busybox"\nID=busybox\n')


def _replace(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(old)
