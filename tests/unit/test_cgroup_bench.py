"""The cgroup bench's pure parts: limits in each tool's terms, cgroup file lookup, the start
rows and ratios, OOM samples and event bookkeeping, argument parsing."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.cgroup_bench import (
    ADDED,
    CHILD,
    DIE_EVENT,
    EMIT_TO_RECEIPT,
    LIMITED,
    OOM_EMITTED,
    OOM_EVENT,
    PLAIN,
    QUICK,
    START_METRIC,
    TRIGGER,
    Limits,
    LineReader,
    OomRun,
    cgroup_files,
    child_note,
    drain,
    expected_cgroup_values,
    hog_command,
    limit_mismatches,
    memory_cgroup,
    myctr_resources,
    note_myctr_event,
    note_podman_event,
    oci_resources,
    oom_kill_count,
    oom_rows,
    oom_samples,
    parse_args,
    podman_event,
    podman_flags,
    poll_interval_us,
    receive_until,
    start_comparisons,
    start_rows,
    wait_for_kill,
    with_resources,
)
from bench.start_latency import BenchError
from bench.supervisor_bench import value_of
from runtime import cgroups as cg
from runtime.cgroups.limits import parse_resources
from supervisor.client import Client

MIB = 1 << 20


class TestLimits:
    def test_oci_resources_mean_what_myctr_parses(self) -> None:
        """crun/runc get the bytes, swap, quota and pids that myctr derives from the same
        flags (docker's memory+swap = twice the memory when no swap is given)."""
        limits = Limits("64m", "100", "1")
        parsed = parse_resources(myctr_resources(limits))
        oci = oci_resources(limits)
        assert oci["memory"] == {"limit": parsed.memory, "swap": parsed.swap_limit}
        assert oci["memory"]["limit"] == 64 * MIB and oci["memory"]["swap"] == 128 * MIB
        assert oci["cpu"] == {"quota": parsed.cpu_quota, "period": 100_000}
        assert oci["pids"] == {"limit": parsed.pids_limit} == {"limit": 100}

    def test_fractional_cpus_scale_the_quota(self) -> None:
        """--cpus 0.5 is half the 100 ms period."""
        assert oci_resources(Limits(cpus="0.5"))["cpu"]["quota"] == 50_000

    def test_podman_gets_the_cli_flags(self) -> None:
        """podman is given the flags as typed."""
        assert podman_flags(Limits("64m", "100", "1")) == [
            "--memory", "64m", "--pids-limit", "100", "--cpus", "1"]

    def test_with_resources_keeps_devices_and_copies(self) -> None:
        """The limits join linux.resources beside the generated device rules; the input
        config is not changed."""
        config = {"linux": {"namespaces": [], "resources": {"devices": [{"allow": False}]}},
                  "process": {}}
        result = with_resources(config, {"pids": {"limit": 5}})
        assert result["linux"]["resources"] == {"devices": [{"allow": False}],
                                                "pids": {"limit": 5}}
        assert result["linux"]["namespaces"] == []
        assert config["linux"]["resources"] == {"devices": [{"allow": False}]}

    def test_with_resources_without_linux_section(self) -> None:
        """A config without ``linux`` gets one."""
        assert with_resources({}, {"pids": {"limit": 5}}) == {
            "linux": {"resources": {"pids": {"limit": 5}}}}

    def test_expected_values_are_the_v1_files(self) -> None:
        """The cgroup files hold bytes, the pids count and the quota as decimal text."""
        assert expected_cgroup_values(Limits("64m", "100", "1")) == {
            "memory.limit_in_bytes": str(64 * MIB),
            "memory.memsw.limit_in_bytes": str(128 * MIB),
            "pids.max": "100", "cpu.cfs_quota_us": "100000"}

    def test_mismatches_name_file_and_values(self) -> None:
        """Each wrong or missing file is reported with what it holds and what was wanted."""
        expected = {"pids.max": "100", "cpu.cfs_quota_us": "100000"}
        assert limit_mismatches(expected, {"pids.max": "100", "cpu.cfs_quota_us": "100000"}) == []
        assert limit_mismatches(expected, {"pids.max": "max"}) == [
            "pids.max: got max, want 100", "cpu.cfs_quota_us: got nothing, want 100000"]


MOUNTINFO = """\
30 22 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 22 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 22 0:28 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
33 22 0:29 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
"""
PROC_CGROUP = """\
8:pids:/ctr
4:memory:/process_api/abc/ctr
1:cpu:/ctr
0::/
"""


class TestCgroupFiles:
    def test_maps_each_file_to_its_controllers_dir(self) -> None:
        """Files land in their controller's hierarchy, under the path /proc/PID/cgroup
        gives for that controller (nested for memory here)."""
        files = cgroup_files(PROC_CGROUP, cg.parse_mountinfo(MOUNTINFO),
                             ["memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us"])
        assert files == {
            "memory.limit_in_bytes": "/sys/fs/cgroup/memory/process_api/abc/ctr/"
                                     "memory.limit_in_bytes",
            "pids.max": "/sys/fs/cgroup/pids/ctr/pids.max",
            "cpu.cfs_quota_us": "/sys/fs/cgroup/cpu/ctr/cpu.cfs_quota_us"}

    def test_unmounted_controller_is_left_out(self) -> None:
        """Without a pids hierarchy, pids.max has no path."""
        mounts = cg.parse_mountinfo(MOUNTINFO.replace("rw,pids", "rw,blkio"))
        assert "pids.max" not in cgroup_files(PROC_CGROUP, mounts, ["pids.max"])

    def test_memory_cgroup_from_inspect_list(self) -> None:
        """The memory dir is the one with a /memory/ component; none without it."""
        dirs = ["/sys/fs/cgroup/cpu/myctr-x/c1", "/sys/fs/cgroup/memory/p/myctr-x/c1"]
        assert memory_cgroup(dirs) == dirs[1]
        assert memory_cgroup(dirs[:1]) is None
        assert memory_cgroup(None) is None


class TestStartReport:
    SAMPLES = {"myctr": {PLAIN: [0.010, 0.012, 0.014], LIMITED: [0.012, 0.015, 0.018]},
               "crun": {PLAIN: [0.020, 0.020, 0.020], LIMITED: [0.024, 0.024, 0.024]},
               "podman": {PLAIN: [0.100, 0.100, 0.100]}}

    def test_rows_give_medians_in_ms_and_what_limits_add(self) -> None:
        """Each variant's median in ms, and the difference of the medians with the ratio in
        the detail."""
        rows = start_rows(self.SAMPLES)
        assert value_of(rows, "myctr", f"{START_METRIC}, {PLAIN}") == pytest.approx(12.0)
        assert value_of(rows, "myctr", f"{START_METRIC}, {LIMITED}") == pytest.approx(15.0)
        added = next(r for r in rows if r.tool == "myctr" and r.metric == ADDED)
        assert added.value == pytest.approx(3.0)
        assert added.detail == "with/without 1.25x"
        plain = next(r for r in rows if r.tool == "myctr")
        assert "p90" in plain.detail and plain.samples == pytest.approx((10.0, 12.0, 14.0))

    def test_missing_variant_gives_no_added_row(self) -> None:
        """A tool measured without limits only (its limited run failed) has one row."""
        rows = start_rows(self.SAMPLES)
        assert [r.metric for r in rows if r.tool == "podman"] == [f"{START_METRIC}, {PLAIN}"]

    def test_comparisons_list_ratios_per_tool_then_against_each(self) -> None:
        """with/without for every tool that has both, then myctr over each other tool,
        without and with limits; a tool lacking a variant is left out of that one."""
        rows = start_rows(self.SAMPLES)
        found = dict(start_comparisons(rows, "myctr", ["crun", "podman"]))
        assert found["myctr with/without"] == pytest.approx(1.25)
        assert found["crun with/without"] == pytest.approx(1.2)
        assert "podman with/without" not in found
        assert found["without: myctr/crun"] == pytest.approx(0.6)
        assert found["without: myctr/podman"] == pytest.approx(0.12)
        assert found["with: myctr/crun"] == pytest.approx(15 / 24)
        assert "with: myctr/podman" not in found


def oom_run(**more: Any) -> OomRun:
    base: dict[str, Any] = {"kill_mono": 100.0, "kill_wall": 1000.0, "polls": 1000,
                            "poll_s": 0.002}
    return OomRun(**{**base, **more})


class TestOomSamples:
    def test_oom_kill_counter(self) -> None:
        """oom_kill is read from memory.oom_control, as bytes or text; 0 when absent."""
        text = "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n"
        assert oom_kill_count(text) == 3
        assert oom_kill_count(text.encode()) == 3
        assert oom_kill_count("oom_kill_disable 0\nunder_oom 0\n") == 0

    def test_latencies_from_each_clock(self) -> None:
        """Receipt latencies are monotonic differences; the event-time one compares wall
        clocks; emit-to-receipt is the difference of the two."""
        run = oom_run(oom_received=100.005, oom_time=1000.002, die_received=100.020)
        assert oom_samples([run], OOM_EVENT) == pytest.approx([0.005])
        assert oom_samples([run], OOM_EMITTED) == pytest.approx([0.002])
        assert oom_samples([run], EMIT_TO_RECEIPT) == pytest.approx([0.003])
        assert oom_samples([run], DIE_EVENT) == pytest.approx([0.020])

    def test_event_before_the_seen_kill_is_negative(self) -> None:
        """The poll sees the kill up to one period late, so an event received in between
        gives a small negative figure rather than being dropped."""
        run = oom_run(oom_received=99.9999, oom_time=999.9998)
        assert oom_samples([run], OOM_EVENT) == pytest.approx([-0.0001])
        assert oom_samples([run], OOM_EMITTED) == pytest.approx([-0.0002])

    def test_rows_without_samples_have_no_value(self) -> None:
        """A metric no run has (no oom event) is a row without value saying so."""
        (row,) = oom_rows("podman", [oom_run(die_received=100.1)], [OOM_EVENT])
        assert row.value is None and row.detail == "no sample in 1 run(s)"
        (row,) = oom_rows("podman", [oom_run(die_received=100.1)], [DIE_EVENT])
        assert row.value == pytest.approx(100.0)

    def test_rows_take_a_metric_prefix(self) -> None:
        """The child runs' rows are named with the prefix."""
        (row,) = oom_rows("myctr", [oom_run(oom_received=100.002)], [OOM_EVENT], CHILD)
        assert row.metric == CHILD + OOM_EVENT and row.value == pytest.approx(2.0)

    def test_child_note_says_when_the_event_came(self) -> None:
        """Missed runs are counted; a late event (with the exit) is said to be one."""
        late = child_note([oom_run(oom_late=102.0), oom_run()], 10)
        assert late.startswith("oom: in 2 of 10 runs a child process was OOM-killed")
        assert "only with the container's exit, when the bench killed it (1 of 2)" in late
        assert child_note([oom_run()], 3).endswith("nor when the container was killed")

    def test_poll_interval_is_median_per_read(self) -> None:
        """Time to the kill over the reads it took, in microseconds."""
        runs = [oom_run(polls=1000, poll_s=0.001), oom_run(polls=1000, poll_s=0.003),
                oom_run(polls=0, poll_s=0.0)]
        assert poll_interval_us(runs) == pytest.approx(2.0)
        assert poll_interval_us([]) is None


def event(container: str, kind: str, at: float = 1000.001) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "event",
            "params": {"request_id": 1, "container": container, "type": kind, "time": at}}


