"""The native init's plan (runtime/nativeinit.py): its wire format, the steps a spec
compiles to, and the failure packets the C side sends back. That the plan runs as
the Python init would is proved on real containers (tests/integration/test_inits.py)."""

from __future__ import annotations

import os
import struct

import pytest

from runtime import libc, nativeinit
from runtime.channel import ExecFailed, Placed, SetupFailed, Start, _decode, packet
from runtime.defaults import RunRequest, build_spec
from runtime.idmap import IdMapPlan
from runtime.init import InitConfig
from runtime.spec import IdMapping

NAMES = {getattr(nativeinit, n): n for n in dir(nativeinit)
         if n.isupper() and isinstance(getattr(nativeinit, n), int)
         and n not in ("EMPTY_FILE", "DIRECTORY", "LIKE_SOURCE")}

CONFIG = InitConfig(lower=("/img",), upper="/c/upper", work="/c/work", merged="/c/merged")
USERNS = IdMapPlan((IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536)),
                   (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536)))


def decode(data: bytes) -> list[tuple[str, tuple[bytes | None, ...], int, int, int]]:
    """The steps of a plan, read back as nativeinit.c reads them."""
    steps, at = [], 0
    while at < len(data):
        op, count, a, b, c = struct.unpack_from("<IIQQQ", data, at)
        at += 32
        strings: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from("<I", data, at)
            at += 4
            if length == 0xFFFFFFFF:
                strings.append(None)
                continue
            strings.append(data[at:at + length])
            assert data[at + length] == 0  # NUL-terminated for C
            at += length + 1
        steps.append((NAMES[op], tuple(strings), a, b, c))
    return steps


def compiled(config: InitConfig = CONFIG, plan: IdMapPlan | None = None,
             **request: object) -> tuple[int, list[tuple[str, tuple[bytes | None, ...], int,
                                                         int, int]]]:
    fields = {"rootfs": "/img", "args": ("/bin/true",), "hostname": "box", **request}
    spec = build_spec(RunRequest(**fields), plan, {}, None)  # type: ignore[arg-type]
    result = nativeinit.compile_init(spec, config)
    assert result is not None
    return result.flags, decode(result.plan)


def ops(steps: list[tuple[str, tuple[bytes | None, ...], int, int, int]]) -> list[str]:
    return [s[0] for s in steps]


def test_step_layout() -> None:
    plan = nativeinit.Plan()
    plan.step(nativeinit.MOUNT, None, "/x", what="mount none on ", a=1 << 40, b=-1)
    data = plan.encode()
    assert data[:32] == struct.pack("<IIQQQ", nativeinit.MOUNT, 3, 1 << 40, (1 << 64) - 1, 0)
    assert decode(data) == [("MOUNT", (b"mount none on ", None, b"/x"), 1 << 40,
                             (1 << 64) - 1, 0)]


def test_a_nul_in_a_string_is_refused() -> None:
    with pytest.raises(ValueError):
        nativeinit.Plan().step(nativeinit.SETHOSTNAME, "a\0b")
    nativeinit.Plan().step(nativeinit.SECCOMP, b"\0" * 8)  # binary where binary belongs


def test_default_container_order() -> None:
    """Placed before anything in the namespaces; the root built, then pivot, masks; Ready,
    Start; privileges dropped last; exec with the PATH's candidates."""
    flags, steps = compiled()
    names = ops(steps)
    assert names[:2] == ["PDEATHSIG", "EXPECT"] and steps[1][1][1] == packet(Placed)
    assert flags & libc.CLONE_NEWNS and flags & libc.CLONE_NEWPID
    assert names.index("PIVOT") > max(i for i, n in enumerate(names) if n == "RESOLVE")
    assert names.index("MASK") > names.index("PIVOT")
    send = names.index("SEND")
    assert names[send + 1] == "EXPECT" and steps[send + 1][1][1] == packet(Start)
    assert names.index("SET_USER") > names.index("CAPBSET_DROP")
    assert names[-3:] == ["CLOSE_FDS", "UNBLOCK_SIGNALS", "EXEC"]
    exec_step = steps[-1]
    assert exec_step[1][0] == b"/bin/true" and exec_step[2:4] == (1, 1)
    user = steps[names.index("USER")]
    assert user[1][1] == b"0" and user[2] == 1  # HOME from the passwd entry


def test_go_ahead_waits_for_no_start() -> None:
    _, steps = compiled(CONFIG._replace(go_ahead=True))
    assert [s[1][1] for s in steps if s[0] == "EXPECT"] == [packet(Placed)]


