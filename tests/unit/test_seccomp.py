"""The default seccomp profile as data, and profiles loaded into a forked child's kernel."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import libc
from runtime.capabilities import DEFAULT_CAPABILITIES
from runtime.errors import SpecError
from runtime.seccomp import default_profile, export_bpf, load
from runtime.spec import Seccomp, SeccompArg, SeccompRule

# x86_64 syscall numbers (asm/unistd_64.h).
SYS_GETPID = 39
SYS_CLONE = 56
SYS_GETPPID = 110
SYS_PERSONALITY = 135
SYS_MOUNT = 165
SYS_KEYCTL = 250
SYS_UNSHARE = 272
SYS_CLONE3 = 435

CLONE_FS = 0x200
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3
ADDR_NO_RANDOMIZE = 0x0040000
PERSONA_QUERY = 0xFFFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

requires_seccomp_load = pytest.mark.skipif(
    os.geteuid() != 0 or ctypes.util.find_library("seccomp") is None,
    reason="loading a filter without no_new_privs needs root (CAP_SYS_ADMIN) and libseccomp",
)


def _syscall(number: int, *args: int | bytes | None) -> int:
    """The raw result, or ``-errno`` on failure."""
    c_args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = int(_libc.syscall(ctypes.c_long(number), *c_args))
    return -ctypes.get_errno() if result == -1 else result


def _denies(rules: tuple[SeccompRule, ...], name: str, arg0: int) -> bool:
    """Whether some rule for ``name`` matches a call whose argument 0 is ``arg0``."""
    return any(
        name in rule.names
        and all((arg0 & arg.value) == arg.value_two for arg in rule.args)
        for rule in rules
    )


def _run_filtered(profile: Seccomp, probe: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Fork, load ``profile`` in the child, run ``probe`` there and return its results."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            load(profile)
            report = json.dumps(probe()).encode()
            os.write(write_end, report)
            status = 0
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, report
    return dict(report)


def _probe_denied_calls(missing: Path) -> Callable[[], dict[str, int]]:
    def probe() -> dict[str, int]:
        return {
            "keyctl": _syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
            "unshare_user": _syscall(SYS_UNSHARE, libc.CLONE_NEWUSER),
            "mount": _syscall(SYS_MOUNT, None, os.fsencode(missing), b"tmpfs", 0, None),
            # Both flag pairs are EINVAL to the kernel, so no child is ever made.
            "clone_newuser": _syscall(SYS_CLONE, libc.CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0),
            "clone_newns": _syscall(SYS_CLONE, libc.CLONE_NEWNS | CLONE_FS, 0, 0, 0, 0),
            "clone3": _syscall(SYS_CLONE3, None, 0),
            "no_randomize": _syscall(SYS_PERSONALITY, ADDR_NO_RANDOMIZE),
        }

    return probe


class TestDefaultProfile:
    def test_mount_denied_by_default(self) -> None:
        """Without CAP_SYS_ADMIN, mount, umount2 and unshare are refused with EPERM."""
        rules = default_profile(DEFAULT_CAPABILITIES).syscalls
        eperm = [r for r in rules if r.errno_ret == errno.EPERM and not r.args]
        assert {"mount", "umount2", "unshare", "setns"} <= set(eperm[0].names)
        assert len(eperm) == 1

    def test_mount_allowed_with_sys_admin(self) -> None:
        """With CAP_SYS_ADMIN, no rule mentions mount, unshare, clone or clone3."""
        profile = default_profile((*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"))
        named = {name for rule in profile.syscalls for name in rule.names}
        assert named.isdisjoint({"mount", "unshare", "setns", "clone", "clone3"})
        assert {"keyctl", "reboot", "init_module"} <= named

    def test_capability_lifts_only_its_syscalls(self) -> None:
        """CAP_SYS_TIME allows settimeofday while reboot stays denied."""
        named = {n for r in default_profile(("CAP_SYS_TIME",)).syscalls for n in r.names}
        assert "settimeofday" not in named and "clock_settime" not in named
        assert "reboot" in named

    def test_clone_namespace_flags(self) -> None:
        """Each namespace flag of clone gets its own masked-eq EPERM rule on argument 0."""
        rules = [r for r in default_profile(DEFAULT_CAPABILITIES).syscalls if r.names == ("clone",)]
        user_rule = SeccompArg(index=0, value=libc.CLONE_NEWUSER, op="SCMP_CMP_MASKED_EQ",
                               value_two=libc.CLONE_NEWUSER)
        assert any(r.args == (user_rule,) and r.errno_ret == errno.EPERM for r in rules)
        assert all(len(r.args) == 1 for r in rules)
        assert len(rules) == 7
        assert not _denies(tuple(rules), "clone", 0x01200011)  # glibc fork's flags

    def test_clone3_gets_enosys(self) -> None:
        """clone3 is refused with ENOSYS so glibc falls back to clone."""
        rules = default_profile(DEFAULT_CAPABILITIES).syscalls
        (clone3,) = [r for r in rules if "clone3" in r.names]
        assert clone3 == SeccompRule(("clone3",), "SCMP_ACT_ERRNO", errno.ENOSYS)

    @pytest.mark.parametrize("persona", [0x0, 0x8, 0x20000, 0x20008, PERSONA_QUERY])
    def test_personality_allowed(self, persona: int) -> None:
        """The Linux personas, with or without UNAME26, and the query are not denied."""
        assert not _denies(default_profile(()).syscalls, "personality", persona)

    def test_personality_denies_the_rest(self) -> None:
        """Every persona with one or two bits set, or cleared, outside the allowed set is denied."""
        rules = default_profile(()).syscalls
        pairs = {1 << a | 1 << b for a in range(32) for b in range(32)}
        personas = pairs | {PERSONA_QUERY ^ p for p in pairs}
        allowed = {0x0, 0x8, 0x20000, 0x20008, PERSONA_QUERY}
        wrong = [hex(p) for p in sorted(personas)
                 if _denies(rules, "personality", p) == (p in allowed)]
        assert wrong == []

    def test_deterministic(self) -> None:
        """The rules come sorted, names sorted inside each, whatever the capability order."""
        profile = default_profile(DEFAULT_CAPABILITIES)
        keys = [(r.names, r.errno_ret, [(a.value, a.value_two) for a in r.args])
                for r in profile.syscalls]
        assert keys == sorted(keys)
        assert all(list(r.names) == sorted(r.names) for r in profile.syscalls)
        assert default_profile(tuple(reversed(DEFAULT_CAPABILITIES))) == profile

    def test_shape(self) -> None:
        """The profile allows by default and covers the three x86 ABIs."""
        profile = default_profile(DEFAULT_CAPABILITIES)
        assert profile.default_action == "SCMP_ACT_ALLOW"
        assert profile.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")


class TestLoadValidation:
    @pytest.mark.parametrize(
        ("profile", "message"),
        [
            (Seccomp("SCMP_ACT_ALLOW", syscalls=(SeccompRule(
                ("acct",), "SCMP_ACT_ERRNO", args=(SeccompArg(0, 1, "SCMP_CMP_SIMILAR"),)),)),
             "unknown comparison 'SCMP_CMP_SIMILAR'"),
            (Seccomp("SCMP_ACT_ALLOW", syscalls=(SeccompRule(("acct",), "SCMP_ACT_MAYBE"),)),
             "unsupported action 'SCMP_ACT_MAYBE'"),
            (Seccomp("SCMP_ACT_ALLOW", architectures=("SCMP_ARCH_Z80",)),
             "unknown architecture 'SCMP_ARCH_Z80'"),
            (Seccomp("SCMP_ACT_ALLOW", syscalls=(SeccompRule(
                ("acct",), "SCMP_ACT_ERRNO", args=(SeccompArg(6, 1, "SCMP_CMP_EQ"),)),)),
             "argument index 6"),
        ],
    )
    def test_bad_names_raise_spec_error(self, profile: Seccomp, message: str) -> None:
        """An unknown op, action, architecture or argument index raises SpecError naming it."""
        with pytest.raises(SpecError, match=message):
            load(profile)


@requires_seccomp_load
class TestLoad:
    def test_default_profile_denies(self, tmp_path: Path) -> None:
        """Under the default profile keyctl, unshare, mount and namespace clones get EPERM."""
        probe = _probe_denied_calls(tmp_path / "missing")
        results = _run_filtered(default_profile(DEFAULT_CAPABILITIES), probe)
        assert results == {
            "keyctl": -errno.EPERM,
            "unshare_user": -errno.EPERM,
            "mount": -errno.EPERM,
            "clone_newuser": -errno.EPERM,
            "clone_newns": -errno.EPERM,
            "clone3": -errno.ENOSYS,
            "no_randomize": -errno.EPERM,
        }

    def test_allow_all_profile_denies_nothing(self, tmp_path: Path) -> None:
        """The same calls under an empty allow-all profile reach the kernel and fail differently."""
        probe = _probe_denied_calls(tmp_path / "missing")
        results = _run_filtered(Seccomp("SCMP_ACT_ALLOW"), probe)
        assert results["mount"] == -errno.ENOENT
        assert results["clone_newuser"] == results["clone_newns"] == -errno.EINVAL
        assert results["clone3"] == -errno.EINVAL
        assert results["unshare_user"] == 0

    def test_default_profile_allows(self) -> None:
        """Under the default profile getpid, the persona query, fork and threads still work."""

        def probe() -> dict[str, int]:
            thread = threading.Thread(target=lambda: None)
            thread.start()  # pthread_create: clone3 gets ENOSYS, glibc retries with clone
            thread.join()
            child = os.fork()
            if child == 0:
                os._exit(7)
            return {
                "getpid": int(_syscall(SYS_GETPID) == os.getpid()),
                "query": int(_syscall(SYS_PERSONALITY, PERSONA_QUERY) >= 0),
                "linux32": int(_syscall(SYS_PERSONALITY, 0x8) >= 0),
                "fork": os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]),
            }

        results = _run_filtered(default_profile(DEFAULT_CAPABILITIES), probe)
        assert results == {"getpid": 1, "query": 1, "linux32": 1, "fork": 7}

    def test_sys_admin_profile_allows_namespaces(self, tmp_path: Path) -> None:
        """With CAP_SYS_ADMIN, unshare, mount, clone and clone3 reach the kernel."""
        profile = default_profile((*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"))
        results = _run_filtered(profile, _probe_denied_calls(tmp_path / "missing"))
        assert results["unshare_user"] == 0
        assert results["mount"] == -errno.ENOENT
        assert results["clone_newuser"] == results["clone3"] == -errno.EINVAL
        assert results["keyctl"] == -errno.EPERM

    def test_load_leaves_no_new_privs_unset(self) -> None:
        """Loading a filter does not turn on no_new_privs."""
        results = _run_filtered(
            default_profile(DEFAULT_CAPABILITIES),
            lambda: {"nnp": libc.prctl(libc.PR_GET_NO_NEW_PRIVS), "seccomp": _seccomp_mode()},
        )
        assert results == {"nnp": 0, "seccomp": 2}

    def test_errno_ret_and_unknown_names(self) -> None:
        """A rule's errnoRet is returned, and syscall names libseccomp lacks are skipped."""
        profile = Seccomp(
            "SCMP_ACT_ALLOW",
            syscalls=(SeccompRule(("no_such_syscall", "getppid"), "SCMP_ACT_ERRNO", errno.EXDEV),),
        )
        results = _run_filtered(profile, lambda: {"getppid": _syscall(SYS_GETPPID)})
        assert results == {"getppid": -errno.EXDEV}


