"""The supervisor bench's pure parts: /proc parsers, event pairing, podman argv, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.start_latency import podman_tool
from bench.supervisor_bench import (
    Row,
    Section,
    comparison,
    format_section,
    format_value,
    kernel_anon_kib,
    kib_fields,
    meets,
    oci_config,
    podman_events,
    restart_gaps,
    section_json,
    split_podman_argv,
    start_intervals,
    value_of,
)

MEMINFO = """\
MemTotal:       24683656 kB
MemAvailable:   24159764 kB
AnonPages:         69132 kB
Slab:             642352 kB
SUnreclaim:        43824 kB
KernelStack:        1488 kB
PageTables:         1996 kB
HugePages_Total:       0
"""
STATUS = "Name:\tpython\nVmRSS:\t   30884 kB\nThreads:\t3\n"


class TestKibFields:
    def test_reads_kb_lines(self) -> None:
        """Every ``Name: N kB`` line becomes a KiB count, tabs and padding ignored."""
        assert kib_fields(STATUS) == {"VmRSS": 30884}

    def test_skips_lines_without_unit(self) -> None:
        """Counts without ``kB`` (HugePages_Total) are not sizes and are left out."""
        assert "HugePages_Total" not in kib_fields(MEMINFO)

    def test_kernel_anon_leaves_out_reclaimable_slab(self) -> None:
        """kernel+anon is AnonPages + KernelStack + PageTables + SUnreclaim, not all Slab."""
        assert kernel_anon_kib(kib_fields(MEMINFO)) == 69132 + 1488 + 1996 + 43824


class TestRestartGaps:
    def test_pairs_each_death_with_next_start(self) -> None:
        """Each gap runs from a death to the first start after it."""
        events = [("start", 0.0), ("die", 1.0), ("restart-scheduled", 1.1), ("start", 1.5),
                  ("die", 2.0), ("start", 2.25)]
        assert restart_gaps(events, "die", "start") == [0.5, 0.25]

    def test_start_without_death_is_not_a_gap(self) -> None:
        """A start seen before any death (the first run) pairs with nothing."""
        assert restart_gaps([("start", 0.0), ("start", 1.0)], "die", "start") == []

    def test_death_without_start_is_dropped(self) -> None:
        """A trailing death whose restart was not seen yields no gap."""
        assert restart_gaps([("died", 1.0)], "died", "start") == []

    def test_start_intervals_are_consecutive_starts(self) -> None:
        """A cycle is the time from one start to the next."""
        events = [("start", 1.0), ("die", 1.1), ("start", 1.5), ("start", 2.5)]
        assert start_intervals(events, "start") == [0.5, 1.0]


class TestPodmanEvents:
    def test_keeps_named_container_in_time_order(self) -> None:
        """Events of other containers and system events are dropped; times keep their
        nanoseconds."""
        lines = [
            {"Status": "refresh", "Time": "2026-11-29T03:00:25.7Z", "Type": "system"},
            {"Name": "b", "Status": "start", "Time": "2026-11-29T03:00:25.000000001Z"},
            {"Name": "a", "Status": "start", "Time": "2026-11-29T03:00:25.900000000Z"},
            {"Name": "a", "Status": "died", "Time": "2026-11-29T03:00:25.800000000Z"},
        ]
        text = "\n".join(json.dumps(line) for line in lines) + "\n"
        events = podman_events(text, "a")
        assert [kind for kind, _ in events] == ["died", "start"]
        assert events[1][1] - events[0][1] == pytest.approx(0.1, abs=1e-6)


class TestSplitPodmanArgv:
    def test_splits_start_latency_argv(self) -> None:
        """start_latency's argv gives the global flags and the run flags without --rm,
        --name or the command."""
        argv = podman_tool("podman", Path("/w"), Path("/r"), "/cg").argv("x")
        global_flags, run_flags = split_podman_argv(argv)
        assert global_flags[0] == "podman" and "--runroot" in global_flags
        assert "run" not in global_flags
        assert "--rm" not in run_flags and "--name" not in run_flags
        assert run_flags[run_flags.index("--cgroup-parent") + 1] == "/cg"
        assert "nofile=20000:20000" in run_flags


class TestOciConfig:
    def test_runs_given_args_without_terminal(self) -> None:
        """The args replace the process's, the terminal is off, the rootfs is read-only."""
        config = {"process": {"args": ["sh"], "terminal": True, "cwd": "/"},
                  "root": {"path": "rootfs"}}
        result = oci_config(config, "/abs/rootfs", ["/bin/sleep", "30"])
        assert result["process"] == {"args": ["/bin/sleep", "30"], "terminal": False,
                                     "cwd": "/"}
        assert result["root"] == {"path": "/abs/rootfs", "readonly": True}
        assert config["process"]["args"] == ["sh"]


ROWS = (Row("myctr", "start", 10.0, "ms"), Row("crun", "start", 20.0, "ms"),
        Row("myctr", "rss", 50.0, "KiB"), Row("podman", "start", None, "ms"))


class TestReport:
    def test_value_of_picks_tool_and_metric(self) -> None:
        """Without a metric the tool's first row answers; with one, that row."""
        assert value_of(ROWS, "myctr") == 10.0
        assert value_of(ROWS, "myctr", "rss") == 50.0
        assert value_of(ROWS, "runc") is None

    def test_comparison_names_and_divides(self) -> None:
        """A comparison is labelled ``label a/b`` and is a's value over b's."""
        assert comparison(ROWS, "myctr", "crun", "start", "start:") == ("start: myctr/crun", 0.5)
        assert comparison(ROWS, "myctr", "podman") == ("myctr/podman", None)

    def test_meets_higher_and_lower_bounds(self) -> None:
        """meets checks value >= factor*bound, or <= with higher=False; unknown is None."""
        assert meets(9.0, 10.0, 0.8) is True
        assert meets(7.0, 10.0, 0.8) is False
        assert meets(10.0, 10.0, higher=False) is True
        assert meets(None, 10.0) is None and meets(1.0, None) is None

    def test_format_value_precision_follows_magnitude(self) -> None:
        """Three significant figures or so: 0 decimals from 100, 1 from 10, else 2."""
        assert [format_value(v, "ms") for v in (123.4, 12.34, 1.234)] == [
            "123 ms", "12.3 ms", "1.23 ms"]
        assert format_value(None, "ms") == "n/a"

    def test_section_renders_rows_ratios_and_targets(self) -> None:
        """The text has the title, one line per row, the ratios and each target's verdict."""
        section = Section("start", "title", "how", ROWS, (("myctr/crun", 0.5),),
                          (("myctr <= crun", True), ("x", False), ("y", None)))
        text = format_section(1, section)
        assert text.startswith("1. title\n   how: how\n")
        assert "myctr/crun 0.50x" in text
        assert "target: myctr <= crun: met" in text
        assert "target: x: MISSED" in text and "target: y: n/a" in text
        assert section_json(section)["comparisons"] == {"myctr/crun": 0.5}