class TestMyctrEvents:
    def test_oom_then_die_are_recorded(self) -> None:
        """The first oom event gives receipt and event time; die its receipt."""
        run = note_myctr_event(oom_run(), event("c", "oom"), 1, "c", 100.004)
        run = note_myctr_event(run, event("c", "oom", 1000.5), 1, "c", 100.009)
        run = note_myctr_event(run, event("c", "die"), 1, "c", 100.010)
        assert (run.oom_received, run.oom_time, run.die_received) == (
            100.004, 1000.001, 100.010)

    def test_other_containers_and_responses_are_skipped(self) -> None:
        """Events of other containers and other messages change nothing."""
        run = oom_run()
        assert note_myctr_event(run, event("other", "oom"), 1, "c", 100.1) == run
        assert note_myctr_event(run, {"jsonrpc": "2.0", "id": 7, "result": {}}, 1, "c",
                                100.1) == run

    def test_end_of_stream_is_an_error(self) -> None:
        """The subscription's final response means the supervisor cut the stream."""
        with pytest.raises(BenchError, match="event stream ended"):
            note_myctr_event(oom_run(), {"jsonrpc": "2.0", "id": 1, "result": {"done": True}},
                             1, "c", 100.1)


def podman_line(name: str, status: str, time: str = "2026-11-29T04:00:00.5Z") -> str:
    return json.dumps({"ID": "x", "Name": name, "Status": status, "Time": time,
                       "Type": "container"})


