"""The rollout state machine is a pure function of (state, event)."""

from __future__ import annotations

from canarist.domain.plan import Pause, Promote, Scale, SetWeight
from canarist.domain.rollout import Ended, PromoteRequested, Rollout, StepDone, transition

PLAN = (Scale("canary", 2), SetWeight(10), Pause(None), SetWeight(50), Pause(5), Promote(0))


def fresh() -> Rollout:
    return Rollout(1, "web", "sha256:b", "sha256:a", "canary", PLAN, 0, 0.0, "progressing", 0.0)


def test_steps_advance_and_a_manual_pause_parks_the_rollout() -> None:
    """Entering a manual pause sets phase paused; promote passes it."""
    r = transition(transition(fresh(), StepDone(1)), StepDone(2))
    assert (r.step, r.phase) == (2, "paused")
    assert transition(r, StepDone(3)).step == 3  # the engine never sends this at a gate
    passed = transition(r, PromoteRequested(4))
    assert (passed.step, passed.phase, passed.step_started_at) == (3, "progressing", 4)


def test_promote_is_ignored_when_not_at_a_pause() -> None:
    """Promote at a weight step changes nothing (the engine reports it as bad input)."""
    r = transition(fresh(), StepDone(1))
    assert transition(r, PromoteRequested(2)) == r


def test_full_promote_jumps_to_the_final_step() -> None:
    """`promote --full` goes straight to the promote step."""
    r = transition(fresh(), PromoteRequested(3, full=True))
    assert isinstance(r.current, Promote)


def test_terminal_rollouts_do_not_change() -> None:
    """Once ended, no event moves a rollout."""
    ended = transition(fresh(), Ended(5, "aborted", "by hand"))
    assert ended.done and ended.reason == "by hand" and ended.ended_at == 5
    assert transition(ended, StepDone(6)) == ended
    assert transition(ended, PromoteRequested(6)) == ended
