"""``--network slirp4netns`` (podman's rootless default): user-mode networking.

One ``slirp4netns`` process per container run, started by :meth:`SlirpPlug.run` once
the container's init exists (and waits before exec)::

    slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox
                --enable-seccomp --exit-fd=E --ready-fd=R --api-socket=RUN_DIR/slirp4netns.sock
                [--cidr=...] [--enable-ipv6] PID tap0

- ``--configure``: slirp4netns brings tap0 up in the container's netns as
  10.0.2.100/24 with a default route via 10.0.2.2; 10.0.2.3 is its DNS forwarder
  (other addresses with ``cidr=``: .100, .2 and .3 of that network).
- the target is the init's *pid* (``--netns-type=pid``, the default) rather than podman's
  ``--netns-type=path /proc/PID/ns/net --userns-path=/proc/PID/ns/user``: rootless
  (the supervisor is not root in any user namespace) ``--enable-sandbox`` needs
  slirp4netns to join the container's user namespace a second time, and 1.2.0 only
  does that from a pid (with a path it calls ``setegid(0)`` in its own namespace and
  fails). A pid names both namespaces (``/proc/PID/ns/{user,net}``); the init cannot go
  away while slirp4netns starts, since it waits for us.
- ``--ready-fd``: written once the API socket listens and the sandbox and seccomp
  filter are in place; nothing is reported started before.
- ``--exit-fd``: the read end of a pipe whose write end only the supervisor holds
  (close-on-exec): slirp4netns exits by itself when the supervisor dies, even by
  SIGKILL.
- ports: one ``add_hostfwd`` per mapping through the API socket (slirp's own port
  handler: connections reach the container from 10.0.2.2, so the client's address is
  *not* preserved). slirp4netns refuses ``host_port`` 0, so "pick a port" binds a
  socket to port 0 here and asks for the port the kernel chose.

Options (``--network slirp4netns:OPT=V,...``): ``allow_host_loopback=true`` (drops
``--disable-host-loopback``: 10.0.2.2 then reaches the host's 127.0.0.1),
``mtu=N``, ``cidr=A.B.C.D/N``, ``enable_ipv6=true``, ``port_handler=slirp4netns`` (the
only one: rootlesskit's handler is not implemented).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import trio

from runtime.errors import Conflict, ContainerError, HostError, SpecError

from . import Attached, Interface, NetworkConfig, PortMapping

TUN = "/dev/net/tun"
TAP = "tap0"
DEFAULT_MTU = 65520
DEFAULT_CIDR = "10.0.2.0/24"
DEFAULT_NETWORK = ipaddress.IPv4Network(DEFAULT_CIDR)
SOCKET_NAME = "slirp4netns.sock"
LOG_NAME = "slirp4netns.log"
READY_TIMEOUT = 10.0
API_TIMEOUT = 5.0
STOP_GRACE = 1.0
PICK_ATTEMPTS = 5


def tun_problem(path: str = TUN) -> str | None:
    """None if this user can open ``path`` (rootless slirp4netns opens it to make its tap
    device), else one line saying why not and what fixes it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        try:
            st: os.stat_result | None = os.stat(path)
        except OSError:
            st = None
        return explain_tun(path, exc, st)
    os.close(fd)
    return None


