"""Rows the store keeps, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

InstanceState = Literal["starting", "running", "draining", "stopping", "stopped", "failed"]
LIVE_STATES: tuple[InstanceState, ...] = ("starting", "running", "draining", "stopping")


@dataclass
class ServiceState:
    """What the controller wants a service to be; the reconciler converges the world to it."""

    name: str
    stable: str | None = None
    previous: str | None = None  # the stable before the last promotion: `rollback` returns to it
    canary: str | None = None
    weights: dict[str, int] = field(default_factory=dict)  # release -> percent
    counts: dict[str, int] = field(default_factory=dict)  # release -> desired instances
    retire_at: dict[str, float] = field(default_factory=dict)  # warm release -> when it goes


@dataclass
class InstanceRecord:
    """One instance as recorded: written before it is started, updated as it changes."""

    id: str
    service: str
    release: str
    state: InstanceState
    host: str = "127.0.0.1"
    port: int = 0
    pid: int = 0
    pid_start: int = 0
    workdir: str = ""
    started_at: float = 0.0
    drain_started_at: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Event:
    """One entry of the tamper-evident audit log."""

    id: int
    at: float
    service: str
    rollout_id: int | None
    kind: str
    detail: dict[str, object]
    hash: str


class ObservationRow(NamedTuple):
    """One point of a rollout's analysis: cumulative counts of both releases at `at`, the
    latencies (ms) each release logged since the previous point (a bounded sample), and
    the canary's share of traffic by the router's weights (None: not known), and the
    baseline's (requests, failures) over the router's recent history, when given."""

    at: float
    canary_requests: int
    canary_failures: int
    baseline_requests: int
    baseline_failures: int
    canary_ms: tuple[float, ...] = ()
    baseline_ms: tuple[float, ...] = ()
    canary_weight: float | None = None
    baseline_recent: tuple[int, int] | None = None
    baseline_recent_ms: tuple[float, ...] = ()  # the baseline's latest latencies, when fetched
    # The metrics window's own counts behind the row: canary requests and failures,
    # baseline requests and failures, then the requests (and failures) whose release the
    # clients chose (canary header, sticky cookie), the canary's and the baseline's (rows
    # stored before the baseline's was counted have six); None when not known. A
    # restarted controller that takes the window up again counts on from them.
    window: tuple[int, ...] | None = None

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """The four cumulative counts."""
        return (
            self.canary_requests,
            self.canary_failures,
            self.baseline_requests,
            self.baseline_failures,
        )


class Checkpoint(NamedTuple):
    """A rollout's analysis as saved at `at`: the judge's state (`state`, bytes), valid for
    the judge and settings `key` names; the evidence up to `at` is in it."""

    at: float
    key: str
    state: bytes
