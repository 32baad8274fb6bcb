"""The container state machine: statuses, allowed transitions and verb guards."""

from __future__ import annotations

import itertools

import pytest

from supervisor.states import (
    ALLOWED,
    InvalidTransition,
    Status,
    can_kill,
    can_pause,
    can_remove,
    can_start,
    can_stop,
    can_unpause,
    is_active,
    transition,
)

S = Status

EXPECTED_MOVES = {
    (S.CREATED, S.RUNNING), (S.CREATED, S.EXITED), (S.CREATED, S.REMOVING),
    (S.RUNNING, S.PAUSED), (S.RUNNING, S.EXITED),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.EXITED),
    (S.EXITED, S.RUNNING), (S.EXITED, S.EXITED), (S.EXITED, S.RESTARTING),
    (S.EXITED, S.REMOVING),
    (S.RESTARTING, S.RUNNING), (S.RESTARTING, S.EXITED), (S.RESTARTING, S.REMOVING),
    (S.REMOVING, S.DEAD),
    (S.DEAD, S.REMOVING),
}
ALL_MOVES = list(itertools.product(Status, Status))


def _holding(guard_result: dict[Status, bool]) -> set[Status]:
    return {s for s, ok in guard_result.items() if ok}


class TestStatus:
    def test_values_are_dockers_names(self) -> None:
        """Each status's value is docker's lowercase name for it."""
        assert [s.value for s in Status] == [
            "created", "running", "paused", "restarting", "exited", "removing", "dead"]

    def test_renders_as_its_value(self) -> None:
        """str() and f-strings give the bare name, as ps and inspect show it."""
        assert str(Status.RESTARTING) == "restarting"
        assert f"{Status.PAUSED}" == "paused"

    def test_parses_from_stored_value(self) -> None:
        """A status read back from the store as text becomes the same member."""
        assert Status("exited") is Status.EXITED


class TestAllowed:
    def test_every_status_has_an_entry(self) -> None:
        """The table lists the moves out of every status, dead included."""
        assert set(ALLOWED) == set(Status)

    def test_table_is_exactly_the_documented_moves(self) -> None:
        """The allowed moves are exactly the ones the lifecycle documents."""
        moves = {(a, b) for a, targets in ALLOWED.items() for b in targets}
        assert moves == EXPECTED_MOVES

    def test_restart_goes_through_exited(self) -> None:
        """A running container cannot jump to restarting: it must exit first."""
        assert Status.RESTARTING not in ALLOWED[Status.RUNNING]
        assert Status.RESTARTING in ALLOWED[Status.EXITED]


class TestTransition:
    @pytest.mark.parametrize(("current", "new"), sorted(EXPECTED_MOVES))
    def test_allowed_move_returns_new_status(self, current: Status, new: Status) -> None:
        """An allowed move returns the new status."""
        assert transition(current, new) is new

    @pytest.mark.parametrize(("current", "new"),
                             [m for m in ALL_MOVES if m not in EXPECTED_MOVES])
    def test_forbidden_move_raises(self, current: Status, new: Status) -> None:
        """A move outside the table raises InvalidTransition carrying both states."""
        with pytest.raises(InvalidTransition) as info:
            transition(current, new)
        assert (info.value.current, info.value.new) == (current, new)

    def test_error_names_both_states(self) -> None:
        """The error message names the state left and the state refused."""
        with pytest.raises(InvalidTransition,
                           match=r"^invalid status transition: running -> removing$"):
            transition(Status.RUNNING, Status.REMOVING)


class TestIsActive:
    def test_live_or_pending_restart(self) -> None:
        """Running, paused and restarting containers are active; no other is."""
        assert _holding({s: is_active(s) for s in Status}) == {
            S.RUNNING, S.PAUSED, S.RESTARTING}


class TestCanStart:
    def test_created_or_exited(self) -> None:
        """Only a created or exited container may be started."""
        assert _holding({s: can_start(s) for s in Status}) == {S.CREATED, S.EXITED}

    def test_agrees_with_table(self) -> None:
        """Every status that may start may move to running."""
        for s in Status:
            if can_start(s):
                assert Status.RUNNING in ALLOWED[s]


class TestCanStop:
    def test_active_only(self) -> None:
        """Stop applies to a live init or a pending restart."""
        assert _holding({s: can_stop(s) for s in Status}) == {
            S.RUNNING, S.PAUSED, S.RESTARTING}


class TestCanKill:
    def test_live_init_only(self) -> None:
        """Kill needs an init to signal: running or paused, not restarting."""
        assert _holding({s: can_kill(s) for s in Status}) == {S.RUNNING, S.PAUSED}


class TestCanPause:
    def test_running_only(self) -> None:
        """Only a running container may be paused."""
        assert _holding({s: can_pause(s) for s in Status}) == {S.RUNNING}


class TestCanUnpause:
    def test_paused_only(self) -> None:
        """Only a paused container may be unpaused."""
        assert _holding({s: can_unpause(s) for s in Status}) == {S.PAUSED}


class TestCanRemove:
    def test_without_force_stopped_only(self) -> None:
        """Plain rm accepts created, exited and dead containers only."""
        assert _holding({s: can_remove(s, force=False) for s in Status}) == {
            S.CREATED, S.EXITED, S.DEAD}

    def test_force_accepts_active(self) -> None:
        """rm -f also accepts running, paused and restarting containers."""
        assert _holding({s: can_remove(s, force=True) for s in Status}) == {
            S.CREATED, S.EXITED, S.DEAD, S.RUNNING, S.PAUSED, S.RESTARTING}

    def test_refuses_removal_in_progress(self) -> None:
        """A container already being removed refuses a second rm, forced or not."""
        assert not can_remove(Status.REMOVING, force=False)
        assert not can_remove(Status.REMOVING, force=True)
