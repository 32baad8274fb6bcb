"""The zygote: a single-threaded helper forked before trio starts, which creates every
container init for the supervisor.

Forking from the multi-threaded trio process is unsafe, and a fresh Python per
container costs ~50 ms and 10 MB; the zygote makes a container start one clone3 away.
It clones each init with CLONE_PARENT, so the init is the *supervisor's* child: the
supervisor reaps it, and the init's PDEATHSIG follows the supervisor, not the zygote.

Wire format (SOCK_SEQPACKET, one packet per message, fds by SCM_RIGHTS)::

    supervisor -> zygote   {"op": "create", "spec": <OCI doc>, "config": {...},
                            "plan": {...} | null} + fds [stdin, stdout, stderr]
                           {"op": "exec", ...} + fds [stdin, stdout, stderr, init pidfd]
                           (both may carry "cgroup_procs": the container's
                            cgroup.procs files, which the child joins first)
    zygote -> supervisor   {"ok": true, "pid": N} + fds [pidfd, channel]: the init is
                            placed (cgroups, id maps); the supervisor takes its Ready
                            (and pty master) on the channel
                           {"ok": false, "error": {...}, "pid": N | null}

The zygote answers one request at a time; it exits when the supervisor's end closes
(and dies with the supervisor through PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from runtime import capabilities, nativeinit
from runtime.containerdir import rmtree
from runtime.create import InitProcess, create, create_native
from runtime.errors import ContainerError, ExecFailed, SetupFailed, os_error_message
from runtime.execute import create_exec
from runtime.idmap import IdMapPlan, run_in_user_namespace
from runtime.init import InitConfig, remember_ignored_signals, remember_supervisor
from runtime.spec import ContainerSpec, IdMapping

MAX_PACKET = 1 << 20


class CreatedInit(NamedTuple):
    pid: int
    pidfd: int
    channel_fd: int
    pty_master: int | None
    go_ahead: bool = False  # created to exec without a Start (InitConfig.go_ahead)


def start_zygote(run_dir: str, cleanup: bool = True,
                 others: tuple[socket.socket, ...] = ()) -> tuple[int, socket.socket]:
    """Fork the zygote; return (its pid, the supervisor's end of its socket).

    The same code serves as the *packer*, a second helper forked right after for the
    long file work (layers unpacked and packed, trees removed), so that work never
    keeps a container from starting: ``cleanup`` False (the zygote removes what a dead
    supervisor left), ``others`` the supervisor's ends of earlier helpers' sockets,
    closed in the child (their EOF must come when the supervisor goes)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ours.close()
            for other in others:
                other.close()
            serve(theirs)
            if cleanup:
                remove_stale_cgroups(run_dir)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def serve(sock: socket.socket) -> None:
    """The zygote's loop: one create request at a time until the supervisor goes.

    The supervisor's end of the socket closes when it exits, however it exits (it is
    the only holder): then the loop ends. No PDEATHSIG: the zygote outlives a killed
    supervisor for as long as it takes to remove the container cgroups it left."""
    # What the zygote holds now stays: out of the collector's sight, its pages stay
    # shared with every init forked from here (no collection writes them).
    nativeinit.available()  # loaded once, here: every init's clone uses it
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is a stop of the process group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # and a terminal's hang-up
    remember_ignored_signals()  # each init resets these (and only these) before its exec
    capabilities.remember_bounding_set()  # and drops the bits of this set it must drop
    remember_supervisor(os.pidfd_open(os.getppid()))  # forked by it: still its parent
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 8)
        if not data:
            return
        try:
            # a native init's plan follows its request after a NUL (runtime.nativeinit)
            head, _, native = data.partition(b"\0")
            reply, reply_fds = handle(json.loads(head), fds, native)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            socket.send_fds(sock, [json.dumps(reply).encode()], reply_fds)
        except OSError:  # the supervisor died while we worked
            return
        finally:
            for fd in reply_fds:
                os.close(fd)


def remove_stale_cgroups(run_dir: str) -> None:
    """After the supervisor: its cgroup state file is gone after a clean shutdown; if
    it is still there, the supervisor died, and what it recorded is removed now (its
    inits died with it through PDEATHSIG), not only when a next supervisor starts."""
    from runtime import cgroups
    from runtime.cgroups import v1, v2

    doc = cgroups.load_state(run_dir)
    if doc is None:
        return
    with contextlib.suppress(OSError, ContainerError):
        (v2 if doc.get("version") == 2 else v1).recover(doc)
        cgroups.clear_state_if_gone(run_dir, doc)  # else the next supervisor tries again


