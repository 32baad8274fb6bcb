"""The supervisor's heart: every container as a task tree in one trio process.

Per container, one nursery (:meth:`Supervisor._supervise`) holds the restart loop;
each run adds the init watcher (pidfd) and the stdout/stderr log pumps, and reports
the exit only when the pumps have drained. Statuses move through
:mod:`supervisor.states`; every change is stored (SQLite) and emitted as an event.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import outcome
import trio

from runtime import containerdir, libc
from runtime.containerdir import ContainerDir, proc_stat, process_start_time
from runtime.errors import Conflict, ContainerError, HostError, NotFound, SetupFailed, SpecError
from runtime.idmap import IdMapPlan
from runtime.init import InitConfig, process_exited
from runtime.log import get_logger
from runtime.paths import StatePaths
from runtime.spec import ContainerSpec
from supervisor import prepare as preparing
from supervisor.cgroups import CgroupManager, Inotify, Watcher
from supervisor.events import EventLog
from supervisor.logfile import LogWriter, log_files, parse_log_opts
from supervisor.restart import (
    RestartScheduled,
    StartFailed,
    restart_on_boot,
    run_with_restarts,
    should_restart,
)
from supervisor.run_options import CreateOptions, create_options
from supervisor.spawner import Spawner
from supervisor.states import Status, can_remove, can_start, is_active, transition
from supervisor.store import ContainerRecord, Store
from supervisor.zygote import CreatedInit, close_quietly

log = get_logger("myctr.supervisor")
TOMBSTONES = 1024


class Launched(NamedTuple):
    """A run's init after exec, with the read ends of its stdout/stderr pipes."""

    init: CreatedInit
    stdout: int
    stderr: int


