"""Linux capabilities: names, docker's default set, ``--cap-add``/``--cap-drop``, and
applying a :class:`~runtime.spec.Capabilities` to the current process before exec.

The default set is docker's and podman's: bounding = permitted = effective = the 14
below, ambient empty. Inheritable is empty as in docker >= 20.10.14 and podman >= 4.0:
a non-empty inheritable set lets an unprivileged user gain capabilities by executing a
file with inheritable file caps (CVE-2022-24769).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import libc
from .containerdir import status_mask
from .errors import SpecError
from .spec import Capabilities

CAPABILITY_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
ALL_CAPABILITIES = tuple(CAPABILITY_NUMBERS)

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)


def normalize(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` all name CAP_NET_ADMIN."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in CAPABILITY_NUMBERS:
        raise SpecError(f"unknown capability {name!r}")
    return full


def resolve(add: Iterable[str] = (), drop: Iterable[str] = ()) -> tuple[str, ...]:
    """The capability set after docker's ``--cap-add``/``--cap-drop`` rules.

    ``--cap-drop ALL`` empties the default set first; ``--cap-add ALL`` grants every
    capability; an explicit add wins over a drop of the same capability.
    """
    adds = [normalize(n) for n in add]
    drops = [normalize(n) for n in drop]
    if "ALL" in adds:
        base = set(ALL_CAPABILITIES)
    elif "ALL" in drops:
        base = set()
    else:
        base = set(DEFAULT_CAPABILITIES)
    base -= {d for d in drops if d != "ALL"}
    base |= {a for a in adds if a != "ALL"}
    return tuple(sorted(base, key=CAPABILITY_NUMBERS.__getitem__))


def container_capabilities(caps: tuple[str, ...]) -> Capabilities:
    return Capabilities(bounding=caps, effective=caps, permitted=caps)


def to_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITY_NUMBERS[name]
    return mask


def from_mask(mask: int) -> tuple[str, ...]:
    return tuple(name for name, bit in CAPABILITY_NUMBERS.items() if mask >> bit & 1)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITY_NUMBERS.values())


def bounding_set() -> int:
    """This process's bounding set as a mask (CapBnd in /proc/self/status), or, without
    a /proc, asked bit by bit."""
    mask = status_mask(b"CapBnd")
    if mask is not None:
        return mask
    return sum(1 << bit for bit in range(last_cap() + 1)
               if libc.prctl(libc.PR_CAPBSET_READ, bit) == 1)


_at_fork: tuple[int, int] | None = None  # (last_cap, bounding set) of the inits' forker


def remember_bounding_set() -> None:
    """For a process that forks inits (the zygote): note the highest capability and
    its bounding set once, so that each init drops just the bits it has without a
    read per capability (two ctypes calls per bit in a fresh fork: ~0.1 ms of every
    start)."""
    global _at_fork
    _at_fork = (last_cap(), bounding_set())


def bounding_to_drop(keep: Iterable[str], user_namespace: bool = False) -> int:
    """The mask of the capabilities an init drops from its bounding set to keep only
    ``keep``. ``user_namespace``: the init entered a user namespace it created or
    joined since the fork, which gave it the full set; else it has its forker's (clone
    and setns of other namespaces leave it alone)."""
    last, current = _at_fork if _at_fork is not None else (last_cap(), bounding_set())
    if user_namespace:
        current = (1 << (last + 1)) - 1
    return current & ~to_mask(keep)


def drop_bounding(keep: Iterable[str], user_namespace: bool = False) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP);
    ``user_namespace`` as for :func:`bounding_to_drop`."""
    extra = bounding_to_drop(keep, user_namespace)
    bit = 0
    while extra:
        if extra & 1:
            libc.prctl(libc.PR_CAPBSET_DROP, bit)
        extra >>= 1
        bit += 1


def apply_sets(caps: Capabilities) -> None:
    """Set effective/permitted/inheritable, then raise the ambient ones."""
    libc.capset(to_mask(caps.effective), to_mask(caps.permitted), to_mask(caps.inheritable))
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for name in caps.ambient:
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, CAPABILITY_NUMBERS[name])
