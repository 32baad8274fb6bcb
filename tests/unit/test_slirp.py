"""The slirp4netns plug's pure parts: options to flags, tun_problem's explanations, the
API socket client (against a fake slirp4netns on a unix socket), the Attached it
reports. The real thing runs in tests/integration/test_slirp.py."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import trio

from netplug import NetworkConfig, PortMapping
from netplug import slirp as s
from runtime.errors import HostError, SpecError

FULL = s.Features(binary="/usr/bin/slirp4netns", version="slirp4netns version 1.2.0",
                  sandbox=True, seccomp=True, api_socket=True, exit_fd=True, cidr=True,
                  disable_host_loopback=True)


def config(*options: tuple[str, str], ports: tuple[PortMapping, ...] = ()) -> NetworkConfig:
    return NetworkConfig("slirp4netns", options, ports)


# --- options and flags -----------------------------------------------------------------


def test_default_settings_are_podmans() -> None:
    settings = s.Settings.from_config(config())
    assert settings == s.Settings(False, 65520, s.DEFAULT_NETWORK, False)
    assert (settings.guest, settings.gateway, settings.dns) == (
        "10.0.2.100", "10.0.2.2", "10.0.2.3")


def test_default_command() -> None:
    args = s.command(FULL, s.Settings.from_config(config()), 1234, 5, 6, "/run/x/api.sock")
    assert args == ["/usr/bin/slirp4netns", "--configure", "--mtu=65520",
                    "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                    "--exit-fd=5", "--ready-fd=6", "--api-socket=/run/x/api.sock",
                    "1234", "tap0"]


def test_options_map_to_flags() -> None:
    settings = s.Settings.from_config(config(
        ("allow_host_loopback", "true"), ("mtu", "1500"), ("cidr", "10.0.3.7/24"),
        ("enable_ipv6", "true")))
    assert (settings.guest, settings.gateway, settings.dns) == (
        "10.0.3.100", "10.0.3.2", "10.0.3.3")
    args = s.command(FULL, settings, 1, 5, 6, "/a")
    assert "--disable-host-loopback" not in args
    assert "--mtu=1500" in args and "--cidr=10.0.3.0/24" in args and "--enable-ipv6" in args


def test_sandbox_and_seccomp_only_when_supported() -> None:
    old = s.Features(binary="/bin/slirp4netns", version="slirp4netns version 0.4.0",
                     sandbox=False, seccomp=False, api_socket=True, exit_fd=True, cidr=True,
                     disable_host_loopback=True)
    args = s.command(old, s.Settings(), 1, 5, 6, "/a")
    assert "--enable-sandbox" not in args and "--enable-seccomp" not in args


def test_missing_disable_host_loopback_is_refused() -> None:
    ancient = s.Features(binary="/bin/slirp4netns", version="slirp4netns version 0.2",
                         sandbox=False, seccomp=False, api_socket=False, exit_fd=True,
                         cidr=False, disable_host_loopback=False)
    with pytest.raises(HostError, match="--disable-host-loopback"):
        s.command(ancient, s.Settings(), 1, 5, 6, "/a")
    with pytest.raises(HostError, match="--api-socket"):
        s.command(ancient, s.Settings(allow_host_loopback=True), 1, 5, 6, "/a")


@pytest.mark.parametrize(("option", "message"), [
    (("mtu", "abc"), "not a number"),
    (("mtu", "70000"), "68-65521"),
    (("cidr", "10.0.2.0/28"), "/25 or shorter"),
    (("cidr", "fd00::/64"), "not an IPv4 network"),
    (("allow_host_loopback", "yes"), "true or false"),
    (("enable_ipv6", "1"), "true or false"),
    (("port_handler", "rootlesskit"), "only slirp4netns's own port handler"),
])
def test_bad_options_are_spec_errors(option: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        s.SlirpPlug(config(option), "/tmp", lambda reason: None)


def test_ipv6_host_address_is_refused() -> None:
    with pytest.raises(SpecError, match="IPv4 host addresses only"):
        s.Settings.from_config(config(ports=(PortMapping("::1", 8080, 80, "tcp"),)))


async def test_features_of_the_installed_binary() -> None:
    if not os.path.exists("/usr/bin/slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    feat = await s.features("/usr/bin/slirp4netns")
    assert feat.version.startswith("slirp4netns version")
    assert feat.api_socket and feat.exit_fd and feat.disable_host_loopback


async def test_no_binary_is_a_host_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s.shutil, "which", lambda name: None)
    with pytest.raises(HostError, match="slirp4netns is not installed"):
        await s.features()


# --- /dev/net/tun ----------------------------------------------------------------------


def fake_stat(mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, 0, 0, 0, 0, 0, 0))


def test_tun_0600_is_explained() -> None:
    text = s.explain_tun("/dev/net/tun", PermissionError(errno.EACCES, "Permission denied"),
                         fake_stat(stat.S_IFCHR | 0o600))
    assert text == ("/dev/net/tun is mode 0600: rootless slirp4netns needs it world-accessible "
                    "(chmod 0666 /dev/net/tun, the default on most distributions)")
    assert "\n" not in text


def test_tun_missing_is_explained(tmp_path: Path) -> None:
    text = s.tun_problem(str(tmp_path / "tun"))
    assert text is not None and "does not exist" in text and "modprobe tun" in text


def test_tun_other_failures_are_explained() -> None:
    text = s.explain_tun("/dev/net/tun", OSError(errno.ENXIO, "No such device or address"),
                         fake_stat(stat.S_IFCHR | 0o666))
    assert text == ("cannot open /dev/net/tun: No such device or address (slirp4netns needs "
                    "the tun device)")
    text = s.explain_tun("/x", PermissionError(errno.EACCES, "denied"), fake_stat(
        stat.S_IFREG | 0o600))
    assert "not a character device" in text


def test_tun_usable(tmp_path: Path) -> None:
    path = tmp_path / "tun"
    path.write_text("")  # anything this user can open read-write
    assert s.tun_problem(str(path)) is None


def test_tun_problem_when_open_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    path = tmp_path / "tun"
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(10, 200))
    path.chmod(0o600)

    def refuse(*args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(s.os, "open", refuse)
    assert s.tun_problem(str(path)) == (
        f"{path} is mode 0600: rootless slirp4netns needs it world-accessible "
        f"(chmod 0666 {path}, the default on most distributions)")


# --- the API socket --------------------------------------------------------------------


async def fake_slirp(path: str, answers: list[bytes], seen: list[bytes],
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One request per connection, read to EOF, one answer, close: as slirp4netns."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    task_status.started()
    with listener:
        for answer in answers:
            conn, _ = await listener.accept()
            with conn:
                data = b""
                while chunk := await conn.recv(65536):
                    data += chunk
                seen.append(data)
                await conn.send(answer)


async def test_api_call_one_request_per_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fake_slirp, path, [b'{"return":{"id":1}}',
                                               b'{"entries":[]}'], seen)
        assert await s.api_call(path, {"execute": "add_hostfwd", "arguments": {}}) == {
            "return": {"id": 1}}
        assert await s.api_call(path, {"execute": "list_hostfwd"}) == {"entries": []}
    assert [json.loads(x)["execute"] for x in seen] == ["add_hostfwd", "list_hostfwd"]


async def test_api_call_unreadable_answer(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(fake_slirp, path, [b"garbage"], [])
        with pytest.raises(HostError, match="unreadable answer"):
            await s.api_call(path, {"execute": "list_hostfwd"})


def test_error_text() -> None:
    assert s._error_text({"return": {"id": 1}}) is None
    assert s._error_text({"error": {"desc": "bad request: add_hostfwd: slirp_add_hostfwd "
                                            "failed"}}) == (
        "bad request: add_hostfwd: slirp_add_hostfwd failed")


# --- what it reports --------------------------------------------------------------------


def test_attached_reports_addresses_ports_and_pid() -> None:
    plug = s.SlirpPlug(config(("cidr", "10.0.5.0/24")), "/run/c1", lambda reason: None)

    class Proc:
        pid = 4321

    plug.process = Proc()  # type: ignore[assignment]
    ports = (PortMapping("", 40000, 80, "tcp"),)
    attached = plug._attached(FULL, ports)
    doc = attached.to_json()
    assert doc["interfaces"] == [{"name": "tap0", "address": "10.0.5.100", "prefix": 24,
                                  "gateway": "10.0.5.2", "mac": ""}]
    assert doc["ports"] == [{"host_ip": "", "host_port": 40000, "container_port": 80,
                             "protocol": "tcp"}]
    assert doc["nameservers"] == ["10.0.5.3"]
    assert doc["slirp4netns_pid"] == 4321
    assert doc["slirp4netns_api_socket"] == "/run/c1/slirp4netns.sock"
    assert doc["port_handler"] == "slirp4netns"


def test_failed_is_called_once() -> None:
    reasons: list[str] = []
    plug = s.SlirpPlug(config(), "/run/c1", reasons.append)
    plug._report("one")
    plug._report("two")
    assert reasons == ["one"]


def test_status_text() -> None:
    assert s._status_text(-9) == "killed by SIGKILL"
    assert s._status_text(1) == "exit status 1"
