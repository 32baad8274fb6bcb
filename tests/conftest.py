"""Session-wide: the cgroup v2 VM plugin of ../shared/vm (tests marked ``vm`` run in a
throw-away VM with a pure cgroup v2 hierarchy when this host is not pure v2)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Every supervisor a test starts defaults to --network none: no test makes a bridge or
# an nftables table on the machine's own network (network tests pick their modes, in a
# network namespace of their own).
os.environ["MYCTR_NETWORK"] = "none"

_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("MYCTR_VM_HARNESS", ""), str(_REPO.parent / "shared" / "vm"),
               "/work/shared/vm"]
VM_HARNESS = next((p for p in _CANDIDATES if p and os.path.exists(f"{p}/pytest_vm.py")), None)

if VM_HARNESS is not None:
    sys.path.insert(0, VM_HARNESS)
    # The VM has no disk: the io throttle test makes a loop device there.
    os.environ.setdefault("VM_MODULES", "loop")
    pytest_plugins = ["pytest_vm"]

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        """Run the VM's tests after every host test: the plugin runs them outside
        pytest's setup/teardown protocol, which would otherwise leave a host test's
        class or module set up across them."""
        if _pure_v2() or os.environ.get("VMH_INSIDE") == "1":
            return
        items.sort(key=lambda item: item.get_closest_marker("vm") is not None)
else:
    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line("markers", "vm: run inside a pure cgroup v2 VM")

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        reason = ("cgroup v2 VM harness not found (looked for pytest_vm.py in "
                  + ", ".join(p for p in _CANDIDATES if p) + "; set MYCTR_VM_HARNESS)")
        for item in items:
            if item.get_closest_marker("vm") is not None and not _pure_v2():
                item.add_marker(pytest.mark.skip(reason=reason))


def _pure_v2() -> bool:
    from tests.integration.harness import pure_cgroup_v2

    return pure_cgroup_v2()
