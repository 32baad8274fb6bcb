"""docker's resource flags parsed into Resources, and the cgroup file parsers."""

from __future__ import annotations

import pytest

from runtime.cgroups import (
    NEEDS,
    OPTIONS,
    host_dir,
    parse_mountinfo,
    parse_proc_cgroup,
    require,
    state_tag,
)
from runtime.cgroups.limits import (
    CPU_PERIOD,
    Resources,
    expand_cpuset,
    format_cpuset,
    parse_bytes,
    parse_cpuset,
    parse_resources,
)
from runtime.errors import SpecError

MiB = 1 << 20


@pytest.mark.parametrize(("text", "value"), [
    ("64m", 64 * MiB), ("64M", 64 * MiB), ("1g", 1 << 30), ("1.5g", 3 << 29),
    ("512k", 512 << 10), ("100", 100), ("100b", 100), ("2mb", 2 * MiB), ("1GiB", 1 << 30),
])
def test_sizes_in_docker_units(text: str, value: int) -> None:
    assert parse_bytes(text, "--memory") == value


@pytest.mark.parametrize("text", ["1x", "m", "-1m", "1.2.3m", "64 mm"])
def test_bad_sizes_name_the_option(text: str) -> None:
    with pytest.raises(SpecError, match="invalid --memory"):
        parse_resources({"memory": text})


def test_memory_minimum_is_docker_s_six_mebibytes() -> None:
    with pytest.raises(SpecError, match="minimum is 6m"):
        parse_resources({"memory": "4m"})


