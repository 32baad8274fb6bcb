"""Resource limits as docker and podman spell them on the command line, parsed into
one record, :class:`Resources`, that both cgroup drivers apply.

Units follow docker: ``--memory 64m`` (b, k, m, g, t, p; binary multiples, case
insensitive, a bare number is bytes), ``--cpus 1.5`` (CPU quota over the default
100 ms period), ``--cpu-shares 512`` (v1 shares; v2 weight by crun's formula),
``--cpuset-cpus 0-1,3``, ``--pids-limit 20`` (``-1`` or ``0``: unlimited),
``--memory-swap`` the *total* of memory and swap (``-1``: unlimited swap).
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from ..errors import SpecError

CPU_PERIOD = 100_000  # µs, docker's default CFS period
MIN_MEMORY = 6 * 1024 * 1024  # docker refuses less than 6 MiB
MAX_SHARES = 262_144
MIN_SHARES = 2
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class Resources(NamedTuple):
    """What ``run``/``update`` asked for; ``None`` means not set (the kernel default)."""

    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes of memory + swap; -1 unlimited
    memory_reservation: int | None = None  # bytes (soft limit: memory.low on v2)
    cpu_quota: int | None = None  # µs per cpu_period; -1 unlimited
    cpu_period: int | None = None  # µs
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_limit: int | None = None  # -1 unlimited
    blkio_weight: int | None = None  # 10..1000
    # Per-device throttles: ((major, minor, value), ...) for io.max / blkio.throttle.*
    device_read_bps: tuple[tuple[int, int, int], ...] | None = None
    device_write_bps: tuple[tuple[int, int, int], ...] | None = None
    device_read_iops: tuple[tuple[int, int, int], ...] | None = None
    device_write_iops: tuple[tuple[int, int, int], ...] | None = None

    def any(self) -> bool:
        return any(v is not None for v in self)

    def merged(self, newer: Resources) -> Resources:
        """These limits with every field ``newer`` sets replaced (``update``)."""
        return self._replace(**{k: v for k, v in newer._asdict().items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v is not None}

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Resources:
        doc = doc or {}
        unknown = set(doc) - set(cls._fields)
        if unknown:
            raise SpecError(f"unknown resource field {sorted(unknown)[0]!r}")
        values: dict[str, Any] = {
            k: tuple(tuple(t) for t in v) if k in THROTTLES and v is not None else v
            for k, v in doc.items()}
        return cls(**values)

    @property
    def swap_limit(self) -> int | None:
        """Bytes of memory + swap to set (docker: twice --memory when only it is set)."""
        if self.memory_swap is not None:
            return self.memory_swap
        if self.memory is not None:
            return 2 * self.memory
        return None

    @property
    def cpu_weight(self) -> int | None:
        """cgroup v2 cpu.weight for cpu_shares (crun's and runc's conversion)."""
        if self.cpu_shares is None:
            return None
        return 1 + ((self.cpu_shares - 2) * 9999) // 262142


def parse_bytes(value: str, option: str) -> int:
    """``64m`` → 67108864. Raises SpecError naming ``option``."""
    match = _SIZE.match(value)
    if not match:
        raise SpecError(f"invalid {option} {value!r}: expected a size such as 64m or 1g")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * _UNITS[unit])


def parse_memory(value: str, option: str = "--memory") -> int:
    size = parse_bytes(value, option)
    if size < MIN_MEMORY:
        raise SpecError(f"invalid {option} {value!r}: the minimum is 6m")
    return size


def parse_swap(value: str) -> int:
    if value.strip() == "-1":
        return -1
    return parse_bytes(value, "--memory-swap")


def parse_cpus(value: str) -> int:
    """``--cpus 1.5`` → a quota in µs per 100 ms period."""
    try:
        cpus = float(value)
    except ValueError:
        raise SpecError(f"invalid --cpus {value!r}: expected a number such as 0.5 or 2") from None
    if not cpus > 0 or cpus != cpus:
        raise SpecError(f"invalid --cpus {value!r}: must be greater than 0")
    available = os.cpu_count() or 1
    if cpus > available:
        raise SpecError(f"invalid --cpus {value!r}: only {available} CPUs are available")
    quota = round(cpus * CPU_PERIOD)
    return max(quota, 1000)  # the kernel's minimum quota is 1 ms


def parse_int(value: str, option: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SpecError(f"invalid {option} {value!r}: expected an integer") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SpecError(f"invalid {option} {value!r}: must be {bound}")
    return number


def parse_cpuset(value: str, option: str = "--cpuset-cpus",
                 online: set[int] | None = None) -> str:
    """Validate a cpu list such as ``0-1,3`` against the online CPUs."""
    text = value.replace(" ", "")
    if not _CPUSET.match(text):
        raise SpecError(f"invalid {option} {value!r}: expected a list such as 0-1,3")
    wanted: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise SpecError(f"invalid {option} {value!r}: range {part} runs backwards")
        wanted.update(range(lo, hi + 1))
    online = online if online is not None else online_cpus()
    missing = sorted(wanted - online)
    if missing:
        raise SpecError(f"invalid {option} {value!r}: CPU {missing[0]} is not available "
                        f"(online: {format_cpuset(online)})")
    return text


def online_cpus() -> set[int]:
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return set(expand_cpuset(f.read().strip()))
    except OSError:
        return set(range(os.cpu_count() or 1))


def expand_cpuset(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def format_cpuset(cpus: set[int]) -> str:
    ordered = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


OPTION_FIELDS = {
    # params key: (CLI option, parser)
    "memory": "--memory",
    "memory_swap": "--memory-swap",
    "memory_reservation": "--memory-reservation",
    "cpus": "--cpus",
    "cpu_quota": "--cpu-quota",
    "cpu_period": "--cpu-period",
    "cpu_shares": "--cpu-shares",
    "cpuset_cpus": "--cpuset-cpus",
    "cpuset_mems": "--cpuset-mems",
    "pids_limit": "--pids-limit",
    "blkio_weight": "--blkio-weight",
    "device_read_bps": "--device-read-bps",
    "device_write_bps": "--device-write-bps",
    "device_read_iops": "--device-read-iops",
    "device_write_iops": "--device-write-iops",
}
THROTTLES = ("device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops")


def parse_throttle(value: str, option: str) -> tuple[int, int, int]:
    """``/dev/vda:1mb`` (bps) or ``/dev/vda:100`` (iops) → (major, minor, value)."""
    import stat

    path, sep, rate = value.rpartition(":")
    if not sep or not path:
        raise SpecError(f"invalid {option} {value!r}: expected DEVICE:RATE, e.g. /dev/sda:1mb")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SpecError(f"invalid {option} {value!r}: {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise SpecError(f"invalid {option} {value!r}: {path} is not a block device")
    number = parse_int(rate, option, 0) if option.endswith("-iops") else parse_bytes(rate, option)
    return os.major(st.st_rdev), os.minor(st.st_rdev), number


def parse_resources(params: dict[str, Any], consistent: bool = True) -> Resources:
    """Resources from ``run``/``update`` params: each value is the option's string as
    typed (or a number). Unset keys stay None; raises SpecError on the first bad one."""

    def text(key: str) -> str | None:
        value = params.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SpecError(f"invalid {OPTION_FIELDS[key]}: expected a string or number")
        return str(value)

    values: dict[str, Any] = {}
    if (v := text("memory")) is not None:
        values["memory"] = parse_memory(v)
    if (v := text("memory_swap")) is not None and v.strip() != "0":  # docker: 0 = unset
        values["memory_swap"] = parse_swap(v)
    if (v := text("memory_reservation")) is not None:
        values["memory_reservation"] = parse_bytes(v, "--memory-reservation")
    if (v := text("cpus")) is not None:
        values["cpu_quota"] = parse_cpus(v)
        values["cpu_period"] = CPU_PERIOD
    if (v := text("cpu_period")) is not None:
        if "cpu_quota" in values:  # docker: "Nano CPUs and CPU Period cannot both be set"
            raise SpecError("--cpus and --cpu-period cannot be used together")
        values["cpu_period"] = parse_int(v, "--cpu-period", 1000, 1_000_000)
    if (v := text("cpu_quota")) is not None:
        if "cpus" in params and params["cpus"] not in (None, ""):
            raise SpecError("--cpus and --cpu-quota cannot be used together")
        quota = parse_int(v, "--cpu-quota", -1)
        if 0 <= quota < 1000:
            raise SpecError(f"invalid --cpu-quota {v!r}: the minimum is 1000 (µs)")
        values["cpu_quota"] = quota
    if (v := text("cpu_shares")) is not None and v.strip() != "0":  # docker: 0 = unset
        values["cpu_shares"] = parse_int(v, "--cpu-shares", MIN_SHARES, MAX_SHARES)
    if (v := text("cpuset_cpus")) is not None:
        values["cpuset_cpus"] = parse_cpuset(v)
    if (v := text("cpuset_mems")) is not None:
        values["cpuset_mems"] = parse_cpuset(v, "--cpuset-mems", _online_mems())
    if (v := text("pids_limit")) is not None:
        limit = parse_int(v, "--pids-limit", -1)
        values["pids_limit"] = -1 if limit == 0 else limit
    if (v := text("blkio_weight")) is not None:
        values["blkio_weight"] = parse_int(v, "--blkio-weight", 10, 1000)
    for key in THROTTLES:
        items = params.get(key)
        if items in (None, [], ""):
            continue
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise SpecError(f"invalid {OPTION_FIELDS[key]}: expected DEVICE:RATE strings")
        values[key] = tuple(parse_throttle(i, OPTION_FIELDS[key]) for i in items)
    resources = Resources(**values)
    if consistent:
        check_consistent(resources)
    return resources


def check_consistent(r: Resources) -> None:
    if r.memory_swap is not None and r.memory_swap != -1:
        if r.memory is None:
            raise SpecError("--memory-swap needs --memory as well")
        if r.memory_swap < r.memory:
            raise SpecError("--memory-swap must be at least --memory (it is memory plus swap)")
    if (r.memory_reservation is not None and r.memory is not None
            and r.memory_reservation > r.memory):
        raise SpecError("--memory-reservation must be below --memory")


def _online_mems() -> set[int]:
    try:
        with open("/sys/devices/system/node/online") as f:
            return set(expand_cpuset(f.read().strip()))
    except OSError:
        return {0}