def _seccomp_mode() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("Seccomp:"))
    return int(line.split()[1])


# --- the exported program, run by a small classic-BPF evaluator -----------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SYS_READ = 0
SYS_I386_READ = 3


def _evaluate(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64,
              args: tuple[int, ...] = (0,) * 6) -> tuple[int, int]:
    """Run a seccomp cBPF ``program`` on one syscall as the kernel would: its return
    value and how many instructions ran. Knows the instructions libseccomp emits (a
    load from seccomp_data, AND, jumps, return); anything else fails the test."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc = acc = ran = 0
    while True:
        code, jt, jf, k = insns[pc]
        ran += 1
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # and #k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset #k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k, ran
        else:
            raise AssertionError(f"instruction {code:#x} at {pc - 1}")


@pytest.fixture(scope="module")
def program() -> bytes:
    return export_bpf(default_profile(DEFAULT_CAPABILITIES))


@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None,
                    reason="exporting a filter needs libseccomp")
class TestExportedProgram:
    def test_policy(self, program: bytes) -> None:
        """The program answers as the profile says, for both x86 ABIs."""
        eperm = SECCOMP_RET_ERRNO | errno.EPERM
        assert _evaluate(program, SYS_READ)[0] == SECCOMP_RET_ALLOW
        assert _evaluate(program, SYS_MOUNT)[0] == eperm
        assert _evaluate(program, SYS_KEYCTL)[0] == eperm
        assert _evaluate(program, SYS_CLONE3)[0] == SECCOMP_RET_ERRNO | errno.ENOSYS
        assert _evaluate(program, SYS_CLONE, args=(CLONE_FS, 0, 0, 0, 0, 0))[0] \
            == SECCOMP_RET_ALLOW
        assert _evaluate(program, SYS_I386_READ, AUDIT_ARCH_I386)[0] == SECCOMP_RET_ALLOW

    def test_binary_tree(self, program: bytes) -> None:
        """Syscalls are found by a binary search, not a chain of comparisons: a syscall
        number runs a handful of instructions (a chain over the ~100 denied syscalls
        runs about as many for each allowed one). Only the two with argument rules
        (clone's flags, personality's values) run longer."""
        ran = {nr: _evaluate(program, nr)[1] for nr in range(460)}
        assert sorted(nr for nr, count in ran.items() if count > 16) \
            == [SYS_CLONE, SYS_PERSONALITY]
