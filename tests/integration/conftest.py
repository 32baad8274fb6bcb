"""Fixtures for integration tests: every container test runs twice, as root and as an
unprivileged user with /etc/subuid ranges (created here), on a busybox rootfs with the
probe at /probe, and fails if the container left a mount, a process or a directory.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import harness
from tests.probe.build import build_probe

MODES = ("root", "rootless")


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("integration tests run as root (they create the rootless "
                                "test user); run `make test` as root")


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    path = harness.make_shared_dir("myctr-it-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def probe_binary(workspace: Path) -> Path:
    cache = harness.REPO / "build" / "probe"
    cache.parent.mkdir(exist_ok=True)
    return build_probe(cache)


@pytest.fixture(scope="session")
def test_user() -> object:
    return harness.ensure_test_user()


@pytest.fixture(scope="session")
def staged_python(workspace: Path) -> Path:
    return harness.stage_python_tree(workspace / "python")


def _bootstrap_rootfs(runner: harness.Myctr, probe: Path) -> None:
    result = runner("rootfs", "bootstrap", "busybox", str(runner.rootfs))
    assert result.returncode == 0, result
    target = runner.rootfs / "probe"
    shutil.copy2(probe, target)
    harness.chown_tree(target, runner.user)


@pytest.fixture(scope="session")
def rootfs_by_mode(workspace: Path, probe_binary: Path, test_user: object,
                   staged_python: Path) -> dict[str, Path]:
    """One busybox rootfs per mode, owned by whoever runs the containers (as podman
    keeps a rootless user's images in the user's own mapping)."""
    paths = {}
    for mode in MODES:
        home = _home(workspace, mode, test_user)
        runner = _runner(mode, home / "bootstrap", home / "rootfs", test_user, staged_python)
        _bootstrap_rootfs(runner, probe_binary)
        harness.stop_supervisor(runner.state_root)
        paths[mode] = runner.rootfs
    return paths


def _home(workspace: Path, mode: str, user: object) -> Path:
    """A directory per mode that its user owns (state roots and the rootfs live there)."""
    home = workspace / mode
    home.mkdir(exist_ok=True)
    home.chmod(0o755)
    if mode == "rootless":
        harness.chown_tree(home, user)  # type: ignore[arg-type]
    return home


def _runner(mode: str, state_root: Path, rootfs: Path, user: object,
            staged: Path) -> harness.Myctr:
    state_root.mkdir(parents=True, exist_ok=True)
    if mode == "root":
        return harness.Myctr(mode, state_root, rootfs)
    harness.chown_tree(state_root, user)  # type: ignore[arg-type]
    return harness.Myctr(mode, state_root, rootfs, staged=staged, user=user)  # type: ignore[arg-type]


@pytest.fixture(params=MODES)
def myctr(request: pytest.FixtureRequest, workspace: Path, rootfs_by_mode: dict[str, Path],
          test_user: object, staged_python: Path) -> Iterator[harness.Myctr]:
    """A ``myctr`` runner in a fresh state root, as root and rootless; after the test,
    asserts that no mount, process or container directory is left."""
    mode = request.param
    state_root = harness.make_shared_dir(f"{_home(workspace, mode, test_user)}/state-")
    runner = _runner(mode, state_root, rootfs_by_mode[mode], test_user, staged_python)
    yield runner
    harness.stop_supervisor(state_root)
    leaks = harness.leftovers(state_root)
    shutil.rmtree(state_root, ignore_errors=True)
    assert not leaks, f"the container left things behind: {leaks}"


@pytest.fixture
def hostns(workspace: Path) -> Iterator[harness.HostNetns]:
    """A network namespace acting as the host of a network test (made and removed
    here): the test's supervisor, bridges, veths and nftables rules live in it."""
    directory = harness.make_shared_dir(f"{workspace}/netns-")
    ns = harness.HostNetns(directory)
    yield ns
    ns.remove()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def myctr_net(myctr: harness.Myctr, hostns: harness.HostNetns) -> harness.Myctr:
    """``myctr`` (root and rootless) whose CLI, and so its auto-started supervisor,
    runs in ``hostns``."""
    myctr.netns = hostns.path
    myctr.default_network = ""  # podman's: slirp4netns rootless, bridge as root
    return myctr


@pytest.fixture
def rootfs_tar(myctr: harness.Myctr) -> Path:
    """The busybox test rootfs (with /probe) as a gzip tarball its user can read."""
    import subprocess

    tar = myctr.state_root / "rootfs.tar.gz"
    subprocess.run(["tar", "-C", str(myctr.rootfs), "--numeric-owner", "-czf", str(tar), "."],
                   check=True)
    harness.chown_tree(tar, myctr.user)
    return tar


@pytest.fixture(scope="session")
def tun_for_rootless() -> None:
    """Rootless slirp4netns opens /dev/net/tun as the user: most distributions make it
    0666, this machine 0600. Say so and make it 0666 (as the issue allows)."""
    mode = stat.S_IMODE(os.stat(harness.TUN).st_mode)
    if mode & 0o006 != 0o006:
        print(f"\n[test setup] {harness.TUN} is mode {mode:04o}; rootless slirp4netns needs it "
              f"world-accessible: chmod 0666 {harness.TUN} (the default on most distributions)")
        os.chmod(harness.TUN, 0o666)
