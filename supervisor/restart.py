"""Restart policies (docker's) and the restart loop with its backoff.

The decisions are pure functions: :func:`should_restart` after an exit and
:func:`restart_on_boot` after a supervisor restart. :func:`run_with_restarts` applies
them. It starts the container, waits for the exit, and sleeps the :class:`Backoff`
delay before the next start. Its clock is injected so tests run it in virtual time.

The backoff works like docker's: 0.1 s, doubling, capped at 60 s. A run that lasted
``reset_after`` seconds (10 s) or more starts the sequence again from the initial
delay. The retry limit of ``on-failure:N`` counts every restart, and that count is
never reset.

::

    StartFailed                    raised by start_and_wait: the run failed before exec;
                                   counts as an exit with .exit_code
    runtime.errors.SpecError       RestartPolicy.parse got a policy docker would refuse
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

from runtime.errors import SpecError

POLICY_NAMES = ("no", "on-failure", "always", "unless-stopped")


class RestartPolicy(NamedTuple):
    """What to do when the container exits; ``max_retries`` 0 means no limit."""

    name: str
    max_retries: int = 0

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """Parse ``no``, ``on-failure[:N]``, ``always`` or ``unless-stopped``."""
        name, colon, count = text.partition(":")
        if not colon and name in POLICY_NAMES:
            return cls(name)
        if name == "on-failure" and count.isascii() and count.isdecimal():
            return cls(name, int(count))
        raise SpecError(f"invalid restart policy {text!r}: "
                        "want no, on-failure[:N], always or unless-stopped")

    def __str__(self) -> str:
        if self.name == "on-failure" and self.max_retries:
            return f"on-failure:{self.max_retries}"
        return self.name


class Backoff(NamedTuple):
    """The delays between restarts, in seconds; ``initial`` 0 restarts at once."""

    initial: float = 0.1
    factor: float = 2.0
    max_delay: float = 60.0
    reset_after: float = 10.0  # a run at least this long starts over from ``initial``

    def delay(self, attempt: int) -> float:
        """The delay before restart ``attempt`` (1 for the first): initial, growing
        by ``factor`` each time, never above ``max_delay``."""
        if attempt < 1:
            raise ValueError(f"restart attempts count from 1, got {attempt}")
        if self.initial <= 0:
            return 0.0
        try:
            grown = self.initial * self.factor ** (attempt - 1)
        except OverflowError:  # a crash loop that has run for weeks
            return self.max_delay
        return min(grown, self.max_delay)


class RestartScheduled(NamedTuple):
    """A restart was decided; it will happen at ``at`` (on the loop's clock)."""

    attempt: int
    delay: float
    exit_code: int
    at: float

    def describe(self, now: float) -> str:
        """The status text ``ps`` shows, e.g. ``restarting (attempt 5, next in 3.2s)``."""
        return f"restarting (attempt {self.attempt}, next in {max(0.0, self.at - now):.1f}s)"


class StartFailed(Exception):
    """A restart attempt failed before the user's command ran; counts as an exit."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"start failed with exit code {exit_code}")
        self.exit_code = exit_code


def should_restart(policy: RestartPolicy, exit_code: int, failures: int,
                   manually_stopped: bool) -> bool:
    """Whether an exit calls for a restart under ``policy``.

    ``failures`` is the number of restarts already done. A manual stop (``stop``, or
    ``kill`` or ``rm -f``, which go through it) disables every policy until the next
    manual start, as docker cancels the container's restart manager. ``on-failure``
    restarts on a non-zero exit only, at most ``max_retries`` times when that is set.
    """
    if manually_stopped or policy.name == "no":
        return False
    if policy.name == "on-failure":
        under_limit = policy.max_retries == 0 or failures < policy.max_retries
        return exit_code != 0 and under_limit
    return policy.name in ("always", "unless-stopped")


def restart_on_boot(policy: RestartPolicy, manually_stopped: bool, was_running: bool) -> bool:
    """Whether a supervisor that just started should start the container again.

    Docker's daemon-restart rules:

    * ``always``: yes, even if it was stopped by hand before the supervisor went down.
      This is the one difference from ``unless-stopped``.
    * ``unless-stopped``: yes, unless it was stopped by hand.
    * ``on-failure``: only if it was running. The supervisor's crash killed it, and
      that counts as a failure.
    * ``no``: never.
    """
    if policy.name == "always":
        return True
    if policy.name == "unless-stopped":
        return not manually_stopped
    if policy.name == "on-failure":
        return was_running
    return False


def _ignore_scheduled(scheduled: RestartScheduled) -> None:
    """The default ``on_scheduled``: nobody is told."""


async def run_with_restarts(
    start_and_wait: Callable[[], Awaitable[int]],
    policy: RestartPolicy,
    backoff: Backoff,
    is_manually_stopped: Callable[[], bool],
    on_scheduled: Callable[[RestartScheduled], None] = _ignore_scheduled,
    clock: Callable[[], float] = trio.current_time,
) -> int:
    """Run the container until no restart is due; return its last exit code.

    ``start_and_wait`` starts one run and returns its exit code. It raises
    :class:`StartFailed` if the run failed before exec, and that counts as an exit.
    Any other exception from it ends the loop. Each restart is announced through
    ``on_scheduled`` before its delay. A manual stop seen after the delay cancels
    the restart. The caller may also cancel the whole loop from outside, at any
    await, by cancelling its scope: nothing here catches ``Cancelled``.
    """
    attempt = 0  # the backoff position; reset by a long run
    restarts = 0  # every restart done, for on-failure's limit; never reset
    while True:
        began = clock()
        try:
            exit_code = await start_and_wait()
        except StartFailed as exc:
            exit_code = exc.exit_code
        ran = clock() - began
        if not should_restart(policy, exit_code, restarts, is_manually_stopped()):
            return exit_code
        attempt = 1 if ran >= backoff.reset_after else attempt + 1
        restarts += 1
        delay = backoff.delay(attempt)
        on_scheduled(RestartScheduled(attempt, delay, exit_code, clock() + delay))
        await trio.sleep(delay)
        if is_manually_stopped():
            return exit_code
