"""image save / image load against the real podman, both ways, as root and rootless
(podman itself runs as root in a private store: never the machine's storage), plus
crafted archives (two layers with a whiteout, bad input) and a supervisor killed in
the middle of a load."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.harness import Myctr
from tests.unit.test_archive import docker_archive, layer_tar, sha

ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")


class Podman:
    """podman with a private store (vfs), runc (crun refuses hybrid cgroups here) and a
    cgroup parent of its own, removed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cgroup = f"myctr-podman-{secrets.token_hex(4)}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "--root", str(self.root / "root"), "--runroot", str(self.root / "run"),
             "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
             "--events-backend", "file", "--runtime", "runc", "--tmpdir",
             str(self.root / "tmp"), *args],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result
        return result.stdout

    def run(self, image: str, *command: str) -> str:
        return self.ok("run", "--rm", "--network", "none", "--cgroup-parent",
                       f"/{self.cgroup}", *ULIMITS, image, *command)

    def image_id(self, ref: str) -> str:
        return "sha256:" + self.ok("image", "inspect", "--format", "{{.Id}}", ref).strip()

    def close(self) -> None:
        self("rm", "-af")
        self("rmi", "-af")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for path in (hierarchy / self.cgroup, Path("/sys/fs/cgroup") / self.cgroup):
                if path.is_dir():
                    harness.remove_cgroup_tree(path)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def podman(workspace: Path, rootfs_by_mode: dict[str, Path]) -> Iterator[Podman]:
    """podman holding localhost/probebox:latest: the test rootfs (root's files)."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman or runc is not installed")
    (workspace / "podman").mkdir(exist_ok=True)
    tool = Podman(harness.make_shared_dir(f"{workspace}/podman/p-"))
    (tool.root / "tmp").mkdir()
    tar = tool.root / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs_by_mode["root"]), "--owner=0", "--group=0",
                    "--numeric-owner", "-cf", str(tar), "."], check=True)
    tool.ok("import", "--change", "CMD [\"sh\"]", str(tar), "localhost/probebox:latest")
    try:
        yield tool
    finally:
        tool.close()


@pytest.fixture
def archives(myctr: Myctr) -> Path:
    """A directory both myctr's user and root (podman) can use."""
    path = myctr.state_root / "archives"
    path.mkdir()
    harness.chown_tree(path, myctr.user)
    return path


def _readable(path: Path, myctr: Myctr) -> Path:
    harness.chown_tree(path, myctr.user)
    return path


def _ok(result: harness.Result) -> str:
    assert result.returncode == 0, result
    return result.stdout


def _image_id(myctr: Myctr, ref: str) -> str:
    return str(json.loads(_ok(myctr("image", "inspect", ref)))[0]["id"])


def _store_files(myctr: Myctr) -> list[str]:
    root = myctr.state_root / "data" / "images"
    return sorted(os.listdir(root / "blobs" / "sha256")) + sorted(os.listdir(root / "layers"))


def _no_images_left(myctr: Myctr) -> None:
    assert json.loads(_ok(myctr("images", "--format", "json"))) == []
    _ok(myctr("image", "prune"))
    assert _store_files(myctr) == []


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_loads_and_runs_here(myctr: Myctr, podman: Podman, archives: Path,
                                         fmt: str) -> None:
    archive = archives / "podman.tar"
    podman.ok("save", "--format", fmt, "-o", str(archive), "localhost/probebox:latest")
    _readable(archive, myctr)
    loaded = myctr("load", "-i", str(archive))
    assert loaded.stdout == "Loaded image: localhost/probebox:latest\n", loaded
    assert _image_id(myctr, "localhost/probebox:latest") == podman.image_id(
        "localhost/probebox:latest")
    assert _ok(myctr("run", "--rm", "localhost/probebox:latest", "echo", "ran")) == "ran\n"
    # short names find localhost/ names as podman's do; the image's Cmd applies
    assert _ok(myctr("run", "--rm", "-i", "probebox", input="echo $((6 * 7))\n")) == "42\n"
    # gzip-compressed archives load too (podman load accepts them)
    _ok(myctr("image", "rm", "probebox"))
    zipped = archives / "podman.tar.gz"
    zipped.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=1))
    _readable(zipped, myctr)
    assert "Loaded image: localhost/probebox:latest" in _ok(myctr("image", "load", "-i",
                                                                  str(zipped)))
    _ok(myctr("image", "rm", "localhost/probebox:latest"))
    _no_images_left(myctr)


def test_saved_here_loads_and_runs_in_podman(myctr: Myctr, podman: Podman,
                                             archives: Path) -> None:
    tar = archives / "rootfs.tar.gz"
    subprocess.run(["tar", "-C", str(myctr.rootfs), "--owner=0", "--group=0",
                    "--numeric-owner", "-czf", str(tar), "."], check=True)
    _readable(tar, myctr)
    image_id = _ok(myctr("image", "import", str(tar), "mybox:1")).strip()
    for fmt in ("docker-archive", "oci-archive"):
        archive = archives / f"mine-{fmt}.tar"
        _ok(myctr("save", "--format", fmt, "-o", str(archive), "mybox:1"))
        assert not [p for p in os.listdir(archives) if ".tmp-" in p]
        out = podman.ok("load", "-i", str(archive))
        assert "Loaded image" in out and "mybox:1" in out, out
        assert podman.image_id(image_id) == image_id
        assert podman.run(image_id, "echo", "in podman") == "in podman\n"
        podman.ok("rmi", "-f", image_id)
    _ok(myctr("image", "rm", "mybox:1"))
    _no_images_left(myctr)