def test_cpus_become_a_quota_over_the_default_period() -> None:
    r = parse_resources({"cpus": "0.5"})
    assert (r.cpu_quota, r.cpu_period) == (CPU_PERIOD // 2, CPU_PERIOD)
    assert parse_resources({"cpus": 1}).cpu_quota == CPU_PERIOD


@pytest.mark.parametrize("text", ["-1", "0", "abc", "nan", "100000"])
def test_bad_cpus(text: str) -> None:
    with pytest.raises(SpecError, match="invalid --cpus"):
        parse_resources({"cpus": text})


def test_cpus_and_cpu_quota_are_exclusive() -> None:
    with pytest.raises(SpecError, match="cannot be used together"):
        parse_resources({"cpus": "1", "cpu_quota": "50000"})


def test_cpuset_is_checked_against_online_cpus() -> None:
    assert parse_cpuset("0-1,3", online={0, 1, 2, 3}) == "0-1,3"
    with pytest.raises(SpecError, match="CPU 99 is not available"):
        parse_cpuset("99", online={0, 1})
    with pytest.raises(SpecError, match="expected a list"):
        parse_cpuset("0-", online={0, 1})
    with pytest.raises(SpecError, match="runs backwards"):
        parse_cpuset("3-1", online={0, 1, 2, 3})


def test_cpuset_round_trip() -> None:
    assert expand_cpuset("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


def test_pids_limit_zero_and_minus_one_mean_unlimited() -> None:
    assert parse_resources({"pids_limit": "0"}).pids_limit == -1
    assert parse_resources({"pids_limit": "-1"}).pids_limit == -1
    assert parse_resources({"pids_limit": "20"}).pids_limit == 20
    with pytest.raises(SpecError, match="--pids-limit"):
        parse_resources({"pids_limit": "-5"})


def test_swap_semantics_follow_docker() -> None:
    assert Resources(memory=64 * MiB).swap_limit == 128 * MiB  # default: twice
    assert Resources(memory=64 * MiB, memory_swap=-1).swap_limit == -1
    assert parse_resources({"memory": "32m", "memory_swap": "32m"}).swap_limit == 32 * MiB
    with pytest.raises(SpecError, match="needs --memory"):
        parse_resources({"memory_swap": "64m"})
    with pytest.raises(SpecError, match="at least --memory"):
        parse_resources({"memory": "64m", "memory_swap": "32m"})


def test_reservation_must_be_below_the_limit() -> None:
    with pytest.raises(SpecError, match="--memory-reservation must be below"):
        parse_resources({"memory": "32m", "memory_reservation": "64m"})


def test_shares_to_weight_as_crun_converts() -> None:
    assert Resources(cpu_shares=2).cpu_weight == 1
    assert Resources(cpu_shares=1024).cpu_weight == 39
    assert Resources(cpu_shares=262144).cpu_weight == 10000


def test_update_merges_only_given_fields() -> None:
    old = Resources(memory=64 * MiB, pids_limit=50)
    new = old.merged(Resources(memory=128 * MiB))
    assert (new.memory, new.pids_limit) == (128 * MiB, 50)
    assert Resources.from_json(new.to_json()) == new


def test_require_names_the_flag_and_the_reason() -> None:
    with pytest.raises(SpecError, match="--memory needs the cgroup memory controller: nope"):
        require(Resources(memory=64 * MiB), set(), "nope")
    require(Resources(memory=64 * MiB), {"memory"}, None)
    assert set(NEEDS) == set(OPTIONS) == set(Resources._fields)


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_mountinfo_of_a_hybrid_host() -> None:
    found = parse_mountinfo(HYBRID)
    assert [(h.mountpoint, h.version, h.controllers) for h in found] == [
        ("/sys/fs/cgroup/cpu", 1, ("cpu",)), ("/sys/fs/cgroup/memory", 1, ("memory",)),
        ("/sys/fs/cgroup/unified", 2, ())]


def test_proc_cgroup_and_host_dirs() -> None:
    own = parse_proc_cgroup("4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice\n")
    assert own == {"memory": "/process_api/abc", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
    mem = parse_mountinfo(HYBRID)[1]
    assert host_dir(mem, own["memory"]) == "/sys/fs/cgroup/memory/process_api/abc"
    nested = mem._replace(root="/process_api")
    assert host_dir(nested, "/process_api/abc") == "/sys/fs/cgroup/memory/abc"


def test_state_tags_differ_per_state_root() -> None:
    assert state_tag("/a") != state_tag("/b") and state_tag("/a").startswith("myctr-")


def test_io_max_lines_group_per_device() -> None:
    from runtime.cgroups.v2 import io_max_lines

    r = Resources(device_read_bps=((8, 0, MiB),), device_write_iops=((8, 0, 100), (8, 16, 0)))
    assert io_max_lines(r) == ["8:0 rbps=1048576 wiops=100", "8:16 wiops=max"]


def test_throttles_need_a_block_device() -> None:
    with pytest.raises(SpecError, match="/dev/null is not a block device"):
        parse_resources({"device_read_bps": ["/dev/null:1mb"]})
    with pytest.raises(SpecError, match="expected DEVICE:RATE"):
        parse_resources({"device_read_bps": ["1mb"]})
    assert Resources.from_json({"device_read_bps": [[8, 0, 5]]}).device_read_bps == ((8, 0, 5),)


def test_default_state_paths_have_a_cgroup_tag() -> None:
    """Without --root the state root has no base dir: the tag comes from the data dir
    (the demo's default paths crashed the supervisor once)."""
    from runtime.paths import StatePaths
    from supervisor.cgroups import CgroupManager

    paths = StatePaths.default(environ={}, uid=0)
    assert paths.base is None
    assert CgroupManager(paths).tag == state_tag(paths.data)


def test_docker_zero_means_unset_and_cpus_exclude_a_period() -> None:
    assert parse_resources({"memory": "64m", "memory_swap": "0"}).memory_swap is None
    assert parse_resources({"cpu_shares": "0"}).cpu_shares is None
    with pytest.raises(SpecError, match="--cpus and --cpu-period"):
        parse_resources({"cpus": "1", "cpu_period": "50000"})


def test_update_changes_are_checked_only_once_merged() -> None:
    """update --memory-swap alone is fine when the container has --memory."""
    change = parse_resources({"memory_swap": "256m"}, consistent=False)
    merged = Resources(memory=64 * MiB).merged(change)
    assert merged.swap_limit == 256 * MiB
    with pytest.raises(SpecError, match="needs --memory"):
        parse_resources({"memory_swap": "256m"})
