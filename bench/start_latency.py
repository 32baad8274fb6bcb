"""Start-to-exit wall time of ``/bin/true`` in a fresh container: myctr, crun, runc, podman.

Run as ``python -m bench.start_latency [--runs N] [--warmup K] [--json]`` (root only).

Every tool runs the same busybox rootfs from this one process, round-robin within each
iteration (the starting tool rotates), so drift in machine load hits all tools alike,
each run after a pause of START_PAUSE_S (see ``settle``). A
bare ``unshare`` of the same kind of namespaces is measured as a floor.

crun 1.8 refuses a hybrid cgroup layout. On such a host the bench unshares a private mount
namespace, hides ``/sys/fs/cgroup/unified`` under a tmpfs there and runs every tool in it;
a tool that fails there is moved to the host's namespace (``setns``) and the report says so.
The tmpfs never reaches the host: ``/`` is made private before it is mounted, and the
namespace dies when the bench leaves it.

Exceptions::

    BenchError            the bench cannot run (not root, no myctr, bad environment)
    └── ToolFailed        a tool exited non-zero; carries its stderr
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from runtime import libc

CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"
REFERENCE = "myctr"
# The "myctr/X" ratios printed under the table, when X was measured.
START_PAUSE_S = 0.1  # pause before each timed run: see settle()
COMPARED = ("crun", "runc", "podman", "baseline")
BASELINE_ARGV = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "/bin/true"]
# Rootful netavark keeps its run dir here whatever the flags; podman creates it even
# with --network none. Removed afterwards when the bench created it and it is empty.
PODMAN_HOST_DIRS = ("/run/containers", "/run/containers/networks")


class BenchError(Exception):
    """The benchmark cannot run."""


class ToolFailed(BenchError):
    """A tool exited non-zero."""

    def __init__(self, tool: str, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip() or "(no stderr)"
        super().__init__(f"{tool} failed (exit {returncode}): {' '.join(argv)}\n{detail}")
        self.stderr = stderr


# Statistics: pure functions over samples.


def percentile(samples: Sequence[float], pct: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default method)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is unknown or the denominator is not
    positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def settle() -> None:
    """Wait START_PAUSE_S before a timed run, so that no tool inherits a warm kernel from
    the one before it. On cgroup v1 the first move of a task into a cgroup after a
    quiet spell waits for an RCU grace period (10-15 ms here); a tool started within
    a grace period of another tool's move skips that wait. Run back to back, crun
    measured 8.7 ms after myctr's move and 25 ms after a pause."""
    time.sleep(START_PAUSE_S)


def round_robin_order(names: Sequence[str], iteration: int) -> list[str]:
    """``names`` rotated left by ``iteration``: each tool leads in turn."""
    if not names:
        return []
    shift = iteration % len(names)
    return [*names[shift:], *names[:shift]]


@dataclasses.dataclass(frozen=True)
class Summary:
    tool: str
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return median(self.samples_ms)

    @property
    def p10_ms(self) -> float:
        return percentile(self.samples_ms, 10)

    @property
    def p90_ms(self) -> float:
        return percentile(self.samples_ms, 90)


def medians(summaries: Sequence[Summary]) -> dict[str, float]:
    return {s.tool: s.median_ms for s in summaries}


def reference_ratios(summaries: Sequence[Summary]) -> dict[str, float | None]:
    """``myctr/X`` median ratios for each compared tool that was measured."""
    by_tool = medians(summaries)
    return {
        f"{REFERENCE}/{tool}": ratio(by_tool.get(REFERENCE), by_tool[tool])
        for tool in COMPARED
        if tool in by_tool
    }


