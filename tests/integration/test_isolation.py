"""What a container sees from inside, proved by the probe, as root and rootless."""

from __future__ import annotations

import socket

import pytest

from tests.integration.harness import Myctr

DEFAULT_CAPS_MASK = "00000000a80425fb"  # docker's 14 capabilities


class TestNamespaces:
    def test_pid1_is_the_command(self, myctr: Myctr) -> None:
        """The user's command is PID 1 and no host process is visible."""
        info = myctr.probe("info")
        assert info["pid"] == 1
        assert info["pids"] == [1]

    def test_hostname_is_the_containers(self, myctr: Myctr) -> None:
        """The container has its own hostname: the short id, or -h."""
        assert myctr.probe("info", options=("-h", "box1"))["hostname"] == "box1"
        default = myctr.probe("info")["hostname"]
        assert len(default) == 12 and default != socket.gethostname()

    def test_network_none_has_only_loopback(self, myctr: Myctr) -> None:
        """With --network none the container sees lo alone, and it is up."""
        result = myctr.run("/bin/sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate")
        assert result.returncode == 0, result
        assert result.stdout.split()[0] == "lo"
        assert len(result.stdout.split()) == 2

    def test_two_containers_see_nothing_of_each_other(self, myctr: Myctr) -> None:
        """Two containers started together each see only their own PID 1."""
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            infos = list(pool.map(lambda _: myctr.probe("info"), range(2)))
        assert [i["pids"] for i in infos] == [[1], [1]]
        assert infos[0]["hostname"] != infos[1]["hostname"]


class TestUserNamespace:
    def test_uid_map(self, myctr: Myctr) -> None:
        """Root keeps the host's ids; rootless maps root to the user and 1.. to subuids."""
        uid_map = [line.split() for line in myctr.probe("info")["uid_map"].splitlines()]
        if myctr.mode == "root":
            assert uid_map == [["0", "0", "4294967295"]]
        else:
            assert myctr.user is not None
            assert uid_map[0] == ["0", str(myctr.user.pw_uid), "1"]
            assert uid_map[1][0] == "1" and int(uid_map[1][2]) == 65536

    def test_uidmap_as_root(self, myctr: Myctr) -> None:
        """Root with --uidmap runs in a user namespace with that map; rootless is refused."""
        if myctr.mode == "rootless":
            result = myctr.run("--uidmap", "0:1:1", "/bin/true")
            assert result.returncode == 125 and "--uidmap/--gidmap are for root" in result.stderr
            return
        import shutil
        import subprocess

        rootfs = myctr.state_root / "mapped-rootfs"
        shutil.copytree(myctr.rootfs, rootfs, symlinks=True)
        subprocess.run(["chown", "-R", "-h", "300000:300000", str(rootfs)], check=True)
        mapped = type(myctr)(myctr.mode, myctr.state_root, rootfs)
        info = mapped.probe("info", options=("--uidmap", "0:300000:65536"))
        assert info["uid_map"].split() == ["0", "300000", "65536"]
        assert mapped.probe("write", "/etc/x", "y", options=("--uidmap", "0:300000:65536"))["ok"]
        shutil.rmtree(rootfs)

    def test_user_option_switches_ids(self, myctr: Myctr) -> None:
        """-u 1000:100 runs as that uid and gid with empty capability sets."""
        info = myctr.probe("info", options=("-u", "1000:100"))
        assert (info["uid"], info["gid"]) == (1000, 100)
        assert info["caps"]["eff"] == "0000000000000000"
        assert info["caps"]["bnd"] == DEFAULT_CAPS_MASK

    def test_user_by_name_gets_its_groups_and_home(self, myctr: Myctr) -> None:
        """-u user resolves against the container's /etc/passwd and /etc/group."""
        info = myctr.probe("info", options=("-u", "user"))
        assert (info["uid"], info["gid"]) == (1000, 1000)
        assert sorted(info["groups"]) == [100, 1000]
        assert "HOME=/home/user" in info["env"]


class TestCapabilities:
    def test_default_set(self, myctr: Myctr) -> None:
        """Root in the container holds docker's 14 capabilities, inheritable and ambient empty."""
        caps = myctr.probe("info")["caps"]
        assert caps == {"inh": "0000000000000000", "prm": DEFAULT_CAPS_MASK,
                        "eff": DEFAULT_CAPS_MASK, "bnd": DEFAULT_CAPS_MASK,
                        "amb": "0000000000000000"}

    def test_cap_add_and_drop(self, myctr: Myctr) -> None:
        """--cap-add NET_ADMIN adds bit 12 and --cap-drop CHOWN removes bit 0."""
        options = ("--cap-add", "NET_ADMIN", "--cap-drop", "chown")
        caps = myctr.probe("info", options=options)["caps"]
        expected = f"{(int(DEFAULT_CAPS_MASK, 16) | 1 << 12) & ~1:016x}"
        assert caps["eff"] == caps["bnd"] == expected

    def test_cap_drop_all(self, myctr: Myctr) -> None:
        """--cap-drop ALL leaves every set empty."""
        caps = myctr.probe("info", options=("--cap-drop", "ALL"))["caps"]
        assert set(caps.values()) == {"0000000000000000"}


