"""Capability names and docker's --cap-add/--cap-drop rules."""

from __future__ import annotations

import pytest

from runtime import capabilities
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
