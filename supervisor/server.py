"""The control socket: JSON-RPC 2.0 as JSON lines on a Unix socket (docs/protocol.md).

Every request of a connection runs as its own task, so a stream (``logs -f``,
``events.subscribe``, ``wait``) never blocks the next request; responses carry the
request's id. A malformed line gets an error response, a line over 1 MiB gets one and
then the connection is dropped; the supervisor lives on either way. Peers must be our
own uid (or root): checked with SO_PEERCRED.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from runtime import capabilities, nativeinit
from runtime.errors import Conflict, SpecError
from runtime.log import get_logger
from supervisor import fdpass, protocol
from supervisor.engine import Attach, Supervisor
from supervisor.events import EventLog
from supervisor.logfile import follow_lines, parse_log_opts, parse_since, read_lines
from supervisor.states import Status, is_active
from supervisor.zygote import close_quietly

log = get_logger("myctr.control")
VERSION = "0.1.0"


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, "control.sock")


class Connection:
    """One client: serialized writes (several streams may answer at once)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.lock = trio.Lock()
        self.requests: trio.CancelScope | None = None

    def hang_up(self) -> None:
        """The client is gone: end every request and stream of this connection."""
        if self.requests is not None:
            self.requests.cancel()

    async def send(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        async with self.lock:
            view = memoryview(data)
            while view:
                sent = await self.sock.sendmsg([view], fdpass.rights(fds))
                fds, view = (), view[sent:]


class ControlServer:
    def __init__(self, supervisor: Supervisor, events: EventLog, info: dict[str, Any],
                 shutdown: Callable[[], None]) -> None:
        self.sup = supervisor
        self.events = events
        self.info_doc = info
        self.shutdown = shutdown
        self.connections = 0
        self.methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "ping": self.ping, "info": self.info, "cli.parse": self.cli_parse,
            "cli.run": self.cli_run,
            "container.create": self.create, "container.start": self.start,
            "container.run": self.run, "container.stop": self.stop,
            "container.restart": self.restart, "container.kill": self.kill,
            "container.remove": self.remove, "container.list": self.list_containers,
            "container.inspect": self.inspect, "container.wait": self.wait,
            "container.logs": self.logs, "events.subscribe": self.subscribe,
            "container.exec": self.exec,
            "container.pause": self.pause, "container.unpause": self.unpause,
            "container.update": self.update, "container.stats": self.stats,
            "container.top": self.top,
            "supervisor.shutdown": self.shutdown_method,
            "image.import": self.image_import, "image.list": self.image_list,
            "image.inspect": self.image_inspect, "image.remove": self.image_remove,
            "image.tag": self.image_tag, "image.prune": self.image_prune,
            "image.bootstrap": self.image_bootstrap, "image.history": self.image_history,
            "image.build": self.build,
            "network.create": self.network_create, "network.list": self.network_list,
            "network.inspect": self.network_inspect, "network.remove": self.network_remove,
            "network.connect": self.network_connect,
            "network.disconnect": self.network_disconnect,
            "image.pull": self.image_pull, "image.push": self.image_push,
            "image.save": self.image_save, "image.load": self.image_load,
        }

    async def serve(self, path: str,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the supervisor's lock says no other one is serving
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await listener.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(512)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(self.handle, sock)

    async def handle(self, sock: trio.socket.SocketType) -> None:
        self.connections += 1
        conn = Connection(sock)
        pending_fds: list[int] = []
        try:
            if not _peer_allowed(sock):
                return
            buffer = protocol.LineBuffer()
            async with trio.open_nursery() as requests:
                conn.requests = requests.cancel_scope
                while True:
                    data, ancdata, _flags, _addr = await sock.recvmsg(
                        65536, fdpass.ANCILLARY_SPACE)
                    pending_fds += fdpass.received(ancdata)
                    if not data:
                        break
                    try:
                        lines = buffer.feed(data)
                    except protocol.LineTooLong as exc:
                        await conn.send(protocol.encode_error(None, exc.code, exc.message))
                        break
                    for line in lines:
                        fds, pending_fds = pending_fds, []  # fds go with the request they came with
                        requests.start_soon(self.answer, conn, line, fds)
                # EOF: the client may only have shut down its sending side (socat does);
                # its requests still get their answers, and a stream ends when a send fails.
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client disconnected mid-stream
        except* Exception as group:  # one client's trouble never takes the supervisor down
            log.error("connection failed", error=repr(group.exceptions[0]))
        finally:
            for fd in pending_fds:
                os.close(fd)
            self.connections -= 1
            sock.close()

    async def answer(self, conn: Connection, line: bytes, fds: list[int]) -> None:
        request_id: Any = None
        try:
            request = protocol.parse_request(line)
            request_id = request.id
            method = self.methods.get(request.method)
            if method is None:
                raise protocol.RpcError(protocol.METHOD_NOT_FOUND,
                                        f"unknown method {request.method!r}", request_id=request_id)
            result, reply_fds = await _call(method, request, conn, fds)
            fds = []
            if request_id is not None:
                await conn.send(protocol.encode_result(request_id, result), reply_fds)
            for fd in reply_fds:
                os.close(fd)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            conn.hang_up()
        except Exception as exc:
            code, message, data = protocol.error_from_exception(exc)
            if code == protocol.INTERNAL_ERROR:
                log.error("internal error", method=line[:80].decode(errors="replace"),
                          error=message)
            try:
                await conn.send(protocol.encode_error(request_id, code, message, data))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                conn.hang_up()
        finally:
            for fd in fds:
                os.close(fd)

    # --- methods --------------------------------------------------------------------

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"version": VERSION, "pid": os.getpid()}

    async def info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.info_doc, "containers": len(self.sup.containers),
                "running": self.sup.active_count(), "cgroups": self.sup.cgroups.info(),
                "network": _network_info(self.sup.default_network)}

    async def cli_parse(self, params: dict[str, Any]) -> dict[str, Any]:
        from supervisor.cli import parse_for_quick

        return parse_for_quick(_strings(params, "argv"))

    async def cli_run(self, params: dict[str, Any], conn: Connection, request_id: Any,
                      fds: list[int]) -> Any:
        """``myctr run``'s quick path in one request: parse its arguments with the click
        command, resolve what is the client's (its cwd and environment, sent along),
        run; attached, a ``run.started`` notification (with the pty master under -t),
        then the answer once the container stopped (was removed, with --rm)."""
        from supervisor import quick
        from supervisor.cli import parse_for_quick

        argv, cwd, env = _strings(params, "argv"), params.get("cwd"), params.get("env")
        if not isinstance(cwd, str) or not os.path.isabs(cwd) or not isinstance(env, dict) \
                or not all(isinstance(v, str) for v in env.values()):
            raise protocol.RpcError(protocol.INVALID_PARAMS,
                                    "invalid params: 'cwd' (absolute) and 'env' (strings)")
        given = _named_fds(params, fds)  # ours now: closed here, or handed to the Attach
        try:
            parsed = parse_for_quick(["run", *argv])
            if "output" in parsed:  # --help
                return parsed
            opts = parsed["params"]
            create = quick.create_params(opts, cwd, env)
            if opts["detach"]:
                return {"id": (await self.run(create, []))[0]["id"]}
            wanted = [n for n in ("stdin", "stdout", "stderr") if n in given and (
                n != "stdin" or opts["interactive"]) and (n == "stdin" or not opts["tty"])]
            attach_fds = [given.pop(n) for n in wanted]
        finally:
            close_quietly(*given.values())
        try:  # the run's Attach takes attach_fds (emptying the list) once it exists
            started, pty = await self.run({**create, "attach": True, "fds": wanted},
                                          attach_fds)
            started["interactive"] = bool(opts["interactive"])
        finally:
            close_quietly(*attach_fds)
        try:
            await conn.send(protocol.encode_stream_item(request_id, "run.started", started), pty)
        finally:
            close_quietly(*pty)
        restart = create.get("restart", "no") not in ("no", None)
        return await self.wait({"id": started["id"], "next_exit": restart,
                                "removed": bool(create.get("auto_remove"))})

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        c = await self.sup.create(params)
        return {"id": c.id, "name": c.record.name}

    async def start(self, params: dict[str, Any], fds: list[int]) -> tuple[Any, list[int]]:
        c = self.sup.get(_ref(params))
        attach = _attach(params, fds)
        await self.sup.start(c, attach)
        return {"id": c.id}, _pty(attach)

    async def run(self, params: dict[str, Any], fds: list[int]) -> tuple[Any, list[int]]:
        create = {k: v for k, v in params.items() if k not in ("attach", "fds")}
        attach = _attach(params, fds)  # checked (and the fds taken) before anything is made
        try:
            c = await self.sup.create(create, run=True)
        except BaseException:
            if attach is not None:
                attach.close()
            raise
        try:
            await self.sup.start(c, attach)
        except BaseException:
            if c.options.auto_remove and c.id in self.sup.containers:
                await self.sup.remove(c, force=True)
            raise
        return {"id": c.id, "name": c.record.name,
                "tty": c.options.request.terminal}, _pty(attach)

    async def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        await self.sup.stop(c, float(params.get("timeout", 10)))
        return {"id": c.id}

    async def restart(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        if is_active(c.status):
            await self.sup.stop(c, float(params.get("timeout", 10)))
        await self.sup.start(c)
        return {"id": c.id}

    async def kill(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        await self.sup.kill(c, _signal(params.get("signal", "KILL")))
        return {"id": c.id}

    async def pause(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        await self.sup.pause(c)
        return {"id": c.id}

    async def unpause(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        await self.sup.unpause(c)
        return {"id": c.id}

    async def update(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        changes = params.get("resources")
        if not isinstance(changes, dict):
            raise protocol.RpcError(protocol.INVALID_PARAMS,
                                    "invalid params: 'resources' must be an object")
        await self.sup.update(c, changes)
        return {"id": c.id, "resources": c.options.resources.to_json()}

    async def stats(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        interval = params.get("interval", 0.5)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not (
                0 <= interval <= 60):
            raise SpecError("invalid params: 'interval' must be 0..60 seconds")
        return {"id": c.id, "name": c.record.name,
                **await self.sup.stats(c, float(interval))}

    async def top(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        return {"id": c.id, "processes": await trio.to_thread.run_sync(self.sup.top, c)}

    async def remove(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        await self.sup.remove(c, bool(params.get("force", False)))
        return {"id": c.id}

    async def image_import(self, params: dict[str, Any]) -> dict[str, Any]:
        path, name = params.get("path"), params.get("name")
        if not isinstance(path, str) or not isinstance(name, str):
            raise protocol.RpcError(protocol.INVALID_PARAMS,
                                    "invalid params: 'path' and 'name' must be strings")
        image = await self.sup.images.import_tar(path, name, {})
        self.events.emit("image-import", image.id, ",".join(image.tags))
        return {"id": image.id, "tags": list(image.tags)}

    async def image_bootstrap(self, params: dict[str, Any]) -> dict[str, Any]:
        kind, name = params.get("kind", "busybox"), params.get("name", "busybox:latest")
        if kind != "busybox" or not isinstance(name, str):
            raise SpecError(f"image bootstrap: unknown kind {kind!r} (known: busybox)")
        image = await self.sup.images.bootstrap_busybox(name)
        self.events.emit("image-import", image.id, ",".join(image.tags))
        return {"id": image.id, "tags": list(image.tags)}

    async def image_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        from supervisor.images import summary

        store = self.sup.images.store
        hidden = set() if params.get("all") else store.intermediate()
        return [summary(i) for i in store.all() if i.tags or i.id not in hidden]

    async def image_inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        from supervisor.images import summary

        image = self.sup.images.store.resolve(_image_ref(params))
        return {**summary(image), "config": image.config, "manifest": image.manifest,
                "layer_digests": [layer["digest"] for layer in image.layers],
                "lower_dirs": list(self.sup.images.store.lower_dirs(image))}

    async def image_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        ref = _image_ref(params)
        if params.get("force"):  # podman rmi -f: its containers go first
            image = self.sup.images.store.resolve(ref)
            others = len(image.tags) > 1 and ref in image.tags
            for c in list(self.sup.containers.values()):
                if not others and c.options.image_id == image.id:
                    await self.sup.remove(c, force=True)
        result = await self.sup.images.remove(ref, self.sup.image_in_use)
        return result

    async def image_tag(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: 'name'")
        image = self.sup.images.store.tag(_image_ref(params), name)
        return {"id": image.id, "tags": list(image.tags)}

    async def image_prune(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.sup.images.prune(self.sup.image_in_use)

    async def build(self, params: dict[str, Any], conn: Connection, request_id: Any) -> Any:
        """``image.build``: progress lines and RUN output as ``build.progress``
        notifications, then the image."""
        from supervisor.build import Builder

        result = await Builder(self.sup, _sender(conn, request_id, "build.progress")
                               ).build(params)
        self.events.emit("image-build", result["id"], ",".join(result["tags"]))
        return result

    async def image_history(self, params: dict[str, Any]) -> dict[str, Any]:
        store = self.sup.images.store
        image = store.resolve(_image_ref(params))
        return {"id": image.id, "history": store.history(image)}

    async def image_pull(self, params: dict[str, Any], conn: Connection, request_id: Any) -> Any:
        """Pull an image; ``image.progress`` notifications until the answer."""
        from supervisor import registry

        image = await registry.pull(self.sup.images, _image_ref(params),
                                    params.get("tls_verify", True) is not False,
                                    params.get("creds"),
                                    _sender(conn, request_id, "image.progress"))
        self.events.emit("image-pull", image.id, ",".join(image.tags))
        return {"id": image.id, "tags": list(image.tags), "manifest": image.manifest}

    async def image_push(self, params: dict[str, Any], conn: Connection, request_id: Any) -> Any:
        from supervisor import registry

        dest = params.get("dest")
        result = await registry.push(self.sup.images, _image_ref(params),
                                     dest if isinstance(dest, str) and dest else None,
                                     params.get("tls_verify", True) is not False,
                                     params.get("creds"),
                                     _sender(conn, request_id, "image.progress"))
        self.events.emit("image-push", result["id"], result["reference"])
        return result

    async def image_save(self, params: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        from supervisor import image_archive

        refs, fmt = image_archive.save_params(params)
        fd = image_archive.archive_fd(params, fds, write=True)
        return await image_archive.save(self.sup.images, fd, refs, fmt)

    async def image_load(self, params: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        from supervisor import image_archive

        fd = image_archive.archive_fd(params, fds, write=False)
        result = await image_archive.load(self.sup.images, fd)
        for image in result["images"]:
            self.events.emit("image-load", image["id"], ",".join(image["tags"]))
        return result

    async def network_create(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: 'name'")
        subnet, gateway = params.get("subnet"), params.get("gateway")
        network = self.sup.networks.create(name, subnet if isinstance(subnet, str) else None,
                                           gateway if isinstance(gateway, str) else None)
        self.events.emit("network-create", network.name, network.subnet)
        return network.to_json()

    async def network_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        networks = self.sup.networks
        rows = [n.to_json() for n in networks.all() if n.name != "bridge"]
        if not networks.rootless:  # the default first, as podman lists it
            rows.insert(0, networks.get("bridge").to_json())
        return rows

    async def network_inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.sup.networks.inspect(_name(params))

    async def network_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _name(params)

        def users(network: str) -> list[str]:
            return [c.record.name for c in self.sup.containers.values()
                    if c.options.network.mode == network]
        await self.sup.networks.remove(name, users)
        self.events.emit("network-remove", name, name)
        return {"name": name}

    async def network_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        name = _name(params)
        self.sup.networks.get(name)
        aliases = params.get("aliases") or []
        await self.sup.set_network(c, {"network": name, "network_aliases": list(aliases)})
        return {"id": c.id, "network": name}

    async def network_disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        name = _name(params)
        if c.options.network.mode != name:
            raise Conflict(f"container {c.record.name} is not on network {name}")
        await self.sup.set_network(c, {"network": "none", "network_aliases": [],
                                       "publish": [], "publish_all": False})
        return {"id": c.id, "network": "none"}

    async def list_containers(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        show_all = bool(params.get("all", False))
        external = bool(params.get("external", False))  # podman's name: build steps
        return [self._summary(c) for c in self.sup.containers.values()
                if (show_all or is_active(c.status))
                and (external or not c.record.params.get("build"))]

    async def inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.sup.get(_ref(params))
        r = c.record
        return {**self._summary(c), "oom_killed": r.oom_killed, "OOMKilled": r.oom_killed,
                "resources": c.options.resources.to_json(),
                "cgroup": list(c.cgroup.dirs) if c.cgroup is not None else None,
                "started_at": r.started_at,
                "finished_at": r.finished_at, "restart_count": r.restart_count,
                "restart_policy": str(c.options.restart), "spec": self.sup.store.get(c.id).spec,
                "log_path": r.log_path, "manually_stopped": r.manually_stopped,
                "params": r.params, "network_mode": c.options.network.mode,
                "network": c.attached.to_json() if c.attached is not None else None}

    async def wait(self, params: dict[str, Any]) -> dict[str, Any]:
        ref = _ref(params)
        if ref in self.sup.tombstones:  # an --rm container already removed
            return {"exit_code": self.sup.tombstones[ref]}
        c = self.sup.get(ref)
        if params.get("next_exit") and c.status == Status.RUNNING:
            await c.exited.wait()
            return {"exit_code": c.record.exit_code}
        return {"exit_code": await self.sup.wait(c, removed=bool(params.get("removed")))}

    async def logs(self, params: dict[str, Any], conn: Connection, request_id: Any) -> Any:
        c = self.sup.get(_ref(params))
        _, max_file = parse_log_opts(c.options.log_opts)
        since = _time_param(params, "since")
        until = _time_param(params, "until")
        tail = params.get("tail")
        if tail is not None and (not isinstance(tail, int) or tail < 0):
            raise SpecError("invalid params: 'tail' must be a number >= 0")

        async def send(line: Any) -> None:
            await conn.send(protocol.encode_stream_item(request_id, "logs.line", {
                "stream": line.stream, "time": line.time,
                "line": line.text.decode(errors="replace")}))

        if not params.get("follow"):
            lines = await trio.to_thread.run_sync(
                lambda: read_lines(c.record.log_path, max_file, since, until, tail))
            for line in lines:
                await send(line)
            return {"done": True}
        gone = False
        async with trio.open_nursery() as nursery:
            async def follow() -> None:
                nonlocal gone
                try:
                    async for line in follow_lines(c.record.log_path, max_file, since, tail):
                        await send(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                    gone = True  # the client went away: raised below, not as a group
                    nursery.cancel_scope.cancel()
            nursery.start_soon(follow)
            if is_active(c.status):
                await c.finished.wait()
            await trio.sleep(0.2)  # the pumps drained before finished: let follow catch up
            nursery.cancel_scope.cancel()
        if gone:
            raise trio.BrokenResourceError("the client went away")
        return {"done": True}

    async def subscribe(self, params: dict[str, Any], conn: Connection, request_id: Any) -> Any:
        since = params.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise SpecError("invalid params: 'since' must be an event sequence number")
        async for event in self.events.subscribe(since):
            await conn.send(protocol.encode_stream_item(request_id, "event", event.to_json()))
        return {"done": True}

    async def exec(self, params: dict[str, Any], conn: Connection, request_id: Any,
                   fds: list[int]) -> Any:
        """Run a process in the container with the client's stdio; with a terminal, an
        ``exec.started`` notification carries the pty master first."""
        c = self.sup.get(_ref(params))
        attach = _attach({**params, "attach": True}, fds)
        assert attach is not None

        async def send_pty(master: int) -> None:
            await conn.send(protocol.encode_stream_item(request_id, "exec.started", {}),
                            [master])

        return {"exit_code": await self.sup.exec(c, params, attach, send_pty)}

    async def shutdown_method(self, params: dict[str, Any]) -> dict[str, Any]:
        self.shutdown()
        return {}

    def _summary(self, c: Any) -> dict[str, Any]:
        r = c.record
        return {"id": c.id, "name": r.name, "status": r.status,
                "status_text": _status_text(c), "pid": r.pid, "exit_code": r.exit_code,
                "created": r.created, "command": r.params.get("command", []),
                "restart": str(c.options.restart), "restart_count": r.restart_count,
                "oom_killed": r.oom_killed}


def _status_text(c: Any) -> str:
    status = c.record.status
    if status == Status.RESTARTING.value and c.scheduled is not None:
        return str(c.scheduled.describe(trio.current_time()))
    if status == Status.EXITED.value:
        oom = ", OOMKilled" if c.record.oom_killed else ""
        return f"exited ({c.record.exit_code}{oom})"
    return str(status)


async def _call(method: Callable[..., Awaitable[Any]], request: protocol.Request,
                conn: Connection, fds: list[int]) -> tuple[Any, list[int]]:
    params = request.params
    name = method.__name__
    if name in ("logs", "subscribe", "build", "image_pull", "image_push"):
        return await method(params, conn, request.id), []
    if name in ("exec", "cli_run"):
        return await method(params, conn, request.id, fds), []
    if name in ("image_save", "image_load"):
        return await method(params, fds), []
    if name in ("start", "run"):
        result, reply_fds = await method(params, fds)
        return result, reply_fds
    return await method(params), []


def _network_info(default: str) -> dict[str, Any]:
    """What ``info`` says of networking: the default mode, and whether rootless
    slirp4netns can work here (why not, in one line: /dev/net/tun's mode)."""
    import shutil

    from netplug.slirp import tun_problem

    slirp = shutil.which("slirp4netns")
    problem = tun_problem() if slirp else "slirp4netns is not installed"
    return {"default": default, "slirp4netns": slirp,
            "slirp4netns_usable": problem is None, "slirp4netns_problem": problem}


def _sender(conn: Connection, request_id: Any,
            method: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """What a streaming method sends its items with: ``method`` notifications tagged
    with the request's id."""
    async def send(item: dict[str, Any]) -> None:
        await conn.send(protocol.encode_stream_item(request_id, method, item))
    return send


def _strings(params: dict[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise protocol.RpcError(protocol.INVALID_PARAMS, f"invalid params: {key!r}: a list "
                                "of strings")
    return value


def _name(params: dict[str, Any]) -> str:
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: 'name' must name "
                                "a network")
    return name


def _image_ref(params: dict[str, Any]) -> str:
    ref = params.get("ref")
    if not isinstance(ref, str) or not ref:
        raise protocol.RpcError(protocol.INVALID_PARAMS,
                                "invalid params: 'ref' must name an image (name or id)")
    return ref


def _ref(params: dict[str, Any]) -> str:
    ref = params.get("id")
    if not isinstance(ref, str) or not ref:
        raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: 'id' must name a "
                                "container (name, id or id prefix)")
    return ref


def _attach(params: dict[str, Any], fds: list[int]) -> Attach | None:
    if not params.get("attach"):
        return None
    by_name = _named_fds(params, fds)  # the Attach owns them now
    return Attach(by_name.get("stdin"), by_name.get("stdout"), by_name.get("stderr"))


def _named_fds(params: dict[str, Any], fds: list[int]) -> dict[str, int]:
    """The request's fds by the names in its ``fds`` param, taken out of ``fds``
    (the caller owns them then)."""
    names = params.get("fds") or []
    if not isinstance(names, list) or len(names) != len(fds) or not all(
            isinstance(n, str) for n in names) or not set(names) <= {
            "stdin", "stdout", "stderr"}:
        raise protocol.RpcError(protocol.INVALID_PARAMS,
                                "invalid params: 'fds' must name each passed descriptor")
    by_name = dict(zip(names, fds, strict=True))
    fds.clear()
    return by_name


def _pty(attach: Attach | None) -> list[int]:
    if attach is None or attach.pty_master is None:
        return []
    master, attach.pty_master = attach.pty_master, None
    return [master]


def _signal(value: Any) -> int:
    from supervisor.run_options import parse_signal

    return parse_signal(value)


def _time_param(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    try:
        return parse_since(str(value), time.time_ns())
    except ValueError as exc:
        raise SpecError(f"invalid --{key} {value!r}: {exc}") from None


def _peer_allowed(sock: trio.socket.SocketType) -> bool:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def default_info(paths: Any, cgroup_driver: str) -> dict[str, Any]:
    return {"version": VERSION, "rootless": os.geteuid() != 0,
            "cgroup_driver": cgroup_driver,
            "capabilities": list(capabilities.DEFAULT_CAPABILITIES),
            "seccomp": "default",
            "init": nativeinit.describe(),
            "paths": {"data": paths.data, "run": paths.run, "log": paths.log}}
