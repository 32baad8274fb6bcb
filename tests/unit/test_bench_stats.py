"""The start-latency bench's pure parts: statistics, the table, mountinfo, the OCI config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.start_latency import (
    Summary,
    cgroup_hierarchies,
    format_ratio,
    format_table,
    is_hybrid_cgroup,
    median,
    mount_points,
    mounts_under,
    oci_config_for_true,
    percentile,
    ratio,
    reference_ratios,
    round_robin_order,
)

REPO = Path(__file__).resolve().parents[2]

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HIDDEN_UNIFIED = "90 41 0:99 / /sys/fs/cgroup/unified rw - tmpfs tmpfs rw,mode=755\n"
UNIFIED_ONLY = "31 23 0:28 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"


class TestPercentile:
    def test_interpolates_between_closest_ranks(self) -> None:
        """The 10th percentile of 1..11 sits on the second sample, of 1..10 between ranks."""
        assert percentile(list(range(1, 12)), 10) == 2
        assert percentile(list(range(1, 11)), 10) == pytest.approx(1.9)

    def test_extremes_are_min_and_max(self) -> None:
        """Percentiles 0 and 100 are the smallest and largest samples, whatever the order."""
        samples = [5.0, 1.0, 3.0]
        assert (percentile(samples, 0), percentile(samples, 100)) == (1.0, 5.0)

    def test_single_sample(self) -> None:
        """Every percentile of one sample is that sample."""
        assert percentile([7.5], 90) == 7.5

    def test_rejects_no_samples(self) -> None:
        """An empty sample list raises ValueError rather than returning a number."""
        with pytest.raises(ValueError, match="no samples"):
            percentile([], 50)

    def test_rejects_out_of_range(self) -> None:
        """A percentile outside 0..100 raises ValueError."""
        with pytest.raises(ValueError, match="outside"):
            percentile([1.0], 101)


class TestMedian:
    def test_odd_count(self) -> None:
        """The median of an odd count is the middle sample."""
        assert median([9.0, 1.0, 4.0]) == 4.0

    def test_even_count(self) -> None:
        """The median of an even count is the mean of the two middle samples."""
        assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


class TestRatio:
    def test_divides(self) -> None:
        """A ratio is the numerator over the denominator."""
        assert ratio(30.0, 10.0) == 3.0

    @pytest.mark.parametrize(("numerator", "denominator"), [(None, 1.0), (1.0, None), (1.0, 0.0)])
    def test_unknown(self, numerator: float | None, denominator: float | None) -> None:
        """A missing value or a non-positive denominator gives None."""
        assert ratio(numerator, denominator) is None


class TestFormatRatio:
    def test_two_decimals_and_x(self) -> None:
        """A ratio prints with two decimals and a trailing x."""
        assert format_ratio(6.041) == "6.04x"

    def test_none(self) -> None:
        """An unknown ratio prints as n/a."""
        assert format_ratio(None) == "n/a"


class TestRoundRobinOrder:
    def test_rotates_by_iteration(self) -> None:
        """Iteration i starts with the i-th tool and wraps around."""
        names = ["myctr", "crun", "runc"]
        assert round_robin_order(names, 0) == names
        assert round_robin_order(names, 1) == ["crun", "runc", "myctr"]
        assert round_robin_order(names, 5) == ["runc", "myctr", "crun"]

    def test_empty(self) -> None:
        """No tools give an empty order."""
        assert round_robin_order([], 3) == []


class TestSummary:
    def test_statistics_in_milliseconds(self) -> None:
        """A summary's median, p10 and p90 come from its millisecond samples."""
        summary = Summary("crun", tuple(float(v) for v in range(1, 12)))
        assert (summary.median_ms, summary.p10_ms, summary.p90_ms) == (6.0, 2.0, 10.0)


