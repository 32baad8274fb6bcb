"""Bad input: exit 125, one clear line on stderr, nothing left on disk."""

from __future__ import annotations

import pytest

from tests.integration.harness import Myctr


def _one_line_125(result: object, expected: str) -> None:
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert result.returncode == 125, result  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("myctr: "), lines
    assert expected in lines[0], lines


class TestBadInput:
    def test_missing_rootfs(self, myctr: Myctr) -> None:
        """A rootfs that does not exist is refused."""
        result = myctr("run", "--rm", "--rootfs", "/nonexistent/rootfs", "/bin/true")
        _one_line_125(result, "rootfs /nonexistent/rootfs: no such directory")

    @pytest.mark.parametrize(("flags", "expected"), [
        (("--cap-add", "NET_WIZARD"), "unknown capability 'NET_WIZARD'"),
        (("-u", "no-such-user"), "unable to find user no-such-user"),
        (("-u", "0:no-such-group"), "unable to find group no-such-group"),
        (("-u", "1:"), "invalid user"),
        (("-v", "relative:/data"), "source must be an absolute path"),
        (("-v", "/nonexistent:/data"), "no such file or directory"),
        (("-v", "/tmp"), "want SRC:DST"),
        (("--ulimit", "nofile=abc"), "invalid ulimit"),
        (("--network", "bogus"), "network 'bogus' not found"),
        (("--restart", "always"), "conflicting options: --restart and --rm"),
        (("-p", "80"), "no ports to publish"),
        (("--network", "none", "--network-alias", "x"), "for named networks"),
        (("--security-opt", "apparmor=x"), "invalid --security-opt"),
        (("-w", "relative"), "must be an absolute path"),
        (("--name", "bad name!"), "invalid container name"),
        (("--no-such-flag",), "No such option"),
    ])
    def test_rejected(self, myctr: Myctr, flags: tuple[str, ...], expected: str) -> None:
        """Each bad flag value exits 125 with one line naming the problem."""
        _one_line_125(myctr.run(*flags, "/bin/true"), expected)

    def test_name_conflict_and_rm(self, myctr: Myctr) -> None:
        """A name in use is refused until the container holding it is removed."""
        assert myctr("run", "--name", "web", "--rootfs", str(myctr.rootfs),
                     "/bin/true").returncode == 0
        ps = myctr("ps", "-a")
        assert "web" in ps.stdout and "exited (0)" in ps.stdout
        _one_line_125(myctr.run("--name", "web", "/bin/true"), 'name "web" is already in use')
        assert myctr("rm", "web").returncode == 0
        assert myctr.run("--name", "web", "/bin/true").returncode == 0

    def test_rm_unknown(self, myctr: Myctr) -> None:
        """rm of an unknown container exits 125 naming it."""
        _one_line_125(myctr("rm", "nope"), "no such container: nope")


@pytest.mark.parametrize("myctr", ["rootless"], indirect=True)
def test_rootless_rootfs_owned_by_unmapped_ids_names_the_path(
        myctr: Myctr, rootfs_by_mode: dict[str, object]) -> None:
    """Rootless on root's rootfs: its /etc (owned by a host id outside the user's
    map) cannot be copied up to make /etc/hostname a mount target. The one line says
    which path, not a bare "Permission denied"."""
    result = myctr("run", "--rm", "--rootfs", str(rootfs_by_mode["root"]), "/bin/true")
    _one_line_125(result, "/merged/etc/hostname: Permission denied")
