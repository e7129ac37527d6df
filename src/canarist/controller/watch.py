"""Watching a rollout: feeds the judge from the metrics and decides when to roll back.

One `Watch` per running rollout. It starts with the rollout, before the canary takes
traffic (the metrics window is reset then, so counts are the canary's and the baseline's
side by side from that moment, and the baseline's rate is known by the time the canary
may take all the traffic), judges at every controller tick, and reports a reason to roll
back when the judge fails the canary, when the canary's failed requests exceed the
budget, or when its instances keep dying.

The evidence is stored as it comes (every quarter second while it changes): cumulative
counts, and a bounded uniform sample of the latencies logged since the previous row. A
restarted controller replays it through the judge, which is pure, and counts on; so a
crash costs at most the last quarter second of evidence, and a thinned latency sample
(thinning picks samples without looking at them, so the tests stay valid).

Replaying costs seconds per hour of evidence, and a rollout held at a manual gate may be
judged for days; so every CHECKPOINT_EVERY seconds of evidence the judge's state itself
is saved (`canarist.judges.state`) and the rows it holds are dropped. A restart takes the
saved state up and replays only the rows after it; a saved state it cannot use (another
judge, other settings, another canarist version) is set aside, and the judge is fed the
rows that are left: the first, the one the state was saved at, and those after it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from canarist.domain.spec import AnalysisSpec
from canarist.judges import Analysis, Observation, Sample, Verdict, make_judge
from canarist.judges import state as saved
from canarist.metrics.base import ReleaseWindow
from canarist.store.records import Checkpoint, ObservationRow

log = logging.getLogger("canarist.controller")

NOTHING = ObservationRow(0.0, 0, 0, 0, 0)
# The window counts of a window just begun (see `ObservationRow.window`).
EMPTY_WINDOW = (0,) * 8
# Latencies kept per release and stored row: at four rows a second, 1,024 samples a
# second per release, a few MB for a ten-minute analysis at any request rate.
STORED_LATENCIES = 256
# Seconds of evidence between two saves of the judge's state.
CHECKPOINT_EVERY = 300.0


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
    # The baseline's counts over the metrics provider's recent history, fetched when the
    # canary came to take all the traffic or none (None otherwise): its reference then.
    baseline_recent: tuple[int, int] | None = None
    on_its_own: float | None = None  # the canary's share when it was 1 or 0 (last tick)
    baseline_recent_ms: tuple[float, ...] = ()  # with `baseline_recent`, when alone
    _recent_ms_unstored: tuple[float, ...] = ()  # stored once, with the next row
    # Latencies judged since the last stored row, to be stored with the next one.
    unstored: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    # The requests and failures whose release the clients chose (the canary header, a
    # sticky cookie), the canary's then the baseline's: as last seen in the window, and
    # those left out of the judged counts (while the split was random).
    _chosen_seen: tuple[int, ...] = (0, 0, 0, 0)
    _left_out: tuple[int, ...] = (0, 0, 0, 0)
    _stored_outcome: str | None = None  # the verdict when the latest row was stored
    # After a window was taken up: its counts at the last row, which the first reading of
    # it is checked against (None once one has been).
    _window_floor: tuple[int, ...] | None = None
    state_key: str = ""  # what a saved state of this analysis is valid for
    checkpointed_at: float = 0.0  # when the judge's state was last saved (or the start)

    @classmethod
    def begin(cls, spec: AnalysisSpec, rollout_id: int, now: float) -> Watch:
        """A fresh watch with a fresh analysis from the spec's judge."""
        analysis = None if spec.judge == "none" else make_judge(spec.judge, spec.settings).begin()
        watch = cls(rollout_id=rollout_id, started=now, judge=spec.judge, analysis=analysis)
        watch.state_key = saved.state_key(spec.judge, spec.settings)
        watch.checkpointed_at = now
        return watch

    @classmethod
    def resume(
        cls,
        spec: AnalysisSpec,
        rollout_id: int,
        evidence: list[ObservationRow],
        checkpoint: Checkpoint | None = None,
        *,
        window_continues: bool = False,
    ) -> Watch:
        """A watch that replays a rollout's recorded evidence (a restarted controller): the
        judge is pure, so the same observations give it the same state. From the saved
        state at `checkpoint`, if it is usable, only the evidence after it is replayed.

        `window_continues`: the metrics window goes on from the one behind the last row
        (the provider took it up, `ResumesWindows`), so what was served while no
        controller ran is counted, from that row's window counts; otherwise the window has
        started afresh and the counts go on from the last row."""
        watch = cls.begin(spec, rollout_id, evidence[0].at)
        rows = evidence[1:]
        if checkpoint is not None and watch.analysis is not None:
            try:
                if checkpoint.key != watch.state_key:
                    raise saved.StateError("saved for another judge, settings or version")
                watch.analysis, watch.verdict = saved.load(checkpoint.state)
            except saved.StateError as exc:
                log.warning("rollout %d: not taking up the saved analysis: %s", rollout_id, exc)
            else:
                rows = [row for row in rows if row.at > checkpoint.at]
                watch.checkpointed_at = checkpoint.at
        last = evidence[-1]
        watch.canary_requests, watch.canary_failures = last.canary_requests, last.canary_failures
        for row in rows:
            watch._judge(row, row.canary_ms, row.baseline_ms)
        watch.offset = watch.persisted = last._replace(
            canary_ms=(),
            baseline_ms=(),
            canary_weight=None,
            baseline_recent=None,
            baseline_recent_ms=(),
        )
        watch.last = watch.offset
        if window_continues and last.window is not None:
            # Judged counts are offset + window - left out: the same window goes on, so
            # the offset is what the last row judged less what its window had counted.
            w = _full_window(last.window)
            watch.offset = _offset(last, w[:4])
            watch._chosen_seen = w[4:]
            watch._window_floor = w
        return watch

    def judge_on_its_own(
        self, share: float, recent: tuple[int, int] | None, recent_ms: tuple[float, ...]
    ) -> None:
        """From now the canary takes all the traffic (`share` 1) or none but what asks for
        it (0): it is judged on its own, against the baseline's counts and latest
        latencies in the metrics provider's recent history (None and () if unknown)."""
        self.on_its_own = share
        self.baseline_recent, self.baseline_recent_ms = recent, recent_ms
        if recent_ms:
            self._recent_ms_unstored = recent_ms

    def judge_together(self) -> None:
        """The canary shares the traffic with the baseline: they are compared side by side."""
        self.on_its_own, self.baseline_recent, self.baseline_recent_ms = None, None, ()

    def observe(
        self,
        spec: AnalysisSpec,
        now: float,
        canary: ReleaseWindow | None,
        baseline: ReleaseWindow | None,
        canary_weight: float | None = None,
    ) -> Verdict | None:
        """Judge the latest counts; returns the verdict (None without a judge).
        `canary_weight`: the canary's share of traffic the router has, if known."""
        c, b = _sample(canary), _sample(baseline)
        chosen = _chosen(canary, baseline, spec.pinned == "leave_out")
        if self._window_floor is not None:
            if canary is None and baseline is None:
                return self.verdict  # the window taken up has not been read yet
            now_seen = (c.requests, c.failures, b.requests, b.failures, *chosen)
            if any(n < f for n, f in zip(now_seen, self._window_floor, strict=True)):
                # Behind the window taken up (it should not be): count on from the last
                # row, from this reading, rather than let the counts go back.
                self.offset = _offset(self.persisted or NOTHING, now_seen[:4])
                self._chosen_seen = chosen
            self._window_floor = None
        self._leave_out_chosen(chosen, canary_weight)
        o, left_out = self.offset, self._left_out
        row = ObservationRow(
            now,
            o.canary_requests + c.requests - left_out[0],
            o.canary_failures + c.failures - left_out[1],
            o.baseline_requests + b.requests - left_out[2],
            o.baseline_failures + b.failures - left_out[3],
            canary_weight=canary_weight,
            baseline_recent=self.baseline_recent,
            baseline_recent_ms=self.baseline_recent_ms,
            window=(c.requests, c.failures, b.requests, b.failures, *self._chosen_seen),
        )
        self.unstored[0].extend(c.latencies_ms)
        self.unstored[1].extend(b.latencies_ms)
        return self._judge(row, c.latencies_ms, b.latencies_ms)

    def _leave_out_chosen(self, seen: tuple[int, ...], weight: float | None) -> None:
        """While the canary shares traffic with the baseline, the requests whose release
        the clients chose are no random sample of the traffic: those sent to the canary
        with the canary header (testers try what they like), and a sticky service's
        requests its cookie kept on either release (a client that fails everywhere,
        pinned to the canary, would weigh against it). They are left out of the
        comparison, on both sides (the pinned ones unless the spec says to judge them).
        With the canary alone, or on nothing but such requests, they are what there is
        to judge. `seen`: those counts in the window now (`_chosen`)."""
        new = [now - before for now, before in zip(seen, self._chosen_seen, strict=True)]
        self._chosen_seen = seen
        if weight in (0.0, 1.0):
            return
        left_out = list(self._left_out)
        for side in (0, 2):  # the canary's, the baseline's
            if min(new[side : side + 2]) >= 0:
                left_out[side] += new[side]
                left_out[side + 1] += new[side + 1]
        self._left_out = tuple(left_out)

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
            canary_weight=row.canary_weight,
            baseline_recent=row.baseline_recent,
            baseline_recent_ms=row.baseline_recent_ms,
        )
        self.verdict = self.analysis.update(observation)
        return self.verdict

    def to_persist(self, every: float = 0.25) -> ObservationRow | None:
        """The latest counts, with the latencies judged since the last stored row, when
        they are new and `every` seconds have passed since the last write (or the verdict
        has just turned): a crash loses at most that much."""
        last = self.persisted
        outcome = self.verdict.outcome if self.verdict is not None else None
        turned = outcome in ("pass", "fail") and outcome != self._stored_outcome
        fresh = any(self.unstored)
        if last is not None and self.last.counts == last.counts and not fresh:
            return None
        if last is not None and self.last.at - last.at < every and not turned:
            return None
        canary, baseline = (_thinned(values) for values in self.unstored)
        self.unstored = ([], [])
        self.persisted = self.last
        self._stored_outcome = outcome
        recent_ms, self._recent_ms_unstored = self._recent_ms_unstored, ()
        return self.last._replace(
            canary_ms=canary, baseline_ms=baseline, baseline_recent_ms=recent_ms
        )

    def checkpoint(self, row: ObservationRow) -> Checkpoint | None:
        """The judge's state as of `row`, the row just stored, once CHECKPOINT_EVERY
        seconds of evidence have come since the last save; None before, or with no judge."""
        if self.analysis is None or row.at - self.checkpointed_at < CHECKPOINT_EVERY:
            return None
        self.checkpointed_at = row.at
        return Checkpoint(row.at, self.state_key, saved.save(self.analysis, self.verdict))

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