class TestReferenceRatios:
    def test_myctr_over_each_measured_tool(self) -> None:
        """Ratios are myctr's median over crun's and podman's, skipping tools not measured."""
        summaries = [Summary("myctr", (90.0,)), Summary("crun", (15.0,)),
                     Summary("podman", (120.0,))]
        assert reference_ratios(summaries) == {"myctr/crun": 6.0, "myctr/podman": 0.75}

    def test_without_myctr(self) -> None:
        """Without a myctr sample every ratio is None."""
        assert reference_ratios([Summary("crun", (15.0,))]) == {"myctr/crun": None}


class TestFormatTable:
    def test_rows_and_ratios(self) -> None:
        """The table has one row per tool with its ratio to myctr, then the myctr/X line."""
        table = format_table([Summary("myctr", (90.0, 100.0)), Summary("crun", (19.0,))])
        lines = table.splitlines()
        assert lines[0].split() == ["tool", "runs", "median", "ms", "p10", "ms", "p90", "ms",
                                    "vs", "myctr"]
        assert lines[1].split() == ["myctr", "2", "95.0", "91.0", "99.0", "1.00x"]
        assert lines[2].split() == ["crun", "1", "19.0", "19.0", "19.0", "0.20x"]
        assert lines[-1] == "myctr/crun: 5.00x"


class TestMountPoints:
    def test_point_and_type(self) -> None:
        """Each line gives its mount point and the fs type after the separator."""
        assert mount_points(HYBRID_MOUNTINFO)[2] == ("/sys/fs/cgroup/unified", "cgroup2")

    def test_optional_fields_and_escapes(self) -> None:
        """Optional fields before the separator are skipped and octal escapes decoded."""
        line = r"50 23 0:40 / /tmp/a\040b rw shared:3 master:1 - overlay overlay rw"
        assert mount_points(line) == [("/tmp/a b", "overlay")]


class TestIsHybridCgroup:
    def test_hybrid(self) -> None:
        """v1 hierarchies under a tmpfs plus cgroup2 at unified is hybrid."""
        assert is_hybrid_cgroup(mount_points(HYBRID_MOUNTINFO))

    def test_hidden_unified(self) -> None:
        """A tmpfs mounted later over unified hides the hybrid layout."""
        assert not is_hybrid_cgroup(mount_points(HYBRID_MOUNTINFO + HIDDEN_UNIFIED))

    def test_unified_only(self) -> None:
        """A cgroup2 mount at /sys/fs/cgroup is not hybrid."""
        assert not is_hybrid_cgroup(mount_points(UNIFIED_ONLY))


class TestMountsUnder:
    def test_directory_and_below_only(self) -> None:
        """Mounts at or below a directory count, a sibling sharing its prefix does not."""
        mounts = [("/tmp/b", "tmpfs"), ("/tmp/b/x", "overlay"), ("/tmp/bb", "tmpfs")]
        assert mounts_under(mounts, "/tmp/b") == ["/tmp/b", "/tmp/b/x"]


class TestCgroupHierarchies:
    def test_cgroup_types_only(self) -> None:
        """Only cgroup and cgroup2 mounts are hierarchies, not the tmpfs holding them."""
        assert cgroup_hierarchies(mount_points(HYBRID_MOUNTINFO)) == [
            "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]


class TestOciConfigForTrue:
    def test_runs_true_on_rootfs(self) -> None:
        """The config runs /bin/true without a terminal on the absolute rootfs, read-only."""
        generated: dict[str, Any] = {
            "ociVersion": "1.0.0",
            "root": {"path": "rootfs", "readonly": True},
            "process": {"terminal": True, "args": ["sh"], "cwd": "/"},
        }
        config = oci_config_for_true(generated, "/tmp/b/rootfs")
        assert config["root"] == {"path": "/tmp/b/rootfs", "readonly": True}
        assert config["process"] == {"terminal": False, "args": ["/bin/true"], "cwd": "/"}
        assert generated["process"]["args"] == ["sh"]


class TestImport:
    def test_import_has_no_side_effects(self) -> None:
        """Importing the bench in a fresh interpreter prints nothing and runs nothing."""
        proc = subprocess.run(
            [sys.executable, "-c", "import bench.start_latency"],
            cwd=REPO, capture_output=True, text=True, check=False,
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
