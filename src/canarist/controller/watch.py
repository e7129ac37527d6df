"""Watching a rollout: feeds the judge from the metrics and decides when to roll back.

One `Watch` per running rollout. It starts when the canary first takes traffic (the
metrics window is reset then, so counts are the canary's and the baseline's side by
side from that moment), judges at every controller tick, and reports a reason to roll
back when the judge fails the canary, when the canary's failed requests exceed the
budget, or when its instances keep dying. After a controller restart the evidence
starts again from zero: verdicts already recorded stay in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canarist.domain.spec import AnalysisSpec
from canarist.judges import Analysis, Observation, Sample, Verdict, make_judge
from canarist.metrics.base import ReleaseWindow
from canarist.store.records import ObservationRow

NOTHING = ObservationRow(0.0, 0, 0, 0, 0)


@dataclass
class Watch:
    """The analysis of one rollout."""

    rollout_id: int
    started: float
    judge: str
    analysis: Analysis | None  # None when the spec says judge: none
    verdict: Verdict | None = None
    recorded: str | None = None  # last outcome written to the audit log
    canary_failures: int = 0
    canary_requests: int = 0
    lost_instances: int = 0
    # Counts carried over from before a controller restart: the metrics window starts
    # again at zero then, and the judge must keep seeing cumulative counts.
    offset: ObservationRow = NOTHING
    last: ObservationRow = NOTHING  # latest counts seen
    persisted: ObservationRow | None = None  # latest counts written to the store

    @classmethod
    def begin(cls, spec: AnalysisSpec, rollout_id: int, now: float) -> Watch:
        """A fresh watch with a fresh analysis from the spec's judge."""
        analysis = None if spec.judge == "none" else make_judge(spec.judge, spec.settings).begin()
        return cls(rollout_id=rollout_id, started=now, judge=spec.judge, analysis=analysis)

    @classmethod
    def resume(cls, spec: AnalysisSpec, rollout_id: int, evidence: list[ObservationRow]) -> Watch:
        """A watch that replays a rollout's recorded evidence (a restarted controller): the
        judge is pure, so the same observations give it the same state."""
        watch = cls.begin(spec, rollout_id, evidence[0].at)
        for row in evidence[1:]:
            watch._judge(row, (), ())
        watch.offset = watch.persisted = evidence[-1]
        return watch

    def observe(
        self,
        spec: AnalysisSpec,
        now: float,
        canary: ReleaseWindow | None,
        baseline: ReleaseWindow | None,
    ) -> Verdict | None:
        """Judge the latest counts; returns the verdict (None without a judge)."""
        c, b = _sample(canary), _sample(baseline)
        o = self.offset
        row = ObservationRow(
            now,
            o.canary_requests + c.requests,
            o.canary_failures + c.failures,
            o.baseline_requests + b.requests,
            o.baseline_failures + b.failures,
        )
        return self._judge(row, c.latencies_ms, b.latencies_ms)

    def _judge(
        self, row: ObservationRow, canary_ms: tuple[float, ...], baseline_ms: tuple[float, ...]
    ) -> Verdict | None:
        self.last = row
        self.canary_requests, self.canary_failures = row.canary_requests, row.canary_failures
        if self.analysis is None:
            return None
        observation = Observation(
            elapsed=row.at - self.started,
            canary=Sample(row.canary_requests, row.canary_failures, canary_ms),
            baseline=Sample(row.baseline_requests, row.baseline_failures, baseline_ms),
        )
        self.verdict = self.analysis.update(observation)
        return self.verdict

    def to_persist(self, every: float = 0.25) -> ObservationRow | None:
        """The latest counts, when they are new and `every` seconds have passed since the
        last write (or the verdict has just turned): a crash loses at most that much."""
        last, done = (
            self.persisted,
            self.verdict is not None and self.verdict.outcome in ("pass", "fail"),
        )
        if last is not None and self.last[1:] == last[1:]:
            return None
        if last is not None and self.last.at - last.at < every and not done:
            return None
        self.persisted = self.last
        return self.last

    def rollback_reason(self, spec: AnalysisSpec) -> str | None:
        """Why the canary must go, or None while nothing says so."""
        if self.verdict is not None and self.verdict.outcome == "fail":
            return f"{self.judge} judge: {self.verdict.reason}"
        budget = spec.max_failed_requests
        if budget is not None and self.canary_failures >= budget:
            return (
                f"canary served {self.canary_failures} failed requests"
                f" (budget {budget}) of {self.canary_requests}"
            )
        if self.lost_instances >= spec.max_instance_failures:
            return f"canary instances failed {self.lost_instances} times (health or exit)"
        return None

    def summary(self, now: float) -> dict[str, Any]:
        """The `analysis` object of `status --json`."""
        verdict = self.verdict
        return {
            "judge": self.judge,
            "verdict": verdict.outcome if verdict else None,
            "reason": verdict.reason if verdict else "waiting for the first observation",
            "figures": dict(verdict.figures) if verdict else {},
            "elapsed": round(now - self.started, 2),
            "canary_requests": self.canary_requests,
            "canary_failures": self.canary_failures,
            "lost_instances": self.lost_instances,
        }


def _sample(window: ReleaseWindow | None) -> Sample:
    if window is None:
        return Sample()
    return Sample(window.requests, window.failures, window.latencies_ms)
