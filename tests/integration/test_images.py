"""Images end to end (the first slice): a rootfs tarball imported as an image, run,
listed, tagged and removed, as root and rootless; nothing of it left after removal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.integration import harness
from tests.integration.harness import Myctr


def _images(myctr: Myctr) -> list[dict]:  # type: ignore[type-arg]
    result = myctr("images", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _store_files(myctr: Myctr) -> list[str]:
    root = myctr.state_root / "data" / "images"
    return sorted(os.listdir(root / "blobs" / "sha256")) + sorted(os.listdir(root / "layers"))


class TestImportAndRun:
    def test_import_run_tag_remove(self, myctr: Myctr, rootfs_tar: Path) -> None:
        imported = myctr("image", "import", str(rootfs_tar), "testbox:1")
        assert imported.returncode == 0, imported.stderr
        image_id = imported.stdout.strip()
        assert image_id.startswith("sha256:")
        [listed] = _images(myctr)
        assert listed["tags"] == ["testbox:1"] and listed["id"] == image_id
        # a container of the image: the layer is its lower dir, the image's PATH applies
        run = myctr("run", "--rm", "testbox:1", "/probe", "info")
        assert run.returncode == 0, run.stderr
        info = json.loads(run.stdout)
        assert info["pid"] == 1 and any(e.startswith("PATH=/usr/local/sbin") for e in info["env"])
        written = myctr("run", "--rm", "testbox:1", "sh", "-c", "echo hi > /f; cat /f")
        assert written.stdout == "hi\n", written.stderr
        # tags: a second name untags, the last name (or the id) deletes
        assert myctr("image", "tag", "testbox:1", "other").returncode == 0
        assert sorted(_images(myctr)[0]["tags"]) == ["other:latest", "testbox:1"]
        assert myctr("image", "rm", "other").returncode == 0
        assert _images(myctr)[0]["tags"] == ["testbox:1"]
        # in use: refused while a container of it exists
        assert myctr("create", "--name", "c", "testbox:1", "true").returncode == 0
        refused = myctr("image", "rm", "testbox:1")
        assert refused.returncode == 125 and "used by a container" in refused.stderr
        # rmi -f (podman's): the containers using it go with it
        assert myctr("run", "-d", "--name", "d", "testbox:1", "sleep", "60").returncode == 0
        assert myctr("rmi", "-f", "testbox:1").returncode == 0
        assert json.loads(myctr("ps", "-a", "--format", "json").stdout) == []
        assert _images(myctr) == [] and _store_files(myctr) == []

    def test_bad_input(self, myctr: Myctr, rootfs_tar: Path) -> None:
        missing = myctr("run", "--rm", "nosuchimage", "true")
        assert missing.returncode == 125 and "no such image: nosuchimage" in missing.stderr
        bad_name = myctr("image", "import", str(rootfs_tar), "Bad Name")
        assert bad_name.returncode == 125 and "invalid image name" in bad_name.stderr
        evil = myctr.state_root / "evil.tar"
        subprocess.run(["tar", "-C", "/", "-cf", str(evil), "--absolute-names", "/etc/hostname"],
                       check=True)
        harness.chown_tree(evil, myctr.user)
        refused = myctr("image", "import", str(evil), "evil")
        assert refused.returncode == 125 and "refused" in refused.stderr, refused.stderr
        assert _images(myctr) == [] and _store_files(myctr) == []
        assert myctr("image", "prune").returncode == 0
        assert _store_files(myctr) == []


def test_bootstrap_busybox_image(myctr: Myctr) -> None:
    """image bootstrap busybox: busybox:latest from the host's busybox-static, files
    owned by root in the container, Cmd sh."""
    made = myctr("image", "bootstrap", "busybox")
    assert made.returncode == 0, made.stderr
    assert [i["tags"] for i in _images(myctr)] == [["busybox:latest"]]
    owners = myctr("run", "--rm", "busybox", "stat", "-c", "%u:%g %n", "/bin/busybox", "/etc")
    assert owners.stdout.split("\n")[:2] == ["0:0 /bin/busybox", "0:0 /etc"], owners
    shell = myctr("run", "--rm", "-i", "busybox", input="echo $((6 * 7))\n")
    assert shell.stdout == "42\n", shell
    assert myctr("image", "rm", "busybox").returncode == 0
    assert _store_files(myctr) == []
    assert sorted(os.listdir(myctr.state_root / "data" / "images")) == ["blobs", "layers"]
