"""What the supervisor costs and buys: myctr beside crun, runc and podman, in one run.

Run as ``python -m bench.supervisor_bench [--quick] [--json] [--only NAME,...]`` (root).

Sections (``--only`` takes their names; ``--quick`` shrinks every count)::

    start    /bin/true start to exit: a warm client of a running supervisor
             (container.run, then container.wait) beside whole-process crun/runc run,
             podman run --rm and the myctr CLI
    burst    N containers of ``sleep 30`` started at once: containers per second
    memory   N idle containers of ``sleep 1000``: growth of the supervisor's and its
             zygote's RSS, of kernel+anonymous memory and of MemAvailable; conmon's RSS
    logs     a container writing 200 MiB of 101-byte lines, then 20 MiB of 2-byte
             lines (from ``yes | head`` and from ``cat`` of a file): myctr's log,
             crun/runc writing to a file, podman's default log
    restart  --restart always of /bin/false: the gap from a death to the next start
    ps       a cold ``myctr ps`` against a running supervisor, ``podman ps``, ``crun list``

The supervisor is started with ``myctr --root WORK/myctr supervise --detach`` and
stopped with ``supervisor.shutdown``. As in :mod:`bench.start_latency` (whose pieces this
reuses), a hybrid-cgroup host runs everything in a private mount namespace with a tmpfs
over /sys/fs/cgroup/unified; a tool that fails there is skipped with a note. Cleanup runs
whatever happened: podman's containers in the bench's store, crun/runc state, the
supervisor, the ``myctr-sbench-PID*`` cgroups, the temp dir.

Exceptions are :mod:`bench.start_latency`'s: ``BenchError``, and ``ToolFailed`` (a tool
exited non-zero, with its stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.start_latency import (
    PODMAN_HOST_DIRS,
    START_PAUSE_S,
    BenchError,
    Namespaces,
    Summary,
    Tool,
    ToolFailed,
    format_ratio,
    is_hybrid_cgroup,
    median,
    mount_points,
    oci_config_for_true,
    open_namespaces,
    podman_tool,
    ratio,
    remove_cgroups,
    remove_created_dirs,
    remove_leftover_containers,
    remove_work,
    report_failure,
    round_robin_order,
    run_tool,
    settle,
    write_bundle,
)
from runtime import libc
from runtime.errors import ContainerError, NotFound
from runtime.paths import StatePaths
from supervisor.client import Client, try_connect
from supervisor.logfile import parse_time

MIB = 1 << 20
LINE_100 = "1234567890" * 10  # `yes LINE_100` writes 101-byte lines
TIMEOUT_S = 600.0  # the most any one tool invocation may take
SETTLE_S = 1.0  # quiet time before each memory reading
SETTLED = "start to exit (median)"
IN_A_ROW = "in a row (median)"
EVENT_TIMEOUT_S = 30.0  # the longest wait for the next event of a restarting container
# Unreclaimable memory only: reclaimable slab (dentries, inodes) swings like page cache.
KERNEL_ANON = ("AnonPages", "KernelStack", "PageTables", "SUnreclaim")
RSS_TARGET_KIB = 0.1 * 1024


class Sizes(NamedTuple):
    runs: int = 20  # timed runs per tool (start, ps)
    warmup: int = 3
    row_rounds: int = 3  # start in a row: rounds of `runs` per tool, the tools in turn
    burst: int = 50
    burst_rounds: int = 5  # bursts per tool, in turn (podman: one)
    idle: int = 20
    big_log: int = 200 * MIB
    small_log: int = 20 * MIB
    log_runs: int = 3
    restarts: int = 30
    restart_window_s: float = 10.0  # how long podman's restart loop is watched


FULL = Sizes()
QUICK = Sizes(runs=5, warmup=1, row_rounds=1, burst=10, burst_rounds=1, idle=5,
              big_log=20 * MIB, small_log=2 * MIB, log_runs=1, restarts=10,
              restart_window_s=3.0)


# The report: pure data and pure functions over it.


class Row(NamedTuple):
    tool: str
    metric: str
    value: float | None
    unit: str
    detail: str = ""
    samples: tuple[float, ...] = ()  # the values behind a median (JSON only)


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    how: str
    rows: tuple[Row, ...]
    comparisons: tuple[tuple[str, float | None], ...] = ()
    targets: tuple[tuple[str, bool | None], ...] = ()


def value_of(rows: Sequence[Row], tool: str, metric: str | None = None) -> float | None:
    """The value of ``tool``'s row (its first, or the one named ``metric``)."""
    for row in rows:
        if row.tool == tool and metric in (None, row.metric):
            return row.value
    return None


def comparison(rows: Sequence[Row], numerator: str, denominator: str, metric: str | None = None,
               label: str = "") -> tuple[str, float | None]:
    """``("[label ]a/b", a over b)`` for two tools' values of one metric."""
    return (f"{label} {numerator}/{denominator}".lstrip(),
            ratio(value_of(rows, numerator, metric), value_of(rows, denominator, metric)))


def meets(value: float | None, bound: float | None, factor: float = 1.0,
          higher: bool = True) -> bool | None:
    """Whether ``value`` is at least (``higher``) or at most ``factor`` times ``bound``;
    None when either is unknown."""
    if value is None or bound is None:
        return None
    return value >= factor * bound if higher else value <= factor * bound


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def format_section(number: int, section: Section) -> str:
    lines = [f"{number}. {section.title}", f"   how: {section.how}"]
    lines.append(f"   {'tool':<12}{'metric':<34}{'value':>20}  detail")
    for row in section.rows:
        lines.append(f"   {row.tool:<12}{row.metric:<34}"
                     f"{format_value(row.value, row.unit):>20}  {row.detail}".rstrip())
    if section.comparisons:
        lines.append("   " + "  ".join(f"{name} {format_ratio(value)}"
                                       for name, value in section.comparisons))
    for text, met in section.targets:
        verdict = "n/a" if met is None else "met" if met else "MISSED"
        lines.append(f"   target: {text}: {verdict}")
    return "\n".join(lines)


def print_report(sections: Sequence[Section], names: Sequence[str], notes: Sequence[str],
                 head: dict[str, Any] | None = None) -> None:
    """The sections as tables, numbered by their place in ``names``, then the notes; with
    ``head`` (--json), one JSON object instead: head's keys, the sections, the notes."""
    if head is not None:
        print(json.dumps({**head, "sections": {s.name: section_json(s) for s in sections},
                          "notes": list(notes)}, indent=2))
        return
    print("\n\n".join(format_section(list(names).index(s.name) + 1, s) for s in sections))
    for note in notes:
        print(f"note: {note}")


