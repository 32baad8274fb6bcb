"""Seccomp: our default profile, and loading any OCI profile through libseccomp.

The default profile is a denylist: ``defaultAction`` is ``SCMP_ACT_ALLOW`` and the rules
return ``EPERM`` for the syscalls docker's default profile refuses (keyrings, kernel
modules, clock setting, kexec, the mount family, namespace creation, NUMA policy,
cross-process memory access, ...). Docker writes the same policy as an allowlist; the
denylist is short enough to read whole, at the cost that a syscall added to the kernel
later is allowed until it is listed here.

Like docker's, the profile depends on the container's capabilities: a syscall that a
capability already guards is allowed when the container holds that capability
(``--cap-add SYS_ADMIN`` allows ``mount``, ``SYS_TIME`` allows ``settimeofday``, ...).
Without CAP_SYS_ADMIN, ``clone`` is refused when its flags (argument 0) ask for a new
namespace, one rule per flag since the comparisons inside one rule are ANDed.

``clone3`` gets ``ENOSYS`` rather than ``EPERM``: its flags live in a struct in memory,
which seccomp cannot read, so it cannot be filtered like ``clone``. glibc's
``pthread_create`` and ``posix_spawn`` try ``clone3`` and fall back to ``clone`` on
``ENOSYS`` (only on ENOSYS), whose flags the filter does see. With CAP_SYS_ADMIN
neither is filtered.

:func:`default_profile` is pure data; :func:`load` compiles a :class:`~runtime.spec.Seccomp`
(checking every action, comparison and architecture name first, raising
:class:`~runtime.errors.SpecError`) and loads it into the calling thread with libseccomp.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

from . import libc
from .errors import HostError, SpecError
from .spec import Seccomp, SeccompArg, SeccompRule

# --- the default profile ------------------------------------------------------------

# Syscalls refused with EPERM, keyed by the capabilities any one of which lifts the
# refusal (docker's "includes caps"); () means refused whatever the capabilities.
_DENIED_UNLESS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): (
        "_sysctl", "add_key", "create_module", "get_kernel_syms", "kexec_file_load",
        "kexec_load", "keyctl", "nfsservctl", "query_module", "request_key", "swapoff",
        "swapon", "sysfs", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
    ),
    ("CAP_SYS_ADMIN",): (
        "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
        "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree",
        "pivot_root", "quotactl", "quotactl_fd", "setns", "umount", "umount2", "unshare",
    ),
    ("CAP_BPF", "CAP_SYS_ADMIN"): ("bpf",),
    ("CAP_PERFMON", "CAP_SYS_ADMIN"): ("perf_event_open",),
    ("CAP_DAC_READ_SEARCH",): ("open_by_handle_at",),
    ("CAP_SYS_MODULE",): ("delete_module", "finit_module", "init_module"),
    ("CAP_SYS_TIME",): (
        "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64",
        "settimeofday", "stime",
    ),
    ("CAP_SYS_BOOT",): ("reboot",),
    ("CAP_SYS_PACCT",): ("acct",),
    ("CAP_SYS_RAWIO",): ("ioperm", "iopl"),
    ("CAP_SYS_NICE",): ("get_mempolicy", "mbind", "move_pages", "set_mempolicy"),
    ("CAP_SYS_PTRACE",): ("kcmp", "process_vm_readv", "process_vm_writev"),
}

_NAMESPACE_FLAGS = (
    libc.CLONE_NEWNS, libc.CLONE_NEWCGROUP, libc.CLONE_NEWUTS, libc.CLONE_NEWIPC,
    libc.CLONE_NEWUSER, libc.CLONE_NEWPID, libc.CLONE_NEWNET,
)

# personality(2): PER_LINUX (0) and PER_LINUX32 (0x8), each with or without UNAME26
# (0x20000), are allowed; so is 0xffffffff, which only reads the current persona.
_PERSONA_ALLOWED_BITS = 0x0008 | 0x20000


@functools.lru_cache(maxsize=32)
def default_profile(capabilities: tuple[str, ...]) -> Seccomp:
    """Our default profile for a container holding ``capabilities``, rules sorted.
    Made once per capability set (immutable NamedTuples; ~0.07 ms each time otherwise)."""
    rules = [_eperm(_denied_syscalls(capabilities)), *_personality_rules()]
    if "CAP_SYS_ADMIN" not in capabilities:
        rules += [*_clone_rules(), SeccompRule(("clone3",), "SCMP_ACT_ERRNO", errno.ENOSYS)]
    return Seccomp(
        default_action="SCMP_ACT_ALLOW",
        architectures=("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
        syscalls=tuple(sorted(rules, key=_rule_key)),
    )


def _denied_syscalls(capabilities: tuple[str, ...]) -> tuple[str, ...]:
    held = set(capabilities)
    denied = (names for caps, names in _DENIED_UNLESS.items() if not held.intersection(caps))
    return tuple(sorted(name for names in denied for name in names))


def _eperm(names: tuple[str, ...], *args: SeccompArg) -> SeccompRule:
    return SeccompRule(names=names, action="SCMP_ACT_ERRNO", errno_ret=errno.EPERM, args=args)


def _clone_rules() -> list[SeccompRule]:
    return [_eperm(("clone",), _masked_eq(0, flag, flag)) for flag in _NAMESPACE_FLAGS]


def _personality_rules() -> list[SeccompRule]:
    """EPERM for every persona but the allowed ones and the query, as 32 rules.

    libseccomp takes one comparison per argument per rule, so "not in this set" cannot
    be one rule. The kernel reads the persona as a u32; it is denied when it sets a
    free bit (one outside ``_PERSONA_ALLOWED_BITS``) and clears some bit (so it is not
    the query). Each rule is an edge ``a -> b``, "bit ``a`` set and bit ``b`` clear".
    A cycle through the free bits has a set-to-clear edge in every denied persona with
    a free bit clear; edges from the first free bit to each allowed bit catch the rest,
    whose clear bits are all allowed ones.
    """
    free = [bit for bit in range(32) if not _PERSONA_ALLOWED_BITS >> bit & 1]
    allowed = [bit for bit in range(32) if _PERSONA_ALLOWED_BITS >> bit & 1]
    edges = [*zip(free, free[1:] + free[:1], strict=True)] + [(free[0], b) for b in allowed]
    return [
        _eperm(("personality",), _masked_eq(0, 1 << a | 1 << b, 1 << a)) for a, b in edges
    ]


def _masked_eq(index: int, mask: int, value: int) -> SeccompArg:
    return SeccompArg(index=index, value=mask, op="SCMP_CMP_MASKED_EQ", value_two=value)


def _rule_key(rule: SeccompRule) -> tuple[Any, ...]:
    args = tuple((a.index, a.op, a.value, a.value_two) for a in rule.args)
    return rule.names, rule.action, rule.errno_ret or 0, args


# --- compiling a profile (pure) -------------------------------------------------------

_ACTIONS = {
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# Actions that carry a 16-bit value: the errno, or the ptrace event message.
_ACTIONS_WITH_VALUE = {"SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000}

_COMPARISONS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# AUDIT_ARCH_* values, libseccomp's arch tokens.
_ARCH_TOKENS = {
    "SCMP_ARCH_X86_64": 0xC000003E,
    "SCMP_ARCH_X86": 0x40000003,
    "SCMP_ARCH_X32": 0x4000003E,
}
# Valid OCI names for architectures an x86_64 kernel never runs: adding them to the
# filter would change nothing, so they are skipped.
_FOREIGN_ARCHES = frozenset({
    "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
})

_MAX_ARGS = 6

_Condition = tuple[int, int, int, int]  # arg index, op, datum_a, datum_b


class _Rule(NamedTuple):
    names: tuple[str, ...]
    action: int
    conditions: tuple[_Condition, ...]


class _Filter(NamedTuple):
    default_action: int
    arch_tokens: tuple[int, ...]
    rules: tuple[_Rule, ...]


def _compile(profile: Seccomp) -> _Filter:
    default = _action(profile.default_action, profile.default_errno_ret)
    rules = (_compile_rule(rule) for rule in profile.syscalls)
    return _Filter(
        default_action=default,
        arch_tokens=_arch_tokens(profile.architectures),
        # libseccomp refuses (EACCES) a rule whose action is the default one.
        rules=tuple(rule for rule in rules if rule.action != default),
    )


def _compile_rule(rule: SeccompRule) -> _Rule:
    return _Rule(
        names=rule.names,
        action=_action(rule.action, rule.errno_ret),
        conditions=tuple(_condition(arg) for arg in rule.args),
    )


def _action(name: str, value: int | None) -> int:
    if name in _ACTIONS:
        return _ACTIONS[name]
    if name in _ACTIONS_WITH_VALUE:
        return _ACTIONS_WITH_VALUE[name] | ((errno.EPERM if value is None else value) & 0xFFFF)
    raise SpecError(f"seccomp: unsupported action {name!r}")


def _condition(arg: SeccompArg) -> _Condition:
    if arg.op not in _COMPARISONS:
        raise SpecError(f"seccomp: unknown comparison {arg.op!r}")
    if not 0 <= arg.index < _MAX_ARGS:
        raise SpecError(f"seccomp: argument index {arg.index} is not in 0..{_MAX_ARGS - 1}")
    return arg.index, _COMPARISONS[arg.op], arg.value, arg.value_two


def _arch_tokens(names: tuple[str, ...]) -> tuple[int, ...]:
    unknown = [name for name in names if name not in _ARCH_TOKENS and name not in _FOREIGN_ARCHES]
    if unknown:
        raise SpecError(f"seccomp: unknown architecture {unknown[0]!r}")
    return tuple(_ARCH_TOKENS[name] for name in names if name in _ARCH_TOKENS)


# --- loading through libseccomp -------------------------------------------------------

_NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name: no such syscall
_FLTATR_CTL_NNP = 3  # set no_new_privs on load
_FLTATR_API_SYSRAWRC = 9  # report the kernel's errno from seccomp_load
_FLTATR_CTL_OPTIMIZE = 8  # 2: syscalls sorted into a binary tree (libseccomp >= 2.5)
_OPTIMIZE_BINARY_TREE = 2
_TREE_FROM_RULES = 8


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "seccomp_init": (ctypes.c_void_p, [ctypes.c_uint32]),
    "seccomp_release": (None, [ctypes.c_void_p]),
    "seccomp_attr_set": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]),
    "seccomp_arch_add": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32]),
    "seccomp_syscall_resolve_name": (ctypes.c_int, [ctypes.c_char_p]),
    "seccomp_rule_add_array": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)],
    ),
    "seccomp_load": (ctypes.c_int, [ctypes.c_void_p]),
    "seccomp_export_bpf": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
}


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise HostError("seccomp: libseccomp.so.2 not found (install libseccomp2)") from exc
    for name, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def load(profile: Seccomp) -> None:
    """Load ``profile`` into the calling thread; it stays for the thread and its children.

    Does not set no_new_privs (the caller does, when the spec asks), so the caller must
    hold CAP_SYS_ADMIN in its user namespace. Syscall names this libseccomp does not
    know are skipped, as runc does.
    """
    with _filter_context(profile) as (lib, ctx):
        _check(lib.seccomp_load(ctx), "seccomp_load")


@functools.lru_cache(maxsize=32)
def export_bpf(profile: Seccomp) -> bytes:
    """Compile ``profile`` to a classic BPF program (an array of ``struct sock_filter``).

    The container's init installs it with :func:`install_bpf`: after ``pivot_root``
    the host's libseccomp is out of reach, and a supervisor compiles each profile once.
    """
    with _filter_context(profile) as (lib, ctx):
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)


def install_bpf(program: bytes) -> None:
    """Install a program from :func:`export_bpf` with seccomp(SECCOMP_SET_MODE_FILTER)."""
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, "seccomp: empty or malformed BPF program")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc.seccomp(_SECCOMP_SET_MODE_FILTER, 0, ctypes.addressof(fprog))


@contextlib.contextmanager
def _filter_context(profile: Seccomp) -> Iterator[tuple[ctypes.CDLL, int]]:
    compiled = _compile(profile)
    lib = _libseccomp()
    ctx = lib.seccomp_init(compiled.default_action)
    if not ctx:
        raise OSError(errno.EINVAL, f"seccomp_init {compiled.default_action:#x}: failed")
    try:
        _configure(lib, ctx, compiled.arch_tokens, sum(len(r.names) for r in compiled.rules))
        for rule in compiled.rules:
            _add_rule(lib, ctx, rule)
        yield lib, ctx
    finally:
        lib.seccomp_release(ctx)


_SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _configure(lib: ctypes.CDLL, ctx: int, arch_tokens: tuple[int, ...],
               syscall_rules: int) -> None:
    _check(lib.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0), "seccomp_attr_set CTL_NNP")
    _check(lib.seccomp_attr_set(ctx, _FLTATR_API_SYSRAWRC, 1), "seccomp_attr_set API_SYSRAWRC")
    # A binary tree, not a chain: a syscall takes ~log2(n) comparisons instead of up to
    # n (each of the container's syscalls that the kernel's cache cannot answer pays
    # them), and the kernel's attach, which emulates the filter for every syscall
    # number of each architecture to build that cache, costs ~0.2 ms less. Older
    # libseccomp lacks the attribute: the chain is as correct, only slower. As runc
    # does, only from 8 syscall rules on: libseccomp up to 2.5.3 loses the default
    # action of a tree without rules (its issue 370), and a short chain is as fast.
    if syscall_rules >= _TREE_FROM_RULES:
        rc = lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
        if rc not in (0, -errno.EINVAL, -errno.EOPNOTSUPP):
            _check(rc, "seccomp_attr_set CTL_OPTIMIZE")
    for token in arch_tokens:
        rc = lib.seccomp_arch_add(ctx, token)
        if rc != -errno.EEXIST:  # the native architecture is there from seccomp_init
            _check(rc, f"seccomp_arch_add {token:#x}")


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: _Rule) -> None:
    conditions = (_ArgCmp * len(rule.conditions))(*(_ArgCmp(*c) for c in rule.conditions))
    for name in rule.names:
        number = int(lib.seccomp_syscall_resolve_name(name.encode()))
        if number == _NR_SCMP_ERROR:
            continue
        rc = lib.seccomp_rule_add_array(ctx, rule.action, number, len(conditions), conditions)
        _check(rc, f"seccomp_rule_add {name}")


def _check(rc: int, what: str) -> None:
    """libseccomp returns ``-errno`` on failure, not -1 with errno set."""
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


__all__ = ["default_profile", "export_bpf", "install_bpf", "load"]
