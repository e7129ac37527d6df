"""The `Judge` protocol: what a judge is fed, what it answers, and helpers all judges share.

A judge compares the canary with the baseline (the stable release serving traffic at the
same time) and answers pass, fail, keep going, or not enough data. It is pure: no I/O and
no clock. Time arrives inside each `Observation`, so an analysis replays identically in
tests, in the benchmark and after a controller restart (feed it the same observations).

One rollout gets one `Analysis` from `Judge.begin()`; the analysis keeps whatever state
its test needs (interval boundaries, running likelihood ratios) between observations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

Outcome = Literal["pass", "fail", "continue", "no_data"]
Figure = float | int | str

PASS: Outcome = "pass"  # the canary is no worse than the baseline; it may be promoted
FAIL: Outcome = "fail"  # the canary is worse than the baseline; roll it back
CONTINUE: Outcome = "continue"  # enough traffic to judge, not yet enough evidence either way
NO_DATA: Outcome = "no_data"  # too little traffic to judge; the spec says whether to wait


@dataclass(frozen=True)
class Sample:
    """What one release did since the analysis began.

    `requests` and `failures` are cumulative since the analysis began (failures are 5xx
    answers, connection errors and timeouts). `latencies_ms` holds the total times of
    requests that finished since the previous observation only: a sample of them when
    traffic is high. Latencies are fresh rather than cumulative so that a long analysis
    does not copy an ever-growing tuple four times a second.
    """

    requests: int = 0
    failures: int = 0
    latencies_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Observation:
    """Both releases as seen `elapsed` seconds after the analysis began.

    `canary_weight` is the canary's share of the two releases' traffic by the router's
    weights (0..1) when the caller knows it, None otherwise. A judge that pools requests
    over time must not pool across a change of it: a failure burst that hits both
    releases just after the canary's share rose would otherwise look like the canary's.

    `baseline_recent` is the baseline's (requests, failures) over the last minutes, from
    the router's history rather than this analysis, when the caller knows it: a
    reference rate for when the canary takes all the traffic. `baseline_recent_ms` are
    the baseline's latest latencies from that history, a reference for the canary's.
    """

    elapsed: float
    canary: Sample
    baseline: Sample
    canary_weight: float | None = None
    baseline_recent: tuple[int, int] | None = None
    baseline_recent_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A judge's answer, with the evidence behind it (shown in `status` and `history`)."""

    outcome: Outcome
    reason: str
    figures: dict[str, Figure] = field(default_factory=dict)


class Analysis(Protocol):
    """The analysis of one rollout: fed observations in time order, it answers each one.

    Once it has answered fail it keeps giving that verdict. A pass holds for the stage it
    was reached in: until the canary's weight changes (`Observation.canary_weight`), when
    it must be earned again at the new weight. The canary is watched for a fail all
    along, before a pass and after it.
    """

    def update(self, observation: Observation) -> Verdict:
        """Take in one observation and say where the analysis stands."""
        ...


class Judge(Protocol):
    """A way of comparing canary with baseline; `begin` starts one rollout's analysis."""

    name: str

    def begin(self) -> Analysis:
        """A fresh analysis, with no observation seen yet."""
        ...


class Stages:
    """Tells when the canary's weight moves: a new stage, whose pass is earned afresh."""

    def __init__(self) -> None:
        self.weight: float | None = None  # the canary's weight, as last told

    def moved(self, weight: float | None) -> bool:
        """Take in an observation's weight (None: not told); whether it moved."""
        if weight is None:
            return False
        moved = self.weight is not None and weight != self.weight
        self.weight = weight
        return moved


class IntervalAnalysis(ABC):
    """What the interval judges share (threshold, mann-whitney): requests, failures and
    latencies gathered as observations come, a check at each interval's end (`_check`),
    a fail that is final, and a pass that holds for its stage (`_new_stage` starts the
    count of a new weight). Latencies are kept since the last check, the latest `keep` of
    them (None: all), for `_check` to use or clear."""

    def __init__(self, interval: float, first: Verdict, keep: int | None = None) -> None:
        self.interval = interval
        self._canary = Counts()
        self._baseline = Counts()
        self._canary_latencies: deque[float] = deque(maxlen=keep)
        self._baseline_latencies: deque[float] = deque(maxlen=keep)
        self._ends_at = interval
        self._last = first
        self._final: Verdict | None = None  # a fail
        self._stages = Stages()

    def update(self, observation: Observation) -> Verdict:
        """Take in one observation; at an interval's end, check."""
        if self._final is not None:
            return self._final
        if self._stages.moved(observation.canary_weight):
            self._new_stage()
            if self._last.outcome == PASS:
                self._last = Verdict(CONTINUE, "the canary's weight changed", self._last.figures)
        self._canary.advance(observation.canary)
        self._baseline.advance(observation.baseline)
        self._canary_latencies.extend(observation.canary.latencies_ms)
        self._baseline_latencies.extend(observation.baseline.latencies_ms)
        if observation.elapsed < self._ends_at:
            return self._last
        verdict = self._check()
        # Several boundaries may have passed since the last observation: they were one.
        self._ends_at = (math.floor(observation.elapsed / self.interval) + 1) * self.interval
        if verdict.outcome == FAIL:
            self._final = verdict
        elif self._last.outcome == PASS and verdict.outcome != PASS:
            verdict = Verdict(PASS, self._last.reason, verdict.figures)  # holds for the stage
        self._last = verdict
        return verdict

    @abstractmethod
    def _check(self) -> Verdict:
        """The verdict at an interval's end."""

    @abstractmethod
    def _new_stage(self) -> None:
        """The canary's weight moved: what counted towards a pass counts no more."""


