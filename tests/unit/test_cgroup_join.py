"""How an init gets into its cgroups: cloned into a v2 cgroup, moving itself into v1
cgroups (``tasks`` files), or moved by pid (``cgroup.procs``) otherwise."""

from __future__ import annotations

from pathlib import Path

from runtime.create import tasks_files


def _cgroup(root: Path, name: str, v1: bool) -> str:
    d = root / name
    d.mkdir()
    (d / "cgroup.procs").write_text("")
    if v1:
        (d / "tasks").write_text("")
    return str(d / "cgroup.procs")


def test_v1_hierarchies_give_their_tasks_files(tmp_path: Path) -> None:
    procs = (_cgroup(tmp_path, "memory", True), _cgroup(tmp_path, "pids", True))
    assert tasks_files(procs) == (str(tmp_path / "memory" / "tasks"),
                                  str(tmp_path / "pids" / "tasks"))


def test_v2_or_a_mix_or_nothing_gives_none(tmp_path: Path) -> None:
    assert tasks_files((_cgroup(tmp_path, "unified", False),)) == ()
    assert tasks_files((_cgroup(tmp_path, "a", True), _cgroup(tmp_path, "b", False))) == ()
    assert tasks_files(()) == ()


def test_killing_a_v1_cgroup_that_is_gone_does_nothing(tmp_path: Path) -> None:
    """A kill racing the run's teardown (rm -f of a container between two restarts)
    finds its directories gone: nothing to signal, nothing left frozen, no error."""
    from runtime.cgroups.v1 import V1Cgroup

    gone = {c: str(tmp_path / c / "ctr") for c in ("freezer", "memory", "pids")}
    V1Cgroup(gone).kill()