def explain_tun(path: str, exc: OSError, st: os.stat_result | None) -> str:
    if st is None or exc.errno == errno.ENOENT:
        return (f"{path} does not exist: slirp4netns needs the tun device (modprobe tun; "
                f"in a container, pass the host's {path} in)")
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device: slirp4netns needs the tun device"
    mode = stat.S_IMODE(st.st_mode)
    if exc.errno in (errno.EACCES, errno.EPERM) and mode & 0o006 != 0o006:
        return (f"{path} is mode {mode:04o}: rootless slirp4netns needs it world-accessible "
                f"(chmod 0666 {path}, the default on most distributions)")
    return f"cannot open {path}: {exc.strerror or exc} (slirp4netns needs the tun device)"


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The slirp4netns flags a :class:`NetworkConfig` asks for."""

    allow_host_loopback: bool = False
    mtu: int = DEFAULT_MTU
    cidr: ipaddress.IPv4Network = DEFAULT_NETWORK
    enable_ipv6: bool = False

    @property
    def guest(self) -> str:
        return str(self.cidr.network_address + 100)

    @property
    def gateway(self) -> str:
        return str(self.cidr.network_address + 2)

    @property
    def dns(self) -> str:
        return str(self.cidr.network_address + 3)

    @classmethod
    def from_config(cls, config: NetworkConfig) -> Settings:
        def boolean(name: str) -> bool:
            value = (config.option(name) or "false").lower()
            if value not in ("true", "false"):
                raise SpecError(f"slirp4netns:{name}={value}: true or false")
            return value == "true"

        mtu_text = config.option("mtu", str(DEFAULT_MTU)) or ""
        try:
            mtu = int(mtu_text)
        except ValueError:
            raise SpecError(f"slirp4netns:mtu={mtu_text}: not a number") from None
        if not 68 <= mtu <= 65521:
            raise SpecError(f"slirp4netns:mtu={mtu}: must be 68-65521")
        cidr_text = config.option("cidr", DEFAULT_CIDR) or ""
        try:
            cidr = ipaddress.IPv4Network(cidr_text, strict=False)
        except ValueError:
            raise SpecError(f"slirp4netns:cidr={cidr_text}: not an IPv4 network") from None
        if cidr.prefixlen > 25:  # .100 must be inside it
            raise SpecError(f"slirp4netns:cidr={cidr_text}: the prefix must be /25 or shorter "
                            "(the container gets the network's .100)")
        handler = config.option("port_handler", "slirp4netns")
        if handler != "slirp4netns":
            raise SpecError(f"slirp4netns:port_handler={handler}: only slirp4netns's own port "
                            "handler is supported (it does not preserve source addresses)")
        for port in config.ports:
            if port.host_ip and ipaddress.ip_address(port.host_ip).version == 6:
                raise SpecError(f"-p {port}: slirp4netns publishes on IPv4 host addresses only")
        return cls(boolean("allow_host_loopback"), mtu, cidr, boolean("enable_ipv6"))


@dataclass(frozen=True)
class Features:
    """What the installed slirp4netns supports (from ``--help`` and ``--version``)."""

    binary: str
    version: str
    sandbox: bool
    seccomp: bool
    api_socket: bool
    exit_fd: bool
    cidr: bool
    disable_host_loopback: bool


_features: dict[str, Features] = {}


async def features(binary: str | None = None) -> Features:
    path = binary or shutil.which("slirp4netns")
    if path is None:
        raise HostError("slirp4netns is not installed (Debian package slirp4netns): rootless "
                        "containers need it for --network slirp4netns (or use --network none "
                        "or host)")
    if path not in _features:
        help_out = await trio.run_process([path, "--help"], capture_stdout=True,
                                          capture_stderr=True, check=False)
        version_out = await trio.run_process([path, "--version"], capture_stdout=True,
                                             capture_stderr=True, check=False)
        text = help_out.stdout.decode(errors="replace")
        version = version_out.stdout.decode(errors="replace")
        first = version.splitlines()[0] if version.strip() else "slirp4netns (unknown version)"
        _features[path] = Features(
            binary=path, version=first,
            sandbox="--enable-sandbox" in text,
            # --help lists it even when built without libseccomp; --version names the lib
            seccomp="--enable-seccomp" in text and "libseccomp:" in version,
            api_socket="--api-socket" in text, exit_fd="--exit-fd" in text,
            cidr="--cidr" in text, disable_host_loopback="--disable-host-loopback" in text)
    return _features[path]


def command(feat: Features, settings: Settings, pid: int, exit_fd: int, ready_fd: int,
            api_socket: str) -> list[str]:
    """The slirp4netns command line (podman's flags, with ``pid`` as the target)."""
    args = [feat.binary, "--configure", f"--mtu={settings.mtu}"]
    if not settings.allow_host_loopback:
        if not feat.disable_host_loopback:
            raise HostError(f"{feat.version} lacks --disable-host-loopback: refusing to give "
                            "the container the host's loopback")
        args.append("--disable-host-loopback")
    if feat.sandbox:
        args.append("--enable-sandbox")
    if feat.seccomp:
        args.append("--enable-seccomp")
    if settings.cidr != DEFAULT_NETWORK:
        if not feat.cidr:
            raise HostError(f"{feat.version} lacks --cidr (slirp4netns:cidr=...)")
        args.append(f"--cidr={settings.cidr}")
    if settings.enable_ipv6:
        args.append("--enable-ipv6")
    if not (feat.api_socket and feat.exit_fd):
        raise HostError(f"{feat.version} lacks --api-socket/--exit-fd: slirp4netns 0.3 or "
                        "newer is needed")
    args += [f"--exit-fd={exit_fd}", f"--ready-fd={ready_fd}", f"--api-socket={api_socket}",
             str(pid), TAP]
    return args


# --- the API socket --------------------------------------------------------------------


async def api_call(path: str, request: dict[str, object]) -> dict[str, object]:
    """One request on its own connection: slirp4netns reads until EOF (so shut down
    writing), answers one JSON document and closes."""
    with trio.fail_after(API_TIMEOUT):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(json.dumps(request).encode())
            await stream.send_eof()
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
    try:
        doc = json.loads(reply)
    except ValueError:
        raise HostError(f"slirp4netns API: unreadable answer {reply[:200]!r}") from None
    if not isinstance(doc, dict):
        raise HostError(f"slirp4netns API: unexpected answer {reply[:200]!r}")
    return doc


def _error_text(doc: dict[str, object]) -> str | None:
    error = doc.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("desc", error))
    return str(error)