def section_json(section: Section) -> dict[str, Any]:
    return {
        "title": section.title, "how": section.how,
        "rows": [row._asdict() for row in section.rows],
        "comparisons": dict(section.comparisons),
        "targets": [{"target": text, "met": met} for text, met in section.targets],
    }


def summary_detail(summary: Summary) -> str:
    return f"p10 {summary.p10_ms:.1f}  p90 {summary.p90_ms:.1f}  n={len(summary.samples_ms)}"


# /proc and tool output: pure parsers.


def kib_fields(text: str) -> dict[str, int]:
    """The ``Name:  123 kB`` lines of /proc/meminfo, /proc/PID/status or smaps_rollup."""
    fields = {}
    for line in text.splitlines():
        name, colon, rest = line.partition(":")
        parts = rest.split()
        if colon and len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0])
    return fields


def kernel_anon_kib(meminfo: dict[str, int]) -> int:
    """Anonymous pages plus the kernel's own unreclaimable memory: slab, stacks, page
    tables."""
    return sum(meminfo[field] for field in KERNEL_ANON)


def oci_config(config: dict[str, Any], rootfs: str, args: Sequence[str]) -> dict[str, Any]:
    """start_latency's ``/bin/true`` config running ``args`` instead."""
    base = oci_config_for_true(config, rootfs)
    return {**base, "process": {**base["process"], "args": list(args)}}


def split_podman_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """start_latency's ``podman GLOBAL... run --rm RUN... --name ID ...`` as its global
    flags and its run flags without ``--rm``: one source for the isolation flags."""
    run, name = argv.index("run"), argv.index("--name")
    return list(argv[:run]), [arg for arg in argv[run + 1:name] if arg != "--rm"]


def podman_events(text: str, name: str) -> list[tuple[str, float]]:
    """``(status, unix time)`` of container ``name``'s events, from ``podman events
    --format json`` lines, oldest first."""
    events = []
    for line in text.splitlines():
        if line.strip():
            doc = json.loads(line)
            if doc.get("Name") == name:
                events.append((doc["Status"], parse_time(doc["Time"]) / 1e9))
    return sorted(events, key=lambda event: event[1])


def restart_gaps(events: Sequence[tuple[str, float]], died: str, started: str) -> list[float]:
    """Seconds from each death to the start that follows it, from time-ordered events."""
    gaps, death = [], None
    for kind, at in events:
        if kind == died:
            death = at
        elif kind == started and death is not None:
            gaps.append(at - death)
            death = None
    return gaps


def start_intervals(events: Sequence[tuple[str, float]], started: str) -> list[float]:
    """Seconds between consecutive starts: one restart cycle each."""
    starts = [at for kind, at in events if kind == started]
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def summary_of(tool: str, seconds: Sequence[float]) -> Summary:
    return Summary(tool, tuple(s * 1000 for s in seconds))


# Processes: spawn, reap, time.


def spawn(argv: Sequence[str], err: Path,
          stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """A tool with its stderr in a file: a detached container inherits the tool's stderr,
    so a pipe would never reach EOF."""
    with err.open("wb") as err_file:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=err_file)


def reap(proc: subprocess.Popen[bytes], what: str, err: Path) -> None:
    try:
        code = proc.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"{what}: still running after {TIMEOUT_S:.0f} s, killed "
                         f"(pid {proc.pid}): {' '.join(map(str, proc.args))}") from None
    if code != 0:
        raise ToolFailed(what, [str(a) for a in proc.args], code, err.read_text(errors="replace"))


def run_all(argvs: Sequence[Sequence[str]], what: str, errors: Path) -> float:
    """Seconds from the first spawn until every process has exited. All are reaped before
    the first failure is raised."""
    errs = [errors / f"{what.replace(' ', '-')}-{i}.err" for i in range(len(argvs))]
    start = time.perf_counter()
    procs = [spawn(argv, err) for argv, err in zip(argvs, errs, strict=True)]
    failures = []
    for proc, err in zip(procs, errs, strict=True):
        try:
            reap(proc, what, err)
        except BenchError as exc:
            failures.append(exc)
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed


def check_output(argv: Sequence[str], what: str) -> str:
    proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise ToolFailed(what, list(argv), proc.returncode, proc.stderr)
    return proc.stdout


def wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# The supervisor under test.


