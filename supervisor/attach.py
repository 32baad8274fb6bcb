"""``myctr run`` / ``start -a`` on the client side: hand the supervisor our stdio,
copy the container's output to our terminal, forward signals, exit with its status.

Without a terminal the supervisor gets the write ends of two pipes of ours (it tees
the container's output into the log and into them) and our stdin itself with ``-i``.
With ``-t`` it sends us the pty master over the socket (SCM_RIGHTS), so keystrokes
go straight to the container without hopping through the supervisor (the terminal
modules are imported for that case only).

Like the client, this is on the cold start of ``myctr run``: ``_signal`` (the C module
under ``signal``, whose enums cost ~3 ms), no contextlib, no typing.
"""

from __future__ import annotations

import _signal as signal
import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from supervisor.client import Client

FORWARDED_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2,
)


def run_attached(client: Client, params: dict[str, Any], interactive: bool,
                 terminal: bool) -> int:
    """Run the container attached (``container.run``, then ``container.wait``); return
    its exit status."""
    pipes: list[tuple[int, int]] = []
    fds: list[int] = []
    names: list[str] = []
    if interactive and not terminal:
        fds.append(0)
        names.append("stdin")
    if not terminal:
        pipes = [os.pipe(), os.pipe()]
        fds += [pipes[0][1], pipes[1][1]]
        names += ["stdout", "stderr"]
    request_id = client.send("container.run", {**params, "attach": True, "fds": names}, fds)
    for _, write_end in pipes:
        os.close(write_end)
    try:
        result = client.result(request_id)
    except BaseException:
        _close_read_ends(pipes)
        raise
    container = result["id"]
    restart = params.get("restart", "no") not in ("no", None)
    # --rm: the answer comes once the container is gone, so its name is free again
    wait_id = client.send("container.wait", {"id": container, "next_exit": restart,
                                             "removed": bool(params.get("auto_remove"))})
    return _attached(client, container, wait_id, terminal, interactive, pipes)


def run_from_argv(client: Client, argv: list[str]) -> int | None:
    """``myctr run ARGV`` in one ``cli.run`` request (the CLI's quick path): the
    supervisor parses the arguments, runs, and for an attached run tells us it started
    then answers with the status. Our stdin and two pipes go along; it keeps what the
    flags need. None: this supervisor has no ``cli.run``."""
    pipes = [os.pipe(), os.pipe()]
    names, fds = ["stdout", "stderr"], [pipes[0][1], pipes[1][1]]
    if _is_open(0):
        names, fds = ["stdin", *names], [0, *fds]
    request_id = client.send("cli.run", {"argv": argv, "cwd": os.getcwd(),
                                         "env": dict(os.environ), "fds": names}, fds)
    for _, write_end in pipes:
        os.close(write_end)
    try:
        while True:
            message = client.receive()
            if message.get("method") == "run.started" and (
                    message.get("params") or {}).get("request_id") == request_id:
                started = message["params"]
                break
            if message.get("id") == request_id:  # no run to attach to
                client.early[request_id] = message
                result = client.result(request_id, unknown_method_ok=True)
                return None if result is None else _without_run(result)
            if message.get("id") is not None:
                client.early[message["id"]] = message
    except BaseException:
        _close_read_ends(pipes)
        raise
    if started["tty"]:
        _close_read_ends(pipes)
        pipes = []
    return _attached(client, started["id"], request_id, started["tty"],
                     started["interactive"], pipes)


def _without_run(result: dict[str, Any]) -> int:
    """``cli.run``'s answer when nothing is attached: --help's text, or -d's id."""
    if "output" in result:
        os.write(1, result["output"].encode())
        return int(result["exit_code"])
    os.write(1, f"{result['id']}\n".encode())
    return 0


def _attached(client: Client, container: str, final_id: int, terminal: bool,
              interactive: bool, pipes: list[tuple[int, int]]) -> int:
    """Copy the container's output (or its terminal) until it ends, forwarding our
    signals to it; the exit status that ``final_id``'s answer carries."""
    previous = _forward_signals(client, container)
    try:
        if terminal:
            [master] = client.take_fds()
            _pump_terminal(master, interactive)
        else:
            _pump_pipes([(pipes[0][0], 1), (pipes[1][0], 2)])
        code = client.result(final_id)["exit_code"]
    finally:
        _restore_signals(previous)
    return int(code)


def _close_read_ends(pipes: list[tuple[int, int]]) -> None:
    for read_end, _ in pipes:
        os.close(read_end)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _forward_signals(client: Client, container: str) -> dict[int, Any]:
    """Signals sent to us go to the container (docker's --sig-proxy); the handlers
    they replace, for :func:`_restore_signals`."""

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 (contextlib: ~2 ms of the cold start)
            client.send("container.kill", {"id": container, "signal": signum})
        except OSError:
            pass

    return {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _pump_pipes(pairs: list[tuple[int, int]]) -> None:
    """Copy each pipe to its fd until every pipe reaches EOF."""
    open_pairs = dict(pairs)
    while open_pairs:
        ready, _, _ = select.select(list(open_pairs), [], [])
        for src in ready:
            if not _copy(src, open_pairs[src]):
                os.close(src)
                del open_pairs[src]


def _pump_terminal(master: int, interactive: bool) -> None:
    stdin_tty = interactive and os.isatty(0)
    _copy_window_size(master)
    saved = _raw_terminal(0) if stdin_tty else None
    try:
        signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
        poller = select.poll()
        poller.register(master, select.POLLIN)
        if interactive:
            poller.register(0, select.POLLIN)
        done = False
        while not done:
            for fd, _events in poller.poll():
                if fd == master and not _copy(master, 1):
                    done = True
                elif fd == 0 and not _copy(0, master):
                    poller.unregister(0)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    os.close(master)


def _copy_window_size(master: int) -> None:
    import fcntl
    import termios

    for fd in (0, 1, 2):
        if os.isatty(fd):
            try:
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            except OSError:
                pass
            return


def _raw_terminal(fd: int) -> list[Any]:
    """Put terminal ``fd`` in raw mode; its previous attributes, to restore."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return saved


def _copy(src: int, dst: int) -> bool:
    try:
        data = os.read(src, 65536)
    except OSError:  # EIO: the pty's last slave closed
        return False
    if not data:
        return False
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(dst, view):]
        except BrokenPipeError:
            return True  # our reader went away; keep draining so the container is not stuck
    return True


def exec_attached(client: Client, params: dict[str, Any], interactive: bool,
                  terminal: bool) -> int:
    """``exec``: the process gets our stdio directly (or a pty, with ``-t``)."""
    fds, names = ([], []) if terminal else ([1, 2], ["stdout", "stderr"])
    if interactive and not terminal:
        fds, names = [0, *fds], ["stdin", *names]
    request_id = client.send("container.exec", {**params, "fds": names}, fds)
    previous = _forward_signals(client, params["id"])
    try:
        if terminal:
            _wait_for_pty(client, request_id)
            [master] = client.take_fds()
            _pump_terminal(master, interactive)
        return int(client.result(request_id)["exit_code"])
    finally:
        _restore_signals(previous)


def _wait_for_pty(client: Client, request_id: int) -> None:
    while True:
        message = client.receive()
        if message.get("method") == "exec.started":
            return
        if message.get("id") == request_id:
            client.early[request_id] = message  # failed before a pty existed
            client.result(request_id)
            return