class Attach:
    """A client attached to a run: where its stdout/stderr go, and its stdin."""

    def __init__(self, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.pty_master: int | None = None

    def close(self) -> None:
        close_quietly(self.stdin, self.stdout, self.stderr)
        self.stdin = self.stdout = self.stderr = None


class Container:
    """One container's live state beside its stored record."""

    def __init__(self, record: ContainerRecord, options: CreateOptions) -> None:
        self.record = record
        self.options = options
        self.scope: trio.CancelScope | None = None
        self.pidfd = -1
        self.scheduled: RestartScheduled | None = None
        self.prepared: preparing.Prepared | None = None  # the same for every run
        self.exited = trio.Event()
        self.stopped = trio.Event()  # no restart due (an --rm one is removed next)
        self.finished = trio.Event()  # the task tree ended (and an --rm one is gone)
        self.cgroup: Any = None  # the current run's cgroup handle, if it has one
        self.attached: Any = None  # the current run's netplug.Attached, if any
        self.update_lock = trio.Lock()
        # pause, unpause, kill, stop's signal and the removal of the run's cgroup, one
        # at a time: a kill's freeze-kill-thaw interleaved with a pause's freeze left
        # the cgroup frozen with killed tasks in it (found by a chaos run)
        self.freezer = trio.Lock()
        self.placing = 0  # execs on their way in (Supervisor._placing_exec)
        self.placed = trio.Event()
        self.placed.set()

    @property
    def status(self) -> Status:
        return Status(self.record.status)

    @property
    def id(self) -> str:
        return self.record.id


class Supervisor:
    def __init__(self, paths: StatePaths, store: Store, spawner: Spawner,
                 events: EventLog, nursery: trio.Nursery,
                 packer: Spawner | None = None) -> None:
        self.paths = paths
        self.store = store
        self.spawner = spawner
        # the file work (layers, trees) goes to a helper of its own: never in the way of
        # a container's start
        self.packer = packer or spawner
        self.events = events
        self.nursery = nursery
        self.containers: dict[str, Container] = {}
        self.devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.known_children: set[int] = {spawner.zygote_pid, self.packer.zygote_pid}
        # Exit codes of removed --rm containers, so a wait that arrives after the
        # removal still gets the status (bounded: the newest TOMBSTONES).
        self.tombstones: dict[str, int] = {}
        # Creates run in one worker thread at a time: their work is mostly Python,
        # which holds the GIL, so more threads only pass it around (with the event
        # loop) at a context switch each. 50 runs at once: ~115 -> ~140 per second.
        self.create_limiter = trio.CapacityLimiter(1)
        self.cgroups = CgroupManager(paths)
        from runtime.images.store import ImageStore
        from supervisor.images import ImageService

        self.images = ImageService(ImageStore(paths.data, store.db), self.packer,
                                   preparing.id_map_plan() if os.geteuid() != 0 else None)
        self.inotify = Inotify()
        nursery.start_soon(self.inotify.run)
        from supervisor.networks import NetworkManager

        self.networks = NetworkManager(store.db, self.cgroups.tag, paths.run)
        rootless = os.geteuid() != 0
        # podman's default (slirp4netns rootless, bridge as root), or MYCTR_NETWORK
        self.default_network = os.environ.get("MYCTR_NETWORK") or (
            "slirp4netns" if rootless else "bridge")

    def our_pids(self) -> list[int]:
        return list(dict.fromkeys([os.getpid(), self.spawner.zygote_pid,
                                   self.packer.zygote_pid]))

    # --- bookkeeping ----------------------------------------------------------------

    def _set(self, c: Container, **fields: Any) -> None:
        if "status" in fields:
            fields["status"] = transition(c.status, Status(fields["status"])).value
        self.store.update(c.id, **fields)
        c.record = c.record._replace(**fields)

    def _emit(self, c: Container, type: str, **attributes: Any) -> None:
        self.events.emit(type, c.id, c.record.name, **attributes)

    def get(self, ref: str) -> Container:
        return self.containers[self.store.resolve(ref)]

    def active_count(self) -> int:
        return sum(1 for c in self.containers.values() if is_active(c.status))

    # --- create ---------------------------------------------------------------------

    async def create(self, params: dict[str, Any], run: bool = False) -> Container:
        """Validate, store and prepare a container (disk work off the event loop);
        ``run``: it starts next, so its run's cgroup is made in the same worker thread
        (one hop less on the start path)."""
        c: Container = await trio.to_thread.run_sync(self._create, params, run,
                                                     limiter=self.create_limiter)
        if c.id not in self.containers:  # an rm -f by name came while the thread worked
            # on the run's cgroup: whatever the removal found of it, the thread made
            # the rest after; remove every dir of the container's id now
            c.cgroup = None
            if run and self.cgroups.driver is not None and self.cgroups.driver.ready:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_remove_cgroup, c.id,
                                                  self.cgroups.handle(c.id))
            raise NotFound(f"no such container: {c.record.name} (removed while created)")
        self._emit(c, "create")
        return c

    def resolve_image(self, ref: str) -> tuple[tuple[str, ...], dict[str, Any], str]:
        from supervisor.images import image_defaults

        image = self.images.store.resolve(ref)
        return self.images.store.lower_dirs(image), image_defaults(image), image.id

    def image_in_use(self, image_id: str) -> bool:
        return any(c.options.image_id == image_id for c in self.containers.values())

    def _create(self, params: dict[str, Any], run: bool = False) -> Container:
        if not params.get("network"):  # the default of this supervisor, recorded
            params = {**params, "network": self.default_network}
        options = create_options(params, self.resolve_image, self.networks.exists)
        if options.image_id:  # the image itself, whatever its tag names later
            params = {**params, "image_id": options.image_id}
        self.cgroups.check(options.resources, self.our_pids())
        cid = containerdir.new_id()
        options = self._effective(options, cid)
        name = options.name or f"myctr-{cid[:12]}"
        record = ContainerRecord(
            id=cid, name=name, created=time.time(), params=params, spec={},
            status=Status.CREATED.value, log_path=os.path.join(self.paths.log, f"{cid}.json"),
        )
        c = Container(record, options)
        self.containers[cid] = c  # from now on its image counts as in use
        # Files first, then the record (with its spec: one write): a crash in between
        # leaves files no record owns, which the next supervisor sweeps.
        try:
            prepared = c.prepared = self._prepare(c)
            c.record = record._replace(spec=prepared.oci or prepared.spec.to_oci())
            self.store.insert(c.record)
        except BaseException:
            del self.containers[cid]
            ContainerDir(self.paths, cid).remove()  # ours alone: its overlay never mounted
            raise
        if run:  # on failure nothing is kept: _make_cgroup tries again and says why
            try:
                self._new_cgroup(c)
            except HostError:
                group, c.cgroup = c.cgroup, None
                if group is not None:  # else an rm -f took it meanwhile (see create)
                    _remove_cgroup(c.id, group)
        return c

    def _effective(self, options: CreateOptions, cid: str) -> CreateOptions:
        """What the supervisor adds to the asked-for options: the default hostname, and
        whether the container gets its cgroup2 tree at /sys/fs/cgroup."""
        request = options.request._replace(
            hostname=options.request.hostname or cid[:12],
            cgroup_mount=options.cgroups and self.cgroups.version == 2
            and self.cgroups.why is None)
        return options._replace(request=request)

    def _prepare(self, c: Container) -> preparing.Prepared:
        return self._prepare_options(c.id, c.options, bool(c.record.params.get("build")))

    def _prepare_options(self, cid: str, o: CreateOptions, build: bool) -> preparing.Prepared:
        plan = preparing.id_map_plan(o.uid_mappings, o.gid_mappings)
        cdir = ContainerDir(self.paths, cid)
        if not os.path.exists(cdir.path):
            preparing.make_dirs(cdir, plan)
        return preparing.prepare(cdir, o.request, plan, o.interactive,
                                 preparing.etc_texts(o.request, o.network),
                                 volatile=o.auto_remove or build)

    def _drop_record(self, c: Container) -> None:
        if c.record.exit_code is not None:
            self.tombstones[c.id] = c.record.exit_code
            while len(self.tombstones) > TOMBSTONES:
                del self.tombstones[next(iter(self.tombstones))]
        for path in log_files(c.record.log_path, max_file=parse_log_opts(c.options.log_opts)[1]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.store.delete(c.id)
        self.containers.pop(c.id, None)

    async def _destroy(self, c: Container, announce: bool = False) -> None:
        """Remove a container: its record first, then its files.

        Once the record is gone the container is gone for every client (its name is
        free, a wait for its removal answers, ``announce``: the "remove" event), so a
        ``run --rm`` does not wait for the directory's removal. A crash before the
        files are gone leaves files without a record: the next supervisor removes
        them (:meth:`sweep`)."""
        cdir = ContainerDir(self.paths, c.id)
        plan = preparing.id_map_plan(c.options.uid_mappings, c.options.gid_mappings)
        if c.options.network.bridged:
            self.networks.release(c.id)  # only bridge networks lease (a database write)
        self._drop_record(c)
        if announce:
            self.events.emit("remove", c.id, c.record.name)
        c.finished.set()  # its run's tree is over (or never was): nothing waits on more
        # a run's cgroup made with the container (create for run) whose start never
        # came: an rm -f between the two (no task tree owns it to drop it)
        with trio.CancelScope(shield=True):
            await self._drop_cgroup(c)
        await self._remove_files(cdir, self._net_path(c), plan)

    async def _remove_files(self, cdir: ContainerDir, net_path: str,
                            plan: IdMapPlan | None) -> None:
        """A container's directory and its plug's files. The packer removes the
        directory, in a process of its own: even the smallest container's takes ~1.7 ms
        of CPU (the overlay's dirs, the mountpoint of a namespace being torn down),
        which in a worker thread here held the GIL against the next start. Rootless,
        its overlay dirs hold files of subordinate ids: the packer removes them as root
        of a user namespace with the container's maps (never a fork of this threaded
        process), then the rest as the user."""
        if os.path.exists(cdir.path):
            if plan is not None and os.geteuid() != 0:
                await self.packer.remove_trees([cdir.upper, cdir.work], plan)
            await self.packer.remove_trees([cdir.path], None)
        containerdir.rmtree(net_path)

    async def sweep(self) -> None:
        """Remove container files that no record owns: what a crash left between a
        removal's record and its files (at start, before anything runs)."""
        owned = set(self.containers)
        try:
            names = os.listdir(self.paths.containers)
        except FileNotFoundError:
            names = []
        plan = preparing.id_map_plan()  # rootless: the user's own ranges
        for name in names:
            if name not in owned and containerdir.is_container_id(name):
                log.warning("removing the files of a removed container", container_id=name)
                await self._remove_files(ContainerDir(self.paths, name),
                                         net_path(self.paths, name), plan)
        owned_net = {cid[:NET_ID_LENGTH] for cid in owned}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(net_root(self.paths)):
                if name not in owned_net and containerdir.is_container_id(name, NET_ID_LENGTH):
                    containerdir.rmtree(os.path.join(net_root(self.paths), name))

    # --- start / run ----------------------------------------------------------------

    async def start(self, c: Container, attach: Attach | None = None) -> None:
        """Start the container's task tree; return once its first run exec'd. A
        container that is starting, running or due to restart is left as it is
        (docker's start); attached, that is a conflict."""
        try:
            while c.scope is not None and not c.finished.is_set():  # a task tree is up
                if not c.stopped.is_set():
                    if attach is None:
                        return
                    raise Conflict(f"container {c.record.name} is already running")
                # the last run exited but its task tree still tears down (its network):
                # a new run must not overlap that (its ports, its plug's files)
                await c.finished.wait()
            if not can_start(c.status):
                raise Conflict(f"container {c.record.name} is {c.status.value}")
        except BaseException:
            if attach is not None:
                attach.close()
            raise
        if c.record.manually_stopped:
            self._set(c, manually_stopped=False)
        c.stopped, c.finished = trio.Event(), trio.Event()
        c.scope = trio.CancelScope()  # from here on: a second start, a stop, an rm see it
        await self.nursery.start(self._supervise, c, attach)

    async def _supervise(self, c: Container, attach: Attach | None,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first = True

        async def start_and_wait() -> int:
            # The run's nursery: the network plug's task lives as long as the run. What
            # the run raises is carried out of the nursery as is (not as a group).
            async with trio.open_nursery() as run:
                result = await outcome.acapture(run_once, run)
                run.cancel_scope.cancel()  # the plug tears down (shielded)
                self._unplugged(c)
            return result.unwrap()  # type: ignore[no-any-return]

        async def run_once(run: trio.Nursery) -> int:
            nonlocal first, attach
            try:
                launched = await self._launch(c, attach, run)
            except ContainerError as exc:
                self._exit(c, exc.exit_code)
                if first:
                    raise
                raise StartFailed(exc.exit_code) from exc
            if c.record.manually_stopped:  # a stop or rm -f came while it started
                with contextlib.suppress(ContainerError, OSError):  # _watch sees it end
                    await self.kill_all(c)
            if first:
                first = False
                task_status.started()
            try:
                return await self._watch(c, launched, attach)
            finally:
                if attach is not None:  # an attached client sees the first run only
                    attach.close()
                    attach = None

        completed = False
        assert c.scope is not None  # made by start()
        try:
            with c.scope:
                try:
                    await run_with_restarts(
                        start_and_wait, c.options.restart, c.options.backoff,
                        lambda: c.record.manually_stopped, lambda s: self._scheduled(c, s))
                finally:
                    if attach is not None:
                        attach.close()
            completed = True
        finally:
            if c.status == Status.RESTARTING:  # stopped while waiting to restart
                self._set(c, status=Status.EXITED.value)
            c.stopped.set()
            with trio.CancelScope(shield=True):
                if completed and c.options.auto_remove and c.id in self.containers:
                    await self._remove_now(c)
                await self._drop_cgroup(c)  # if an --rm run left it (no-op otherwise)
            c.scope = None
            c.finished.set()

    def _scheduled(self, c: Container, scheduled: RestartScheduled) -> None:
        c.scheduled = scheduled
        self._set(c, status=Status.RESTARTING.value, restart_count=c.record.restart_count + 1)
        self._emit(c, "restart-scheduled", attempt=scheduled.attempt, delay=scheduled.delay,
                   exit_code=scheduled.exit_code)

    async def _launch(self, c: Container, attach: Attach | None,
                      run: trio.Nursery) -> Launched:
        if c.prepared is None:  # loaded after a supervisor restart
            c.prepared = await trio.to_thread.run_sync(self._prepare, c)
        prepared = c.prepared
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        stdin = attach.stdin if attach and attach.stdin is not None else self.devnull
        # With no network to plug, nothing stands between the init's Ready and its
        # exec: it goes on by itself (a start is one round trip shorter). It is ours
        # to reap from the moment its pid is known: a fast command can exit (and a
        # SIGCHLD from any container wake reap_strays) before create() returns.
        go_ahead = not c.options.network.plugged
        try:
            group = await self._make_cgroup(c)
            with self._new_child() as known:
                init = await self.spawner.create(prepared.spec,
                                                 prepared.config._replace(go_ahead=go_ahead),
                                                 prepared.plan, (stdin, out_w, err_w),
                                                 group.procs_files if group is not None else (),
                                                 spec_doc=prepared.oci, on_pid=known)
            if prepared.oci is not None:  # not kept per container: ~100 KiB of objects
                c.prepared = prepared._replace(oci=None)
        except BaseException:
            close_quietly(out_r, err_r)
            with trio.CancelScope(shield=True):
                await self._drop_cgroup(c)
            raise
        finally:
            close_quietly(out_w, err_w)
        c.pidfd = init.pidfd
        try:
            try:
                await self._plug(c, init.pid, run)
            except BaseException as exc:  # the init waits for its go: end it
                with contextlib.suppress(ProcessLookupError):
                    libc.pidfd_send_signal(init.pidfd, signal.SIGKILL)
                close_quietly(init.channel_fd)  # spawner.start closes it otherwise
                if isinstance(exc, Exception) and not isinstance(exc, ContainerError):
                    log.error("network setup failed", container_id=c.id, error=repr(exc))
                    raise HostError(f"network setup failed: {exc}") from exc
                raise
            await self.spawner.start(init)
        except BaseException as exc:
            if not isinstance(exc, ContainerError):  # cancelled before its exec: end it
                with contextlib.suppress(ProcessLookupError):
                    libc.pidfd_send_signal(init.pidfd, signal.SIGKILL)
            c.pidfd = -1
            close_quietly(out_r, err_r, init.pidfd, init.pty_master)
            with trio.CancelScope(shield=True):
                await self._reap(init.pid)
                await self._drop_cgroup(c)
            self.known_children.discard(init.pid)
            raise
        self._set(c, status=Status.RUNNING.value, pid=init.pid,
                  pid_start=process_start_time(init.pid), started_at=time.time(),
                  exit_code=None)
        c.exited = trio.Event()
        self._emit(c, "start", pid=init.pid)
        return Launched(init, out_r, err_r)

    @contextlib.contextmanager
    def _new_child(self) -> Iterator[Callable[[int], None]]:
        """The ``on_pid`` of a spawn: the child is ours to reap (not a stray) from the
        moment its pid is known, a fast command may exit before the spawn returns; if
        the spawn fails, the spawner reaped it."""
        pids: list[int] = []

        def known(pid: int) -> None:
            pids.append(pid)
            self.known_children.add(pid)
        try:
            yield known
        except BaseException:
            self.known_children.difference_update(pids)
            raise

    async def _plug(self, c: Container, pid: int, run: trio.Nursery) -> None:
        """This run's network: its plug's task in the run's nursery, started (and
        its /etc/hosts written) before the container's command runs."""
        config = c.options.network
        if not config.plugged:  # nothing to plug: no files, no task
            return
        plug = await self.networks.plug(
            config, c.id, self._net_dir(c), lambda reason: self._network_failed(c, reason))
        c.attached = await run.start(plug.run, pid)
        hosts = os.path.join(ContainerDir(self.paths, c.id).etc, "hosts")
        request = c.options.request
        address = c.attached.interfaces[0].address if c.attached.interfaces else ""
        own = preparing.hosts_text(request, config, address, c.record.name)
        names = tuple(dict.fromkeys((c.record.name, request.hostname, c.id[:12],
                                     *config.aliases)))
        # on the event loop: the members of a network change in one place only
        self.networks.joined(config, c.id, own, hosts, address, names)
        self._emit(c, "network-attach", **{"network": config.mode, **_net_summary(c.attached)})

    def _net_path(self, c: Container) -> str:
        return net_path(self.paths, c.id)

    def _net_dir(self, c: Container) -> str:
        path = self._net_path(c)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _unplugged(self, c: Container) -> None:
        if c.attached is not None:
            self.networks.left(c.options.network, c.id)
            c.attached = None

    def _network_failed(self, c: Container, reason: str) -> None:
        """A plug lost the container's network (slirp4netns died): the container is
        stopped (killed), and the event and the log say why."""
        log.error("network failed: stopping the container", container_id=c.id, reason=reason)
        self._emit(c, "network-failed", reason=reason, action="container killed")

        async def kill() -> None:
            if c.pidfd >= 0:
                await self.kill_all(c)
        self.nursery.start_soon(kill)

    async def _make_cgroup(self, c: Container) -> Any:
        """This run's cgroup, with the container's limits (None: no cgroups here)."""
        if c.cgroup is not None:  # made with the container (create(run=True))
            return c.cgroup
        return await trio.to_thread.run_sync(self._new_cgroup, c)

    def _new_cgroup(self, c: Container) -> Any:
        """Make this run's cgroup (None: no cgroups here). It is ``c.cgroup`` from the
        first mkdir on, so that a failure's teardown removes what was made."""
        if not c.options.cgroups or not self.cgroups.ready(self.our_pids()):
            return None
        group = c.cgroup = self.cgroups.handle(c.id)
        try:
            group.create(c.options.resources)
        except OSError as exc:
            raise HostError(
                f"cannot create the container's cgroup: {exc.strerror or exc}") from None
        return group

    async def _drop_cgroup(self, c: Container) -> None:
        """Kill what is left in the run's cgroup and remove it."""
        group, c.cgroup = c.cgroup, None
        if group is not None:
            async with c.freezer:  # not while a pause or a kill freezes it
                await trio.to_thread.run_sync(_remove_cgroup, c.id, group)

    async def _watch(self, c: Container, launched: Launched, attach: Attach | None) -> int:
        """Pump logs until the pipes drain and the init exits; return its status."""
        init, out_r, err_r = launched
        max_size, max_file = parse_log_opts(c.options.log_opts)
        writer = LogWriter(c.record.log_path, max_size=max_size, max_file=max_file)
        group = c.cgroup
        watcher = None
        if group is not None:
            watcher = Watcher(group, lambda type, **attrs: self._emit(c, type, **attrs),
                              self.inotify, self._close_later)
        watching = trio.CancelScope()
        oom_killed = False
        try:
            try:
                async with trio.open_nursery() as pumps:
                    if watcher is not None:
                        pumps.start_soon(self._watch_cgroup, c, watcher, watching)
                    if init.pty_master is not None:
                        if attach is not None:
                            attach.pty_master = init.pty_master  # the client pumps the pty
                            close_quietly(out_r, err_r)
                        else:
                            pumps.start_soon(_pump, init.pty_master, "stdout", writer, None)
                            close_quietly(out_r, err_r)
                    else:
                        pumps.start_soon(_pump, out_r, "stdout", writer,
                                         attach.stdout if attach else None)
                        pumps.start_soon(_pump, err_r, "stderr", writer,
                                         attach.stderr if attach else None)
                    code = await _wait_exit(init.pid, init.pidfd)
                    if watcher is not None:
                        # The last word before the cgroup goes: events of the final moments
                        # and the OOM verdict of this run (its cgroup was fresh).
                        watcher.check()
                        oom_killed = watcher.oom_killed
                        watching.cancel()
            finally:
                writer.close()  # the log holds every byte now: the exit may be told
                self.known_children.discard(init.pid)
            self._exit(c, code, oom_killed)
            if not should_restart(c.options.restart, code, 0, c.record.manually_stopped):
                c.stopped.set()  # no restart can be due: a wait answers before the teardown
        finally:
            if not (c.stopped.is_set() and c.options.auto_remove):
                with trio.CancelScope(shield=True):
                    await self._drop_cgroup(c)
            # else an --rm container's last run: its record goes first, then the
            # cgroup (_supervise)
            # Closed only once the exit is recorded: until then a stop or kill that
            # arrives finds an init that is gone (signals are no-ops), not an error.
            close_quietly(init.pidfd)
            c.pidfd = -1
        return code

    def _close_later(self, fds: list[int]) -> None:
        """Close fds in a worker thread, off the event loop (some closes wait for the
        kernel), without anyone waiting for it."""
        self.nursery.start_soon(trio.to_thread.run_sync, close_quietly, *fds)

    async def _watch_cgroup(self, c: Container, watcher: Watcher,
                            scope: trio.CancelScope) -> None:
        with scope:
            try:
                await watcher.run()
            except OSError as exc:  # the container runs on; only its events are lost
                log.error("cgroup watcher failed", container_id=c.id, error=str(exc))

    def _exit(self, c: Container, code: int, oom_killed: bool = False) -> None:
        self._set(c, status=Status.EXITED.value, pid=0, exit_code=code,
                  finished_at=time.time(), oom_killed=oom_killed)
        c.exited.set()
        self._emit(c, "die", exit_code=code, oom_killed=oom_killed)

    async def _reap(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            await trio.to_thread.run_sync(os.waitpid, pid, 0)

    # --- exec -----------------------------------------------------------------------

    async def exec(self, c: Container, params: dict[str, Any], attach: Attach,
                   on_pty: Callable[[int], Awaitable[None]]) -> int:
        """Run one more process in the running container; return its exit status."""
        try:
            async with self._placing_exec(c) as container_pidfd:
                spec, config = exec_spec(self.store.get(c.id).spec, c.options, params,
                                         stdin=attach.stdin is not None)
                stdio = (attach.stdin if attach.stdin is not None else self.devnull,
                         attach.stdout if attach.stdout is not None else self.devnull,
                         attach.stderr if attach.stderr is not None else self.devnull)
                try:
                    with self._new_child() as known:
                        init = await self.spawner.create_exec(
                            spec, config, stdio, container_pidfd,
                            c.cgroup.procs_files if c.cgroup is not None else (),
                            on_pid=known)
                except (SetupFailed, HostError) as exc:
                    if getattr(exc, "errno", 0) == errno.ESRCH \
                            or process_exited(container_pidfd):
                        # the init died while the exec joined (setns found no process:
                        # before its pidfd polls readable, a pid namespace's init waits
                        # for the namespace to empty; or its cgroup went, or the joiner
                        # died with it)
                        raise Conflict(f"container {c.record.name} is not running") from None
                    raise
        finally:
            attach.close()
        try:
            if init.pty_master is not None:
                try:
                    await on_pty(init.pty_master)
                except BaseException:  # the client went away: the process waits for
                    # a Start that will not come, its joiner with it: end both
                    close_quietly(init.channel_fd)
                    with contextlib.suppress(ProcessLookupError):
                        libc.pidfd_send_signal(init.pidfd, signal.SIGKILL)
                    with trio.CancelScope(shield=True):
                        await _wait_exit(init.pid, init.pidfd)
                    raise
            try:
                await self.spawner.start(init)
                code = await _wait_exit(init.pid, init.pidfd)
            except trio.Cancelled:  # the client went away: end the process
                with contextlib.suppress(ProcessLookupError):
                    libc.pidfd_send_signal(init.pidfd, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await _wait_exit(init.pid, init.pidfd)
                raise
            except BaseException:
                # An exec failure: the joiner exits by itself once it has reaped the
                # process it forked in the container. Killed early, it would orphan that
                # zombie to us, and it would hold the container's pid namespace open.
                with trio.CancelScope(shield=True):
                    await _wait_exit(init.pid, init.pidfd)
                raise
        finally:
            self.known_children.discard(init.pid)
            close_quietly(init.pidfd, init.pty_master)
        self._emit(c, "exec-die", exit_code=code, command=spec.process.args[0])
        return code

    @contextlib.asynccontextmanager
    async def _placing_exec(self, c: Container) -> AsyncIterator[int]:
        """An exec on its way into running ``c``: a duplicate of its init's pidfd (the
        run may end meanwhile, and its fd number go to another container's init),
        counted in ``c.placing`` until the exec is Ready: a pause waits for those (a
        process placed into a frozen cgroup freezes before it reports), a kill does
        not (their setup is the container's to stall)."""
        async with c.freezer:
            if c.status != Status.RUNNING or c.pidfd < 0:
                raise Conflict(f"container {c.record.name} is not running")
            pidfd = os.dup(c.pidfd)
            c.placing += 1
            if c.placed.is_set():
                c.placed = trio.Event()
        try:
            yield pidfd
        finally:
            os.close(pidfd)
            c.placing -= 1
            if not c.placing:
                c.placed.set()

    # --- stop / kill / remove -------------------------------------------------------

    async def kill(self, c: Container, sig: int) -> None:
        """``myctr kill``: after a pause under way (a SIGKILL must find it PAUSED, to
        thaw it: on cgroup v1 a frozen task dies only once thawed)."""
        async with c.freezer:
            self.signal(c, sig)

    def signal(self, c: Container, sig: int) -> None:
        if c.pidfd < 0 or c.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"container {c.record.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            libc.pidfd_send_signal(c.pidfd, sig)
        if sig == signal.SIGKILL and c.status == Status.PAUSED and c.cgroup is not None:
            with contextlib.suppress(OSError):  # v1: a frozen task dies only once thawed
                c.cgroup.thaw()
        self._emit(c, "kill", signal=sig)

    async def stop(self, c: Container, timeout: float = 10.0, manual: bool = True) -> None:
        """Stop signal, ``timeout`` seconds' grace, then SIGKILL; disables the restart
        policy until the next start. Not ``manual`` (a shutdown's stop): for this run
        only, never stored, so a crash during the grace period leaves the policy as
        it was."""
        if manual:
            self._set(c, manually_stopped=True)
        else:
            c.record = c.record._replace(manually_stopped=True)
        if c.status == Status.RESTARTING and c.scope is not None:
            c.scope.cancel()
        elif c.status in (Status.RUNNING, Status.PAUSED):
            async with c.freezer:  # after a pause under way: then it is PAUSED
                if c.status in (Status.RUNNING, Status.PAUSED):
                    self.signal(c, c.options.stop_signal)
                if c.status == Status.PAUSED:  # a frozen init cannot act on the signal
                    await self._unpause(c)
            with trio.move_on_after(timeout):
                await c.exited.wait()
            if not c.exited.is_set():
                log.warning("stop timed out, killing", container_id=c.id, timeout=timeout)
                await self.kill_all(c)
        if c.scope is not None:
            await c.finished.wait()
        self._emit(c, "stop")

    async def kill_all(self, c: Container) -> None:
        """SIGKILL every process of the container at once: through its cgroup (so no
        forked child escapes), else through the init's pidfd (its pid namespace dies
        with it)."""
        async with c.freezer:
            group = c.cgroup
            if group is not None:
                await trio.to_thread.run_sync(group.kill)
            if c.pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    libc.pidfd_send_signal(c.pidfd, signal.SIGKILL)
        self._emit(c, "kill", signal=int(signal.SIGKILL))

    # --- cgroup verbs ---------------------------------------------------------------

    def _group(self, c: Container, verb: str) -> Any:
        if c.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"container {c.record.name} is not running")
        if c.cgroup is None:
            raise SpecError(f"{verb} needs a cgroup: {self.cgroups.why or 'none was made'}")
        return c.cgroup

    async def set_network(self, c: Container, changes: dict[str, Any]) -> None:
        """``network connect``/``disconnect`` of a container that is not running: its
        network from the next start (a container has one network here)."""
        if is_active(c.status) or c.scope is not None:
            raise Conflict(f"container {c.record.name} is {c.status.value}: stop it first "
                           "(a running container's network cannot change here)")
        params = {**c.record.params, **changes}
        options = self._effective(
            create_options(params, self.resolve_image, self.networks.exists), c.id)
        prepared = await trio.to_thread.run_sync(self._prepare_options, c.id, options,
                                                 bool(params.get("build")))
        if is_active(c.status) or c.scope is not None:  # started meanwhile
            raise Conflict(f"container {c.record.name} is {c.status.value}: stop it first")
        old = c.options.network.mode
        c.options, c.prepared = options, prepared  # together, with no await between
        self.store.update(c.id, params=params)
        c.record = self.store.get(c.id)
        if options.network.mode != old:
            self.networks.release(c.id)

    async def pause(self, c: Container) -> None:
        while True:
            await c.placed.wait()  # not under the lock: a stalled exec stalls no kill
            async with c.freezer:
                if c.placing:  # another exec came in meanwhile
                    continue
                await self._pause(c)
                return

    async def _pause(self, c: Container) -> None:
        if c.status != Status.RUNNING:
            raise Conflict(f"container {c.record.name} is {c.status.value}, not running")
        group = self._group(c, "pause")
        try:
            await trio.to_thread.run_sync(group.freeze)
        except (ContainerError, OSError):
            with contextlib.suppress(OSError):  # its run's teardown may have removed it
                await trio.to_thread.run_sync(group.thaw)  # never leave it half frozen
            if c.status != Status.RUNNING or c.cgroup is not group:
                raise Conflict(f"container {c.record.name} stopped while being paused") \
                    from None
            raise
        if c.status != Status.RUNNING or c.cgroup is not group:  # it exited or was stopped
            with contextlib.suppress(OSError):
                await trio.to_thread.run_sync(group.thaw)
            raise Conflict(f"container {c.record.name} stopped while being paused")
        self._set(c, status=Status.PAUSED.value)
        self._emit(c, "pause")

    async def unpause(self, c: Container) -> None:
        async with c.freezer:
            await self._unpause(c)

    async def _unpause(self, c: Container) -> None:
        if c.status != Status.PAUSED:
            raise Conflict(f"container {c.record.name} is {c.status.value}, not paused")
        group = self._group(c, "unpause")
        try:
            await trio.to_thread.run_sync(group.thaw)
        except OSError:
            if c.status == Status.PAUSED and c.cgroup is group:
                raise
            # it was killed and its run's teardown removed the cgroup meanwhile
        if c.status == Status.PAUSED:
            self._set(c, status=Status.RUNNING.value)
        self._emit(c, "unpause")

    async def update(self, c: Container, changes: dict[str, Any]) -> None:
        """Change the limits: of the live cgroup now, and of every later run."""
        from runtime.cgroups.limits import check_consistent, parse_resources

        if not c.options.cgroups:
            raise SpecError(f"container {c.record.name} runs with --cgroups=disabled: "
                            "it has no limits to update")
        async with c.update_lock:  # concurrent updates apply one after the other
            newer = parse_resources(changes, consistent=False)
            if not newer.any():
                raise SpecError("update: nothing to change (give --memory, --cpus, "
                                "--pids-limit, ...)")
            merged = c.options.resources.merged(newer)
            if "cpus" in changes:  # --cpus sets its own period
                merged = merged._replace(cpu_period=newer.cpu_period)
            check_consistent(merged)
            self.cgroups.check(merged, self.our_pids())
            if c.cgroup is not None:  # running, paused, or a run starting right now
                await trio.to_thread.run_sync(c.cgroup.apply, merged)
            stored = dict(c.record.params.get("resources") or {})
            if "cpus" in changes:
                stored.pop("cpu_quota", None)
                stored.pop("cpu_period", None)
            if "cpu_quota" in changes or "cpu_period" in changes:
                stored.pop("cpus", None)
            stored.update({k: v for k, v in changes.items() if v not in (None, "", [])})
            params = {**c.record.params, "resources": stored}
            self._set(c, params=params)
            c.options = c.options._replace(resources=merged)
            self._emit(c, "update", **merged.to_json())

    async def stats(self, c: Container, interval: float = 0.0) -> dict[str, Any]:
        """Usage from the container's cgroup; cpu_percent over ``interval`` seconds."""
        from runtime.cgroups import cpu_percent

        group = self._group(c, "stats")
        first = await trio.to_thread.run_sync(group.stats)
        t0 = time.monotonic()
        if interval > 0:
            await trio.sleep(interval)
        second = first
        if interval > 0 and c.cgroup is group:  # else that run ended meanwhile
            second = await trio.to_thread.run_sync(group.stats)
        seconds = time.monotonic() - t0 if second is not first else 0.0
        return {**second, "cpu_percent": cpu_percent(first, second, seconds),
                "memory_limit": second["memory_limit"] or _host_memory()}

    def top(self, c: Container) -> list[dict[str, Any]]:
        """The container's processes: those in its pid namespace, as the host sees them."""
        if c.status not in (Status.RUNNING, Status.PAUSED) or not c.record.pid:
            raise Conflict(f"container {c.record.name} is not running")
        from supervisor.top import processes_in_pid_namespace

        return processes_in_pid_namespace(c.record.pid)

    async def remove(self, c: Container, force: bool = False) -> None:
        starting = not is_active(c.status) and c.scope is not None and not c.stopped.is_set()
        if not can_remove(c.status, force) or (starting and not force):
            raise Conflict(f"container {c.record.name} is "
                           f"{'starting' if starting else c.status.value}: "
                           "stop it first or use rm -f")
        # a loop: a start (restart) that waited for the same run's end may come first
        while (is_active(c.status) or c.scope is not None) and c.id in self.containers:
            self._set(c, manually_stopped=True)
            if c.pidfd >= 0:
                await self.kill_all(c)
                async with c.freezer:
                    if c.status == Status.PAUSED and c.cgroup is not None:
                        # v1: frozen tasks wait
                        await trio.to_thread.run_sync(c.cgroup.thaw)
            if c.scope is not None and c.status == Status.RESTARTING:
                c.scope.cancel()
            await c.finished.wait()
            if c.scope is None and is_active(c.status):  # no task tree left to end it
                break
        if c.id in self.containers:  # else it was auto-removed meanwhile
            await self._remove_now(c)

    async def _remove_now(self, c: Container) -> None:
        # Not written: the record goes in the same breath (_destroy has no await before
        # it), and a crash in between leaves one that recovery removes either way.
        c.record = c.record._replace(status=transition(c.status, Status.REMOVING).value)
        await self._destroy(c, announce=True)

    async def wait(self, c: Container, removed: bool = False) -> int:
        """The exit status once the container stopped for good (no restart due), as
        docker's wait; ``removed``: and, for an --rm container, once it is removed."""
        if is_active(c.status) or c.scope is not None:
            await (c.finished if removed else c.stopped).wait()
        return c.record.exit_code if c.record.exit_code is not None else 0

    # --- strays ---------------------------------------------------------------------

    async def reap_strays(self) -> None:
        """As a subreaper we inherit orphans (say a process whose parent died before
        reaping it); reap every zombie child that no task of ours waits for."""
        with trio.open_signal_receiver(signal.SIGCHLD) as sigchld:
            async for _ in sigchld:
                await self.spawner.settled()  # no init of ours is unknown to us then
                for pid in _zombie_children():
                    if pid not in self.known_children:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, os.WNOHANG)

    # --- recovery -------------------------------------------------------------------

    async def recover(self) -> None:
        """After a crash (kill -9): load every container, make sure none of the old
        inits lives on, clean what auto-removed ones left, and apply restart policies."""
        await trio.to_thread.run_sync(self.cgroups.recover)
        records = list(self.store.all())
        await trio.to_thread.run_sync(self.networks.startup, {r.id for r in records})
        for record in records:
            try:
                options = create_options(record.params, self.resolve_image,
                                         self.networks.exists)
            except ContainerError as exc:
                try:  # limits the host can no longer give (a device, a CPU): run without
                    options = create_options({**record.params, "resources": {}},
                                             self.resolve_image, self.networks.exists)
                    log.warning("container limits dropped", container_id=record.id,
                                error=str(exc))
                except ContainerError:
                    log.error("unreadable container record", container_id=record.id,
                              error=str(exc))
                    continue
            c = Container(record, self._effective(options, record.id))
            self.containers[record.id] = c
            await self._recover_one(c)
        await self.sweep()

    async def _recover_one(self, c: Container) -> None:
        record = c.record
        was_active = is_active(c.status)
        if record.pid:
            await _kill_orphan(record.pid, record.pid_start)
        # An --rm container that ran goes: one that ran when the crash came, and one
        # whose exit was recorded but whose removal the crash cut short.
        ran = was_active or c.status == Status.EXITED
        if c.status in (Status.REMOVING, Status.DEAD) or (c.options.auto_remove and ran) \
                or record.params.get("build"):  # a build's step: the build is gone
            await self._destroy(c)  # finish what the crash cut short
            return
        if was_active:
            code = record.exit_code if record.exit_code is not None else 137
            self.store.update(c.id, status=Status.EXITED.value, pid=0, exit_code=code)
            c.record = self.store.get(c.id)
        if c.status == Status.EXITED and restart_on_boot(
                c.options.restart, record.manually_stopped, was_running=was_active):
            await self._recover_start(c)

    async def _recover_start(self, c: Container) -> None:
        try:
            await self.start(c)
        except ContainerError as exc:
            log.error("restart after recovery failed", container_id=c.id, error=str(exc))

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every active container (not a manual stop: policies survive)."""
        async with trio.open_nursery() as nursery:
            for c in list(self.containers.values()):
                if is_active(c.status):
                    nursery.start_soon(self._stop_for_shutdown, c, timeout)
        await trio.to_thread.run_sync(self.cgroups.shutdown)

    async def _stop_for_shutdown(self, c: Container, timeout: float) -> None:
        manually = c.record.manually_stopped
        try:
            await self.stop(c, timeout, manual=False)
        except ContainerError as exc:  # the others' stops go on (PDEATHSIG ends this one)
            log.error("stop at shutdown failed", container_id=c.id, error=str(exc))
        c.record = c.record._replace(manually_stopped=manually)


NET_ID_LENGTH = 16


def net_root(paths: StatePaths) -> str:
    return os.path.join(paths.run, "net")


def net_path(paths: StatePaths, container_id: str) -> str:
    """A container's plug's own files (slirp4netns's API socket and log): short enough
    for a socket path, kept until the container goes."""
    return os.path.join(net_root(paths), container_id[:NET_ID_LENGTH])


async def _wait_exit(pid: int, pidfd: int) -> int:
    """Wait for our child ``pid`` to exit (pidfd readable), reap it, return docker's
    exit code (128+N when killed by signal N)."""
    await trio.lowlevel.wait_readable(pidfd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by someone else: a bug, but not the end of us
        log.error("exit status lost: the process was reaped elsewhere", pid=pid)
        return 255
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _net_summary(attached: Any) -> dict[str, Any]:
    ports = [str(p) for p in attached.ports]
    addresses = [f"{i.address}/{i.prefix}" for i in attached.interfaces]
    return {"addresses": addresses, "ports": ports}


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _zombie_children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return [pid for pid in children if (proc_stat(pid) or [b""])[0] == b"Z"]


PUMP_READ = 65536  # a pipe's default capacity
PUMP_READ_BUSY = 1 << 20  # the capacity (and read size) of a pipe that was found full


async def _pump(fd: int, stream: str, writer: LogWriter, attach_fd: int | None) -> None:
    """Copy one of the container's outputs into its log (and to an attached client);
    reading only as fast as we write gives the container back-pressure.

    A read that finds the pipe full (the container out-writes us) grows the pipe to
    PUMP_READ_BUSY, once: each read then takes a bigger gulp and fewer wakeups carry
    the same bytes (2-byte lines: ~1.5x the throughput). Quiet outputs keep the small
    pipe, within the kernel's per-user budget of pipe pages."""
    attached = trio.lowlevel.FdStream(os.dup(attach_fd)) if attach_fd is not None else None
    read_size, grown = PUMP_READ, False
    async with trio.lowlevel.FdStream(fd) as source:
        while True:
            data = await source.receive_some(read_size)
            if not data:
                break
            if len(data) == read_size and not grown:
                read_size, grown = _grow_pipe(fd, PUMP_READ_BUSY, read_size), True
            writer.write(stream, data)
            if attached is not None:
                try:
                    await attached.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await attached.aclose()
                    attached = None  # the client went away; the log goes on
    if attached is not None:
        await attached.aclose()


def _remove_cgroup(container_id: str, group: Any) -> None:
    try:
        group.remove()
    except (ContainerError, OSError) as exc:
        log.error("cgroup not removed", container_id=container_id, error=str(exc))


def _grow_pipe(fd: int, size: int, current: int) -> int:
    """Set pipe ``fd``'s capacity to ``size``; the read size to use then."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:  # a pty, or over the user's pipe budget (pipe-user-pages-soft)
        return current


async def _kill_orphan(pid: int, start: int) -> None:
    """Kill an init left by a dead supervisor, if that pid is still that process."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if process_start_time(pid) != start:
            return  # the pid was reused by an unrelated process: not ours to touch
        with contextlib.suppress(ProcessLookupError):
            libc.pidfd_send_signal(pidfd, signal.SIGKILL)
        with trio.move_on_after(10):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)



def exec_spec(container_spec: dict[str, Any], options: CreateOptions, params: dict[str, Any],
              stdin: bool) -> tuple[ContainerSpec, InitConfig]:
    """The container's spec with the exec's process: its command, the container's
    environment plus ``env``, and ``user``/``workdir``/``tty`` when given."""
    from runtime.options import merge_env, parse_env

    spec = ContainerSpec.from_oci(container_spec)
    command = params.get("command")
    if not isinstance(command, list) or not command or not all(
            isinstance(a, str) for a in command):
        raise SpecError("invalid params: 'command' must name the command to run")
    extra = [e for e in (parse_env(v, {}) for v in params.get("env") or []) if e]
    process = spec.process._replace(
        args=tuple(command),
        env=merge_env(spec.process.env, extra),
        cwd=params.get("workdir") or spec.process.cwd,
        user_name=params.get("user") or spec.process.user_name,
        terminal=bool(params.get("tty")),
    )
    if params.get("tty") and "TERM=xterm" not in process.env:
        process = process._replace(env=merge_env(process.env, ["TERM=xterm"]))
    config = InitConfig(lower=(), upper="", work="", merged="", stdin_devnull=not stdin,
                        seccomp_bpf=preparing.compile_seccomp(
                            preparing.seccomp_profile(options.request)))
    return spec._replace(process=process), config