@dataclasses.dataclass
class Supervisor:
    root: Path
    pid: int
    zygote_pids: tuple[int, ...]  # the zygote and the packer
    client: Client

    def connect(self) -> Client:
        client = try_connect(StatePaths.under(self.root))
        if client is None:
            raise BenchError(f"the supervisor under {self.root} stopped answering")
        client.sock.settimeout(TIMEOUT_S)
        return client

    def rss_kib(self) -> int:
        """VmRSS of the supervisor plus its zygote."""
        return sum(kib_fields(Path(f"/proc/{pid}/status").read_text())["VmRSS"]
                   for pid in (self.pid, *self.zygote_pids))


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def find_zygote(pid: int) -> tuple[int, ...]:
    """The supervisor's helpers: its children that run its own command line (forked,
    never exec'd: the zygote and the packer), looked for before any container exists."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    same = [c for c in children(pid) if Path(f"/proc/{c}/cmdline").read_bytes() == cmdline]
    if not 1 <= len(same) <= 2:
        raise BenchError(f"expected the zygote (and the packer) among the supervisor's "
                         f"children, found {same}")
    return tuple(same)


@contextlib.contextmanager
def open_supervisor(myctr: str, root: Path, notes: list[str]) -> Iterator[Supervisor]:
    check_output([myctr, "--root", str(root), "supervise", "--detach"], "myctr supervise")
    client = try_connect(StatePaths.under(root))
    if client is None:
        raise BenchError(f"no supervisor answers; see {root}/log/supervisor.log")
    with contextlib.closing(client):
        client.sock.settimeout(TIMEOUT_S)
        pid = client.call("ping")["pid"]
        pidfd = os.pidfd_open(pid)
        try:
            yield Supervisor(root, pid, find_zygote(pid), client)
        finally:
            stop_supervisor(client, pidfd, notes)
            os.close(pidfd)


def stop_supervisor(client: Client, pidfd: int, notes: list[str]) -> None:
    """supervisor.shutdown, then wait for the process; SIGKILL (by pidfd) after 30 s."""
    try:
        client.call("supervisor.shutdown")
    except (ContainerError, OSError) as exc:
        notes.append(f"supervisor.shutdown failed ({exc}); waiting for the supervisor anyway")
    if wait_readable(pidfd, 30):
        return
    notes.append("the supervisor was still running 30 s after supervisor.shutdown: SIGKILL")
    libc.pidfd_send_signal(pidfd, signal.SIGKILL)
    if not wait_readable(pidfd, 10):
        raise BenchError("the supervisor survived SIGKILL for 10 s")


# The tools under test.


@dataclasses.dataclass(frozen=True)
class Oci:
    name: str
    binary: str
    state: Path

    def argv(self, *args: str | Path) -> list[str]:
        return [self.binary, "--root", str(self.state), *map(str, args)]


@dataclasses.dataclass(frozen=True)
class Podman:
    global_flags: tuple[str, ...]
    run_flags: tuple[str, ...]
    rootfs: str

    def argv(self, *args: str) -> list[str]:
        return [*self.global_flags, *args]

    def run_argv(self, name: str, command: Sequence[str], *flags: str) -> list[str]:
        return [*self.global_flags, "run", *flags, *self.run_flags, "--name", name,
                "--rootfs", self.rootfs, *command]


@dataclasses.dataclass
class Bench:
    work: Path
    rootfs: Path
    myctr: str
    prefix: str
    sizes: Sizes
    notes: list[str]
    namespaces: Namespaces
    sup: Supervisor
    spec_tool: str | None
    oci: list[Oci] = dataclasses.field(default_factory=list)
    same: list[Oci] = dataclasses.field(default_factory=list)  # those running same_bundle
    podman: Podman | None = None
    serial: Iterator[int] = dataclasses.field(default_factory=itertools.count)
    bundles: dict[tuple[str, ...], Path] = dataclasses.field(default_factory=dict)
    same_bundles: dict[tuple[str, ...], Path] = dataclasses.field(default_factory=dict)

    def name(self, tag: str) -> str:
        """A container name unique to this run; its prefix marks cgroups as ours."""
        return f"{self.prefix}-{tag}-{next(self.serial)}"

    @property
    def errors(self) -> Path:
        return self.work / "stderr"

    def bundle(self, args: Sequence[str], variant: str = "",
               edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Path:
        """An OCI bundle (shared by crun and runc) running ``args`` on the rootfs;
        ``edit`` changes its config (one bundle per ``variant`` and ``args``)."""
        key = (variant, *args)
        if key not in self.bundles:
            if self.spec_tool is None:
                raise BenchError("no crun or runc to write a bundle with")
            bundle = self.work / f"bundle-{variant}{len(self.bundles)}"
            write_bundle(self.spec_tool, bundle, self.rootfs)
            config_path = bundle / "config.json"
            config = oci_config(json.loads(config_path.read_text()), str(self.rootfs), args)
            config_path.write_text(json.dumps(edit(config) if edit else config, indent=2))
            self.bundles[key] = bundle
        return self.bundles[key]

    def myctr_params(self, command: Sequence[str], **more: Any) -> dict[str, Any]:
        return {"rootfs": str(self.rootfs), "command": list(command), **more}

    def same_bundle(self, args: Sequence[str]) -> Path:
        """An OCI bundle with the very config myctr's supervisor makes for a container
        running ``args`` (docker's seccomp profile, its 14 capabilities, masked and
        read-only paths, the cgroup namespace, /etc/hostname, hosts and resolv.conf):
        the same work asked of crun and runc as of myctr, but for the overlay, which
        they do not make (their root is a copy of the rootfs, read-only)."""
        key = tuple(args)
        if key not in self.same_bundles:
            bundle = self.work / f"same-bundle{len(self.same_bundles)}"
            rootfs = self.work / "same-rootfs"
            if not rootfs.exists():  # their mount targets must not land in myctr's rootfs
                shutil.copytree(self.rootfs, rootfs, symlinks=True)
            bundle.mkdir()
            config = same_config(myctr_spec(self.sup.client, self.myctr_params(args)),
                                 rootfs, args, bundle)
            (bundle / "config.json").write_text(json.dumps(config, indent=2))
            self.same_bundles[key] = bundle
        return self.same_bundles[key]


def myctr_spec(client: Client, params: dict[str, Any]) -> dict[str, Any]:
    """The OCI config the supervisor makes for a container of ``params`` (created,
    inspected, removed), with the contents of the files it mounts: {path: text}."""
    cid = client.call("container.create", params)["id"]
    try:
        spec: dict[str, Any] = client.call("container.inspect", {"id": cid})["spec"]
        files = {m["source"]: Path(m["source"]).read_text() for m in spec.get("mounts", [])
                 if "bind" in m.get("options", ()) and Path(m["source"]).is_file()}
    finally:
        client.call("container.remove", {"id": cid, "force": True})
    return {"spec": spec, "files": files}


def same_config(made: dict[str, Any], rootfs: Path, args: Sequence[str],
                bundle: Path) -> dict[str, Any]:
    """myctr's config (:func:`myctr_spec`) for crun and runc: the root is ``rootfs``
    used as is (read-only), the bound /etc files are copies in ``bundle``, the
    process runs ``args`` without a terminal."""
    spec = json.loads(json.dumps(made["spec"]))
    for mount in spec.get("mounts", []):
        text = made["files"].get(mount.get("source"))
        if text is not None:
            copy = bundle / Path(mount["source"]).name
            copy.write_text(text)
            mount["source"] = str(copy)
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"] = {**spec["process"], "args": list(args), "terminal": False}
    spec.pop("annotations", None)
    return spec


def progress(message: str) -> None:
    print(f"[supervisor_bench] {message}", file=sys.stderr, flush=True)


def find_tools(bench: Bench) -> None:
    """crun, runc and podman that run /bin/true here; the others are noted and skipped."""
    for name in ("crun", "runc"):
        binary = shutil.which(name)
        if binary is None:
            bench.notes.append(f"{name}: not installed, skipped (make bench-deps installs it)")
            continue
        oci = Oci(name, binary, bench.work / f"{name}-state")
        if works(bench, Tool(name, lambda cid, o=oci: o.argv(
                "run", "-b", bench.bundle(["/bin/true"]), cid))):
            bench.oci.append(oci)
            same = dataclasses.replace(oci, name=f"{name}-same")
            if works(bench, Tool(same.name, lambda cid, o=oci: o.argv(
                    "run", "-b", bench.same_bundle(["/bin/true"]), cid))):
                bench.same.append(same)
    binary = shutil.which("podman")
    if binary is None:
        bench.notes.append("podman: not installed, skipped (make bench-deps installs it)")
        return
    argv = podman_tool(binary, bench.work / "podman", bench.rootfs, f"/{bench.prefix}").argv("x")
    global_flags, run_flags = split_podman_argv(argv)
    podman = Podman(tuple(global_flags), tuple(run_flags), str(bench.rootfs))
    if works(bench, Tool("podman", lambda cid: podman.run_argv(cid, ["/bin/true"], "--rm"))):
        bench.podman = podman


def works(bench: Bench, tool: Tool) -> bool:
    try:
        run_tool(tool, bench.namespaces, bench.name("check"))
    except ToolFailed as exc:
        last = (exc.stderr.strip().splitlines() or ["no stderr"])[-1]
        bench.notes.append(f"{tool.name}: /bin/true failed ({last}); skipped")
        return False
    return True


# myctr through the control socket.


def run_myctr(client: Client, params: Sequence[dict[str, Any]]) -> tuple[float, list[str]]:
    """Send every container.run at once on one connection; seconds until all answered,
    and the ids. Raises after all answered if any failed."""
    start = time.perf_counter()
    requests = [client.send("container.run", p) for p in params]
    ids, failures = [], []
    for request in requests:
        try:
            ids.append(client.result(request)["id"])
        except ContainerError as exc:
            failures.append(exc)
    elapsed = time.perf_counter() - start
    if failures:
        raise BenchError(f"myctr: {len(failures)} of {len(params)} container.run failed: "
                         f"{failures[0]}")
    return elapsed, ids


def remove_myctr(client: Client, refs: Sequence[str]) -> None:
    """container.remove force for each (pipelined); one already gone is fine."""
    for request in [client.send("container.remove", {"id": r, "force": True}) for r in refs]:
        with contextlib.suppress(NotFound):
            client.result(request)


def run_and_wait(client: Client, params: dict[str, Any]) -> tuple[float, str, int | None]:
    """Seconds from sending container.run to the container.wait result, the id, and the
    exit code (None when an auto-removed container was gone before the wait arrived)."""
    start = time.perf_counter()
    container = client.call("container.run", params)["id"]
    try:
        code = client.call("container.wait", {"id": container})["exit_code"]
    except NotFound:
        code = None
    return time.perf_counter() - start, container, code


# 1. start to exit.


def measure_start(bench: Bench) -> Section:
    root, rootfs, sizes = str(bench.sup.root), str(bench.rootfs), bench.sizes
    lost_waits = []

    def through_supervisor(_cid: str) -> float:
        elapsed, container, code = run_and_wait(
            bench.sup.client, bench.myctr_params(["/bin/true"], auto_remove=True))
        if code is None:
            lost_waits.append(container)
        elif code != 0:
            raise BenchError(f"myctr: /bin/true exited {code}")
        return elapsed

    def whole(tool: Tool) -> Callable[[str], float]:
        return lambda cid: run_tool(tool, bench.namespaces, cid)

    runners = {"myctr-sup": through_supervisor, "myctr-cli": whole(Tool("myctr-cli", lambda _id: [
        bench.myctr, "--root", root, "run", "--rm", "--rootfs", rootfs, "/bin/true"]))}
    for oci in bench.oci:
        runners[oci.name] = whole(Tool(oci.name, lambda cid, o=oci: o.argv(
            "run", "-b", bench.bundle(["/bin/true"]), cid)))
    for oci in bench.same:
        runners[oci.name] = whole(Tool(oci.name, lambda cid, o=oci: o.argv(
            "run", "-b", bench.same_bundle(["/bin/true"]), cid)))
    if bench.podman:
        podman = bench.podman
        runners["podman"] = whole(Tool("podman", lambda cid: podman.run_argv(
            cid, ["/bin/true"], "--rm")))
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for iteration in range(sizes.warmup + sizes.runs):
        for name in round_robin_order(list(runners), iteration):
            settle()
            elapsed = runners[name](bench.name(f"start-{name}"))
            if iteration >= sizes.warmup:
                samples[name].append(elapsed)
    # Back to back: each tool's runs in a row, no pause; a tool that moves a task into
    # a cgroup finds the kernel's lock warm from its own previous run. Several rounds,
    # the tools in turn in each, so that a slow spell of the machine hits all of them.
    in_a_row: dict[str, list[float]] = {name: [] for name in runners}
    for _round in range(sizes.row_rounds):
        for name, runner in runners.items():
            settle()
            for iteration in range(sizes.warmup + sizes.runs):
                elapsed = runner(bench.name(f"row-{name}"))
                if iteration >= sizes.warmup:
                    in_a_row[name].append(elapsed)
    rows = tuple(Row(s.tool, metric, s.median_ms, "ms", summary_detail(s), s.samples_ms)
                 for metric, runs in ((SETTLED, samples), (IN_A_ROW, in_a_row))
                 for s in (summary_of(name, values) for name, values in runs.items()))
    if lost_waits:
        bench.notes.append(f"start: {len(lost_waits)} container.wait got 'not found' (the "
                           "auto-removed container was gone first); timed to that answer")
    pairs = [("myctr-sup", other) for other in ("crun", "runc", "podman", "myctr-cli",
                                                 *(o.name for o in bench.same))]
    pairs += [("myctr-cli", "crun"), ("myctr-cli", "podman")]
    compared = tuple(comparison(rows, a, b, metric, label)
                     for metric, label in ((SETTLED, ""), (IN_A_ROW, "in a row:"))
                     for a, b in pairs if value_of(rows, b, metric) is not None)
    return Section(
        "start", f"start to exit of /bin/true, {sizes.runs} runs per tool "
                 f"({sizes.warmup} warm-up): round-robin with a pause, then in a row",
        "myctr-sup: a connected client sends container.run {rootfs, [/bin/true], "
        "auto_remove}, then container.wait; timed from sending run to the wait result. "
        "Others: whole process, spawn to exit (myctr-cli: `myctr run --rm`, Python start "
        f"included). Round-robin: each run follows a {START_PAUSE_S * 1000:.0f} ms pause, "
        "so that no tool inherits another's warm cgroup lock (a run within a grace period "
        "of another tool's cgroup move skips the wait for one). In a row: each tool's "
        f"runs back to back, {sizes.row_rounds} rounds with the tools in turn (n counts "
        "them all). crun-same/runc-same: with the config myctr makes (docker's "
        "seccomp profile, 14 capabilities, cgroup namespace, /etc files) on a read-only "
        "copy of the rootfs (no overlay)",
        rows, compared,
        (("myctr-sup <= crun", meets(value_of(rows, "myctr-sup", SETTLED),
                                     value_of(rows, "crun", SETTLED), higher=False)),
         ("myctr-sup <= crun, in a row", meets(value_of(rows, "myctr-sup", IN_A_ROW),
                                               value_of(rows, "crun", IN_A_ROW),
                                               higher=False)),
         ("myctr-cli < 0.25x podman", meets(value_of(rows, "myctr-cli", SETTLED),
                                            value_of(rows, "podman", SETTLED), 0.25,
                                            higher=False))))


# 2. a burst of starts.


def measure_burst(bench: Bench) -> Section:
    count, rounds = bench.sizes.burst, bench.sizes.burst_rounds
    command = ["/bin/sleep", "30"]
    times: dict[str, list[float]] = {}
    for _ in range(rounds):  # in turn, so that a slow spell of the machine hits all
        names = [bench.name("burst") for _ in range(count)]
        try:
            elapsed, _ids = run_myctr(bench.sup.client,
                                      [bench.myctr_params(command, name=n) for n in names])
        finally:
            remove_myctr(bench.sup.client, names)
        times.setdefault("myctr", []).append(elapsed)
        for oci in bench.oci:
            times.setdefault(oci.name, []).append(
                burst_oci(bench, oci, count, bench.bundle(command)))
        for oci in bench.same:
            times.setdefault(oci.name, []).append(
                burst_oci(bench, oci, count, bench.same_bundle(command)))
    if bench.podman:
        times["podman"] = [burst_podman(bench, bench.podman, count, command)]
    rows = [burst_row(tool, count, elapsed) for tool, elapsed in times.items()]
    return Section(
        "burst", f"{count} containers (sleep 30) started at once",
        f"myctr: {count} container.run requests sent back to back on one connection, timed "
        f"until all {count} answered (each answers once its command runs). crun/runc: "
        f"{count} concurrent `run -d -b BUNDLE`; podman: {count} concurrent `run -d`; timed "
        "from the first spawn until all exited. crun-same/runc-same: the bundle holds the "
        f"config myctr makes (see start). {rounds} bursts per tool, taken in turn: the "
        "median (podman: one). Figures in the brief: crun ~118/s, podman ~9/s",
        tuple(rows), tuple(comparison(rows, "myctr", r.tool) for r in rows[1:]))


def burst_row(tool: str, count: int, elapsed: Sequence[float]) -> Row:
    """The median burst of ``elapsed`` (seconds for all ``count``), as containers/s."""
    rates = sorted(count / e for e in elapsed)
    detail = f"{statistics.median(elapsed) * 1000:.0f} ms for all"
    if len(rates) > 1:
        detail += f"; {len(rates)} bursts: {rates[0]:.0f}-{rates[-1]:.0f}/s"
    return Row(tool, f"{count} at once", statistics.median(rates), "containers/s", detail)


def burst_oci(bench: Bench, oci: Oci, count: int, bundle: Path) -> float:
    names = [bench.name(f"burst-{oci.name}") for _ in range(count)]
    try:
        return run_all([oci.argv("run", "-d", "-b", bundle, n) for n in names],
                       f"{oci.name} run -d", bench.errors)
    finally:
        delete_oci(bench, oci, names)


def delete_oci(bench: Bench, oci: Oci, names: Sequence[str]) -> None:
    """``delete -f`` those of ``names`` that ``list`` shows, concurrently."""
    listed = set(check_output(oci.argv("list", "-q"), f"{oci.name} list").split())
    mine = [n for n in names if n in listed]
    if mine:
        run_all([oci.argv("delete", "-f", n) for n in mine], f"{oci.name} delete", bench.errors)


def burst_podman(bench: Bench, podman: Podman, count: int, command: Sequence[str]) -> float:
    names = [bench.name("burst-podman") for _ in range(count)]
    try:
        return run_all([podman.run_argv(n, command, "-d") for n in names], "podman run -d",
                       bench.errors)
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", *names), "podman rm")


# 3. memory per idle container.


def meminfo() -> dict[str, int]:
    return kib_fields(Path("/proc/meminfo").read_text())


def settled_meminfo() -> dict[str, int]:
    time.sleep(SETTLE_S)
    return meminfo()


def host_rows(tool: str, before: dict[str, int], after: dict[str, int], count: int) -> list[Row]:
    anon = (kernel_anon_kib(after) - kernel_anon_kib(before)) / count
    available = (before["MemAvailable"] - after["MemAvailable"]) / count
    return [Row(tool, "kernel+anon growth", anon, "KiB/container", "/proc/meminfo " +
                "+".join(KERNEL_ANON)),
            Row(tool, "MemAvailable drop", available, "KiB/container", "noisy: page cache")]


def measure_memory(bench: Bench) -> Section:
    count, command = bench.sizes.idle, ["/bin/sleep", "1000"]
    rows = memory_myctr(bench, count, command)
    for oci in bench.oci:
        names = [bench.name(f"idle-{oci.name}") for _ in range(count)]
        before = settled_meminfo()
        try:
            for name in names:  # one by one: a burst's transient memory is not the point
                run_all([oci.argv("run", "-d", "-b", bench.bundle(command), name)],
                        f"{oci.name} run -d", bench.errors)
            rows += host_rows(oci.name, before, settled_meminfo(), count)
        finally:
            delete_oci(bench, oci, names)
    if bench.podman:
        rows += memory_podman(bench, bench.podman, count, command)
    rss = value_of(rows, "myctr", "supervisor+zygote RSS growth")
    return Section(
        "memory", f"memory per idle container, {count} containers of sleep 1000",
        f"readings {SETTLE_S:.0f} s after the last start, minus readings before the first, "
        "over the count. kernel+anon covers every process (the containers' own, conmon) and "
        "the kernel's unreclaimable objects (namespaces, mounts, cgroups), not reclaimable "
        "slab (dentries, inodes), which swings like page cache; other work on the host "
        "shows up in it too. crun/runc keep no process per container",
        tuple(rows), (comparison(rows, "myctr", "crun", "kernel+anon growth", "kernel+anon:"),
                      comparison(rows, "myctr", "podman", "kernel+anon growth", "kernel+anon:")),
        ((f"myctr supervisor RSS < {RSS_TARGET_KIB:.1f} KiB (0.1 MiB) per container",
          meets(rss, RSS_TARGET_KIB, higher=False)),))


def memory_myctr(bench: Bench, count: int, command: Sequence[str]) -> list[Row]:
    names = [bench.name("idle") for _ in range(count)]
    before, rss_before = settled_meminfo(), bench.sup.rss_kib()
    try:
        for name in names:
            run_myctr(bench.sup.client, [bench.myctr_params(command, name=name)])
        after, rss_after = settled_meminfo(), bench.sup.rss_kib()
    finally:
        remove_myctr(bench.sup.client, names)
    return [Row("myctr", "supervisor+zygote RSS growth", (rss_after - rss_before) / count,
                "KiB/container", f"VmRSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB"),
            *host_rows("myctr", before, after, count)]


def memory_podman(bench: Bench, podman: Podman, count: int, command: Sequence[str]) -> list[Row]:
    names = [bench.name("idle-podman") for _ in range(count)]
    before = settled_meminfo()
    try:
        for name in names:
            check_output(podman.run_argv(name, command, "-d"), "podman run -d")
        after = settled_meminfo()
        pids = check_output(podman.argv("inspect", "--format", "{{.State.ConmonPid}}", *names),
                            "podman inspect").split()
        rss = [kib_fields(Path(f"/proc/{p}/status").read_text())["VmRSS"] for p in pids]
        pss = [kib_fields(Path(f"/proc/{p}/smaps_rollup").read_text())["Pss"] for p in pids]
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", *names), "podman rm")
    return [Row("podman", "conmon RSS", sum(rss) / len(rss), "KiB/container",
                f"PSS {sum(pss) / len(pss):.0f} KiB (shared pages split)"),
            *host_rows("podman", before, after, count)]


# 4. log throughput.


class LogRun(NamedTuple):
    seconds: float
    log_bytes: int | None  # None: the output went to a plain file
    kind: str  # where the output went


SMALL_LINES_FILE = "small-lines"  # in the rootfs: the cat case's input


def measure_logs(bench: Bench) -> Section:
    sizes = bench.sizes
    small_mib = sizes.small_log // MIB
    cases = [("big", f"{sizes.big_log // MIB} MiB, 101-byte lines", sizes.big_log,
              ["/bin/sh", "-c", f"yes {LINE_100} | head -c {sizes.big_log}"]),
             ("small", f"{small_mib} MiB, 2-byte lines", sizes.small_log,
              ["/bin/sh", "-c", f"yes | head -c {sizes.small_log}"]),
             ("small-cat", f"{small_mib} MiB, 2-byte lines, cat", sizes.small_log,
              ["/bin/cat", f"/{SMALL_LINES_FILE}"])]
    writers: dict[str, Callable[[Sequence[str], int], LogRun]] = {
        "myctr": functools.partial(log_myctr, bench)}
    for oci in bench.oci:
        writers[f"{oci.name}-file"] = functools.partial(log_oci, bench, oci)
    if bench.podman:
        writers["podman"] = functools.partial(log_podman, bench, bench.podman)
    rows: list[Row] = []
    log_files: list[Row] = []  # the small-lines case's log sizes
    lines_file = bench.rootfs / SMALL_LINES_FILE
    lines_file.write_bytes(b"y\n" * (sizes.small_log // 2))
    try:
        for key, label, size, command in cases:
            progress(f"logs: {label}, {sizes.log_runs} run(s) per tool")
            runs: dict[str, list[LogRun]] = {tool: [] for tool in writers}
            for iteration in range(sizes.log_runs):
                for tool in round_robin_order(list(writers), iteration):
                    runs[tool].append(writers[tool](command, size))
            rows += [log_row(tool, label, size, done) for tool, done in runs.items()]
            if key == "small":
                log_files = [log_file_row(tool, label, size, done[-1])
                             for tool, done in runs.items() if done[-1].log_bytes is not None]
    finally:
        lines_file.unlink()
    rows += log_files
    big, small, small_cat = (label for _key, label, _size, _command in cases)
    ratios = [comparison(rows, "myctr", other, label, f"{key}:")
              for key, label, _size, _command in cases
              for other in ("crun-file", "runc-file", "podman")
              if value_of(rows, other, label) is not None]
    ratios.append(comparison(rows, "myctr", "podman", f"log file, {small}", "log size:"))
    return Section(
        "logs", f"log throughput of one container's stdout, median of {sizes.log_runs} "
                "run(s) per tool, round-robin",
        "myctr: container.run detached (default log options) to the container.wait result, "
        "which comes once the log pump drained; crun/runc: whole `run` with stdout "
        "redirected to a file; podman: `run -d` spawn to `podman wait` return, default log "
        "driver. MiB/s = bytes written by the container / median time; each includes its "
        "start. Small lines twice: from `yes | head -c`, which itself tops out near "
        "120 MiB/s here (crun writing straight to a file gets no more), and from `cat` of a "
        "file of the same bytes in the rootfs, which leaves the log path as the limit: the "
        "small-line target is judged on the latter",
        tuple(rows), tuple(ratios),
        (("myctr >= 0.8x crun-file (big lines)",
          meets(value_of(rows, "myctr", big), value_of(rows, "crun-file", big), 0.8)),
         ("myctr >= 10x podman (small lines, cat)",
          meets(value_of(rows, "myctr", small_cat), value_of(rows, "podman", small_cat), 10))))


def log_row(tool: str, label: str, size: int, runs: Sequence[LogRun]) -> Row:
    seconds = sorted(run.seconds for run in runs)
    middle = median(seconds)
    spread = f" ({seconds[0]:.2f}-{seconds[-1]:.2f})" if len(seconds) > 1 else ""
    log = runs[-1].log_bytes
    where = runs[-1].kind if log is None else f"{runs[-1].kind} {log / MIB:.1f} MiB"
    return Row(tool, label, size / MIB / middle, "MiB/s", f"{middle:.2f} s{spread}; {where}",
               tuple(size / MIB / s for s in seconds))


def log_file_row(tool: str, label: str, size: int, run: LogRun) -> Row:
    log = run.log_bytes or 0
    return Row(tool, f"log file, {label}", log / MIB, "MiB",
               f"{log / size:.2f} bytes per byte of output; {run.kind}")


def log_myctr(bench: Bench, command: Sequence[str], _size: int) -> LogRun:
    client, name = bench.sup.client, bench.name("log")
    try:
        elapsed, container, code = run_and_wait(client, bench.myctr_params(command, name=name))
        if code != 0:
            raise BenchError(f"myctr: the log writer exited {code}")
        log_path = client.call("container.inspect", {"id": container})["log_path"]
        return LogRun(elapsed, os.stat(log_path).st_size, "JSON lines log")
    finally:
        remove_myctr(client, [name])


def log_oci(bench: Bench, oci: Oci, command: Sequence[str], size: int) -> LogRun:
    name = bench.name(f"log-{oci.name}")
    out, err = bench.work / f"{name}.out", bench.errors / f"{name}.err"
    try:
        with out.open("wb") as out_file:
            start = time.perf_counter()
            reap(spawn(oci.argv("run", "-b", bench.bundle(command), name), err, out_file),
                 f"{oci.name} run", err)
            elapsed = time.perf_counter() - start
        written = out.stat().st_size
    finally:
        out.unlink(missing_ok=True)
    if written != size:
        raise BenchError(f"{oci.name}: the container wrote {written} bytes, not {size}")
    return LogRun(elapsed, None, "stdout is the file")


def log_podman(bench: Bench, podman: Podman, command: Sequence[str], _size: int) -> LogRun:
    name = bench.name("log-podman")
    try:
        start = time.perf_counter()
        check_output(podman.run_argv(name, command, "-d"), "podman run -d")
        code = check_output(podman.argv("wait", name), "podman wait").strip()
        elapsed = time.perf_counter() - start
        if code != "0":
            raise BenchError(f"podman: the log writer exited {code}")
        driver, path = check_output(podman.argv(
            "inspect", "--format", "{{.HostConfig.LogConfig.Type}} {{.HostConfig.LogConfig.Path}}",
            name), "podman inspect").split()
        return LogRun(elapsed, os.stat(path).st_size, f"{driver} log")
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", name), "podman rm")


# 5. restart latency.


def measure_restart(bench: Bench) -> Section:
    rows = restart_myctr(bench, bench.sizes.restarts)
    if bench.podman:
        rows += restart_podman(bench, bench.podman, bench.sizes.restart_window_s)
    return Section(
        "restart", "restart latency of --restart always, /bin/false, no restart delay",
        "myctr: restart_delay 0; an events.subscribe client collects the container's "
        f"events until {bench.sizes.restarts} die->start pairs; gaps from the events' own "
        "times (the supervisor's clock) and from when the client received them. podman: "
        f"`run -d --restart always`, watched {bench.sizes.restart_window_s:.0f} s; gaps "
        "from `podman events` died->start times, cycle = window / RestartCount growth "
        "(inspect before and after). Figure in the brief: podman ~120 ms",
        tuple(rows), (comparison(rows, "myctr", "podman", "death to next start", "gap:"),
                      comparison(rows, "myctr", "podman", "restart cycle", "cycle:")))


def restart_myctr(bench: Bench, count: int) -> list[Row]:
    name = bench.name("restart")
    events = bench.sup.connect()
    events.sock.settimeout(EVENT_TIMEOUT_S)
    seen: list[tuple[str, float, float]] = []  # type, event time, receipt time
    try:
        request = events.send("events.subscribe", {})
        bench.sup.client.call("container.run", bench.myctr_params(
            ["/bin/false"], name=name, restart="always", restart_delay=0))
        while len(restart_gaps([(t, at) for t, at, _ in seen], "die", "start")) < count:
            message = events.receive()
            if message.get("id") == request:
                raise BenchError(f"myctr: the event stream ended: {message}")
            params = message.get("params") or {}
            if message.get("method") == "event" and params.get("name") == name:
                seen.append((params["type"], params["time"], time.time()))
    except TimeoutError:
        raise BenchError(f"myctr: no event for {EVENT_TIMEOUT_S:.0f} s") from None
    finally:
        events.close()
        remove_myctr(bench.sup.client, [name])
    by_event = [(kind, at) for kind, at, _ in seen]
    by_receipt = [(kind, got) for kind, _, got in seen]
    return [gap_row("myctr", "death to next start", restart_gaps(by_event, "die", "start"),
                    "event times"),
            gap_row("myctr", "death to next start (received)",
                    restart_gaps(by_receipt, "die", "start"), "client receipt times"),
            gap_row("myctr", "restart cycle", start_intervals(by_event, "start"),
                    "start to start, event times")]


def restart_podman(bench: Bench, podman: Podman, window_s: float) -> list[Row]:
    name = bench.name("restart-podman")
    began = time.time()
    try:
        check_output(podman.run_argv(name, ["/bin/false"], "-d", "--restart", "always"),
                     "podman run -d")
        time.sleep(0.5)
        first, first_at = restart_count(podman, name), time.monotonic()
        time.sleep(window_s)
        last, last_at = restart_count(podman, name), time.monotonic()
        ended = time.time()
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", name), "podman rm")
    # No --until: podman 4.3 with the file backend then stops after the first event.
    text = check_output(podman.argv("events", "--stream=false", "--format", "json",
                                    "--since", f"{began:.3f}"), "podman events")
    events = [e for e in podman_events(text, name) if e[1] <= ended]
    restarts = last - first
    cycle = (last_at - first_at) / restarts * 1000 if restarts > 0 else None
    return [gap_row("podman", "death to next start", restart_gaps(events, "died", "start"),
                    "podman events times"),
            Row("podman", "restart cycle", cycle, "ms",
                f"{restarts} restarts in {last_at - first_at:.1f} s (RestartCount)")]


def restart_count(podman: Podman, name: str) -> int:
    return int(check_output(podman.argv("inspect", "--format", "{{.RestartCount}}", name),
                            "podman inspect"))


def gap_row(tool: str, metric: str, gaps: Sequence[float], how: str) -> Row:
    if not gaps:
        return Row(tool, metric, None, "ms", f"no pair seen ({how})")
    summary = summary_of(tool, gaps)
    return Row(tool, metric, summary.median_ms, "ms", f"{how}; {summary_detail(summary)}",
               summary.samples_ms)


# 6. a cold `ps`.


def measure_ps(bench: Bench) -> Section:
    sizes = bench.sizes
    tools = [Tool("myctr", lambda _id: [bench.myctr, "--root", str(bench.sup.root), "ps"])]
    podman = bench.podman
    if podman:
        tools.append(Tool("podman", lambda _id: podman.argv("ps")))
    tools += [Tool(f"{oci.name}-list", lambda _id, o=oci: o.argv("list")) for oci in bench.oci]
    tools.append(Tool("python", lambda _id: [sys.executable, "-c", "pass"]))
    samples: dict[str, list[float]] = {tool.name: [] for tool in tools}
    by_name = {tool.name: tool for tool in tools}
    for iteration in range(sizes.warmup + sizes.runs):
        for name in round_robin_order(list(by_name), iteration):
            elapsed = run_tool(by_name[name], bench.namespaces, "")
            if iteration >= sizes.warmup:
                samples[name].append(elapsed)
    summaries = [summary_of(name, values) for name, values in samples.items()]
    rows = tuple(Row(s.tool, "whole process (median)", s.median_ms, "ms", summary_detail(s),
                     s.samples_ms) for s in summaries)
    return Section(
        "ps", f"cold listing, {sizes.runs} runs per tool ({sizes.warmup} warm-up)",
        "spawn to exit of `myctr --root R ps` (the supervisor runs, nothing is listed), "
        "`podman ps` on the bench's store, `crun/runc --root S list` (no daemon: reads "
        "state files); python: the venv's `python -c pass`, the floor under any myctr CLI "
        "command",
        rows, tuple(comparison(rows, "myctr", r.tool) for r in rows[1:]))


# Running it all.


SECTIONS: dict[str, Callable[[Bench], Section]] = {
    "start": measure_start, "burst": measure_burst, "memory": measure_memory,
    "logs": measure_logs, "restart": measure_restart, "ps": measure_ps,
}
# Memory runs right after start: the sequential /bin/true runs warm the supervisor up
# without the burst's peak, which would leave freed heap for the idle containers to reuse.
RUN_ORDER = ("start", "memory", "burst", "logs", "restart", "ps")


def remove_podman_containers(podman: Podman, notes: list[str]) -> None:
    left = check_output(podman.argv("ps", "-a", "-q"), "podman ps").split()
    if left:
        notes.append(f"podman: {len(left)} container(s) left behind; removed")
        check_output(podman.argv("rm", "-f", "-t", "0", *left), "podman rm")


def tool_names(bench: Bench) -> list[str]:
    """The tools that run here, myctr first."""
    return ["myctr", *(o.name for o in bench.oci), *(o.name for o in bench.same),
            *(["podman"] if bench.podman else [])]


@contextlib.contextmanager
def open_bench(prefix: str, sizes: Sizes, notes: list[str], *, chdir: bool = False,
               prepare: Callable[[Path, Path], None] | None = None,
               remove_more_cgroups: Callable[[], None] | None = None,
               after_supervisor: Callable[[Path], None] | None = None,
               check_supervisor: Callable[[Supervisor], None] | None = None) -> Iterator[Bench]:
    """The world a bench runs in, as a :class:`Bench` whose tools are found: a temp work
    dir ``/tmp/PREFIX-*``, a busybox rootfs in it, the private mount namespace of a hybrid
    host, a supervisor under WORK/myctr. Whatever happens, it is all undone in reverse:
    podman's containers in the bench's store, the supervisor, crun/runc state left in the
    work dir, the namespace, the ``PREFIX*`` cgroups, PODMAN_HOST_DIRS it had to create,
    the work dir.

    A bench's extras, each at its place in that order: ``chdir`` makes the work dir the
    working directory until the end; ``prepare(work, rootfs)`` runs after the bootstrap,
    before the namespace; ``remove_more_cgroups()`` runs after the ``PREFIX*`` cgroups
    are removed; ``after_supervisor(root)`` once the supervisor stopped (or failed to
    start); ``check_supervisor(sup)`` as soon as it answers, before the tools are tried.
    """
    myctr = Path(sys.executable).with_name("myctr")
    if not myctr.exists():
        raise BenchError(f"{myctr} not found: run make deps")
    # The bench's supervisor defaults to --network none (as crun's and runc's bundles
    # have no network): no bridge or nftables table on this machine's own network.
    # net_bench names its networks, in a namespace of its own.
    os.environ["MYCTR_NETWORK"] = "none"
    hybrid = is_hybrid_cgroup(mount_points(Path("/proc/self/mountinfo").read_text()))
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        stack.callback(remove_work, work)
        if chdir:
            stack.callback(os.chdir, os.getcwd())
            os.chdir(work)
        created = [d for d in PODMAN_HOST_DIRS if not os.path.exists(d)]
        stack.callback(remove_created_dirs, created, notes)
        if remove_more_cgroups is not None:
            stack.callback(remove_more_cgroups)
        stack.callback(remove_cgroups, prefix)
        (work / "stderr").mkdir()
        rootfs = work / "rootfs"
        check_output([str(myctr), "rootfs", "bootstrap", "busybox", str(rootfs)], "bootstrap")
        if prepare is not None:
            prepare(work, rootfs)
        namespaces = stack.enter_context(open_namespaces(hide_unified=hybrid))
        if hybrid:
            notes.append("hybrid cgroups: everything ran in a private mount namespace with a "
                         "tmpfs over /sys/fs/cgroup/unified")
        stack.callback(remove_leftover_containers, work, notes)
        root = work / "myctr"
        if after_supervisor is not None:
            stack.callback(after_supervisor, root)
        sup = stack.enter_context(open_supervisor(str(myctr), root, notes))
        notes.append(f"myctr's container init: {sup.client.call('info').get('init')}")
        if check_supervisor is not None:
            check_supervisor(sup)
        spec_tool = shutil.which("crun") or shutil.which("runc")
        bench = Bench(work, rootfs, str(myctr), prefix, sizes, notes, namespaces, sup, spec_tool)
        find_tools(bench)
        if bench.podman:
            stack.callback(remove_podman_containers, bench.podman, notes)
        yield bench


def benchmark(sizes: Sizes, only: Sequence[str], notes: list[str]) -> list[Section]:
    if os.geteuid() != 0:
        raise BenchError("the bench needs root (crun/runc bundles, podman, the cgroup tmpfs)")
    before = host_dentries()
    with open_bench(f"myctr-sbench-{os.getpid()}", sizes, notes) as bench:
        progress(f"tools: {', '.join(tool_names(bench))}; work dir {bench.work}")
        results = {}
        for name in (n for n in RUN_ORDER if n in only):
            progress(f"{name} ...")
            results[name] = SECTIONS[name](bench)
    if before is not None:
        notes.append(f"host dentries {before} before, {host_dentries()} after (with "
                     "~700,000 of them, left by many thousand container starts, every tool "
                     "ran up to 40% slower here: compare tools within one run)")
    return [results[name] for name in SECTIONS if name in results]


def host_dentries() -> int | None:
    """The kernel's dentry count (/proc/sys/fs/dentry-state), None if unreadable."""
    try:
        with open("/proc/sys/fs/dentry-state") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A bench's argument parser, with ``--quick``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    return parser


def sized(args: argparse.Namespace, full: Any, quick: Any, **given: Any) -> Any:
    """The counts of a run: ``quick`` or ``full``, with the ones given on the command
    line (not None) in place."""
    base = quick if args.quick else full
    return base._replace(**{k: v for k, v in given.items() if v is not None})


def parse_sections(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                   sections: Sequence[str]) -> argparse.Namespace:
    """Add --json and --only SECTIONS to ``parser``, parse, and check the sections."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--only", default=",".join(sections),
                        help=f"comma-separated sections (default: {','.join(sections)})")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(sections))
    if unknown or not args.only:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(sections)}")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_sections(bench_parser("supervisor_bench", __doc__), argv, SECTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sized(args, FULL, QUICK)
    notes: list[str] = []
    try:
        sections = benchmark(sizes, args.only, notes)
    except BenchError as exc:
        return report_failure(exc, notes)
    print_report(sections, list(SECTIONS), notes,
                 {"sizes": sizes._asdict(), "quick": args.quick} if args.json else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
