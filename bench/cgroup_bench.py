"""What cgroups cost on the start path, and how fast an OOM kill becomes an event: myctr
beside crun, runc and podman, in one run.

Run as ``python -m bench.cgroup_bench [--quick] [--json] [--only start,oom] [--runs N]
[--warmup K] [--oom-runs N] [--gap-ms MS]`` (root).

Sections::

    start   /bin/true start to exit without limits and with --memory 64m --pids-limit 100
            --cpus 1 (crun/runc: the same in config.json linux.resources; podman: its
            flags), each start after --gap-ms of idle time (50). myctr through the control
            socket of a running supervisor (container.run, then container.wait, as
            supervisor_bench's myctr-sup); the others whole-process. Before timing, one
            container per tool is checked to really hold the limits in its cgroup files
    oom     a --memory 32m --memory-swap 32m container allocating 256 MiB, released through
            a FIFO: from the kernel's OOM kill (the oom_kill counter of its
            memory.oom_control, read every ~50 us by this process) to the ``oom`` event
            read from the control socket; the hog as PID 1 and as a child of a container
            that runs on. podman's ``podman events`` stream beside it where podman reports
            the OOM (its first run waits 5 s for that; its died event is timed regardless)

Both sections run in :mod:`bench.supervisor_bench`'s set-up (its ``open_bench``): one
supervisor (``myctr --root WORK/myctr supervise --detach``, stopped with
``supervisor.shutdown``), a private mount namespace with a tmpfs over
/sys/fs/cgroup/unified on a hybrid-cgroup host (crun refuses hybrid mode), the tools that
run /bin/true there. Cleanup runs whatever happened: podman's containers and its events
process, crun/runc state, the supervisor, the ``myctr-cbench-PID*`` cgroups (at hierarchy
tops, and below this process's own cgroups where runc nests them), the temp dir; the
stopped supervisor's own cgroups (``<own cgroup>/myctr-<tag>``) must be gone (a note says
so otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.start_latency import (
    BenchError,
    Tool,
    format_ratio,
    percentile,
    ratio,
    report_failure,
    round_robin_order,
    run_tool,
)
from bench.supervisor_bench import (
    Bench,
    Oci,
    Podman,
    Row,
    Section,
    Sizes,
    Supervisor,
    bench_parser,
    check_output,
    comparison,
    delete_oci,
    open_bench,
    parse_sections,
    print_report,
    remove_myctr,
    run_all,
    run_and_wait,
    sized,
    summary_detail,
    summary_of,
    tool_names,
    value_of,
    works,
)
from runtime import cgroups as cg
from runtime import libc
from runtime.cgroups.limits import parse_bytes
from runtime.errors import ContainerError
from supervisor.client import Client
from supervisor.logfile import parse_time

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "build" / "probe"  # the integration tests' static probe, when built
EVENT_TIMEOUT_S = 10.0  # the longest wait for an event after the kill
PODMAN_TRIAL_S = 5.0  # how long the first podman run waits for an oom event
CHILD_WAIT_S = 1.0  # how long a still-running container's oom event is waited for
CHILD_SLEEP_S = 60  # how long that container would run on after its child's OOM kill
POLL_TIMEOUT_S = 10.0  # the longest wait for the OOM kill after the trigger
POLL_PERIOD_S = 50e-6  # the wait between reads of memory.oom_control
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
OOM_EXIT = 137  # SIGKILL
TRIGGER = "/trigger/go"  # the FIFO the hog waits on, inside the container
CPU_PERIOD = 100_000  # µs, docker's and the OCI runtimes' default CFS period
VERIFY_COMMAND = ("/bin/sleep", "30")
SHELL_HOG = r"""sh -c 'x=$(head -c 100000000 /dev/zero | tr "\0" a)'"""  # without the probe


class Limits(NamedTuple):
    """The start section's limits, as the CLI flags are typed."""

    memory: str = "64m"
    pids: str = "100"
    cpus: str = "1"


class CgroupSizes(NamedTuple):
    runs: int = 30  # timed start runs per tool and variant
    warmup: int = 3
    oom_runs: int = 10  # timed OOM runs per tool
    oom_warmup: int = 1
    gap_s: float = 0.05  # idle time before each start (0: back to back)


FULL = CgroupSizes()
QUICK = CgroupSizes(runs=5, warmup=1, oom_runs=3, oom_warmup=1)
LIMITS = Limits()
OOM_MEMORY = "32m"
OOM_RESOURCES = {"memory": OOM_MEMORY, "memory_swap": OOM_MEMORY}
OOM_PODMAN_FLAGS = ("--memory", OOM_MEMORY, "--memory-swap", OOM_MEMORY)
# The variants of the start section: their row label and key.
PLAIN, LIMITED = "no limits", "with limits"
ADDED = "added by limits"
START_METRIC = "start to exit"
OOM_EVENT = "OOM kill -> oom event received"
OOM_EMITTED = "OOM kill -> oom event time"
EMIT_TO_RECEIPT = "oom event time -> received"
DIE_EVENT = "OOM kill -> die event received"
CHILD = "child "  # the metric prefix of the runs where the hog is not PID 1


# Limits in each tool's terms: pure.


