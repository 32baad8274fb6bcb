"""Restart policies, the backoff and the restart loop, the loop in virtual time.

The loop tests drive :func:`run_with_restarts` with a scripted container under
pytest-trio's ``autojump_clock``. Each run sleeps its scripted duration in virtual
time, so the assertions are on exact start times and delays. Backoffs made of powers
of two keep the float arithmetic exact; the docker-default sequence is compared with
``pytest.approx`` because 0.1 has no exact binary form.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime.errors import SpecError
from supervisor.restart import (
    Backoff,
    RestartPolicy,
    RestartScheduled,
    StartFailed,
    restart_on_boot,
    run_with_restarts,
    should_restart,
)

NO = RestartPolicy("no")
ALWAYS = RestartPolicy("always")
UNLESS_STOPPED = RestartPolicy("unless-stopped")
ON_FAILURE = RestartPolicy("on-failure")

Run = tuple[int, float] | StartFailed  # (exit code, seconds it runs), or a failed start


class ScriptedContainer:
    """A fake ``start_and_wait`` that plays a scripted history of runs.

    Each start records the virtual time and plays the next run of the script. A run
    sleeps its duration and returns its exit code; a ``StartFailed`` entry is raised
    instead. With ``stop_after_last``, the last run ends as if ``stop`` had killed
    it: ``stopped`` becomes true. A start beyond the script fails the test.
    """

    def __init__(self, *runs: Run, stop_after_last: bool = False) -> None:
        self.runs = list(runs)
        self.stop_after_last = stop_after_last
        self.stopped = False
        self.starts: list[float] = []
        self.scheduled: list[RestartScheduled] = []

    async def start_and_wait(self) -> int:
        assert self.runs, f"unexpected start #{len(self.starts) + 1}"
        self.starts.append(trio.current_time())
        run = self.runs.pop(0)
        if self.stop_after_last and not self.runs:
            self.stopped = True
        if isinstance(run, StartFailed):
            raise run
        exit_code, duration = run
        await trio.sleep(duration)
        return exit_code

    def is_manually_stopped(self) -> bool:
        return self.stopped

    async def run(self, policy: RestartPolicy, backoff: Backoff) -> int:
        return await run_with_restarts(self.start_and_wait, policy, backoff,
                                       self.is_manually_stopped, self.scheduled.append)

    @property
    def delays(self) -> list[float]:
        return [s.delay for s in self.scheduled]

    @property
    def attempts(self) -> list[int]:
        return [s.attempt for s in self.scheduled]


class TestRestartPolicyParse:
    @pytest.mark.parametrize(("text", "policy"), [
        ("no", RestartPolicy("no", 0)),
        ("always", RestartPolicy("always", 0)),
        ("unless-stopped", RestartPolicy("unless-stopped", 0)),
        ("on-failure", RestartPolicy("on-failure", 0)),
        ("on-failure:0", RestartPolicy("on-failure", 0)),
        ("on-failure:3", RestartPolicy("on-failure", 3)),
        ("on-failure:12", RestartPolicy("on-failure", 12)),
    ])
    def test_accepts_docker_policies(self, text: str, policy: RestartPolicy) -> None:
        """Each docker policy parses to its name and retry limit."""
        assert RestartPolicy.parse(text) == policy

    @pytest.mark.parametrize("text", [
        "", "never", "Always", "on_failure", "on-failure:", "on-failure:-1",
        "on-failure:+1", "on-failure:1.5", "on-failure:x", "on-failure:3:4",
        "on-failure: 3", "on-failure:²", "always:3", "unless-stopped:1", "no:0",
    ])
    def test_rejects_anything_else(self, text: str) -> None:
        """Any other text is a SpecError that quotes it and lists the valid forms."""
        with pytest.raises(SpecError) as info:
            RestartPolicy.parse(text)
        assert str(info.value) == (f"invalid restart policy {text!r}: "
                                   "want no, on-failure[:N], always or unless-stopped")

    @pytest.mark.parametrize("text", [
        "no", "always", "unless-stopped", "on-failure", "on-failure:3"])
    def test_renders_back(self, text: str) -> None:
        """str() of a parsed policy gives back the text it came from."""
        assert str(RestartPolicy.parse(text)) == text

    def test_unlimited_renders_without_count(self) -> None:
        """on-failure:0 means unlimited and renders as plain on-failure."""
        assert str(RestartPolicy.parse("on-failure:0")) == "on-failure"


class TestBackoff:
    def test_defaults_are_dockers(self) -> None:
        """The default backoff starts at 0.1 s, doubles, caps at 60 s, resets after 10 s."""
        assert Backoff() == Backoff(initial=0.1, factor=2.0, max_delay=60.0,
                                    reset_after=10.0)

    def test_doubles_from_initial_up_to_cap(self) -> None:
        """Delays run 0.1, 0.2, 0.4, ... 51.2, then stay at 60 s."""
        assert [Backoff().delay(n) for n in range(1, 14)] == [
            0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0, 60.0]

    def test_max_delay_is_configurable(self) -> None:
        """A lower max_delay caps the sequence there."""
        assert [Backoff(initial=1.0, max_delay=5.0).delay(n) for n in range(1, 6)] == [
            1.0, 2.0, 4.0, 5.0, 5.0]

    def test_factor_is_configurable(self) -> None:
        """The factor sets how fast the delay grows; 1 keeps it constant."""
        assert [Backoff(initial=1.0, factor=3.0).delay(n) for n in range(1, 5)] == [
            1.0, 3.0, 9.0, 27.0]
        assert [Backoff(initial=2.0, factor=1.0).delay(n) for n in range(1, 4)] == [
            2.0, 2.0, 2.0]

    def test_zero_initial_is_always_immediate(self) -> None:
        """An initial delay of 0 gives 0 for every attempt, however late."""
        assert [Backoff(initial=0.0).delay(n) for n in (1, 2, 50, 10_000)] == [0.0] * 4

    def test_huge_attempt_stays_at_cap(self) -> None:
        """An attempt number whose growth overflows a float still gives max_delay."""
        assert Backoff().delay(100_000) == 60.0

    def test_attempts_count_from_one(self) -> None:
        """Attempt 0 is a caller bug and raises ValueError."""
        with pytest.raises(ValueError, match="count from 1"):
            Backoff().delay(0)


class TestRestartScheduled:
    def test_describe_shows_attempt_and_time_left(self) -> None:
        """The status text gives the attempt and the seconds left to one decimal."""
        scheduled = RestartScheduled(attempt=5, delay=6.4, exit_code=1, at=10.0)
        assert scheduled.describe(now=6.8) == "restarting (attempt 5, next in 3.2s)"

    def test_describe_never_negative(self) -> None:
        """Once the time has passed the text says 0.0s, not a negative delay."""
        scheduled = RestartScheduled(attempt=1, delay=0.1, exit_code=1, at=10.0)
        assert scheduled.describe(now=11.0) == "restarting (attempt 1, next in 0.0s)"


class TestStartFailed:
    def test_carries_exit_code(self) -> None:
        """The exception keeps the exit code the failed start stands for."""
        exc = StartFailed(127)
        assert exc.exit_code == 127
        assert str(exc) == "start failed with exit code 127"


class TestShouldRestart:
    @pytest.mark.parametrize("code", [0, 1, 137])
    def test_no_never_restarts(self, code: int) -> None:
        """Policy no never restarts, whatever the exit code."""
        assert not should_restart(NO, code, failures=0, manually_stopped=False)

    @pytest.mark.parametrize("policy", [ALWAYS, UNLESS_STOPPED])
    @pytest.mark.parametrize("code", [0, 1, 143])
    def test_always_and_unless_stopped_restart_any_exit(self, policy: RestartPolicy,
                                                        code: int) -> None:
        """always and unless-stopped restart after any exit, success included."""
        assert should_restart(policy, code, failures=1000, manually_stopped=False)

    @pytest.mark.parametrize("policy", [ALWAYS, UNLESS_STOPPED, ON_FAILURE,
                                        RestartPolicy("on-failure", 5)])
    def test_manual_stop_disables_every_policy(self, policy: RestartPolicy) -> None:
        """After a manual stop no policy restarts, even on a failure exit."""
        assert not should_restart(policy, 143, failures=0, manually_stopped=True)

    def test_on_failure_restarts_non_zero_exit(self) -> None:
        """on-failure restarts a non-zero exit."""
        assert should_restart(ON_FAILURE, 1, failures=0, manually_stopped=False)

    def test_on_failure_ignores_success(self) -> None:
        """on-failure does not restart an exit with code 0."""
        assert not should_restart(ON_FAILURE, 0, failures=0, manually_stopped=False)

    def test_on_failure_unlimited(self) -> None:
        """on-failure without a count keeps restarting however many restarts were done."""
        assert should_restart(ON_FAILURE, 1, failures=10**6, manually_stopped=False)

    def test_on_failure_limit(self) -> None:
        """on-failure:3 allows restarts while fewer than 3 were done, and no more."""
        policy = RestartPolicy("on-failure", 3)
        assert [should_restart(policy, 1, n, manually_stopped=False)
                for n in range(5)] == [True, True, True, False, False]


class TestRestartOnBoot:
    @pytest.mark.parametrize(("policy", "manually_stopped", "was_running", "expected"), [
        (ALWAYS, False, True, True),
        (ALWAYS, False, False, True),
        (ALWAYS, True, False, True),
        (UNLESS_STOPPED, False, True, True),
        (UNLESS_STOPPED, False, False, True),
        (UNLESS_STOPPED, True, False, False),
        (ON_FAILURE, False, True, True),
        (ON_FAILURE, False, False, False),
        (RestartPolicy("on-failure", 2), False, True, True),
        (NO, False, True, False),
        (NO, False, False, False),
    ])
    def test_docker_daemon_restart_rules(self, policy: RestartPolicy,
                                         manually_stopped: bool, was_running: bool,
                                         expected: bool) -> None:
        """Boot restarts follow docker's daemon-restart rules for each policy."""
        assert restart_on_boot(policy, manually_stopped, was_running) is expected

    def test_always_differs_from_unless_stopped_after_manual_stop(self) -> None:
        """A container stopped by hand comes back under always, not under unless-stopped."""
        assert restart_on_boot(ALWAYS, manually_stopped=True, was_running=False)
        assert not restart_on_boot(UNLESS_STOPPED, manually_stopped=True, was_running=False)


