"""Image work side by side: myctr beside buildah and podman, in one run.

Run as ``python -m bench.image_bench [--quick] [--json] [--only build,load,start]
[--runs N] [--warmup K] [--archive-mib M]`` (root).

Sections::

    build   one Containerfile (two stages: RUN steps writing files, COPY of a small
            context dir, ENV, COPY --from, CMD) built by ``myctr build`` and by
            ``buildah bud``: cold (--no-cache) and fully cached (every RUN/COPY a cache
            hit, checked in each tool's output)
    load    ``myctr image load -i`` and ``podman load -i`` of one ~100 MB docker-archive
            (made once: myctr builds an image with a 100 MB file of random bytes on the
            busybox base, then saves it), the image removed before every load
    start   ``run --rm IMAGE /bin/true`` on the image just loaded: the first run (layer
            unpack excluded: both unpack at load time), load + first run (included), and
            a second run as the warm reference

Everything runs in :mod:`bench.supervisor_bench`'s set-up (``open_bench``): a temp work
dir, one busybox rootfs made with ``myctr rootfs bootstrap busybox``, a private mount
namespace on a hybrid-cgroup host, one myctr supervisor under WORK/myctr (stopped with
``supervisor.shutdown``). The base image of both sides is that rootfs as one tarball:
``myctr image import`` and ``podman import`` (into the containers-storage store that
buildah shares). podman and buildah get a private store in the work dir (``--root``,
``--runroot``, ``--storage-driver overlay``; podman also ``--tmpdir``,
``--network-config-dir``, ``--cgroup-manager cgroupfs``, ``--events-backend file``;
buildah ``TMPDIR``), runc as their runtime, and ``--cgroup-parent /myctr-ibench-PID``.
Cleanup runs whatever happened: ``buildah rm -a``, ``podman system reset -f`` on the
private store (unmounting what it mounted), the supervisor, the ``myctr-ibench-PID*``
cgroups, the work dir (removed only once no mount is left under it). No registry is
contacted: ``buildah bud --pull=never``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.start_latency import (
    BenchError,
    Summary,
    ToolFailed,
    format_ratio,
    report_failure,
    round_robin_order,
)
from bench.supervisor_bench import (
    TIMEOUT_S,
    Bench,
    Podman,
    Row,
    Section,
    Sizes,
    bench_parser,
    check_output,
    comparison,
    open_bench,
    parse_sections,
    print_report,
    sized,
    summary_detail,
    summary_of,
)
from runtime import libc
from runtime.errors import ContainerError
from runtime.paths import StatePaths

MIB = 1 << 20
BASE = "ibench-base"  # the busybox rootfs as an image, on every side
APP = "ibench-app"  # the Containerfile's image
BIG = "ibench-big"  # the image in the load archive
DEFAULT_STORE = "/var/lib/containers"  # podman's and buildah's, never used here
RUNTIME = "runc"  # podman's and buildah's OCI runtime (crun refuses hybrid cgroups)
CONTEXT_FILES = 5  # files in the context's app/ dir
CONTEXT_FILE_BYTES = 20_000
GREETING = "hello from the bench"

CONTAINERFILE = f"""\
FROM {BASE} AS builder
RUN mkdir -p /out && for i in 1 2 3 4 5 6 7 8; do head -c 100000 /dev/urandom > /out/r$i; done
RUN echo built > /out/stamp && cat /out/stamp
COPY app /src/app
RUN ls /src/app | wc -l > /out/count && sha256sum /src/app/* > /out/sums

FROM {BASE}
ENV GREETING="{GREETING}"
COPY --from=builder /out /opt/out
COPY app /app
RUN echo "$GREETING" > /etc/greeting && mkdir -p /var/lib/app && cp /opt/out/count /var/lib/app/
CMD ["/bin/sh", "-c", "cat /etc/greeting /var/lib/app/count"]
"""
# What the image's CMD prints when the build went right.
EXPECTED_OUTPUT = f"{GREETING}\n{CONTEXT_FILES}\n"
BIG_CONTAINERFILE = f"""\
FROM {BASE}
COPY blob /blob
CMD ["/bin/true"]
"""

# Row metrics.
COLD, CACHED = "cold build (--no-cache)", "cached rebuild"
LOAD = "image load"
FIRST, INCLUDED, WARM = "first run (unpack excluded)", "load + first run (included)", "second run"


class ImageSizes(NamedTuple):
    runs: int = 5  # timed runs per tool and case
    warmup: int = 1  # untimed iterations first
    archive_mib: int = 100  # the random file in the load archive's image


FULL = ImageSizes()
QUICK = ImageSizes(runs=2, warmup=1, archive_mib=20)


# Containerfiles and tool output: pure.


def logical_lines(text: str) -> list[str]:
    """Containerfile instructions: continuations joined, comments and blank lines dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending.strip():
        lines.append(pending.strip())
    return lines


def layer_steps(text: str) -> int:
    """How many instructions of a Containerfile make a layer (RUN, COPY, ADD): the cache
    hits a fully cached rebuild must report."""
    return sum(1 for line in logical_lines(text)
               if line.split(maxsplit=1)[0].upper() in ("RUN", "COPY", "ADD"))


def cacheable_steps(text: str) -> int:
    """How many instructions of a Containerfile buildah takes from its cache when nothing
    changed (``--layers``): every one but FROM, ENV and CMD included."""
    return sum(1 for line in logical_lines(text) if line.split(maxsplit=1)[0].upper() != "FROM")


def cache_hits(output: str) -> int:
    """The steps a build took from its cache: the ``--> Using cache ID`` lines that both
    ``myctr build`` and ``buildah bud --layers`` print."""
    return sum(1 for line in output.splitlines() if "Using cache" in line)


def check_cache_hits(tool: str, case: str, output: str, expected: int) -> None:
    """A cold build must hit nothing, a cached one every layer step."""
    hits = cache_hits(output)
    if hits != expected:
        raise BenchError(f"{tool}: {case}: {hits} cache hit(s), expected {expected}:\n{output}")


def store_flags(podman_global: Sequence[str]) -> list[str]:
    """The containers-storage flags (``--root``, ``--runroot``, ``--storage-driver``) of a
    podman command line, which buildah takes too: buildah then works in podman's store."""
    wanted = ("--root", "--runroot", "--storage-driver")
    flags = []
    for flag, value in itertools.pairwise(podman_global):
        if flag in wanted:
            flags += [flag, value]
    missing = [f for f in wanted if f not in flags]
    if missing:
        raise BenchError(f"podman's command line has no {', '.join(missing)}")
    return flags


def archive_diff_ids(archive: Path) -> list[str]:
    """The layer diff ids of the (first) image in a docker-archive, base first."""
    with tarfile.open(archive) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        config = json.load(_member(tar, manifest[0]["Config"]))
    return list(config["rootfs"]["diff_ids"])


def _member(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name)
    if member is None:
        raise BenchError(f"{name} is not a file in the archive")
    return member


def context_files(seed: int = 1) -> dict[str, bytes]:
    """The build context's app/ files: the same bytes on every run (the build cache keys
    on content)."""
    rng = random.Random(seed)
    return {f"app/file{i}.bin": rng.randbytes(CONTEXT_FILE_BYTES)
            for i in range(1, CONTEXT_FILES + 1)}


def write_context(directory: Path, containerfile: str, files: Mapping[str, bytes]) -> None:
    directory.mkdir()
    (directory / "Containerfile").write_text(containerfile)
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def timed_rows(tool: str, samples: Mapping[str, Sequence[float]]) -> list[Row]:
    """A median row (ms) per metric of ``tool``, with p10, p90 and n."""
    rows = []
    for metric, seconds in samples.items():
        if seconds:
            summary: Summary = summary_of(tool, seconds)
            rows.append(Row(tool, metric, summary.median_ms, "ms", summary_detail(summary),
                            summary.samples_ms))
    return rows


def all_ratios(sections: Sequence[Section]) -> dict[str, float | None]:
    """Every section's comparisons, each named after its section: the ``ratios:`` line."""
    return {f"{s.name} {name}": value for s in sections for name, value in s.comparisons}


def format_ratios(ratios: Mapping[str, float | None]) -> str:
    return "ratios: " + "  ".join(f"{name} {format_ratio(value)}"
                                  for name, value in ratios.items())


def report_sections(sections: Sequence[Section], names: Sequence[str], notes: Sequence[str],
                    as_json: bool, extra: Mapping[str, object]) -> int:
    """The end of a run: the tables (or JSON with ``extra``), the ``ratios:`` line, the
    notes."""
    ratios = all_ratios(sections)
    if as_json:
        print_report(sections, names, notes, {**extra, "ratios": ratios})
        return 0
    print_report(sections, names, [])
    print()
    print(format_ratios(ratios))
    for note in notes:
        print(f"note: {note}")
    return 0


# Processes.


def progress(message: str) -> None:
    print(f"[image_bench] {message}", file=sys.stderr, flush=True)


def timed(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> tuple[float,
                                                                                        str]:
    """Seconds from spawn to exit, and stdout (stderr too: buildah prints its steps there);
    raises ToolFailed on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=None if env is None else dict(env),
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ToolFailed(what, list(argv), proc.returncode, proc.stdout + proc.stderr)
    return elapsed, proc.stdout + proc.stderr


@dataclasses.dataclass
class Sides:
    """The tools of this bench, as command lines."""

    myctr: str
    root: Path  # myctr's state root (its supervisor runs)
    podman: Podman | None
    buildah: list[str] | None  # buildah with the store flags
    buildah_env: dict[str, str]
    cgroup_parent: str

    def my(self, *args: str | Path) -> list[str]:
        return [self.myctr, "--root", str(self.root), *map(str, args)]

    def pod(self, *args: str) -> list[str]:
        if self.podman is None:
            raise BenchError("podman is not available")
        return self.podman.argv(*args)

    def podman_run(self, image: str, *command: str) -> list[str]:
        if self.podman is None:
            raise BenchError("podman is not available")
        return [*self.podman.global_flags, "run", "--rm", *self.podman.run_flags,
                "--runtime", RUNTIME, image, *command]

    def bud(self, *args: str | Path) -> list[str]:
        if self.buildah is None:
            raise BenchError("buildah is not available")
        return [*self.buildah, "bud", "--isolation", "oci", "--runtime", RUNTIME,
                "--network", "none", "--cgroup-parent", self.cgroup_parent, "--layers",
                "--pull=never", *map(str, args)]

    def layer_dir(self, diff_id: str) -> Path:
        """Where myctr keeps a layer unpacked (runtime/images/store.py's layout)."""
        return Path(StatePaths.under(self.root).data, "images", "layers",
                    diff_id.split(":", 1)[-1])


def find_sides(bench: Bench) -> Sides:
    buildah = shutil.which("buildah")
    podman = bench.podman
    if podman is None:
        bench.notes.append("podman missing or not working: load, start and buildah (which "
                           "needs podman import for its base image) skipped")
    if buildah is None:
        bench.notes.append("buildah: not installed, skipped (apt-get install buildah)")
    flags = store_flags(podman.global_flags) if podman else None
    tmp = bench.work / "buildah-tmp"
    tmp.mkdir()
    return Sides(bench.myctr, bench.sup.root, podman,
                 [buildah, *flags] if buildah and flags else None,
                 {**os.environ, "TMPDIR": str(tmp)}, f"/{bench.prefix}-buildah")


@contextlib.contextmanager
def private_stores(sides: Sides, notes: list[str]) -> Iterator[None]:
    """Undo what buildah and podman left in the bench's store, mounts included."""
    try:
        yield
    finally:
        if sides.buildah is not None:
            _cleanup([*sides.buildah, "rm", "-a"], "buildah rm -a", notes)
        if sides.podman is not None:
            _cleanup(sides.pod("system", "reset", "-f"), "podman system reset", notes)


@contextlib.contextmanager
def hidden_default_store(bench: Bench) -> Iterator[None]:
    """A tmpfs over /var/lib/containers in the bench's private mount namespace: whatever
    flags they get, podman and buildah write their blob-info cache to
    /var/lib/containers/cache as root; hidden so, nothing of the host's default store can
    be read or written. Without a private namespace (not a hybrid host), a note."""
    if bench.namespaces.private_fd is None or not os.path.isdir(DEFAULT_STORE):
        bench.notes.append(f"{DEFAULT_STORE} not hidden (no private mount namespace, or it "
                           "does not exist): podman and buildah may write their "
                           "blob-info cache there")
        yield
        return
    libc.mount("tmpfs", DEFAULT_STORE, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=700")
    bench.notes.append(f"{DEFAULT_STORE} hidden under a tmpfs in the private namespace "
                       "(podman's and buildah's blob-info cache lands there, not on the host)")
    try:
        yield
    finally:
        libc.umount2(DEFAULT_STORE, libc.MNT_DETACH)


def _cleanup(argv: list[str], what: str, notes: list[str]) -> None:
    try:
        check_output(argv, what)
    except BenchError as exc:
        notes.append(f"cleanup: {exc}")


def import_base(bench: Bench, sides: Sides) -> None:
    """The rootfs as one uncompressed tarball, imported by both sides: same bytes, same
    layer."""
    tarball = bench.work / "base.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(bench.rootfs, arcname=".")
    check_output(sides.my("image", "import", tarball, BASE), "myctr image import")
    if sides.podman is not None:
        check_output(sides.pod("import", str(tarball), f"localhost/{BASE}"), "podman import")


# 1. build.


def measure_build(bench: Bench, sides: Sides, sizes: ImageSizes) -> Section:
    context = bench.work / "context"
    write_context(context, CONTAINERFILE, context_files())
    steps = layer_steps(CONTAINERFILE)
    # myctr reports a hit per layer step, buildah per instruction (ENV, CMD too)
    cached_hits = {"myctr": steps, "buildah": cacheable_steps(CONTAINERFILE)}
    builders: dict[str, Callable[[bool], tuple[float, str]]] = {
        "myctr": lambda cold: timed(sides.my("build", "--network", "none",
                                             *(["--no-cache"] if cold else []), "-t", APP,
                                             context), "myctr build")}
    if sides.buildah is not None:
        builders["buildah"] = lambda cold: timed(
            sides.bud(*(["--no-cache"] if cold else []), "-t", APP, context), "buildah bud",
            sides.buildah_env)
    # The first build of each fills its cache; the image must do what the file says.
    for build in builders.values():
        build(False)
    check_app_output(sides)
    samples: dict[str, dict[str, list[float]]] = {n: {COLD: [], CACHED: []} for n in builders}
    for iteration in range(sizes.warmup + sizes.runs):
        for name in round_robin_order(list(builders), iteration):
            for case, cold in ((COLD, True), (CACHED, False)):
                os.sync()
                elapsed, output = builders[name](cold)
                check_cache_hits(name, case, output, 0 if cold else cached_hits[name])
                if iteration >= sizes.warmup:
                    samples[name][case].append(elapsed)
    rows = tuple(row for name in builders for row in timed_rows(name, samples[name]))
    return Section(
        "build", f"build of one Containerfile, {sizes.runs} runs per tool and case "
                 f"({sizes.warmup} warm-up), round-robin",
        f"2 stages, {steps} layer steps (4 RUN, 3 COPY incl. --from, ENV, CMD), a context "
        f"of {CONTEXT_FILES} x {CONTEXT_FILE_BYTES // 1000} kB; whole process, spawn to "
        "exit, after a sync. myctr: `myctr build --network none [--no-cache] -t NAME CTX` "
        "(RUN steps in real containers over an overlay; Python CLI start included). "
        f"buildah: `bud --isolation oci --runtime {RUNTIME} --network none --layers --pull="
        "never [--no-cache]` on overlay (RUN steps in runc containers). cold: every step "
        "run (0 cache hits checked); cached: every RUN/COPY a cache hit (checked)",
        rows, (comparison(rows, "myctr", "buildah", COLD, "cold:"),
               comparison(rows, "myctr", "buildah", CACHED, "cached:")))


def check_app_output(sides: Sides) -> None:
    """Both images print the greeting and the file count."""
    runs = {"myctr": sides.my("run", "--rm", APP)}
    if sides.buildah is not None and sides.podman is not None:
        runs["buildah"] = sides.podman_run(f"localhost/{APP}")
    for name, argv in runs.items():
        output = check_output(argv, f"{name}'s image")
        if output != EXPECTED_OUTPUT:
            raise BenchError(f"{name}'s image printed {output!r}, not {EXPECTED_OUTPUT!r}")


# 2. load, 3. first start.


@dataclasses.dataclass
class LoadRuns:
    samples: dict[str, dict[str, list[float]]]
    archive_bytes: int


def make_archive(bench: Bench, sides: Sides, sizes: ImageSizes) -> Path:
    """A docker-archive of an image with ``archive_mib`` MiB of random bytes in one layer
    on the base, built and saved by myctr; the image is removed again."""
    context = bench.work / "big-context"
    context.mkdir()
    with (context / "blob").open("wb") as blob:
        for _ in range(sizes.archive_mib):
            blob.write(os.urandom(MIB))
    (context / "Containerfile").write_text(BIG_CONTAINERFILE)
    check_output(sides.my("build", "-q", "-t", BIG, context), "myctr build (archive)")
    archive = bench.work / "big.tar"
    check_output(sides.my("save", "-o", archive, "--format", "docker-archive", BIG),
                 "myctr save")
    shutil.rmtree(context)
    return archive


def remove_big_myctr(sides: Sides, big_layer: str) -> None:
    """``image rm`` + ``image prune``; the big layer must be gone, else a load would find
    it unpacked already."""
    with contextlib.suppress(ToolFailed):  # not there yet
        check_output(sides.my("image", "rm", BIG), "myctr image rm")
    check_output(sides.my("image", "prune"), "myctr image prune")
    if sides.layer_dir(big_layer).exists():
        raise BenchError(f"myctr: image rm + prune left the layer {sides.layer_dir(big_layer)}")


def measure_loads(bench: Bench, sides: Sides, sizes: ImageSizes, archive: Path,
                  with_runs: bool) -> LoadRuns:
    big_layer = archive_diff_ids(archive)[-1]
    removers: dict[str, Callable[[], object]] = {"myctr": lambda: remove_big_myctr(sides,
                                                                                  big_layer)}
    loads = {"myctr": sides.my("image", "load", "-i", archive)}
    runs = {"myctr": sides.my("run", "--rm", BIG, "/bin/true")}
    if sides.podman is not None:
        removers["podman"] = lambda: check_output(sides.pod("rmi", "--ignore", f"localhost/{BIG}"),
                                                  "podman rmi")
        loads["podman"] = sides.pod("load", "-q", "-i", str(archive))
        runs["podman"] = sides.podman_run(f"localhost/{BIG}", "/bin/true")
    metrics = (LOAD, FIRST, INCLUDED, WARM) if with_runs else (LOAD,)
    samples: dict[str, dict[str, list[float]]] = {n: {m: [] for m in metrics} for n in loads}
    for iteration in range(sizes.warmup + sizes.runs):
        for name in round_robin_order(list(loads), iteration):
            removers[name]()
            os.sync()  # the last load's writeback must not land on this one
            load_s, _ = timed(loads[name], f"{name} load")
            taken = {LOAD: load_s}
            if with_runs:
                first_s, _ = timed(runs[name], f"{name} run (first)")
                warm_s, _ = timed(runs[name], f"{name} run (second)")
                taken.update({FIRST: first_s, INCLUDED: load_s + first_s, WARM: warm_s})
            if iteration >= sizes.warmup:
                for metric, value in taken.items():
                    samples[name][metric].append(value)
    return LoadRuns(samples, archive.stat().st_size)


def load_section(runs: LoadRuns, sizes: ImageSizes) -> Section:
    rows = tuple(row for name, by_metric in runs.samples.items()
                 for row in timed_rows(name, {LOAD: by_metric[LOAD]}))
    size_mb = runs.archive_bytes / 1e6
    return Section(
        "load", f"image load of a {size_mb:.0f} MB docker-archive, {sizes.runs} runs per tool "
                f"({sizes.warmup} warm-up), round-robin",
        f"one archive ({sizes.archive_mib} MiB of random bytes in one layer over the busybox "
        "base, built and saved by myctr) loaded with `myctr image load -i` / `podman load "
        "-q -i` (overlay store); whole process, after a sync. Before each load the image is "
        "removed (myctr: image rm + image prune, the big layer's unpacked dir checked gone; "
        "podman: rmi); the base layer stays in both stores. Both unpack the layers at load",
        rows, (comparison(rows, "myctr", "podman", LOAD),))


def start_section(runs: LoadRuns, sizes: ImageSizes) -> Section:
    rows = tuple(row for name, by_metric in runs.samples.items()
                 for row in timed_rows(name, {m: by_metric[m] for m in (FIRST, INCLUDED,
                                                                        WARM)}))
    return Section(
        "start", f"first start on a freshly loaded image, {sizes.runs} runs per tool "
                 f"({sizes.warmup} warm-up)",
        "`run --rm IMAGE /bin/true` right after the load of the section above (myctr: "
        "`myctr run --rm`, network none; podman: `run --rm --runtime runc --network none` "
        "with the ulimit flags); excluded: the first run alone (both unpacked the layers at "
        "load time); included: load + first run; second run: the same again, as the warm "
        "reference. Whole process each",
        rows, (comparison(rows, "myctr", "podman", FIRST, "excluded:"),
               comparison(rows, "myctr", "podman", INCLUDED, "included:"),
               comparison(rows, "myctr", "podman", WARM, "second run:")))


# Running it all.


SECTIONS = ("build", "load", "start")


def benchmark(sizes: ImageSizes, only: Sequence[str], notes: list[str]) -> list[Section]:
    if os.geteuid() != 0:
        raise BenchError("the bench needs root (podman, buildah, the cgroup tmpfs)")
    prefix = f"myctr-ibench-{os.getpid()}"
    # chdir: conmon writes files into its working directory (the caller's)
    with open_bench(prefix, Sizes(runs=1, warmup=0), notes, chdir=True) as bench, \
            contextlib.ExitStack() as stack:
        sides = find_sides(bench)
        stack.enter_context(hidden_default_store(bench))
        stack.enter_context(private_stores(sides, notes))
        progress(f"myctr, {'buildah, ' if sides.buildah else ''}"
                 f"{'podman' if sides.podman else 'no podman'}; work dir {bench.work}")
        import_base(bench, sides)
        sections = []
        if "build" in only:
            progress("build ...")
            sections.append(measure_build(bench, sides, sizes))
        if "load" in only or "start" in only:
            progress(f"load{' + start' if 'start' in only else ''}: making the archive ...")
            archive = make_archive(bench, sides, sizes)
            progress("load ...")
            runs = measure_loads(bench, sides, sizes, archive, "start" in only)
            if "load" in only:
                sections.append(load_section(runs, sizes))
            if "start" in only:
                sections.append(start_section(runs, sizes))
        return sections


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("image_bench", __doc__)
    parser.add_argument("--runs", type=int, help=f"timed runs per tool and case ({FULL.runs}; "
                                                 f"--quick {QUICK.runs})")
    parser.add_argument("--warmup", type=int, help=f"untimed iterations first ({FULL.warmup})")
    parser.add_argument("--archive-mib", type=int, help=f"MiB of random bytes in the load "
                                                        f"archive ({FULL.archive_mib}; --quick "
                                                        f"{QUICK.archive_mib})")
    args = parse_sections(parser, argv, SECTIONS)
    args.sizes = sized(args, FULL, QUICK, runs=args.runs, warmup=args.warmup,
                       archive_mib=args.archive_mib)
    if args.sizes.runs < 1 or args.sizes.warmup < 0 or args.sizes.archive_mib < 1:
        parser.error("--runs and --archive-mib must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    try:
        sections = benchmark(args.sizes, args.only, notes)
    except (BenchError, ContainerError, subprocess.TimeoutExpired) as exc:
        return report_failure(exc, notes)
    return report_sections(sections, SECTIONS, notes, args.json,
                           {"sizes": args.sizes._asdict()})


if __name__ == "__main__":
    sys.exit(main())