def handle(request: dict[str, Any], fds: list[int],
           native: bytes = b"") -> tuple[dict[str, Any], list[int]]:
    """``create`` an init (fds: stdio) or ``exec`` a process (fds: stdio, init's pidfd).
    A ``create`` with "native" (its clone flags) and "shared" runs the ``native`` plan
    instead of the Python init: the spec stays with the supervisor, which compiled it."""
    if request.get("op") == "rmtree":
        return remove_trees(request["paths"], decode_plan(request["plan"])), []
    if request.get("op") == "unpack":
        return unpack_layer(request["tar"], request["dest"], decode_plan(request["plan"])), []
    if request.get("op") == "pack":
        return pack_layer(request["job"], decode_plan(request["plan"])), []
    stdio = (fds[0], fds[1], fds[2])
    cgroup_procs = tuple(request.get("cgroup_procs") or ())
    # placed, not ready: the supervisor waits for Ready on the channel while the
    # zygote clones the next init
    if "native" in request:
        compiled = nativeinit.Compiled(request["native"], native, bool(request["shared"]))
        return _created(lambda: create_native(compiled, decode_plan(request["plan"]),
                                              stdio=stdio, clone_parent=True,
                                              cgroup_procs=cgroup_procs, wait_ready=False))
    spec = ContainerSpec.from_oci(request["spec"])
    config = decode_config(request["config"])
    if request.get("op") == "exec":
        return _created(lambda: create_exec(spec, config, fds[3], stdio, cgroup_procs,
                                            wait_ready=False))
    plan = decode_plan(request["plan"])
    return _created(lambda: create(spec, config, plan, stdio=stdio, clone_parent=True,
                                   cgroup_procs=cgroup_procs, wait_ready=False))


def _created(make: Callable[[], InitProcess]) -> tuple[dict[str, Any], list[int]]:
    """The reply for an init that ``make`` creates, or for its error."""
    try:
        process = make()
    except ContainerError as exc:
        return {"ok": False, "error": encode_error(exc),
                "pid": getattr(exc, "init_pid", None)}, []
    except OSError as exc:
        error = {"type": "SetupFailed", "errno": exc.errno or 0,
                 "message": os_error_message(exc)}
        return {"ok": False, "error": error, "pid": getattr(exc, "init_pid", None)}, []
    return {"ok": True, "pid": process.pid}, [process.pidfd, process.channel.sock.detach()]


def unpack_layer(tar: str, dest: str, plan: IdMapPlan | None) -> dict[str, Any]:
    """Unpack an image layer as root of a user namespace with the user's map, so its
    files keep their (shifted) owners."""
    from runtime.images.layer import unpack

    assert plan is not None

    def run() -> bytes:
        with open(tar, "rb") as f:
            return unpack(f, dest, rootless=True).diff_id.encode()

    try:
        diff_id = run_in_user_namespace(plan, run, "unpack layer")
    except ContainerError as exc:
        return {"ok": False, "error": encode_error(exc)}
    return {"ok": True, "diff_id": diff_id.decode()}


def pack_layer(job: dict[str, Any], plan: IdMapPlan | None) -> dict[str, Any]:
    """Write a layer tarball (see :mod:`runtime.images.pack`) in a child with private
    mounts (rootless: as root of a user namespace with ``plan``, so files keep the
    container's ids): ``diff`` of an upper dir, or ``copy`` from the build context or
    a stage, with image trees mounted as read-only overlays of their layers."""
    from runtime import libc

    def run() -> bytes:
        from runtime.images import pack

        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        with open(job["out"], "wb") as out:
            if job["kind"] == "diff":
                return pack.pack_diff(job["upper"], out).encode()
            image_root = _tree_view(job["image_lowers"], job["scratch"], "image", plan)
            source = job.get("context") or _tree_view(job["source_lowers"], job["scratch"],
                                                     "source", plan)
            ignored = _ignore(job.get("ignore"))
            copy = pack.CopyJob(**job["copy"])
            return pack.pack_copy(copy, source or job["scratch"] + "/empty", image_root,
                                  out, ignored).encode()

    try:
        digest = run_in_user_namespace(plan, run, "build layer", libc.CLONE_NEWNS)
    except ContainerError as exc:
        return {"ok": False, "error": encode_error(exc)}
    return {"ok": True, "diff_id": digest.decode()}


