"""A container's lifecycle as an explicit state machine.

The states are docker's, shown as their lowercase names in ``ps`` and ``inspect``::

    created     -> running, exited, removing
    running     -> paused, exited
    paused      -> running, exited
    exited      -> running, exited, restarting, removing
    restarting  -> running, exited, removing
    removing    -> dead
    dead        -> removing

A restart policy never moves a running container straight to restarting: the init
exits first (running -> exited), then the policy schedules the restart
(exited -> restarting). ``rm -f`` of a live container stops it first, so running and
paused never go to removing directly.

:data:`ALLOWED` lists every legal move with a comment saying when it happens;
:func:`transition` is the only way to move, and raises :class:`InvalidTransition`
for anything else. The ``can_*`` guards answer "may this verb run now?" for the
server, which turns a ``False`` into a ``Conflict`` for the user.

::

    InvalidTransition              a move not in ALLOWED: a supervisor bug, never the user's
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """Where a container is in its lifecycle; the value (also ``str()``) is what ``ps``
    shows."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"


ALLOWED: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({
        Status.RUNNING,     # start: the init exec'd the user's command
        Status.EXITED,      # start failed: setup failed before exec, or exec failed
        Status.REMOVING,    # rm of a container that never ran
    }),
    Status.RUNNING: frozenset({
        Status.PAUSED,      # pause: the cgroup froze every task
        Status.EXITED,      # the init exited or was killed (stop, kill, OOM); a restart
                            # policy acts only afterwards, from exited
    }),
    Status.PAUSED: frozenset({
        Status.RUNNING,     # unpause: the cgroup thawed
        Status.EXITED,      # killed while paused (SIGKILL reaches frozen tasks)
    }),
    Status.EXITED: frozenset({
        Status.RUNNING,     # manual start: the init exec'd again
        Status.EXITED,      # manual start failed before exec: the new exit code is recorded
        Status.RESTARTING,  # the restart policy scheduled a restart after a backoff delay
        Status.REMOVING,    # rm
    }),
    Status.RESTARTING: frozenset({
        Status.RUNNING,     # the restart attempt exec'd
        Status.EXITED,      # the attempt failed before exec, or a stop came during the
                            # backoff delay and cancelled the restart
        Status.REMOVING,    # rm -f during the backoff delay
    }),
    Status.REMOVING: frozenset({
        Status.DEAD,        # the removal failed part-way: what is left needs another rm
    }),
    Status.DEAD: frozenset({
        Status.REMOVING,    # rm again: retry the removal
    }),
}


class InvalidTransition(Exception):
    """A move the state machine does not allow; names both states."""

    def __init__(self, current: Status, new: Status) -> None:
        super().__init__(f"invalid status transition: {current.value} -> {new.value}")
        self.current = current
        self.new = new


def transition(current: Status, new: Status) -> Status:
    """Return ``new`` if the move from ``current`` is allowed, else raise."""
    if new not in ALLOWED[current]:
        raise InvalidTransition(current, new)
    return new


def is_active(s: Status) -> bool:
    """The container has a live init, or will have one after its backoff delay."""
    return s in (Status.RUNNING, Status.PAUSED, Status.RESTARTING)


def can_start(s: Status) -> bool:
    """``start`` may run: the container was never started or has exited."""
    return s in (Status.CREATED, Status.EXITED)


def can_stop(s: Status) -> bool:
    """``stop`` has something to stop: a live init or a pending restart."""
    return is_active(s)


def can_kill(s: Status) -> bool:
    """``kill`` has an init to signal (a paused one included)."""
    return s in (Status.RUNNING, Status.PAUSED)


def can_pause(s: Status) -> bool:
    """``pause`` may freeze the container: it is running."""
    return s == Status.RUNNING


def can_unpause(s: Status) -> bool:
    """``unpause`` may thaw the container: it is paused."""
    return s == Status.PAUSED


def can_remove(s: Status, force: bool) -> bool:
    """``rm`` may run: the container is stopped, or ``force`` will stop it first.

    A removal already under way refuses a second one.
    """
    if s == Status.REMOVING:
        return False
    return force or not is_active(s)