def test_command_looked_up_in_path() -> None:
    _, steps = compiled(args=("true", "x"), env=("PATH=/a:/b",))
    _, strings, count, argc, _ = steps[-1]
    assert strings[1:count + 1] == (b"/a/true", b"/b/true")
    assert strings[count + 1:count + 1 + argc] == (b"true", b"x")
    assert b"PATH=/a:/b" in strings[count + argc + 1:]


def test_user_namespace_root_first_and_full_bounding_set() -> None:
    """In a new user namespace the init becomes its root once placed, and drops from the
    full set it was given there every capability not kept."""
    flags, steps = compiled(plan=USERNS, rootless=True)
    names = ops(steps)
    assert flags & libc.CLONE_NEWUSER
    assert names[names.index("EXPECT") + 1] == "SETRESID"
    dropped = steps[names.index("CAPBSET_DROP")][2]
    assert dropped & 1 << 21  # CAP_SYS_ADMIN, which the container does not keep
    assert not dropped & 1  # CAP_CHOWN, which it does
    assert "MKNOD" not in names  # device nodes are bound from the host instead


def test_cgroup_namespace_unshared_once_placed() -> None:
    flags, steps = compiled()
    names = ops(steps)
    assert not flags & libc.CLONE_NEWCGROUP
    unshare = steps[names.index("UNSHARE")]
    assert unshare[2] == libc.CLONE_NEWCGROUP
    assert names.index("UNSHARE") > names.index("EXPECT")


def test_terminal_instead_of_setsid() -> None:
    _, steps = compiled(terminal=True)
    assert "TERMINAL" in ops(steps) and "SETSID" not in ops(steps)


def test_groups_to_add_and_home() -> None:
    _, steps = compiled(user="user", group_add=("wheel", "10"), env=("HOME=/h",))
    user = next(s for s in steps if s[0] == "USER")
    assert user[1][1:] == (b"user", b"wheel\n10") and user[2] == 0


def test_a_nul_leaves_it_to_the_python_init() -> None:
    spec = build_spec(RunRequest(rootfs="/img", args=("/bin/echo", "a\0b"), hostname="h"),
                      None, {}, None)
    assert nativeinit.compile_init(spec, CONFIG) is None


def test_a_huge_environment_leaves_it_to_the_python_init() -> None:
    env = tuple(f"V{i}=x" for i in range(nativeinit.MAX_EXEC_STRINGS))
    spec = build_spec(RunRequest(rootfs="/img", args=("/bin/true",), hostname="h", env=env),
                      None, {}, None)
    assert nativeinit.compile_init(spec, CONFIG) is None


@pytest.mark.parametrize(("kind", "err", "what", "expected"), [
    (0, 2, "mount proc on /x", SetupFailed(2, "mount proc on /x: No such file or directory")),
    (0, 0, "unable to find user u", SetupFailed(0, "unable to find user u")),
    (1, 8, "/bin/x", ExecFailed(8, 'exec "/bin/x": Exec format error')),
    (2, 2, "x", ExecFailed(2, 'exec "x": executable file not found in $PATH')),
    (3, 2, "/x", ExecFailed(2, 'exec "/x": no such file or directory')),
    (4, 13, "x", ExecFailed(13, 'exec "x": permission denied')),
])
def test_failure_packets(kind: int, err: int, what: str, expected: object) -> None:
    data = b"\0F" + bytes([kind]) + struct.pack("<i", err) + what.encode()
    assert _decode(data, []) == expected


@pytest.mark.parametrize(("user", "plan", "shared"), [
    (None, None, True),  # the default: "0", root as it was cloned
    ("0", None, True), ("root", None, True), ("0:0", None, True), ("root:root", None, True),
    ("1000", None, False), ("0:5", None, False), ("user", None, False),
    ("1000:1000", None, False),
    # root of a user namespace: shared only where it maps to our own ids
    (None, IdMapPlan((IdMapping(0, os.geteuid(), 1),), (IdMapping(0, os.getegid(), 1),)),
     True),
    (None, IdMapPlan((IdMapping(0, 300000, 65536),), (IdMapping(0, 300000, 65536),)), False),
])
def test_shared_only_when_the_ids_stay(user: str | None, plan: IdMapPlan | None,
                                       shared: bool) -> None:
    """An init that changes its ids would mark the zygote's memory not dumpable (its
    /proc closed to a rootless user for good): it is cloned as a fork instead."""
    fields = {"rootfs": "/img", "args": ("/bin/true",), "hostname": "h", "user": user,
              "rootless": plan is not None}
    spec = build_spec(RunRequest(**fields), plan, {}, None)  # type: ignore[arg-type]
    compiled = nativeinit.compile_init(spec, CONFIG)
    assert compiled is not None and compiled.shared is shared