def format_table(summaries: Sequence[Summary]) -> str:
    reference = medians(summaries).get(REFERENCE)
    header = ("tool", "runs", "median ms", "p10 ms", "p90 ms", f"vs {REFERENCE}")
    lines = ["{:<10}{:>6}{:>12}{:>10}{:>10}{:>10}".format(*header)]
    for s in summaries:
        vs = format_ratio(ratio(s.median_ms, reference))
        lines.append(
            f"{s.tool:<10}{len(s.samples_ms):>6}{s.median_ms:>12.1f}"
            f"{s.p10_ms:>10.1f}{s.p90_ms:>10.1f}{vs:>10}"
        )
    ratios = reference_ratios(summaries)
    if ratios:
        lines.append("")
        lines.append("  ".join(f"{name}: {format_ratio(value)}" for name, value in ratios.items()))
    return "\n".join(lines)


# Mount table: pure functions over /proc/self/mountinfo text.


def mount_points(mountinfo: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` per mountinfo line, in table order (later mounts cover
    earlier ones)."""
    result = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if not fields:
            continue
        separator = fields.index("-")
        result.append((_unescape(fields[4]), fields[separator + 1]))
    return result


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_hybrid_cgroup(mounts: Sequence[tuple[str, str]]) -> bool:
    """True when cgroup v1 hierarchies sit beside a cgroup2 one at ``/sys/fs/cgroup/unified``."""
    top = dict(mounts)
    return top.get(CGROUP_ROOT) != "cgroup2" and top.get(UNIFIED) == "cgroup2"


def mounts_under(mounts: Sequence[tuple[str, str]], directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    return [point for point, _ in mounts if point == directory or point.startswith(prefix)]


def cgroup_hierarchies(mounts: Sequence[tuple[str, str]]) -> list[str]:
    return [point for point, fstype in mounts if fstype in ("cgroup", "cgroup2")]


def oci_config_for_true(config: dict[str, Any], rootfs: str) -> dict[str, Any]:
    """A generated ``config.json`` made to run ``/bin/true`` without a terminal on ``rootfs``."""
    process = {**config["process"], "args": ["/bin/true"], "terminal": False}
    return {**config, "root": {"path": rootfs, "readonly": True}, "process": process}


# Shell: namespaces, tools, timing, cleanup.


def _read_mounts() -> list[tuple[str, str]]:
    return mount_points(Path("/proc/self/mountinfo").read_text())


@dataclasses.dataclass
class Namespaces:
    """The host's mount namespace and, on hybrid hosts, the bench's private one."""

    host_fd: int
    private_fd: int | None
    current: str

    def enter(self, where: str) -> None:
        if where == self.current:
            return
        fd = self.host_fd if where == "host" else self.private_fd
        if fd is None:
            raise BenchError(f"no {where} mount namespace")
        libc.setns(fd, libc.CLONE_NEWNS, f"{where} mount namespace")
        self.current = where


@contextlib.contextmanager
def open_namespaces(hide_unified: bool) -> Iterator[Namespaces]:
    host_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.getcwd()
    private_fd = None
    unshared = False
    try:
        if hide_unified:
            libc.unshare(libc.CLONE_NEWNS)
            unshared = True
            # Private first, so that the tmpfs can never propagate to the host.
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
            libc.mount("tmpfs", UNIFIED, "tmpfs", flags, "mode=755")
            private_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        yield Namespaces(host_fd, private_fd, "private" if unshared else "host")
    finally:
        if unshared:
            libc.setns(host_fd, libc.CLONE_NEWNS, "host mount namespace")
            os.chdir(cwd)  # setns moved us to the namespace's root
        if private_fd is not None:
            os.close(private_fd)
        os.close(host_fd)


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[str], list[str]]  # given a container id unique to the run
    namespace: str = "private"


def run_tool(tool: Tool, namespaces: Namespaces, container_id: str) -> float:
    """Seconds from spawn to exit; raises ToolFailed on a non-zero exit."""
    namespaces.enter(tool.namespace if namespaces.private_fd is not None else "host")
    argv = tool.argv(container_id)
    start = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ToolFailed(tool.name, argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return elapsed


def checked_tool(tool: Tool, namespaces: Namespaces, container_id: str, notes: list[str]) -> Tool:
    """``tool`` once verified to run ``/bin/true``, moved to the host's namespace if it only
    works there."""
    try:
        run_tool(tool, namespaces, container_id)
        return tool
    except ToolFailed as exc:
        if namespaces.private_fd is None or tool.namespace == "host":
            raise
        failure = exc
    on_host = dataclasses.replace(tool, namespace="host")
    try:
        run_tool(on_host, namespaces, container_id + "-host")
    except ToolFailed:
        raise failure from None
    last_line = (failure.stderr.strip().splitlines() or ["no stderr"])[-1]
    notes.append(f"{tool.name}: failed in the private namespace ({last_line}); ran on host")
    return on_host


def measure(
    tools: Sequence[Tool], namespaces: Namespaces, runs: int, warmup: int, prefix: str
) -> list[Summary]:
    by_name = {tool.name: tool for tool in tools}
    samples: dict[str, list[float]] = {name: [] for name in by_name}
    for iteration in range(warmup + runs):
        for name in round_robin_order(list(by_name), iteration):
            settle()
            elapsed = run_tool(by_name[name], namespaces, f"{prefix}-{name}-{iteration}")
            if iteration >= warmup:
                samples[name].append(elapsed * 1000)
    return [Summary(name, tuple(values)) for name, values in samples.items()]


def _run_checked(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise ToolFailed(what, argv, proc.returncode, proc.stderr)
    return proc.stdout


def write_bundle(spec_tool: str, bundle: Path, rootfs: Path) -> None:
    bundle.mkdir()
    _run_checked([spec_tool, "spec"], f"{spec_tool} spec", cwd=bundle)
    config_path = bundle / "config.json"
    config = oci_config_for_true(json.loads(config_path.read_text()), str(rootfs))
    config_path.write_text(json.dumps(config, indent=2))


def oci_tool(name: str, binary: str, state: Path, bundle: Path) -> Tool:
    def argv(container_id: str) -> list[str]:
        return [binary, "--root", str(state), "run", "-b", str(bundle), container_id]

    return Tool(name, argv)


def podman_tool(binary: str, work: Path, rootfs: Path, cgroup_parent: str) -> Tool:
    base = [
        binary, "--root", str(work / "root"), "--runroot", str(work / "runroot"),
        "--tmpdir", str(work / "tmp"), "--network-config-dir", str(work / "networks"),
        "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--storage-driver", "overlay",
    ]
    # Root lacks CAP_SYS_RESOURCE here: podman's default ulimits would be refused.
    limits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
    run = ["run", "--rm", *limits, "--network", "none", "--cgroup-parent", cgroup_parent]

    def argv(container_id: str) -> list[str]:
        return [*base, *run, "--name", container_id, "--rootfs", str(rootfs), "/bin/true"]

    return Tool("podman", argv)


def build_tools(myctr: str, work: Path, rootfs: Path, prefix: str, notes: list[str]) -> list[Tool]:
    state = work / "myctr-state"
    tools = [Tool(REFERENCE, lambda _id: [myctr, "--root", str(state), "run", "--rm",
                                          "--network", "none", "--rootfs", str(rootfs),
                                          "/bin/true"])]
    oci = {name: shutil.which(name) for name in ("crun", "runc")}
    spec_tool = next((path for path in oci.values() if path), None)
    if spec_tool:  # one config.json for both runtimes
        write_bundle(spec_tool, work / "bundle", rootfs)
    for name, binary in oci.items():
        if binary:
            tools.append(oci_tool(name, binary, work / f"{name}-state", work / "bundle"))
        else:
            notes.append(f"{name}: not installed, skipped (make bench installs it)")
    podman = shutil.which("podman")
    if podman:
        tools.append(podman_tool(podman, work / "podman", rootfs, f"/{prefix}"))
    else:
        notes.append("podman: not installed, skipped (make bench installs it)")
    if shutil.which("unshare"):
        tools.append(Tool("baseline", lambda _id: list(BASELINE_ARGV)))
    else:
        notes.append("baseline: unshare not installed, skipped")
    return tools


def remove_leftover_containers(work: Path, notes: list[str]) -> None:
    """Delete what ``crun list``/``runc list`` still show in the bench's state dirs."""
    for name in ("crun", "runc"):
        binary, state = shutil.which(name), work / f"{name}-state"
        if binary is None or not state.exists():
            continue
        listed = _run_checked([binary, "--root", str(state), "list", "-q"], f"{name} list")
        for container_id in listed.split():
            notes.append(f"{name}: container {container_id} was left behind; deleted")
            _run_checked([binary, "--root", str(state), "delete", "-f", container_id],
                         f"{name} delete")


def remove_cgroups(prefix: str, wait: float = 10.0) -> None:
    """rmdir the cgroups named ``prefix*`` that the runtimes left at hierarchy tops.
    One still busy is retried for up to ``wait`` seconds: a conmon outlives the
    ``podman rm`` that stopped its container by a few milliseconds."""
    deadline = time.monotonic() + wait
    for hierarchy in cgroup_hierarchies(_read_mounts()):
        for top in Path(hierarchy).glob(f"{prefix}*"):
            for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                while True:
                    try:
                        os.rmdir(directory)
                        break
                    except OSError as exc:
                        if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


def remove_created_dirs(created: Sequence[str], notes: list[str]) -> None:
    for directory in sorted(created, key=len, reverse=True):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            notes.append(f"{directory}: created by podman during the bench, not empty, kept")


def remove_work(work: Path) -> None:
    left = mounts_under(_read_mounts(), str(work))
    if left:
        raise BenchError(f"mounts left under {work}, not removing it: {left}")
    shutil.rmtree(work)


def report_failure(exc: Exception, notes: Sequence[str]) -> int:
    """A bench's failure on stderr, after the notes gathered until then; main's exit status."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"bench failed: {exc}", file=sys.stderr)
    return 1


def benchmark(runs: int, warmup: int, notes: list[str]) -> list[Summary]:
    if os.geteuid() != 0:
        raise BenchError("the bench needs root (crun/runc bundles, podman, the cgroup tmpfs)")
    myctr = Path(sys.executable).with_name("myctr")
    if not myctr.exists():
        raise BenchError(f"{myctr} not found: run make deps")
    prefix = f"myctr-bench-{os.getpid()}"
    hybrid = is_hybrid_cgroup(_read_mounts())
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        stack.callback(remove_work, work)
        created = [d for d in PODMAN_HOST_DIRS if not os.path.exists(d)]
        stack.callback(remove_created_dirs, created, notes)
        stack.callback(remove_cgroups, prefix)
        rootfs = work / "rootfs"
        _run_checked([str(myctr), "rootfs", "bootstrap", "busybox", str(rootfs)], "bootstrap")
        tools = build_tools(str(myctr), work, rootfs, prefix, notes)
        namespaces = stack.enter_context(open_namespaces(hide_unified=hybrid))
        if hybrid:
            notes.append(f"hybrid cgroups: tools ran in a private mount namespace, "
                         f"tmpfs over {UNIFIED}")
        stack.callback(remove_leftover_containers, work, notes)
        tools = [checked_tool(tool, namespaces, f"{prefix}-{tool.name}-check", notes)
                 for tool in tools]
        print(f"measuring {', '.join(t.name for t in tools)}: {warmup} warm-up + {runs} runs",
              file=sys.stderr)
        summaries = measure(tools, namespaces, runs, warmup, prefix)
    return summaries


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.start_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per tool (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per tool first (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    try:
        summaries = benchmark(args.runs, args.warmup, notes)
    except BenchError as exc:
        return report_failure(exc, notes)
    if args.json:
        report = {
            "runs": args.runs,
            "warmup": args.warmup,
            "tools": {s.tool: {"median_ms": s.median_ms, "p10_ms": s.p10_ms, "p90_ms": s.p90_ms,
                               "samples_ms": list(s.samples_ms)} for s in summaries},
            "ratios": reference_ratios(summaries),
            "notes": notes,
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_table(summaries))
        print(f"baseline: {' '.join(BASELINE_ARGV)}")
        for note in notes:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
