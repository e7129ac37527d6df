"""A rollout and its state machine: `transition(rollout, event) -> rollout`, pure.

Phases:
    progressing   walking the plan
    paused        waiting at a manual gate for `promote`
    promoted      the new release is stable (terminal)
    aborted       stopped by hand; all traffic back on the previous stable (terminal)
    rolled_back   returned to the previous stable by `rollback` or on failure (terminal)
    failed        could not continue and nothing could be restored (terminal)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from canarist.domain.plan import Analyze, Pause, Plan, Step

Phase = Literal["progressing", "paused", "promoted", "aborted", "rolled_back", "failed"]
TERMINAL: frozenset[str] = frozenset({"promoted", "aborted", "rolled_back", "failed"})

# Exit codes of `deploy --wait` per terminal phase (the CLI contract).
EXIT_CODES: dict[str, int] = {"promoted": 0, "rolled_back": 3, "aborted": 4, "failed": 1}


@dataclass(frozen=True)
class Rollout:
    """One attempt to move a service from `previous` to `release`."""

    id: int
    service: str
    release: str
    previous: str | None
    strategy: str
    plan: Plan
    step: int  # index of the current step; == len(plan) once all are done
    step_started_at: float
    phase: Phase
    created_at: float
    ended_at: float | None = None
    reason: str = ""

    @property
    def current(self) -> Step | None:
        """The step being worked on, or None past the end."""
        return self.plan[self.step] if self.step < len(self.plan) else None

    @property
    def done(self) -> bool:
        """True in a terminal phase."""
        return self.phase in TERMINAL


@dataclass(frozen=True)
class StepDone:
    """The current step's effect is in place (or its timer ran out)."""

    at: float


@dataclass(frozen=True)
class PromoteRequested:
    """A person asked to pass the manual gate, or to finish early."""

    at: float
    full: bool = False  # skip every remaining step


@dataclass(frozen=True)
class Ended:
    """The rollout stops in a terminal phase (abort, rollback, failure, promotion)."""

    at: float
    phase: Phase
    reason: str


Event = StepDone | PromoteRequested | Ended


def transition(rollout: Rollout, event: Event) -> Rollout:
    """The rollout after `event`. Terminal rollouts do not change."""
    if rollout.done:
        return rollout
    if isinstance(event, Ended):
        return replace(rollout, phase=event.phase, ended_at=event.at, reason=event.reason)
    if isinstance(event, PromoteRequested):
        if event.full:
            # Jump to the final promote step (the last one of every plan).
            return _enter(rollout, len(rollout.plan) - 1, event.at)
        if isinstance(rollout.current, Pause | Analyze):
            return _enter(rollout, rollout.step + 1, event.at)
        return rollout
    return _enter(rollout, rollout.step + 1, event.at)


def _enter(rollout: Rollout, index: int, at: float) -> Rollout:
    index = min(index, len(rollout.plan))
    step = rollout.plan[index] if index < len(rollout.plan) else None
    phase: Phase = "paused" if isinstance(step, Pause) and step.seconds is None else "progressing"
    return replace(rollout, step=index, step_started_at=at, phase=phase)