def _two_layer_archive(myctr: Myctr, path: Path) -> bytes:
    """busybox + /doomed, then a layer adding /added and whiting out /doomed."""
    import io
    import tarfile

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(myctr.rootfs), arcname=".", filter=as_root)
        doomed = tarfile.TarInfo("doomed")
        doomed.size = 5
        tar.addfile(doomed, io.BytesIO(b"gone\n"))
    layer2 = layer_tar({"added": b"from layer 2\n", ".wh.doomed": b""})
    data = docker_archive([out.getvalue(), layer2], ["twolayer:1"])
    path.write_bytes(data)
    _readable(path, myctr)
    return data


def test_round_trips_multi_layer_and_multi_image(myctr: Myctr, podman: Podman,
                                                 archives: Path) -> None:
    crafted = archives / "two.tar"
    _two_layer_archive(myctr, crafted)
    assert _ok(myctr("image", "load", "-i", str(crafted))) == "Loaded image: twolayer:1\n"
    script = "cat /added; test -e /doomed && echo doomed is there || echo doomed is gone"
    expected = "from layer 2\ndoomed is gone\n"
    assert _ok(myctr("run", "--rm", "twolayer:1", "sh", "-c", script)) == expected
    two_id = _image_id(myctr, "twolayer:1")
    # podman reads the same layers the same way
    podman.ok("load", "-i", str(crafted))
    assert podman.image_id(two_id) == two_id
    assert podman.run(two_id, "sh", "-c", script) == expected
    podman.ok("rmi", "-f", two_id)
    # save -> rm -> load: the same image, in both formats; two images in one archive
    _ok(myctr("image", "tag", "twolayer:1", "localhost/other:2"))
    for fmt in ("docker-archive", "oci-archive"):
        archive = archives / f"both-{fmt}.tar"
        _ok(myctr("save", "--format", fmt, "-o", str(archive), "twolayer:1",
                  "localhost/other:2"))
        for name in ("twolayer:1", "localhost/other:2"):
            _ok(myctr("image", "rm", name))
        assert _store_files(myctr) == []
        loaded = _ok(myctr("load", "-i", str(archive)))
        assert sorted(loaded.splitlines()) == ["Loaded image: localhost/other:2",
                                               "Loaded image: twolayer:1"]
        assert _image_id(myctr, "twolayer:1") == _image_id(myctr, "other:2") == two_id
        assert _ok(myctr("run", "--rm", "other:2", "sh", "-c", script)) == expected
    for name in ("twolayer:1", "localhost/other:2"):
        _ok(myctr("image", "rm", name))
    _no_images_left(myctr)


def test_bad_input(myctr: Myctr, archives: Path) -> None:
    layer = layer_tar({"f": b"x"})
    cases = {
        "not-a-tar": (b"this is not a tar archive\n" * 50, "not a tar archive"),
        "missing-layer": (docker_archive([layer], ["bad:1"], missing=True), "has no member"),
        "wrong-digest": (docker_archive([layer], ["bad:1"], diff_ids=[sha(b"other")]),
                         "the image config says"),
    }
    for name, (data, message) in cases.items():
        path = archives / name
        path.write_bytes(data)
        _readable(path, myctr)
        result = myctr("load", "-i", str(path))
        assert result.returncode == 125, result
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result
        assert result.stderr.startswith("myctr: image load: ") and message in result.stderr
        assert _store_files(myctr) == []  # a failed load removes what it wrote
    missing = myctr("load", "-i", str(archives / "nosuchfile"))
    assert missing.returncode == 125 and len(missing.stderr.splitlines()) == 1
    _no_images_left(myctr)


@pytest.mark.parametrize("stop_at", ["in-a-layer", "before-the-manifest"])
def test_crash_during_load(myctr: Myctr, archives: Path, stop_at: str) -> None:
    """The supervisor killed mid-load (fed through stdin, then SIGKILL): no image is
    visible afterwards and image prune leaves no blob or layer."""
    big = layer_tar({"big": os.urandom(6 << 20)})  # over the in-memory bound: streamed
    data = docker_archive([big], ["crash:1"])
    big_blob = sha(big)[7:]
    cut = 3 << 20 if stop_at == "in-a-layer" else data.index(b"manifest.json")
    _ok(myctr("images"))  # the supervisor is up
    reply = harness.supervisor_call(myctr.state_root, "ping")
    assert isinstance(reply, dict)
    pid = reply["result"]["pid"]
    proc = subprocess.Popen(myctr.command("load"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(data[:cut])
        proc.stdin.flush()
        blobs = myctr.state_root / "data" / "images" / "blobs" / "sha256"
        deadline = time.monotonic() + 30
        want = ".tmp-" if stop_at == "in-a-layer" else big_blob
        while time.monotonic() < deadline and not any(
                n.startswith(want) for n in os.listdir(blobs)):
            time.sleep(0.05)
        assert [n for n in os.listdir(blobs) if n.startswith(want)], os.listdir(blobs)
        os.kill(pid, signal.SIGKILL)
        proc.stdin.close()
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while harness.alive(pid):
        time.sleep(0.05)
    assert os.listdir(blobs)  # the half load's files are still there...
    _no_images_left(myctr)  # ...no image shows them, and prune removes them
