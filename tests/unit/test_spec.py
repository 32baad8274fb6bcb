"""The spec and its OCI config.json form."""

from __future__ import annotations

import json

from runtime import capabilities, seccomp
from runtime.defaults import RunRequest, build_spec
from runtime.idmap import IdMapping, IdMapPlan
from runtime.spec import ContainerSpec


def _spec(rootless: bool = False) -> ContainerSpec:
    request = RunRequest(rootfs="/r", args=("/bin/sh", "-c", "echo hi"), hostname="h",
                         env=("A=1",), user="user:users", group_add=("wheel",),
                         terminal=True, rootless=rootless)
    plan = IdMapPlan((IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536)),
                     (IdMapping(0, 1000, 1),)) if rootless else None
    profile = seccomp.default_profile(capabilities.DEFAULT_CAPABILITIES)
    return build_spec(request, plan, {"/etc/hosts": "/s/hosts"}, profile)


class TestOciRoundTrip:
    def test_round_trip_is_lossless(self) -> None:
        """from_oci(to_oci(spec)) gives back the same spec, extensions included."""
        for rootless in (False, True):
            spec = _spec(rootless)
            doc = json.loads(json.dumps(spec.to_oci()))
            assert ContainerSpec.from_oci(doc) == spec

    def test_document_uses_oci_names(self) -> None:
        """The JSON uses the OCI field names crun and runc read."""
        doc = _spec(rootless=True).to_oci()
        assert doc["ociVersion"] and doc["root"] == {"path": "/r", "readonly": False}
        assert doc["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
        assert doc["process"]["terminal"] is True
        assert doc["linux"]["uidMappings"][1] == {"containerID": 1, "hostID": 100000,
                                                  "size": 65536}
        assert {"type": "user"} in doc["linux"]["namespaces"]
        assert doc["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
        assert doc["annotations"]["io.myctr.user"] == "user:users"

    def test_reads_a_minimal_foreign_document(self) -> None:
        """A config.json with only root and process.args is read with defaults."""
        spec = ContainerSpec.from_oci({"root": {"path": "rootfs"},
                                       "process": {"args": ["sh"]}})
        assert spec.process.args == ("sh",) and spec.process.cwd == "/"
        assert spec.linux.namespaces == () and spec.process.user_name is None


class TestDefaults:
    def test_root_gets_no_user_namespace(self) -> None:
        """As root the container keeps the host's ids: no user namespace."""
        spec = _spec(rootless=False)
        assert not spec.uses_user_namespace
        assert [n.type for n in spec.linux.namespaces] == [
            "pid", "mount", "uts", "ipc", "cgroup", "network"]

    def test_rootless_gets_user_namespace_first(self) -> None:
        """Rootless, the user namespace comes first so it owns the others."""
        assert _spec(rootless=True).linux.namespaces[0].type == "user"

    def test_devpts_gid_only_when_mapped(self) -> None:
        """devpts gets gid=5 only when gid 5 exists in the container's map."""
        pts = next(m for m in _spec(rootless=True).mounts if m.destination == "/dev/pts")
        assert "gid=5" not in pts.options
        pts = next(m for m in _spec(rootless=False).mounts if m.destination == "/dev/pts")
        assert "gid=5" in pts.options

    def test_env_defaults_and_overrides(self) -> None:
        """PATH, HOSTNAME and TERM (with a terminal) are set; -e adds to them."""
        env = _spec().process.env
        assert env[0].startswith("PATH=/usr/local/sbin") and "HOSTNAME=h" in env
        assert "TERM=xterm" in env and "A=1" in env