def pick_port(host_ip: str, protocol: str) -> int:
    """A port the kernel considers free on ``host_ip`` now (slirp4netns then binds it)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host_ip or "0.0.0.0", 0))
        return int(sock.getsockname()[1])


def explain_bind_failure(mapping: PortMapping, port: int, desc: str) -> ContainerError:
    """Why slirp4netns could not bind ``port`` ("slirp_add_hostfwd failed" says nothing):
    try the same bind here and name the cause."""
    where = f"{mapping.host_ip or '0.0.0.0'}:{port}/{mapping.protocol}"
    kind = socket.SOCK_STREAM if mapping.protocol == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:  # as libslirp binds its listener
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((mapping.host_ip or "0.0.0.0", port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return Conflict(f"cannot publish {mapping.container_port}/{mapping.protocol}: "
                            f"host port {where} is already in use")
        if exc.errno == errno.EACCES:
            low = _unprivileged_port_start()
            return HostError(f"cannot publish on host port {where}: ports below {low} need "
                             "root (net.ipv4.ip_unprivileged_port_start); rootless containers "
                             "publish on higher ports")
        if exc.errno == errno.EADDRNOTAVAIL:
            return SpecError(f"cannot publish on {where}: {mapping.host_ip} is not an address "
                             "of this host")
        return HostError(f"cannot publish on host port {where}: {exc.strerror}")
    return HostError(f"slirp4netns could not publish {mapping}: {desc}")


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


# --- the plug --------------------------------------------------------------------------


class SlirpPlug:
    """``slirp4netns`` for one container run (see the module's docstring)."""

    def __init__(self, config: NetworkConfig, run_dir: str,
                 failed: Callable[[str], None]) -> None:
        self.config = config
        self.settings = Settings.from_config(config)  # SpecError for bad options
        self.run_dir = run_dir
        self.socket_path = os.path.join(run_dir, SOCKET_NAME)
        self.log_path = os.path.join(run_dir, LOG_NAME)
        self._failed = failed
        self._failed_called = False
        self._stopping = False
        self.process: trio.Process | None = None
        self._exit_w: int | None = None
        self.attached: Attached | None = None

    # public -----------------------------------------------------------------------------

    async def run(self, pid: int,
                  task_status: trio.TaskStatus[Attached] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            feat = await features()
            if len(os.fsencode(self.socket_path)) >= 108:
                raise HostError(f"the run directory {self.run_dir} is too long a path for "
                                "slirp4netns's API socket (108 bytes)")
            await self._start(feat, pid)
            ports = await self._publish()
            self.attached = self._attached(feat, ports)
            task_status.started(self.attached)
            assert self.process is not None
            status = await self.process.wait()
            if not self._stopping:
                self._report(f"slirp4netns (pid {self.process.pid}) exited unexpectedly "
                             f"({_status_text(status)}): the container lost its network"
                             + self._log_tail(": "))
        finally:
            self._stopping = True
            with trio.CancelScope(shield=True):
                await self._stop()

    # internals --------------------------------------------------------------------------

    async def _start(self, feat: Features, pid: int) -> None:
        """Spawn slirp4netns and wait for its ready fd (the exit fd's write end stays
        in ``self._exit_w`` until :meth:`_stop`)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        exit_r, self._exit_w = os.pipe()  # close-on-exec: pass_fds hands over exit_r only
        ready_r, ready_w = os.pipe()
        try:
            try:
                args = command(feat, self.settings, pid, exit_r, ready_w, self.socket_path)
                with open(self.log_path, "wb") as log:
                    self.process = await trio.lowlevel.open_process(
                        args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        pass_fds=(exit_r, ready_w), start_new_session=True)
            except OSError as exc:
                raise HostError(f"cannot start slirp4netns: {exc}") from exc
            finally:
                os.close(exit_r)
                os.close(ready_w)
            ready = await self._wait_ready(ready_r)
        finally:
            os.close(ready_r)
        if not ready:
            await self._wait_briefly()
            raise self._start_error()

    async def _wait_ready(self, ready_r: int) -> bool:
        """True once slirp4netns wrote its ready byte; False if it closed the pipe first
        (it died)."""
        os.set_blocking(ready_r, False)
        with trio.move_on_after(READY_TIMEOUT) as scope:
            while True:
                await trio.lowlevel.wait_readable(ready_r)
                try:
                    data = os.read(ready_r, 16)
                except BlockingIOError:
                    continue
                return bool(data)
        assert scope.cancelled_caught
        raise HostError(f"slirp4netns did not become ready within {READY_TIMEOUT:g}s"
                        + self._log_tail(": "))

    async def _wait_briefly(self) -> None:
        if self.process is not None:
            with trio.move_on_after(STOP_GRACE):
                await self.process.wait()

    def _start_error(self) -> ContainerError:
        log = self._log_text()
        if "/dev/net/tun" in log:
            problem = tun_problem()
            if problem:
                return HostError(f"slirp4netns cannot create the container's network: {problem}")
        status = self.process.returncode if self.process is not None else None
        return HostError("slirp4netns failed to start"
                         + (f" ({_status_text(status)})" if status is not None else "")
                         + self._log_tail(": "))

    async def _publish(self) -> tuple[PortMapping, ...]:
        done = []
        for mapping in self.config.ports:
            attempts = PICK_ATTEMPTS if mapping.host_port == 0 else 1
            for attempt in range(attempts):
                port = mapping.host_port or pick_port(mapping.host_ip, mapping.protocol)
                doc = await api_call(self.socket_path, {
                    "execute": "add_hostfwd",
                    "arguments": {"proto": mapping.protocol,
                                  "host_addr": mapping.host_ip or "0.0.0.0",
                                  "host_port": port, "guest_addr": self.settings.guest,
                                  "guest_port": mapping.container_port}})
                desc = _error_text(doc)
                if desc is None:
                    done.append(mapping._replace(host_port=port))
                    break
                if attempt == attempts - 1:  # a picked port taken meanwhile: pick again
                    raise explain_bind_failure(mapping, port, desc)
        return tuple(done)

    def _attached(self, feat: Features, ports: tuple[PortMapping, ...]) -> Attached:
        assert self.process is not None
        s = self.settings
        return Attached(
            interfaces=(Interface(TAP, s.guest, s.cidr.prefixlen, s.gateway),),
            ports=ports, nameservers=(s.dns,),
            # slirp's own port handler: connections arrive from the gateway (10.0.2.2)
            source_ip_preserved=False,
            details=(("slirp4netns_pid", self.process.pid),
                     ("slirp4netns_api_socket", self.socket_path),
                     ("slirp4netns_sandbox", feat.sandbox),
                     ("slirp4netns_seccomp", feat.seccomp),
                     ("slirp4netns_mtu", s.mtu),
                     ("allow_host_loopback", s.allow_host_loopback),
                     ("port_handler", "slirp4netns")))

    async def _stop(self) -> None:
        """Close the exit fd (slirp4netns exits by itself), then SIGTERM, then SIGKILL;
        reap it; remove the socket (a sandboxed slirp4netns cannot unlink it)."""
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        proc = self.process
        if proc is not None and proc.returncode is None:
            with trio.move_on_after(STOP_GRACE):
                await proc.wait()
            if proc.returncode is None:
                proc.terminate()
                with trio.move_on_after(STOP_GRACE):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _report(self, reason: str) -> None:
        if not self._failed_called:
            self._failed_called = True
            self._failed(reason)

    def _log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4096:].decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, prefix: str) -> str:
        """The last meaningful lines slirp4netns printed (its banner left out)."""
        lines = [line.strip() for line in self._log_text().splitlines()
                 if line.strip() and not line.startswith(("* ", "WARNING", "Starting slirp"))
                 and "apifd event" not in line and "api_handler" not in line]
        return prefix + "; ".join(lines[-3:]) if lines else ""


def _status_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            import signal

            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
