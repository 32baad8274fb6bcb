"""-u USER[:GROUP] resolution with docker's rules."""

from __future__ import annotations

import pytest

from runtime.errors import SpecError
from runtime.users import parse_group, parse_passwd, resolve_user, validate_user_option

PASSWD = parse_passwd("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
GROUP = parse_group("root:x:0:\nwheel:x:10:root\nusers:x:100:user\nuser:x:1000:\n")


class TestResolveUser:
    def test_name_gives_ids_groups_and_home(self) -> None:
        """A name resolves to its uid, gid, member groups and home."""
        user = resolve_user("user", PASSWD, GROUP)
        assert (user.uid, user.gid, user.additional_gids, user.home) == (
            1000, 1000, (1000, 100), "/home/user")

    def test_number_without_entry(self) -> None:
        """An unknown uid is fine: gid 0, home /."""
        user = resolve_user("4242", PASSWD, GROUP)
        assert (user.uid, user.gid, user.home) == (4242, 0, "/")

    def test_group_part_and_group_add(self) -> None:
        """USER:GROUP sets the gid; --group-add adds groups by name or number."""
        user = resolve_user("root:users", PASSWD, GROUP, group_add=("wheel", "77"))
        assert user.gid == 100 and user.additional_gids == (100, 10, 77)

    def test_unknown_name(self) -> None:
        """An unknown user name is docker's error."""
        with pytest.raises(SpecError, match="unable to find user bob: no matching entries"):
            resolve_user("bob", PASSWD, GROUP)

    def test_unknown_group(self) -> None:
        """An unknown group name is docker's error."""
        with pytest.raises(SpecError, match="unable to find group staff"):
            resolve_user("0:staff", PASSWD, GROUP)

    @pytest.mark.parametrize("value", [":", "1:", ":1", "a b", "-1", "99999999999"])
    def test_validate_rejects(self, value: str) -> None:
        """Malformed -u values are refused at the edge."""
        with pytest.raises(SpecError):
            validate_user_option(value)
