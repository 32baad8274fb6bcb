"""What an init takes from its zygote: the signals to reset before its exec (those the
zygote ignores, as the kernel reports them), and its supervisor's pidfd."""

from __future__ import annotations

import builtins
import signal
from collections.abc import Iterator

import pytest

from runtime import init


@pytest.fixture
def ignoring_usr1_and_hup() -> Iterator[None]:
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGUSR1, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_ignored_signals_come_from_the_kernel(ignoring_usr1_and_hup: None) -> None:
    ignored = init.ignored_signals()
    assert {signal.SIGUSR1, signal.SIGHUP, signal.SIGPIPE} <= set(ignored)
    assert signal.SIGUSR2 not in ignored


def test_ignored_signals_without_proc(ignoring_usr1_and_hup: None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc (a spec without the mount): what Python knows, and glibc's two."""
    def no_proc(path: object, *args: object, **kwargs: object) -> object:
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(builtins, "open", no_proc)
    ignored = init.ignored_signals()
    assert {signal.SIGUSR1, signal.SIGHUP, signal.SIGPIPE, 32, 33} <= set(ignored)
    assert signal.SIGUSR2 not in ignored


def test_remembered_signals_are_the_ones_reset(ignoring_usr1_and_hup: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A zygote notes its ignored signals once; an init resets those without looking."""
    monkeypatch.setattr(init, "_ignored_at_fork", None)
    init.remember_ignored_signals()
    assert signal.SIGUSR1 in init._ignored_at_fork  # type: ignore[operator]


def test_process_exited_follows_the_process() -> None:
    """An init checks its supervisor's pidfd once its parent-death signal is armed."""
    import os

    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.read(read, 1)
        os._exit(0)
    pidfd = os.pidfd_open(child)
    try:
        assert not init.process_exited(pidfd)
        os.write(write, b"x")
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        assert init.process_exited(pidfd)
        assert not init.process_exited(None)
    finally:
        for fd in (pidfd, read, write):
            os.close(fd)


def test_an_init_whose_supervisor_is_gone_exits() -> None:
    """Arming the parent-death signal also looks at the supervisor's pidfd: a child
    whose supervisor died first exits 125 there (and one whose supervisor lives goes
    on), whenever it (re)arms."""
    import os

    def child_status(supervisor_alive: bool) -> int:
        read, write = os.pipe()
        supervisor = os.fork()
        if supervisor == 0:
            os.close(write)
            os.read(read, 1)
            os._exit(0)
        pidfd = os.pidfd_open(supervisor)
        if not supervisor_alive:
            os.write(write, b"x")
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        child = os.fork()
        if child == 0:
            init.remember_supervisor(pidfd)
            init.arm_parent_death()
            os._exit(0)
        status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        os.close(write)
        os.close(read)
        if supervisor_alive:
            os.waitpid(supervisor, 0)
        os.close(pidfd)
        return status

    assert child_status(supervisor_alive=False) == 125
    assert child_status(supervisor_alive=True) == 0
