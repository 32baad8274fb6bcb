"""The runtime's exception tree.

::

    ContainerError                 anything that stops a container from being made or run
    ├── SpecError                  the request is wrong (bad flag value, missing rootfs):
    │                              the user's fault, exit 125
    ├── HostError                  the host lacks something (overlay, newuidmap, ...): 125
    ├── SetupFailed                the container's init failed before exec; carries the
    │                              errno and what it was doing: 125
    └── ExecFailed                 execve of the user's command failed: 126, or 127 when
                                   the command does not exist

Foreign errors (``OSError`` from a syscall) are translated at the boundary with
``raise SetupFailed(...) from exc``; ``exit_code`` maps each to docker's exit status.
"""

from __future__ import annotations

import errno as _errno
import os


class ContainerError(Exception):
    exit_code = 125


class SpecError(ContainerError):
    """The request cannot be turned into a container: a bad value or a missing path."""


class HostError(ContainerError):
    """The host is missing a feature or tool that the request needs."""


class NotFound(ContainerError):
    """No container (or other object) by that name or id."""


class Conflict(ContainerError):
    """The name is taken, or the object is in a state that forbids the request."""


class BuildFailed(ContainerError):
    """A build step failed (the step, its Containerfile line, the exit status)."""

    exit_code = 1


class SetupFailed(ContainerError):
    """The container's init failed between clone and exec."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class ExecFailed(ContainerError):
    """The user's command could not be executed."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 127 if self.errno == _errno.ENOENT else 126


def os_error_message(exc: OSError) -> str:
    """``exc``'s message with the path(s) it names (``/x/etc/hostname: Permission
    denied``): os functions leave them out of ``strerror``, and "Permission denied"
    alone does not say what failed. The messages of our libc wrappers name theirs."""
    message = exc.strerror or str(exc)
    paths = [p if isinstance(p, str) else os.fsdecode(p) if isinstance(p, bytes) else str(p)
             for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {message}" if paths else message
