"""``-u USER[:GROUP]`` resolved against the container's own /etc/passwd and /etc/group,
with docker's rules: a name must exist, a number need not; supplementary groups are the
primary group, the groups that list the user and ``--group-add``; HOME comes from the
passwd entry, else ``/``.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import SpecError


class PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class GroupEntry(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...]


class ResolvedUser(NamedTuple):
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def parse_passwd(text: str) -> tuple[PasswdEntry, ...]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#"):
            continue
        try:
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5]))
        except ValueError:
            continue
    return tuple(entries)


def parse_group(text: str) -> tuple[GroupEntry, ...]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            members = tuple(m for m in fields[3].split(",") if m)
            entries.append(GroupEntry(fields[0], int(fields[2]), members))
        except ValueError:
            continue
    return tuple(entries)


def resolve_user(
    spec: str,
    passwd: tuple[PasswdEntry, ...],
    groups: tuple[GroupEntry, ...],
    group_add: tuple[str, ...] = (),
) -> ResolvedUser:
    """Resolve ``USER[:GROUP]`` (names or numbers) as docker does."""
    user_part, _, group_part = spec.partition(":")
    if not user_part:
        raise SpecError(f"invalid user {spec!r}")
    entry = _find_user(user_part, passwd)
    uid = entry.uid if entry else _number(user_part, "user")
    gid = entry.gid if entry else 0
    if group_part:
        gid = _find_group(group_part, groups)
    additional: list[int] = [gid]
    if entry:
        additional += [g.gid for g in groups if entry.name in g.members]
    additional += [_find_group(g, groups) for g in group_add]
    unique = tuple(dict.fromkeys(g for g in additional))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=unique, home=entry.home if entry else "/")


def _find_user(user: str, passwd: tuple[PasswdEntry, ...]) -> PasswdEntry | None:
    for entry in passwd:
        if entry.name == user or (user.isdigit() and entry.uid == int(user)):
            return entry
    if not user.isdigit():
        raise SpecError(f"unable to find user {user}: no matching entries in passwd file")
    return None


def _find_group(group: str, groups: tuple[GroupEntry, ...]) -> int:
    if group.isdigit():
        return int(group)
    for entry in groups:
        if entry.name == group:
            return entry.gid
    raise SpecError(f"unable to find group {group}: no matching entries in group file")


def _number(value: str, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SpecError(f"invalid {what} {value!r}") from None
    if number < 0 or number > 0xFFFFFFFE:
        raise SpecError(f"invalid {what} {value!r}: out of range")
    return number


def validate_user_option(spec: str) -> str:
    """Edge validation for ``-u``: ``USER[:GROUP]`` with non-empty, sane parts."""
    user_part, sep, group_part = spec.partition(":")
    for part, what in ((user_part, "user"), (group_part, "group")):
        if part == "" and (what == "user" or sep):
            raise SpecError(f"invalid user {spec!r}: empty {what}")
        if part.startswith("-") or any(c in part for c in " /\n"):
            raise SpecError(f"invalid user {spec!r}")
        if part.isdigit():
            _number(part, what)
    return spec
