"""Capability names and docker's --cap-add/--cap-drop rules."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from runtime import capabilities, libc
from runtime.errors import SpecError


class TestResolve:
    def test_default_is_dockers_fourteen(self) -> None:
        """With no flags the set is docker's 14 default capabilities."""
        assert len(capabilities.resolve()) == 14
        assert capabilities.to_mask(capabilities.resolve()) == 0xA80425FB

    def test_add_and_drop(self) -> None:
        """Names are case-insensitive and the CAP_ prefix is optional."""
        caps = capabilities.resolve(add=["net_admin"], drop=["CAP_CHOWN"])
        assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps

    def test_drop_all_then_add(self) -> None:
        """--cap-drop ALL --cap-add NET_RAW leaves exactly NET_RAW."""
        assert capabilities.resolve(add=["NET_RAW"], drop=["ALL"]) == ("CAP_NET_RAW",)

    def test_add_all(self) -> None:
        """--cap-add ALL grants every capability the table knows."""
        assert capabilities.resolve(add=["ALL"]) == capabilities.ALL_CAPABILITIES

    def test_unknown_name(self) -> None:
        """An unknown capability is a SpecError naming it."""
        with pytest.raises(SpecError, match="unknown capability 'FLY'"):
            capabilities.resolve(add=["FLY"])

    def test_mask_round_trip(self) -> None:
        """from_mask(to_mask(x)) gives x back in kernel order."""
        caps = capabilities.resolve(add=["SYS_ADMIN", "BPF"])
        assert capabilities.from_mask(capabilities.to_mask(caps)) == caps


def _in_child(body: Callable[[], int]) -> int:
    """``body()``'s result (a mask, < 2**63) computed in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            os.write(write, str(body()).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return int(text)


def _bounding_bit_by_bit() -> int:
    return sum(1 << bit for bit in range(capabilities.last_cap() + 1)
               if libc.prctl(libc.PR_CAPBSET_READ, bit) == 1)


class TestBoundingSet:
    def test_read_whole_equals_bit_by_bit(self) -> None:
        assert capabilities.bounding_set() == _bounding_bit_by_bit()

    @pytest.mark.parametrize("remembered", [False, True])
    def test_drop_keeps_just_the_kept(self, remembered: bool) -> None:
        if os.geteuid() != 0:
            pytest.skip("dropping from the bounding set needs CAP_SETPCAP (root)")
        keep = capabilities.DEFAULT_CAPABILITIES
        before = capabilities.bounding_set()

        def drop() -> int:
            if remembered:  # as the zygote does before forking inits
                capabilities.remember_bounding_set()
            capabilities.drop_bounding(keep)
            return _bounding_bit_by_bit()

        assert _in_child(drop) == before & capabilities.to_mask(keep)
        assert capabilities.bounding_set() == before  # only the child's changed

    def test_drop_in_a_new_user_namespace(self) -> None:
        """A new user namespace starts with the full bounding set, whatever its
        creator had (this machine's root lacks CAP_SYS_RESOURCE): all but the kept
        bits go, the remembered set of the forker notwithstanding."""
        keep = ("CAP_CHOWN", "CAP_KILL")

        def drop() -> int:
            capabilities.remember_bounding_set()
            try:
                libc.unshare(libc.CLONE_NEWUSER)
            except OSError as exc:
                return -exc.errno
            full = (1 << (capabilities.last_cap() + 1)) - 1
            if capabilities.bounding_set() != full:
                return -1000
            capabilities.drop_bounding(keep, user_namespace=True)
            return _bounding_bit_by_bit()

        got = _in_child(drop)
        if got < 0 and got != -1000:
            pytest.skip(f"cannot create a user namespace here: {os.strerror(-got)}")
        assert got != -1000, "a new user namespace did not start with the full set"
        assert got == capabilities.to_mask(keep)