class TestPodmanEvents:
    def test_parses_container_events(self) -> None:
        """Name, status and the time with its fraction; system events and blanks are
        None."""
        parsed = podman_event(podman_line("a", "oom"))
        assert parsed is not None
        name, status, at = parsed
        assert (name, status) == ("a", "oom")
        assert at % 1 == pytest.approx(0.5)
        system = json.dumps({"Status": "refresh", "Time": "2026-11-29T04:00:00Z",
                             "Type": "system"})
        assert podman_event(system) is None
        assert podman_event("  ") is None

    def test_oom_and_died_of_the_named_container(self) -> None:
        """oom sets the receipt and podman's own time; died the die receipt; other names
        are skipped."""
        run = note_podman_event(oom_run(), podman_line("b", "oom"), "a", 100.1)
        assert run == oom_run()
        run = note_podman_event(run, podman_line("a", "oom"), "a", 100.003)
        run = note_podman_event(run, podman_line("a", "died"), "a", 100.02)
        assert (run.oom_received, run.die_received) == (100.003, 100.02)
        assert run.oom_time is not None


class TestHogCommand:
    def test_waits_for_trigger_then_allocates(self) -> None:
        """Both hogs read the FIFO first and are exec'd, so the hog is the container's
        PID 1; without the probe a shell holds the bytes itself."""
        probe = hog_command(True)
        assert probe[:2] == ["/bin/sh", "-c"]
        assert probe[2] == f"read x < {TRIGGER}; exec /probe alloc 256"
        shell = hog_command(False)[2]
        assert shell.startswith(f"read x < {TRIGGER}; exec sh -c ")
        assert "head -c 100000000 /dev/zero" in shell and "/probe" not in shell

    def test_child_hog_leaves_the_container_running(self) -> None:
        """As a child, the hog is not exec'd and the shell sleeps on after it."""
        script = hog_command(True, child=True)[2]
        assert script.startswith(f"read x < {TRIGGER}; /probe alloc 256; exec sleep ")