class TestFilesystem:
    def test_masked_paths(self, myctr: Myctr) -> None:
        """Every masked path the kernel has reads as empty in the container."""
        import os

        from runtime.defaults import MASKED_PATHS

        present = [p for p in MASKED_PATHS if os.path.exists(p) and os.path.isfile(p)]
        assert present, "the host has none of the masked files"
        for path in present:
            result = myctr.probe("read", path)
            assert result["ok"] and result["data"] == "", path

    def test_proc_sys_is_read_only(self, myctr: Myctr) -> None:
        """A write to /proc/sys fails with EROFS."""
        result = myctr.probe("write", "/proc/sys/kernel/hostname", "x")
        assert (result["ok"], result["errno"]) == (False, "EROFS")

    def test_sys_is_read_only_all_the_way_down_with_host_network(self, myctr: Myctr) -> None:
        """--network host binds the host's /sys (rootless cannot mount sysfs there):
        it and every mount below it, /sys/fs/cgroup included, are read-only."""
        result = myctr.run("--network", "host", "/bin/cat", "/proc/self/mounts")
        assert result.returncode == 0, result
        below = [line.split() for line in result.stdout.splitlines()
                 if line.split()[1] == "/sys" or line.split()[1].startswith("/sys/")]
        if myctr.mode == "rootless":  # a bind of the host's /sys, with its submounts
            assert any(m[1].startswith("/sys/fs/cgroup") for m in below), below
        writable = [m[1] for m in below if "ro" not in m[3].split(",")]
        assert not writable, writable

    def test_rootfs_writes_stay_in_the_container(self, myctr: Myctr) -> None:
        """A file written to / lands in the overlay's upper dir, not in the source rootfs."""
        result = myctr.probe("write", "/etc/newfile", "hello")
        assert result["ok"], result
        assert not (myctr.rootfs / "etc" / "newfile").exists()
        result = myctr.probe("write", "/bin/busybox", "clobbered")
        assert result["ok"], result
        assert (myctr.rootfs / "bin" / "busybox").stat().st_size > 100_000

    def test_rm_containers_overlay_is_volatile(self, myctr: Myctr) -> None:
        """--rm: the overlay does not sync its upper dir (on exit neither), as podman's;
        a kept container's does."""
        def root_mount(*args: str) -> str:
            result = myctr(*args, "--rootfs", str(myctr.rootfs), "sh", "-c",
                           "grep ' / / ' /proc/self/mountinfo")
            assert result.returncode == 0, result.stderr
            return result.stdout
        assert "volatile" in root_mount("run", "--rm")
        assert "volatile" not in root_mount("run", "--name", "kept")
        assert myctr("rm", "kept").returncode == 0

    def test_read_only_rootfs(self, myctr: Myctr) -> None:
        """--read-only makes / read-only while /dev/shm stays writable."""
        result = myctr.probe("write", "/etc/x", "y", options=("--read-only",))
        assert result["errno"] == "EROFS"
        assert myctr.probe("write", "/dev/shm/x", "y", options=("--read-only",))["ok"]

    def test_volume_and_tmpfs(self, myctr: Myctr, tmp_path_factory: pytest.TempPathFactory) -> None:
        """-v binds a host directory (rw, or ro with :ro) and --tmpfs mounts a tmpfs."""
        import shutil

        from tests.integration.harness import chown_tree, make_shared_dir

        host = make_shared_dir("myctr-vol-")
        chown_tree(host, myctr.user)
        try:
            assert myctr.probe("write", "/data/f", "hi", options=("-v", f"{host}:/data"))["ok"]
            assert (host / "f").read_text() == "hi"
            ro = myctr.probe("write", "/data/g", "hi", options=("-v", f"{host}:/data:ro"))
            assert ro["errno"] == "EROFS"
            info = myctr.probe("info", options=("--tmpfs", "/scratch"))
            assert any(m["target"] == "/scratch" and m["fstype"] == "tmpfs"
                       for m in info["mounts"])
        finally:
            shutil.rmtree(host)


class TestSeccomp:
    @pytest.mark.parametrize("call", ["mount", "unshare-user", "keyctl"])
    def test_denied_by_default(self, myctr: Myctr, call: str) -> None:
        """The default profile refuses the call with EPERM."""
        result = myctr.probe("syscall", call)
        assert result["errno"] == "EPERM", result

    def test_unconfined_lifts_it(self, myctr: Myctr) -> None:
        """With seccomp=unconfined, unshare(CLONE_NEWUSER) succeeds (so the filter did it)."""
        result = myctr.probe("syscall", "unshare-user",
                             options=("--security-opt", "seccomp=unconfined"))
        assert result["errno"] is None, result

    def test_mount_allowed_with_sys_admin(self, myctr: Myctr) -> None:
        """--cap-add SYS_ADMIN lets mount through the filter, as docker's profile does."""
        result = myctr.probe("syscall", "mount", options=("--cap-add", "SYS_ADMIN"))
        assert result["errno"] is None, result

    def test_status_reports_filter_and_nnp(self, myctr: Myctr) -> None:
        """The filter is in mode 2; no-new-privileges is off unless asked for."""
        info = myctr.probe("info")
        assert (info["seccomp"], info["no_new_privs"]) == (2, 0)
        info = myctr.probe("info", options=("--security-opt", "no-new-privileges"))
        assert info["no_new_privs"] == 1