class TestRunWithRestarts:
    async def test_crash_loop_backs_off_to_cap(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """An instant crash loop under always starts at 0, 0.1, 0.3, 0.7, ... 60 s apart."""
        container = ScriptedContainer(*[(1, 0.0)] * 13, stop_after_last=True)
        assert await container.run(ALWAYS, Backoff()) == 1
        assert container.delays == [
            0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0]
        assert container.attempts == list(range(1, 13))
        assert container.starts == pytest.approx([
            0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7, 25.5, 51.1, 102.3, 162.3, 222.3])

    async def test_long_run_resets_backoff(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A run lasting exactly reset_after seconds makes the next delay the initial one."""
        container = ScriptedContainer((1, 0.0), (1, 0.0), (1, 0.0), (1, 8.0), (1, 0.0),
                                      stop_after_last=True)
        assert await container.run(ALWAYS, Backoff(initial=0.25, reset_after=8.0)) == 1
        assert container.attempts == [1, 2, 3, 1]
        assert container.delays == [0.25, 0.5, 1.0, 0.25]
        assert container.starts == [0.0, 0.25, 0.75, 1.75, 10.0]

    async def test_default_reset_after_ten_seconds(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """With docker's defaults, a run past 10 s brings the delay back to 0.1 s."""
        container = ScriptedContainer((1, 0.0), (1, 0.0), (1, 10.5), (1, 0.0),
                                      stop_after_last=True)
        await container.run(ALWAYS, Backoff())
        assert container.delays == [0.1, 0.2, 0.1]

    async def test_shorter_run_keeps_backing_off(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A run just under reset_after does not reset the backoff."""
        container = ScriptedContainer((1, 0.0), (1, 7.75), (1, 0.0), stop_after_last=True)
        await container.run(ALWAYS, Backoff(initial=0.25, reset_after=8.0))
        assert container.attempts == [1, 2]
        assert container.delays == [0.25, 0.5]

    async def test_on_failure_limit_stops_after_n_restarts(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """on-failure:3 restarts exactly 3 times (4 runs) and returns the last exit code."""
        container = ScriptedContainer((1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0))
        code = await container.run(RestartPolicy("on-failure", 3), Backoff(initial=0.25))
        assert code == 4
        assert container.starts == [0.0, 0.25, 0.75, 1.75]
        assert [s.exit_code for s in container.scheduled] == [1, 2, 3]

    async def test_on_failure_limit_is_not_reset_by_long_runs(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Long runs reset the delay but not the count on-failure:N limits."""
        container = ScriptedContainer((1, 16.0), (1, 16.0), (1, 16.0))
        code = await container.run(RestartPolicy("on-failure", 2),
                                   Backoff(initial=0.5, reset_after=8.0))
        assert code == 1
        assert container.attempts == [1, 1]
        assert container.starts == [0.0, 16.5, 33.0]

    async def test_on_failure_success_does_not_restart(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Exit code 0 under on-failure ends the loop with no restart scheduled."""
        container = ScriptedContainer((0, 5.0))
        assert await container.run(ON_FAILURE, Backoff()) == 0
        assert container.starts == [0.0]
        assert container.scheduled == []
        assert trio.current_time() == 5.0

    async def test_on_failure_until_success(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Unlimited on-failure restarts failures until a run exits 0."""
        container = ScriptedContainer((1, 1.0), (1, 1.0), (0, 1.0))
        assert await container.run(ON_FAILURE, Backoff(initial=0.5)) == 0
        assert container.starts == [0.0, 1.5, 3.5]

    async def test_policy_no_runs_once(self, autojump_clock: trio.testing.MockClock) -> None:
        """Policy no returns the first exit code without scheduling anything."""
        container = ScriptedContainer((3, 2.0))
        assert await container.run(NO, Backoff()) == 3
        assert container.scheduled == []

    async def test_always_restarts_success(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """always restarts a run that exited 0."""
        container = ScriptedContainer((0, 1.0), (0, 1.0), stop_after_last=True)
        assert await container.run(ALWAYS, Backoff(initial=0.5)) == 0
        assert container.starts == [0.0, 1.5]

    async def test_stop_ending_the_run_prevents_restart(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A run ended by a manual stop (exit 143) is not restarted under unless-stopped."""
        container = ScriptedContainer((143, 4.0), stop_after_last=True)
        assert await container.run(UNLESS_STOPPED, Backoff()) == 143
        assert container.scheduled == []

    async def test_stop_during_backoff_cancels_restart(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A manual stop during the backoff delay prevents the restart."""
        container = ScriptedContainer((1, 0.0), (1, 0.0))

        async def stop_later() -> None:
            await trio.sleep(1.0)
            container.stopped = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_later)
            code = await container.run(ALWAYS, Backoff(initial=4.0))
        assert code == 1
        assert container.starts == [0.0]
        assert container.scheduled == [
            RestartScheduled(attempt=1, delay=4.0, exit_code=1, at=4.0)]
        assert trio.current_time() == 4.0

    async def test_cancel_during_backoff_ends_loop(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Cancelling the caller's scope during the delay ends the loop at once."""
        container = ScriptedContainer((1, 0.0), (1, 0.0))
        with trio.move_on_after(1.0) as scope:
            await container.run(ALWAYS, Backoff(initial=4.0))
        assert scope.cancelled_caught
        assert container.starts == [0.0]
        assert trio.current_time() == 1.0

    async def test_cancel_during_run_ends_loop(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """Cancelling the caller's scope while a run is going schedules no restart."""
        container = ScriptedContainer((1, 30.0))
        with trio.move_on_after(2.0) as scope:
            await container.run(ALWAYS, Backoff())
        assert scope.cancelled_caught
        assert container.scheduled == []
        assert trio.current_time() == 2.0

    async def test_zero_delay_restarts_immediately(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """With a 0 s initial delay every restart happens at once."""
        container = ScriptedContainer(*[(1, 0.0)] * 5, stop_after_last=True)
        await container.run(ALWAYS, Backoff(initial=0.0))
        assert container.starts == [0.0] * 5
        assert container.delays == [0.0] * 4

    async def test_max_delay_caps_the_wait(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A configured max_delay caps the wait between restarts."""
        container = ScriptedContainer(*[(1, 0.0)] * 6, stop_after_last=True)
        await container.run(ALWAYS, Backoff(initial=1.0, max_delay=5.0))
        assert container.delays == [1.0, 2.0, 4.0, 5.0, 5.0]
        assert container.starts == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0]

    async def test_failed_start_counts_as_exit(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A StartFailed from a restart attempt is an exit with its code, and is retried."""
        container = ScriptedContainer((1, 0.0), StartFailed(125), (0, 1.0))
        assert await container.run(ON_FAILURE, Backoff(initial=0.5)) == 0
        assert [s.exit_code for s in container.scheduled] == [1, 125]
        assert container.starts == [0.0, 0.5, 1.5]

    async def test_failed_start_counts_toward_limit(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """A failed restart attempt uses up one of on-failure:N's restarts."""
        container = ScriptedContainer((1, 0.0), StartFailed(127))
        assert await container.run(RestartPolicy("on-failure", 1), Backoff()) == 127

    async def test_other_start_errors_propagate(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """An exception other than StartFailed leaves the loop unchanged."""
        async def start_and_wait() -> int:
            raise SpecError("no such rootfs")

        with pytest.raises(SpecError, match="no such rootfs"):
            await run_with_restarts(start_and_wait, ALWAYS, Backoff(), lambda: False)

    async def test_scheduled_restart_reports_when(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """on_scheduled gets the attempt, delay, exit code and due time of each restart."""
        container = ScriptedContainer((3, 2.0), (5, 1.0), stop_after_last=True)
        await container.run(ALWAYS, Backoff(initial=0.5))
        assert container.scheduled == [
            RestartScheduled(attempt=1, delay=0.5, exit_code=3, at=2.5)]

    async def test_run_length_uses_injected_clock(
            self, autojump_clock: trio.testing.MockClock) -> None:
        """The run length is measured on the injected clock, not on trio's."""
        container = ScriptedContainer((1, 0.25), (1, 0.25), (1, 0.25), stop_after_last=True)
        fast: list[RestartScheduled] = []
        await run_with_restarts(container.start_and_wait, ALWAYS, Backoff(initial=0.5),
                                container.is_manually_stopped, fast.append,
                                clock=lambda: trio.current_time() * 64)
        assert [s.attempt for s in fast] == [1, 1]  # 0.25 s x 64 = 16 s >= reset_after
        assert fast[0].at == 0.25 * 64 + 0.5