class TestStreams:
    def test_line_reader_splits_and_keeps_partial(self) -> None:
        """Complete lines come with the time of their read; a partial line waits for its
        end; nothing waiting gives no lines."""
        r, w = os.pipe()
        try:
            reader = LineReader(r)
            os.write(w, b'{"a":1}\n{"b"')
            (line, at), = reader.lines(1)
            assert line == '{"a":1}' and at > 0
            assert reader.lines(0) == []
            os.write(w, b":2}\n")
            assert [text for text, _ in reader.lines(1)] == ['{"b":2}']
        finally:
            os.close(r)
            os.close(w)

    def test_drain_returns_only_what_arrived(self) -> None:
        """drain reads the complete messages already there and does not wait."""
        ours, theirs = socket.socketpair()
        try:
            client = Client(ours)
            assert drain(client) == []
            theirs.sendall(b'{"id":1}\n{"id":2}\n')
            assert [m["id"] for m in drain(client)] == [1, 2]
        finally:
            ours.close()
            theirs.close()


class TestWaitForKill:
    def test_sees_the_counter_and_takes_what_arrives(self, tmp_path: Path) -> None:
        """The hog is released through the FIFO; whatever the source delivers meanwhile is
        taken with its receipt time; the wait ends at the read that shows oom_kill grown."""
        control, fifo = tmp_path / "memory.oom_control", tmp_path / "go"
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        os.mkfifo(fifo)
        r, w = os.pipe()

        def hog() -> None:
            with fifo.open("rb") as trigger:
                assert trigger.readline() == b"go\n"
            os.write(w, b"x")
            control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")

        thread = threading.Thread(target=hog)
        thread.start()
        try:
            kill = wait_for_kill(str(control), fifo, r, lambda at: [(os.read(r, 1), at)])
        finally:
            thread.join()
            os.close(r)
            os.close(w)
        assert kill.polls >= 1 and kill.seconds >= 0
        assert [item for item, _ in kill.pending] == [b"x"]
        assert kill.pending[0][1] <= kill.mono

    def test_vanished_cgroup_is_a_bench_error(self, tmp_path: Path) -> None:
        """A control file that cannot be read means the hog's cgroup is gone."""
        with pytest.raises(BenchError, match="without an OOM kill"):
            wait_for_kill(str(tmp_path / "gone"), tmp_path / "go", 0, lambda at: [])


class TestReceiveUntil:
    def test_stops_at_the_kind_or_the_timeout(self) -> None:
        """Events are recorded until the wanted one; with nothing more coming, the wait
        ends at the timeout and the run is returned as it is."""
        ours, theirs = socket.socketpair()
        try:
            client = Client(ours)
            theirs.sendall(b"".join(json.dumps(event("c", kind)).encode() + b"\n"
                                    for kind in ("oom", "die")))
            run = receive_until(client, 1, "c", oom_run(), "oom", 1.0)
            assert run.oom_received is not None and run.die_received is None
            run = receive_until(client, 1, "c", run, "die", 1.0)
            assert run.die_received is not None
            assert receive_until(client, 1, "c", oom_run(), "die", 0.01) == oom_run()
        finally:
            ours.close()
            theirs.close()


class TestArgs:
    def test_quick_with_overrides(self) -> None:
        """--quick shrinks the counts; explicit counts win over it; --gap-ms is in ms."""
        args = parse_args(["--quick", "--runs", "7", "--gap-ms", "0"])
        assert args.sizes == QUICK._replace(runs=7, gap_s=0.0)
        assert parse_args(["--only", "oom"]).only == ["oom"]
        assert parse_args([]).sizes.gap_s == pytest.approx(0.05)

    def test_rejects_unknown_section_and_bad_counts(self) -> None:
        """An unknown section or a zero run count is a usage error."""
        with pytest.raises(SystemExit):
            parse_args(["--only", "start,nope"])
        with pytest.raises(SystemExit):
            parse_args(["--oom-runs", "0"])
        with pytest.raises(SystemExit):
            parse_args(["--gap-ms", "-1"])