def _tree_view(lowers: list[str], scratch: str, name: str,
               plan: IdMapPlan | None) -> str | None:
    """An image's file tree from its layers (top first): none for ``scratch``, the one
    layer itself, or a read-only overlay of them."""
    from runtime import libc

    if not lowers:
        return None
    if len(lowers) == 1:
        return lowers[0]
    target = os.path.join(scratch, name)
    os.makedirs(target, exist_ok=True)
    options = "lowerdir=" + ":".join(lowers) + (",userxattr" if plan is not None else "")
    libc.mount("overlay", target, "overlay", libc.MS_RDONLY, options)
    return target


def _ignore(lines: list[str] | None) -> Any:
    from runtime.build.ignore import Ignore

    return Ignore(lines or [])


def remove_trees(paths: list[str], plan: IdMapPlan | None) -> dict[str, Any]:
    """Remove ``paths``: as root of a user namespace with ``plan``, or as we are."""
    try:
        for path in paths:
            if plan is None:
                rmtree(path)
            elif os.path.exists(path):
                run_in_user_namespace(plan, functools.partial(rmtree, path), f"remove {path}")
    except ContainerError as exc:
        return {"ok": False, "error": encode_error(exc)}
    except OSError as exc:
        return {"ok": False, "error": {"type": "HostError", "errno": exc.errno or 0,
                                       "message": os_error_message(exc)}}
    return {"ok": True}


# --- encoding shared by both ends ------------------------------------------------------


def encode_request(spec: ContainerSpec, config: InitConfig, plan: IdMapPlan | None,
                   op: str = "create", cgroup_procs: tuple[str, ...] = (),
                   spec_doc: dict[str, Any] | None = None) -> bytes:
    if op == "create" and nativeinit.available():
        compiled = nativeinit.compile_init(spec, config)
        if compiled is not None:
            head = {"op": op, "native": compiled.flags, "shared": compiled.shared,
                    "cgroup_procs": list(cgroup_procs), "plan": encode_plan(plan)}
            return json.dumps(head).encode() + b"\0" + compiled.plan
    oci = spec_doc if spec_doc is not None else spec.to_oci()
    if config.seccomp_bpf is not None and "seccomp" in oci.get("linux", {}):
        # The init installs the compiled program; the profile (70% of the document)
        # would only be parsed, and its objects written, by the zygote for nothing.
        oci = {**oci, "linux": {k: v for k, v in oci["linux"].items() if k != "seccomp"}}
    doc = {
        "op": op,
        "cgroup_procs": list(cgroup_procs),
        "spec": oci,
        "config": {
            "lower": list(config.lower), "upper": config.upper, "work": config.work,
            "merged": config.merged, "stdin_devnull": config.stdin_devnull,
            "volatile": config.volatile, "go_ahead": config.go_ahead,
            "seccomp_bpf": config.seccomp_bpf.hex() if config.seccomp_bpf else None,
        },
        "plan": encode_plan(plan),
    }
    return json.dumps(doc).encode()


def encode_plan(plan: IdMapPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"uid": [list(m) for m in plan.uid_mappings],
            "gid": [list(m) for m in plan.gid_mappings]}


def decode_config(doc: dict[str, Any]) -> InitConfig:
    bpf = doc.get("seccomp_bpf")
    return InitConfig(
        lower=tuple(doc["lower"]), upper=doc["upper"], work=doc["work"],
        merged=doc["merged"], stdin_devnull=doc["stdin_devnull"],
        volatile=bool(doc.get("volatile")), go_ahead=bool(doc.get("go_ahead")),
        seccomp_bpf=bytes.fromhex(bpf) if bpf else None,
    )


def decode_plan(doc: dict[str, Any] | None) -> IdMapPlan | None:
    if doc is None:
        return None
    return IdMapPlan(tuple(IdMapping(*m) for m in doc["uid"]),
                     tuple(IdMapping(*m) for m in doc["gid"]))


def encode_error(exc: ContainerError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "errno": getattr(exc, "errno", 0),
            "message": str(exc)}


def decode_error(doc: dict[str, Any]) -> ContainerError:
    if doc["type"] == "ExecFailed":
        return ExecFailed(doc["errno"], doc["message"])
    if doc["type"] == "SetupFailed":
        return SetupFailed(doc["errno"], doc["message"])
    from runtime import errors

    cls = getattr(errors, doc["type"], ContainerError)
    return cls(doc["message"]) if issubclass(cls, ContainerError) else ContainerError(
        doc["message"])


def close_quietly(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