def myctr_resources(limits: Limits) -> dict[str, str]:
    """The ``resources`` param of container.run (strings as the CLI flags are typed)."""
    return {"memory": limits.memory, "pids_limit": limits.pids, "cpus": limits.cpus}


def podman_flags(limits: Limits) -> list[str]:
    return ["--memory", limits.memory, "--pids-limit", limits.pids, "--cpus", limits.cpus]


def oci_resources(limits: Limits) -> dict[str, Any]:
    """``linux.resources`` for crun/runc meaning what ``--memory M --pids-limit P --cpus C``
    means to docker, podman and myctr: memory+swap twice the memory when no swap is given,
    the quota over the default 100 ms period."""
    memory = parse_bytes(limits.memory, "--memory")
    return {"memory": {"limit": memory, "swap": 2 * memory},
            "pids": {"limit": int(limits.pids)},
            "cpu": {"quota": round(float(limits.cpus) * CPU_PERIOD), "period": CPU_PERIOD}}


def with_resources(config: dict[str, Any], resources: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``resources`` merged into ``linux.resources`` (its devices kept)."""
    linux = config.get("linux", {})
    return {**config, "linux": {**linux, "resources": {**linux.get("resources", {}),
                                                       **resources}}}


def expected_cgroup_values(limits: Limits) -> dict[str, str]:
    """What a v1 cgroup under those limits holds, by file name."""
    oci = oci_resources(limits)
    return {"memory.limit_in_bytes": str(oci["memory"]["limit"]),
            "memory.memsw.limit_in_bytes": str(oci["memory"]["swap"]),
            "pids.max": str(oci["pids"]["limit"]),
            "cpu.cfs_quota_us": str(oci["cpu"]["quota"])}


CONTROLLER_OF = {"memory.limit_in_bytes": "memory", "memory.memsw.limit_in_bytes": "memory",
                 "pids.max": "pids", "cpu.cfs_quota_us": "cpu"}


def cgroup_files(proc_cgroup: str, hierarchies: Sequence[cg.MountedHierarchy],
                 names: Sequence[str]) -> dict[str, str]:
    """Host paths of the v1 cgroup files ``names`` of the process whose /proc/PID/cgroup is
    ``proc_cgroup``; a file whose controller is not mounted is left out."""
    paths = cg.parse_proc_cgroup(proc_cgroup)
    mounts = {c: h for h in hierarchies if h.version == 1 for c in h.controllers}
    found = {}
    for name in names:
        controller = CONTROLLER_OF[name]
        if controller in mounts and controller in paths:
            found[name] = os.path.join(cg.host_dir(mounts[controller], paths[controller]), name)
    return found


def limit_mismatches(expected: Mapping[str, str], seen: Mapping[str, str]) -> list[str]:
    """``file: got X, want Y`` for every expected file that holds something else."""
    return [f"{name}: got {seen.get(name, 'nothing')}, want {want}"
            for name, want in expected.items() if seen.get(name) != want]


# The start section's report: pure.


def start_rows(samples: Mapping[str, Mapping[str, Sequence[float]]]) -> list[Row]:
    """Per tool: median (p10, p90) without and with limits, in ms, and what the limits add
    (difference of the medians; the detail has their ratio). ``samples[tool][variant]`` are
    seconds; a variant without samples gives no row."""
    rows = []
    for tool, variants in samples.items():
        summaries = {}
        for variant in (PLAIN, LIMITED):
            seconds = variants.get(variant) or ()
            if seconds:
                summary = summaries[variant] = summary_of(tool, seconds)
                rows.append(Row(tool, f"{START_METRIC}, {variant}", summary.median_ms, "ms",
                                summary_detail(summary), summary.samples_ms))
        if len(summaries) == 2:
            plain, limited = summaries[PLAIN].median_ms, summaries[LIMITED].median_ms
            rows.append(Row(tool, ADDED, limited - plain, "ms",
                            f"with/without {format_ratio(ratio(limited, plain))}"))
    return rows


def start_comparisons(rows: Sequence[Row], reference: str,
                      others: Sequence[str]) -> list[tuple[str, float | None]]:
    """Each tool's with/without ratio, then ``reference``'s median over each other tool's,
    without and with limits."""
    found = []
    for tool in (reference, *others):
        plain = value_of(rows, tool, f"{START_METRIC}, {PLAIN}")
        limited = value_of(rows, tool, f"{START_METRIC}, {LIMITED}")
        if plain is not None and limited is not None:
            found.append((f"{tool} with/without", ratio(limited, plain)))
    for variant, label in ((PLAIN, "without:"), (LIMITED, "with:")):
        metric = f"{START_METRIC}, {variant}"
        found += [comparison(rows, reference, other, metric, label) for other in others
                  if value_of(rows, other, metric) is not None
                  and value_of(rows, reference, metric) is not None]
    return found


# The OOM section: pure parsers and the report.


def oom_kill_count(text: bytes | str) -> int:
    """The ``oom_kill`` counter of a v1 ``memory.oom_control`` (0 when absent)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def memory_cgroup(dirs: Sequence[str] | None) -> str | None:
    """The memory controller's directory among container.inspect's ``cgroup`` list."""
    return next((d for d in dirs or () if "/memory/" in d), None)


class OomRun(NamedTuple):
    """One hog, times in seconds: ``*_mono`` from time.monotonic() in this process,
    ``*_wall`` from time.time() (comparable with the supervisor's event times)."""

    kill_mono: float
    kill_wall: float
    polls: int  # reads of memory.oom_control from the trigger to the kill
    poll_s: float  # time from the first read to the kill
    oom_received: float | None = None  # mono; None: no oom event
    oom_time: float | None = None  # wall: the event's own time
    die_received: float | None = None  # mono
    oom_late: float | None = None  # mono: child runs, an oom event that came with the exit


def oom_samples(runs: Sequence[OomRun], metric: str) -> list[float]:
    """Seconds of ``metric`` for each run that has it (the kill is seen up to one poll
    period late, so a figure can be slightly negative)."""
    found = []
    for run in runs:
        if metric == OOM_EVENT and run.oom_received is not None:
            found.append(run.oom_received - run.kill_mono)
        elif metric == OOM_EMITTED and run.oom_time is not None:
            found.append(run.oom_time - run.kill_wall)
        elif (metric == EMIT_TO_RECEIPT and run.oom_time is not None
              and run.oom_received is not None):
            found.append((run.oom_received - run.kill_mono) - (run.oom_time - run.kill_wall))
        elif metric == DIE_EVENT and run.die_received is not None:
            found.append(run.die_received - run.kill_mono)
    return found


def oom_rows(tool: str, runs: Sequence[OomRun], metrics: Sequence[str],
             prefix: str = "") -> list[Row]:
    """One row per metric (named ``prefix + metric``): median in ms with p10/p90, or no
    value when no run has that figure."""
    rows = []
    for metric in metrics:
        seconds = oom_samples(runs, metric)
        if not seconds:
            rows.append(Row(tool, prefix + metric, None, "ms",
                            f"no sample in {len(runs)} run(s)"))
            continue
        summary = summary_of(tool, seconds)
        rows.append(Row(tool, prefix + metric, summary.median_ms, "ms", summary_detail(summary),
                        summary.samples_ms))
    return rows


def poll_interval_us(runs: Sequence[OomRun]) -> float | None:
    """The median time per read of memory.oom_control while waiting for the kill."""
    per_poll = [run.poll_s / run.polls * 1e6 for run in runs if run.polls]
    return percentile(per_poll, 50) if per_poll else None


def podman_event(line: str) -> tuple[str, str, float] | None:
    """``(container name, status, unix time)`` of a ``podman events --format json``
    line; None for other lines (system events, blanks)."""
    if not line.strip():
        return None
    doc = json.loads(line)
    if doc.get("Type") != "container" or "Name" not in doc:
        return None
    return doc["Name"], doc["Status"], parse_time(doc["Time"]) / 1e9


# Shell: triggering and watching the hog.


def hog_command(probe: bool, child: bool = False) -> list[str]:
    """Wait for the trigger, then allocate far past the limit: the probe's ``alloc 256``
    (1 MiB mallocs, every page touched) or, without it, a shell holding 100 MB. The hog
    replaces the shell (it is the container's PID 1, whose death ends the container), or
    with ``child`` runs as its child while the shell goes on to sleep."""
    hog = "/probe alloc 256" if probe else SHELL_HOG
    then = f"{hog}; exec sleep {CHILD_SLEEP_S}" if child else f"exec {hog}"
    return ["/bin/sh", "-c", f"read x < {TRIGGER}; {then}"]


def release(fifo: Path, timeout: float = POLL_TIMEOUT_S) -> None:
    """Write a line to the FIFO once the container's shell has it open for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() > deadline:
                raise BenchError(f"the hog never opened {fifo}") from None
            time.sleep(0.0005)
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)


class Kill(NamedTuple):
    """When the poll saw the OOM kill, and what arrived from the event source before."""

    mono: float
    wall: float
    polls: int
    seconds: float  # from the first poll to the kill
    pending: list[tuple[Any, float]]  # (message or line, monotonic receipt time)


Take = Callable[[float], list[tuple[Any, float]]]


def wait_for_kill(control: str, fifo: Path, source: int, take: Take) -> Kill:
    """Release the hog, then read ``control`` (memory.oom_control) until its oom_kill
    counter grows, waiting up to POLL_PERIOD_S on the event ``source`` between reads, so
    that this process sleeps (a spinning poller on two CPUs gets preempted by the very
    wake-ups it measures) and whatever arrives is taken (``take(receipt time)``) at once."""
    try:
        fd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BenchError(f"{control}: {exc.strerror} (the hog ended without an OOM "
                         "kill?)") from None
    slack = libc.prctl(PR_GET_TIMERSLACK)
    libc.prctl(PR_SET_TIMERSLACK, 1000)  # 1 us: the waits are 50 us, not 50 + 50
    try:
        first = os.pread(fd, 4096, 0)
        before = oom_kill_count(first)
        release(fifo)
        pending: list[tuple[Any, float]] = []
        start = time.monotonic()
        deadline = start + POLL_TIMEOUT_S
        polls = 0
        while True:
            if readable(source, POLL_PERIOD_S):
                pending += take(time.monotonic())
            data = os.pread(fd, 4096, 0)
            polls += 1
            if data != first and oom_kill_count(data) > before:
                now = time.monotonic()
                return Kill(now, time.time(), polls, now - start, pending)
            if time.monotonic() > deadline:
                raise BenchError(f"no OOM kill in {control} within {POLL_TIMEOUT_S:.0f} s")
    except OSError as exc:
        raise BenchError(f"{control}: {exc.strerror} (the hog ended without an OOM "
                         "kill?)") from None
    finally:
        libc.prctl(PR_SET_TIMERSLACK, slack)
        os.close(fd)


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def drain(client: Client) -> list[dict[str, Any]]:
    """The messages that have already arrived on ``client``, without waiting for more."""
    messages = []
    while b"\n" in client.buffer or readable(client.sock.fileno(), 0):
        messages.append(client.receive())
    return messages


class LineReader:
    """Lines of a pipe, each with the monotonic time of the read that completed it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.partial = b""

    def lines(self, timeout: float) -> list[tuple[str, float]]:
        """The lines that arrive within ``timeout`` (0: only what is there already), and
        then whatever else is already there."""
        found: list[tuple[str, float]] = []
        wait = timeout
        while readable(self.fd, wait):
            data = os.read(self.fd, 65536)
            at = time.monotonic()
            if not data:
                raise BenchError("podman events stopped")
            *complete, self.partial = (self.partial + data).split(b"\n")
            found += [(line.decode(errors="replace"), at) for line in complete]
            if found:
                wait = 0
        return found


# 1. start to exit without and with limits.


@dataclasses.dataclass
class Extra:
    """What this bench adds to supervisor_bench's Bench."""

    sizes: CgroupSizes
    probe: bool
    trigger: Path  # the FIFO, bind-mounted at /trigger

    def limited_bundle(self, bench: Bench, args: Sequence[str]) -> Path:
        """An OCI bundle running ``args`` under LIMITS (shared by crun and runc)."""
        return bench.bundle(args, "limited-",
                            lambda config: with_resources(config, oci_resources(LIMITS)))


def measure_start(bench: Bench, extra: Extra) -> Section:
    sizes = extra.sizes
    lost_waits: list[str] = []

    def myctr(resources: dict[str, str] | None) -> Callable[[str], float]:
        more = {"resources": resources} if resources else {}

        def run(_cid: str) -> float:
            elapsed, container, code = run_and_wait(
                bench.sup.client, bench.myctr_params(["/bin/true"], auto_remove=True, **more))
            if code is None:
                lost_waits.append(container)
            elif code != 0:
                raise BenchError(f"myctr: /bin/true exited {code}")
            return elapsed
        return run

    def whole(tool: Tool) -> Callable[[str], float]:
        return lambda cid: run_tool(tool, bench.namespaces, cid)

    runners: dict[tuple[str, str], Callable[[str], float]] = {
        ("myctr", PLAIN): myctr(None), ("myctr", LIMITED): myctr(myctr_resources(LIMITS))}
    tools = [oci_tools(bench, extra, oci) for oci in bench.oci]
    if bench.podman:
        tools.append(podman_tools(bench.podman))
    for plain, limited in tools:
        runners[(plain.name, PLAIN)] = whole(plain)
        if works(bench, dataclasses.replace(limited, name=f"{plain.name} {LIMITED}")):
            runners[(plain.name, LIMITED)] = whole(limited)
    check_limits(bench, extra, [tool for tool, variant in runners if variant == LIMITED])
    samples: dict[str, dict[str, list[float]]] = {}
    for tool, variant in runners:
        samples.setdefault(tool, {})[variant] = []
    order = list(runners)
    for iteration in range(sizes.warmup + sizes.runs):
        for key in round_robin_order(order, iteration):
            time.sleep(sizes.gap_s)
            elapsed = runners[key](bench.name(f"start-{key[0]}"))
            if iteration >= sizes.warmup:
                samples[key[0]][key[1]].append(elapsed)
    if lost_waits:
        bench.notes.append(f"start: {len(lost_waits)} container.wait got 'not found' (the "
                           "auto-removed container was gone first); timed to that answer")
    rows = start_rows(samples)
    others = [tool for tool in samples if tool != "myctr"]
    return Section(
        "start", f"cgroup setup on the start path: /bin/true start to exit, {sizes.runs} runs "
                 f"per tool and variant ({sizes.warmup} warm-up), round-robin, "
                 f"{sizes.gap_s * 1000:.0f} ms idle before each",
        "limits: --memory 64m --pids-limit 100 --cpus 1 (myctr: container.run resources "
        "{memory, pids_limit, cpus}; crun/runc: config.json linux.resources memory.limit 64 "
        "MiB, memory.swap 128 MiB, pids.limit 100, cpu.quota 100000/period 100000; podman: "
        "the same flags). myctr: a connected client sends container.run {rootfs, "
        "[/bin/true], auto_remove[, resources]}, then container.wait, timed from sending run "
        "to the wait result; it makes a cgroup per run with or without limits (as crun, runc "
        "and podman do). Others: whole process, spawn to exit. added = median with - median "
        "without. The idle time keeps a start from inheriting the kernel's warm state from "
        "the one before (cgroup migration waits for RCU grace periods; back-to-back runs of "
        "one tool skip most of that wait), which would favour whichever variant runs second",
        tuple(rows), tuple(start_comparisons(rows, "myctr", others)))


def oci_tools(bench: Bench, extra: Extra, oci: Oci) -> tuple[Tool, Tool]:
    plain = Tool(oci.name, lambda cid: oci.argv("run", "-b", bench.bundle(["/bin/true"]), cid))
    limited = Tool(oci.name, lambda cid: oci.argv(
        "run", "-b", extra.limited_bundle(bench, ["/bin/true"]), cid))
    return plain, limited


def podman_tools(podman: Podman) -> tuple[Tool, Tool]:
    return (Tool("podman", lambda cid: podman.run_argv(cid, ["/bin/true"], "--rm")),
            Tool("podman", lambda cid: podman.run_argv(cid, ["/bin/true"], "--rm",
                                                       *podman_flags(LIMITS))))


def read_limits(pid: int) -> dict[str, str]:
    """The limit files of process ``pid``'s cgroups, as the kernel shows them."""
    hierarchies = cg.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    files = cgroup_files(Path(f"/proc/{pid}/cgroup").read_text(), hierarchies,
                         list(CONTROLLER_OF))
    return {name: Path(path).read_text().strip() for name, path in files.items()}


def check_limits(bench: Bench, extra: Extra, tools: Sequence[str]) -> None:
    """Start one ``sleep`` under LIMITS per tool of ``tools`` and compare its cgroup files
    with what the limits mean; a mismatch stops the bench (the rows would compare unlike
    things)."""
    expected = expected_cgroup_values(LIMITS)
    checked = []
    for tool, pid_of in limit_probes(bench, extra):
        if tool not in tools:
            continue
        with pid_of() as pid:
            wrong = limit_mismatches(expected, read_limits(pid))
        if wrong:
            raise BenchError(f"{tool}: the container's cgroup does not hold the limits: "
                             + "; ".join(wrong))
        checked.append(tool)
    bench.notes.append(f"limits checked in the cgroups of a running container of "
                       f"{', '.join(checked)}: " + ", ".join(f"{k} {v}" for k, v in
                                                           expected.items()))


def limit_probes(bench: Bench, extra: Extra
                 ) -> Iterator[tuple[str, Callable[[], contextlib.AbstractContextManager[int]]]]:
    yield "myctr", lambda: myctr_sleeper(bench)
    for oci in bench.oci:
        yield oci.name, lambda o=oci: oci_sleeper(bench, extra, o)
    podman = bench.podman
    if podman:
        yield "podman", lambda: podman_sleeper(bench, podman)


@contextlib.contextmanager
def myctr_sleeper(bench: Bench) -> Iterator[int]:
    client, name = bench.sup.client, bench.name("limits")
    try:
        client.call("container.run", bench.myctr_params(
            list(VERIFY_COMMAND), name=name, resources=myctr_resources(LIMITS)))
        yield int(client.call("container.inspect", {"id": name})["pid"])
    finally:
        remove_myctr(client, [name])


@contextlib.contextmanager
def oci_sleeper(bench: Bench, extra: Extra, oci: Oci) -> Iterator[int]:
    name = bench.name(f"limits-{oci.name}")
    try:
        run_all([oci.argv("run", "-d", "-b", extra.limited_bundle(bench, VERIFY_COMMAND),
                          name)], f"{oci.name} run -d", bench.errors)
        yield int(json.loads(check_output(oci.argv("state", name), f"{oci.name} state"))["pid"])
    finally:
        delete_oci(bench, oci, [name])


@contextlib.contextmanager
def podman_sleeper(bench: Bench, podman: Podman) -> Iterator[int]:
    name = bench.name("limits-podman")
    try:
        check_output(podman.run_argv(name, list(VERIFY_COMMAND), "-d", *podman_flags(LIMITS)),
                     "podman run -d")
        yield int(check_output(podman.argv("inspect", "--format", "{{.State.Pid}}", name),
                               "podman inspect"))
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", name), "podman rm")


# 2. OOM kill to event.


def measure_oom(bench: Bench, extra: Extra) -> Section:
    sizes = extra.sizes
    metrics = (OOM_EVENT, OOM_EMITTED, EMIT_TO_RECEIPT, DIE_EVENT)
    events = bench.sup.connect()
    try:
        request = events.send("events.subscribe", {})
        runs = [oom_myctr_once(bench, extra, events, request)
                for _ in range(sizes.oom_warmup + sizes.oom_runs)][sizes.oom_warmup:]
        rows = oom_rows("myctr", runs, metrics)
        child_runs = oom_myctr_children(bench, extra, events, request)
    finally:
        events.close()
    rows += child_runs
    poll_us = poll_interval_us(runs)
    if bench.podman:
        rows += oom_podman(bench, extra, bench.podman)
    hog = "/probe alloc 256 (the static test probe)" if extra.probe else (
        "a shell holding 100 MB (build/probe not built)")
    return Section(
        "oom", f"OOM kill to event, --memory {OOM_MEMORY} --memory-swap {OOM_MEMORY}, "
               f"{sizes.oom_runs} runs per tool ({sizes.oom_warmup} warm-up)",
        f"the container waits on a FIFO, then runs {hog}, as its PID 1 (exec: the kill ends "
        "the container) or, for the child rows, as a child of a shell that then sleeps (the "
        f"container runs on; the oom event is waited for {CHILD_WAIT_S:.0f} s, then the "
        "container is killed). The kill: this process reads the container's "
        "memory.oom_control (myctr: the memory dir of container.inspect's cgroup list; "
        "podman: its pid's /proc/PID/cgroup) with pread, every "
        f"~{poll_us or 0:.0f} us (a select() on the event stream in between, not a spin: a "
        "spinning poller on 2 CPUs is preempted by the supervisor's wake-up and sees the kill "
        "late), until oom_kill grows. received: when this process read "
        "the event (myctr: an events.subscribe client; podman: a `podman events --format "
        "json` stream, file backend); event time: the event's own timestamp (the "
        "supervisor's time.time() at emit, against this process's time.time() at the kill)",
        tuple(rows), tuple(comparison(rows, "myctr", "podman", metric, label)
                           for metric, label in ((OOM_EVENT, "oom event:"), (DIE_EVENT, "die:"))
                           if value_of(rows, "podman", metric) is not None))


def oom_myctr_children(bench: Bench, extra: Extra, events: Client, request: int) -> list[Row]:
    """The child runs (no warm-up: the PID 1 runs came first). Each waits CHILD_WAIT_S for
    the oom event; the rows count the runs where it did not come while the container ran."""
    runs = [oom_myctr_once(bench, extra, events, request, child=True)
            for _ in range(extra.sizes.oom_runs)]
    rows = oom_rows("myctr", runs, (OOM_EVENT, OOM_EMITTED), CHILD)
    missed = [run for run in runs if run.oom_received is None]
    if missed:
        missing = missed_detail(len(missed), len(runs))
        rows[0] = rows[0]._replace(detail=f"{rows[0].detail}; {missing}")
        bench.notes.append(child_note(missed, len(runs)))
    return rows


def missed_detail(missed: int, total: int) -> str:
    return f"{missed} of {total} runs: none within {CHILD_WAIT_S:.0f} s"


def child_note(missed: Sequence[OomRun], total: int) -> str:
    """Runs where a child's OOM kill got no oom event while the container ran on."""
    late = [run for run in missed if run.oom_late is not None]
    came = (f"it came only with the container's exit, when the bench killed it "
            f"({len(late)} of {len(missed)})" if late else "nor when the container was killed")
    return (f"oom: in {len(missed)} of {total} runs a child process was OOM-killed (the "
            f"kernel's oom_kill counter rose) but myctr sent no oom event within "
            f"{CHILD_WAIT_S:.0f} s while the container ran on; {came}")


def oom_myctr_once(bench: Bench, extra: Extra, events: Client, request: int,
                   child: bool = False) -> OomRun:
    """One hog: PID 1 (timed up to its die event) or, with ``child``, a child of a
    container that runs on (timed up to the oom event, then the container is killed)."""
    client, name = bench.sup.client, bench.name("oom-child" if child else "oom")
    try:
        container = client.call("container.run", bench.myctr_params(
            hog_command(extra.probe, child), name=name, resources=OOM_RESOURCES,
            volumes=[f"{extra.trigger.parent}:{os.path.dirname(TRIGGER)}"]))["id"]
        dirs = client.call("container.inspect", {"id": container}).get("cgroup")
        memory = memory_cgroup(dirs)
        if memory is None:
            raise BenchError(f"myctr: no memory cgroup in container.inspect's cgroup: {dirs}")
        drain(events)
        kill = wait_for_kill(os.path.join(memory, "memory.oom_control"), extra.trigger,
                             events.sock.fileno(),
                             lambda at: [(message, at) for message in drain(events)])
        run = OomRun(kill.mono, kill.wall, kill.polls, kill.seconds)
        for message, at in kill.pending:
            run = note_myctr_event(run, message, request, container, at)
        if not child:
            run = receive_until(events, request, container, run, "die", EVENT_TIMEOUT_S)
            if run.die_received is None:
                raise BenchError(f"myctr: no die event within {EVENT_TIMEOUT_S:.0f} s of the "
                                 "OOM kill")
            if run.oom_received is None:
                bench.notes.append("oom: myctr sent no oom event before the hog's die event")
        else:
            run = receive_until(events, request, container, run, "oom", CHILD_WAIT_S)
            client.call("container.kill", {"id": container})
            stopped = receive_until(events, request, container, run, "die", EVENT_TIMEOUT_S)
            late = stopped.oom_received if run.oom_received is None else None
            run = run._replace(oom_late=late)
        code = client.call("container.wait", {"id": container})["exit_code"]
        oom_killed = client.call("container.inspect", {"id": container}).get("OOMKilled")
        if code != OOM_EXIT or oom_killed is not True:
            bench.notes.append(f"oom: myctr's {'child ' if child else ''}hog container exited "
                               f"{code} with OOMKilled {oom_killed} (expected {OOM_EXIT}, "
                               "true)")
        return run
    finally:
        remove_myctr(client, [name])


def receive_until(events: Client, request: int, container: str, run: OomRun, kind: str,
                  timeout: float) -> OomRun:
    """``run`` with the container's events recorded until its ``kind`` ("oom" or "die")
    event has come or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout

    def done(r: OomRun) -> bool:
        return (r.oom_received if kind == "oom" else r.die_received) is not None

    while not done(run):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        events.sock.settimeout(left)
        try:
            message = events.receive()
        except TimeoutError:
            break
        finally:
            events.sock.settimeout(EVENT_TIMEOUT_S)
        run = note_myctr_event(run, message, request, container, time.monotonic())
    return run


def note_myctr_event(run: OomRun, message: dict[str, Any], request: int, container: str,
                     received: float) -> OomRun:
    """``run`` with the oom or die event in ``message`` recorded as received at
    ``received`` (monotonic)."""
    if message.get("id") == request:
        raise BenchError(f"myctr: the event stream ended: {message}")
    params = message.get("params") or {}
    if message.get("method") != "event" or params.get("container") != container:
        return run
    if params.get("type") == "oom" and run.oom_received is None:
        return run._replace(oom_received=received, oom_time=params.get("time"))
    if params.get("type") == "die" and run.die_received is None:
        return run._replace(die_received=received)
    return run


def oom_podman(bench: Bench, extra: Extra, podman: Podman) -> list[Row]:
    """podman's runs: the first waits PODMAN_TRIAL_S for an oom event; without one, podman
    gets rows without values and a note (its die event is still timed)."""
    sizes = extra.sizes
    err = bench.errors / "podman-events.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(podman.argv("events", "--format", "json", "--since",
                                            f"{time.time() - 1:.3f}"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err_file)
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout.fileno())
        trial = oom_podman_once(bench, extra, podman, reader, PODMAN_TRIAL_S)
        runs = [trial]
        if trial.oom_received is not None:
            runs += [oom_podman_once(bench, extra, podman, reader, EVENT_TIMEOUT_S)
                     for _ in range(sizes.oom_warmup + sizes.oom_runs - 1)]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if trial.oom_received is not None:
        return oom_rows("podman", runs[sizes.oom_warmup:], (OOM_EVENT, OOM_EMITTED, DIE_EVENT))
    (died,) = oom_rows("podman", runs, (DIE_EVENT,))
    return [Row("podman", OOM_EVENT, None, "ms",
                f"no oom event within {PODMAN_TRIAL_S:.0f} s of the kill"),
            died._replace(detail=f"{died.detail}; the one trial run")]


def oom_podman_once(bench: Bench, extra: Extra, podman: Podman, reader: LineReader,
                    timeout: float) -> OomRun:
    name = bench.name("oom-podman")
    try:
        check_output(podman.run_argv(
            name, hog_command(extra.probe), "-d", *OOM_PODMAN_FLAGS,
            "-v", f"{extra.trigger.parent}:{os.path.dirname(TRIGGER)}"), "podman run -d")
        pid = int(check_output(podman.argv("inspect", "--format", "{{.State.Pid}}", name),
                               "podman inspect"))
        hierarchies = cg.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        control = cgroup_memory_file(Path(f"/proc/{pid}/cgroup").read_text(), hierarchies)
        conmon_file = Path.cwd() / "oom"  # where conmon records an OOM it noticed
        conmon_file.unlink(missing_ok=True)
        reader.lines(0)
        kill = wait_for_kill(control, extra.trigger, reader.fd, lambda _at: reader.lines(0))
        run = OomRun(kill.mono, kill.wall, kill.polls, kill.seconds)
        for line, at in kill.pending:
            run = note_podman_event(run, line, name, at)
        deadline = time.monotonic() + timeout
        while run.oom_received is None or run.die_received is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for line, at in reader.lines(left):
                run = note_podman_event(run, line, name, at)
        code = check_output(podman.argv("wait", name), "podman wait").strip()
        oom_killed = check_output(podman.argv("inspect", "--format", "{{.State.OOMKilled}}",
                                              name), "podman inspect").strip()
        if run.oom_received is None:
            noticed = (
                "conmon did notice it: it wrote its `oom` file into its working directory "
                "(inherited from this process), not where podman looks for it, so podman "
                f"{podman_version(podman)} never learns of it"
                if conmon_file.exists() else f"podman {podman_version(podman)} does not "
                "report this cgroup v1 OOM kill here")
            bench.notes.append(
                f"oom: podman sent no oom event within {timeout:.0f} s although the kernel's "
                f"oom_kill counter of its container's memory cgroup rose (exit {code}, "
                f"podman inspect OOMKilled={oom_killed}): {noticed}. myctr's oom latency has "
                "no podman counterpart; podman's died event is timed instead")
        return run
    finally:
        check_output(podman.argv("rm", "-f", "--ignore", "-t", "0", name), "podman rm")


def cgroup_memory_file(proc_cgroup: str, hierarchies: Sequence[cg.MountedHierarchy]) -> str:
    paths = cg.parse_proc_cgroup(proc_cgroup)
    for h in hierarchies:
        if h.version == 1 and "memory" in h.controllers and "memory" in paths:
            return os.path.join(cg.host_dir(h, paths["memory"]), "memory.oom_control")
    raise BenchError("podman's container has no v1 memory cgroup")


def note_podman_event(run: OomRun, line: str, name: str, received: float) -> OomRun:
    """``run`` with the oom or died event of container ``name`` in ``line`` recorded."""
    event = podman_event(line)
    if event is None or event[0] != name:
        return run
    _, status, at_wall = event
    if status == "oom" and run.oom_received is None:
        return run._replace(oom_received=received, oom_time=at_wall)
    if status == "died" and run.die_received is None:
        return run._replace(die_received=received)
    return run


def podman_version(podman: Podman) -> str:
    try:
        return check_output(podman.argv("version", "--format", "{{.Client.Version}}"),
                            "podman version").strip()
    except BenchError:
        return "(version unknown)"


# Running it all.


SECTIONS: dict[str, Callable[[Bench, Extra], Section]] = {
    "start": measure_start, "oom": measure_oom}


def progress(message: str) -> None:
    print(f"[cgroup_bench] {message}", file=sys.stderr, flush=True)


def own_cgroup_dirs(tag: str) -> list[str]:
    """``<this process's cgroup>/<tag>`` in every v1 hierarchy (and the v2 one)."""
    hierarchies = cg.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    own = cg.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    dirs = set()
    for h in hierarchies:
        keys = h.controllers if h.version == 1 else ("",)
        for key in keys:
            if key in own:
                dirs.add(os.path.join(cg.host_dir(h, own[key]), tag))
    return sorted(dirs)


def check_supervisor_cgroups(root: Path, notes: list[str]) -> None:
    """After the supervisor stopped: its base cgroups must be gone (reported, not
    removed: they are the supervisor's)."""
    left = [d for d in own_cgroup_dirs(cg.state_tag(str(root))) if os.path.isdir(d)]
    if left:
        notes.append(f"myctr: the stopped supervisor left its cgroups: {', '.join(left)}")


def remove_nested_cgroups(prefix: str, notes: list[str]) -> None:
    """rmdir ``prefix*`` cgroups that runc left below this process's own cgroups (it nests
    them there where the own cgroup is not the root, as in the memory hierarchy here)."""
    hierarchies = cg.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    own = cg.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    for h in hierarchies:
        for key in (h.controllers if h.version == 1 else ("",)):
            if own.get(key, "/") == "/":
                continue
            for top in Path(cg.host_dir(h, own[key])).glob(f"{prefix}*"):
                for directory, _, _ in sorted(os.walk(top), key=lambda e: -len(e[0])):
                    try:
                        os.rmdir(directory)
                    except OSError as exc:
                        notes.append(f"{directory}: not removed ({exc.strerror})")


def benchmark(sizes: CgroupSizes, only: Sequence[str], notes: list[str]) -> list[Section]:
    if os.geteuid() != 0:
        raise BenchError("the bench needs root (cgroups, crun/runc bundles, podman)")
    prefix = f"myctr-cbench-{os.getpid()}"
    probe = PROBE.is_file()
    trigger = Path("trigger", "go")  # a FIFO, below the work dir
    driver: dict[str, Any] = {}

    def prepare(work: Path, rootfs: Path) -> None:
        if probe:
            shutil.copy2(PROBE, rootfs / "probe")
        (work / trigger).parent.mkdir()
        os.mkfifo(work / trigger, 0o600)

    def check_driver(sup: Supervisor) -> None:
        driver.update(sup.client.call("info").get("cgroups") or {})
        if not driver.get("usable"):
            raise BenchError(f"myctr has no usable cgroups here: {driver.get('problem')}")

    # chdir: conmon writes an `oom` file into its working directory (the caller's)
    with open_bench(prefix, Sizes(runs=sizes.runs, warmup=sizes.warmup), notes, chdir=True,
                    prepare=prepare,
                    remove_more_cgroups=functools.partial(remove_nested_cgroups, prefix, notes),
                    after_supervisor=functools.partial(check_supervisor_cgroups, notes=notes),
                    check_supervisor=check_driver) as bench:
        extra = Extra(sizes, probe, bench.work / trigger)
        progress(f"tools: {', '.join(tool_names(bench))}; cgroup driver "
                 f"v{driver.get('version')}; work dir {bench.work}")
        sections = []
        for name in (n for n in SECTIONS if n in only):
            progress(f"{name} ...")
            sections.append(SECTIONS[name](bench, extra))
        return sections


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("cgroup_bench", __doc__)
    parser.add_argument("--runs", type=int, help=f"timed start runs per tool and variant "
                                                 f"({FULL.runs}; --quick {QUICK.runs})")
    parser.add_argument("--warmup", type=int, help=f"untimed start iterations first "
                                                   f"({FULL.warmup})")
    parser.add_argument("--oom-runs", type=int, help=f"timed OOM runs per tool "
                                                     f"({FULL.oom_runs}; --quick "
                                                     f"{QUICK.oom_runs})")
    parser.add_argument("--gap-ms", type=float, help=f"idle ms before each start "
                                                     f"({FULL.gap_s * 1000:.0f}; 0: back to "
                                                     "back)")
    args = parse_sections(parser, argv, SECTIONS)
    gap_s = None if args.gap_ms is None else args.gap_ms / 1000
    args.sizes = sized(args, FULL, QUICK, runs=args.runs, warmup=args.warmup,
                       oom_runs=args.oom_runs, gap_s=gap_s)
    sizes = args.sizes
    if sizes.runs < 1 or sizes.oom_runs < 1 or sizes.warmup < 0 or sizes.gap_s < 0:
        parser.error("--runs and --oom-runs must be at least 1, --warmup and --gap-ms at "
                     "least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    try:
        sections = benchmark(args.sizes, args.only, notes)
    except (BenchError, ContainerError) as exc:
        return report_failure(exc, notes)
    print_report(sections, list(SECTIONS), notes,
                 {"sizes": args.sizes._asdict(), "limits": LIMITS._asdict()} if args.json
                 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