class JudgeSettings(BaseModel):
    """Base of every judge's settings: unknown keys are mistakes, settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Counts:
    """Turns cumulative request and failure counts into increments.

    A count that goes down means the source restarted its counters (HAProxy reloaded):
    the new value is then the increment, rather than a negative one.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self._last_requests = 0
        self._last_failures = 0

    def advance(self, sample: Sample) -> tuple[int, int]:
        """Increments (requests, failures) since the previous sample; adds them to the totals."""
        now_requests, now_failures = sample.requests, sample.failures
        requests = now_requests - self._last_requests
        failures = now_failures - self._last_failures
        if requests < 0 or failures < 0:  # the counters restarted: count from zero
            requests, failures = max(now_requests, 0), max(now_failures, 0)
        self._last_requests, self._last_failures = now_requests, now_failures
        # A failure is a request, even if a counter reports it first (connection errors).
        requests = max(requests, failures)
        self.requests += requests
        self.failures += failures
        return requests, failures

    @property
    def rate(self) -> float:
        """The failure rate so far (0 before any request)."""
        return self.failures / self.requests if self.requests else 0.0


class LatencyHistogram:
    """Latencies of one release in log-spaced buckets: O(1) per sample, quantiles within 1 %.

    The idea of HdrHistogram or Prometheus histograms, with buckets 2 % wide, so that a
    judge can count every sample of a long analysis without keeping the samples.
    """

    _WIDTH = math.log(1.02)
    _FLOOR_MS = 0.01  # smaller values share the lowest bucket

    def __init__(self) -> None:
        self.count = 0
        self._buckets: dict[int, int] = {}

    def extend(self, values: Sequence[float]) -> None:
        """Count more samples."""
        buckets, log = self._buckets, math.log
        # Scaled so that every index is >= 0 and int() is the floor.
        scale, per_bucket, floor = 1 / self._FLOOR_MS, 1 / self._WIDTH, self._FLOOR_MS
        for value in values:
            index = int(log(max(value, floor) * scale) * per_bucket)
            buckets[index] = buckets.get(index, 0) + 1
        self.count += len(values)

    def quantile(self, q: float) -> float:
        """The q-quantile, as the geometric middle of its bucket (NaN when empty)."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Several quantiles, q in increasing order, in one walk over the buckets."""
        if not self.count:
            return [math.nan] * len(qs)
        ranks = [q * (self.count - 1) for q in qs]
        found: list[float] = []
        buckets, seen, wanted = self._buckets, 0, 0
        for index in sorted(buckets):
            seen += buckets[index]
            while seen > ranks[wanted]:
                found.append(math.exp((index + 0.5) * self._WIDTH) * self._FLOOR_MS)
                wanted += 1
                if wanted == len(ranks):
                    return found
        return found  # unreachable: the last bucket holds the largest sample


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly (NaN when there are none)."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_figures(canary: Sequence[float], baseline: Sequence[float]) -> dict[str, Figure]:
    """p50/p90/p99 of each release's sorted latencies, in ms, rounded for display."""
    figures: dict[str, Figure] = {}
    for side, ordered in (("canary", canary), ("baseline", baseline)):
        figures[f"{side}_latency_samples"] = len(ordered)
        if ordered:
            for q in (50, 90, 99):
                figures[f"{side}_p{q}_ms"] = round(quantile(ordered, q / 100), 1)
    return figures


def histogram_figures(canary: LatencyHistogram, baseline: LatencyHistogram) -> dict[str, Figure]:
    """p50/p90/p99 of each release's latency histogram, in ms, rounded for display."""
    figures: dict[str, Figure] = {}
    for side, histogram in (("canary", canary), ("baseline", baseline)):
        figures[f"{side}_latency_samples"] = histogram.count
        if histogram.count:
            values = histogram.quantiles((0.5, 0.9, 0.99))
            for q, value in zip((50, 90, 99), values, strict=True):
                figures[f"{side}_p{q}_ms"] = round(value, 1)
    return figures


def count_figures(canary: Counts, baseline: Counts) -> dict[str, Figure]:
    """Requests, failures and failure rates of each release."""
    return {
        "canary_requests": canary.requests,
        "canary_failures": canary.failures,
        "canary_error_rate": round(canary.rate, 6),
        "baseline_requests": baseline.requests,
        "baseline_failures": baseline.failures,
        "baseline_error_rate": round(baseline.rate, 6),
    }


def percent(rate: float) -> str:
    """A rate as a short percentage for reasons: 0.0123 -> '1.23%'."""
    return f"{rate * 100:.2f}%"
