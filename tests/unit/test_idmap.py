"""/etc/subuid parsing and the maps a rootless container gets."""

from __future__ import annotations

import pytest

from runtime import idmap
from runtime.errors import SpecError
from runtime.spec import IdMapping

SUBUID = "# comment\nalice:100000:65536\nbob:165536:65536\n1001:300000:1000\nalice:400000:10\n"


class TestParse:
    def test_ranges_by_name_and_uid(self) -> None:
        """A user's ranges are found by name or by numeric uid, in file order."""
        ranges = idmap.parse_subid(SUBUID, "alice", 1001)
        assert ranges == (idmap.SubIdRange(100000, 65536), idmap.SubIdRange(300000, 1000),
                          idmap.SubIdRange(400000, 10))

    def test_garbage_lines_are_skipped(self) -> None:
        """Malformed lines and zero-size ranges are ignored."""
        assert idmap.parse_subid("alice:x:1\nalice:5:0\nalice\n", "alice", 1) == ()


class TestMappings:
    def test_root_is_the_user_then_ranges(self) -> None:
        """Container 0 is the user; container 1.. covers the ranges back to back."""
        maps = idmap.rootless_mappings(1000, idmap.parse_subid(SUBUID, "alice", 1))
        assert maps == (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536),
                        IdMapping(65537, 400000, 10))

    def test_no_ranges_fall_back_to_single_id(self) -> None:
        """Without ranges the plan maps only root, and says why."""
        plan = idmap.plan_rootless(1000, 1000, "carol", SUBUID, SUBUID)
        assert plan.single_id and plan.uid_mappings == (IdMapping(0, 1000, 1),)
        assert plan.warning is not None

    def test_format_map(self) -> None:
        """Maps are written one 'inside outside size' line each."""
        assert idmap.format_map([IdMapping(0, 1000, 1), IdMapping(1, 5, 2)]) == \
            "0 1000 1\n1 5 2\n"

    @pytest.mark.parametrize("value", ["1:2", "a:b:c", "0:0:0", "-1:0:1"])
    def test_bad_mapping_option(self, value: str) -> None:
        """--uidmap needs three non-negative numbers and a positive size."""
        with pytest.raises(SpecError):
            idmap.parse_mapping_option(value)