def _offset(judged: ObservationRow, window: tuple[int, ...]) -> ObservationRow:
    """What to add to a window's counts (canary requests and failures, baseline requests
    and failures) for them to go on from the counts `judged` had at them."""
    return NOTHING._replace(
        canary_requests=judged.canary_requests - window[0],
        canary_failures=judged.canary_failures - window[1],
        baseline_requests=judged.baseline_requests - window[2],
        baseline_failures=judged.baseline_failures - window[3],
    )


def _chosen(
    canary: ReleaseWindow | None, baseline: ReleaseWindow | None, pinned: bool = True
) -> tuple[int, ...]:
    """Requests and failures whose release the clients chose (canary header, and sticky
    cookie unless not `pinned`): the canary's, then the baseline's."""
    counts: list[int] = []
    for window in (canary, baseline):
        if window is None:
            counts += [0, 0]
        else:
            counts += [
                window.requested + (window.pinned if pinned else 0),
                window.requested_failures + (window.pinned_failures if pinned else 0),
            ]
    return tuple(counts)


def _full_window(window: tuple[int, ...]) -> tuple[int, ...]:
    """A stored row's window counts with the baseline's chosen part (rows written before
    it was counted have the canary's only: nothing of the baseline's was left out)."""
    return tuple(window) + (0,) * (len(EMPTY_WINDOW) - len(window))


def _thinned(values: list[float]) -> tuple[float, ...]:
    """At most STORED_LATENCIES of `values`, drawn uniformly without looking at them."""
    if len(values) > STORED_LATENCIES:
        values = random.sample(values, STORED_LATENCIES)
    return tuple(values)


def _sample(window: ReleaseWindow | None) -> Sample:
    if window is None:
        return Sample()
    return Sample(window.requests, window.failures, window.latencies_ms)
