"""The container directory: atomic writes, names, resolv.conf, the stale sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import containerdir
from runtime.containerdir import ContainerDir, ContainerState
from runtime.errors import Conflict, NotFound
from runtime.paths import StatePaths


def _state(cid: str, owner_pid: int, auto_remove: bool = True) -> ContainerState:
    return ContainerState(id=cid, name=f"n-{cid[:4]}", status="running",
                          owner_pid=owner_pid,
                          owner_start=containerdir.process_start_time(owner_pid),
                          auto_remove=auto_remove, created=time.time())


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    p = StatePaths.under(tmp_path)
    p.ensure()
    return p


class TestNames:
    def test_second_claim_conflicts(self, paths: StatePaths) -> None:
        """A name can be claimed once; the error names the holder."""
        containerdir.claim_name(paths, "web", "a" * 64)
        with pytest.raises(Conflict, match='"web" is already in use by aaaaaaaaaaaa'):
            containerdir.claim_name(paths, "web", "b" * 64)

    def test_lookup_by_name_and_prefix(self, paths: StatePaths) -> None:
        """Containers are found by name, full id or a unique prefix."""
        cid = containerdir.new_id()
        ContainerDir(paths, cid).create(_state(cid, os.getpid()))
        containerdir.claim_name(paths, "web", cid)
        assert containerdir.lookup(paths, "web").id == cid
        assert containerdir.lookup(paths, cid[:5]).id == cid
        with pytest.raises(NotFound):
            containerdir.lookup(paths, "nope")


class TestSweep:
    def test_dead_owner_is_swept(self, paths: StatePaths) -> None:
        """A --rm container whose owner died is removed; a live owner's is kept."""
        dead, alive = containerdir.new_id(), containerdir.new_id()
        state = _state(dead, os.getpid())._replace(owner_start=1)  # pid reused: not ours
        ContainerDir(paths, dead).create(state)
        ContainerDir(paths, alive).create(_state(alive, os.getpid()))
        removed = containerdir.sweep_stale(paths, lambda cdir: cdir.remove())
        assert removed == [dead]
        assert sorted(os.listdir(paths.containers)) == [alive]

    def test_dead_owner_without_rm_is_marked_exited(self, paths: StatePaths) -> None:
        """A kept container whose owner died is marked exited (137), not removed."""
        cid = containerdir.new_id()
        state = _state(cid, os.getpid(), auto_remove=False)._replace(owner_start=1)
        ContainerDir(paths, cid).create(state)
        containerdir.sweep_stale(paths, lambda cdir: cdir.remove())
        after = ContainerDir(paths, cid).read_state()
        assert (after.status, after.exit_code) == ("exited", 137)


class TestFiles:
    def test_atomic_write_leaves_no_temp(self, tmp_path: Path) -> None:
        """atomic_write replaces the file and leaves no temporary behind."""
        target = tmp_path / "f"
        containerdir.atomic_write(str(target), b"one")
        containerdir.atomic_write(str(target), b"two")
        assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]

    def test_resolv_conf_drops_loopback_resolvers(self) -> None:
        """Loopback nameservers are dropped unless the container shares the host's net."""
        host = "nameserver 127.0.0.53\nnameserver 9.9.9.9\nsearch lan\n"
        assert containerdir.resolv_conf(host, keep_loopback=False) == (
            "nameserver 9.9.9.9\nsearch lan\n")
        assert containerdir.resolv_conf(host, keep_loopback=True) == host
