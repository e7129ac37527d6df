"""The `threshold` judge: fixed limits checked once per interval, as Flagger and Argo do.

At the end of every interval (60 s by default) the canary's requests of that interval
are checked: error rate at most `max_error_rate`, and optionally at most the baseline's
rate in the same interval plus `error_margin`; p99 latency at most `max_p99_ms` and/or
at most the baseline's p99 times `max_p99_ratio`. `failure_limit` failed intervals in a
row fail the analysis; `pass_intervals` passed intervals pass it, for the canary's
weight at the time (each new weight passes again; intervals are checked after a pass
too). An interval with fewer than `min_requests` canary requests proves nothing either
way: it is reported as no_data and counts neither way.

It is easy to reason about, but it decides only at interval ends and has no stated
false-rollback rate: noise alone fails an interval now and then, more often at low
traffic. The sequential judge exists for that.
"""

from __future__ import annotations

from pydantic import Field

from canarist.domain.durations import Seconds
from canarist.judges.base import (
    CONTINUE,
    FAIL,
    NO_DATA,
    PASS,
    Figure,
    IntervalAnalysis,
    JudgeSettings,
    Outcome,
    Verdict,
    count_figures,
    latency_figures,
    percent,
    quantile,
)


class ThresholdSettings(JudgeSettings):
    """Settings of the threshold judge."""

    interval: Seconds = Field(default=60.0, gt=0)
    """Length of one checked interval."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Highest canary error rate an interval may have (0.01 = 99 % success)."""
    error_margin: float | None = Field(default=None, ge=0, le=1)
    """If set, the canary's error rate may exceed the baseline's by at most this much."""
    max_p99_ms: float | None = Field(default=None, gt=0)
    """If set, the highest p99 latency (ms) the canary may have in an interval."""
    max_p99_ratio: float | None = Field(default=1.5, gt=0)
    """If set, the canary's p99 may be at most the baseline's p99 times this."""
    min_requests: int = Field(default=20, ge=1)
    """Canary requests an interval needs to be checked at all."""
    min_latency_samples: int = Field(default=50, ge=1)
    """Latency samples each release needs in an interval for the p99 checks."""
    failure_limit: int = Field(default=1, ge=1)
    """Failed intervals in a row that fail the analysis."""
    pass_intervals: int = Field(default=5, ge=1)
    """Passed intervals (not necessarily in a row) that pass the analysis."""


class ThresholdJudge:
    """Per-interval limits on error rate and p99 latency."""

    name = "threshold"

    def __init__(self, settings: ThresholdSettings | None = None) -> None:
        self.settings = settings or ThresholdSettings()

    def begin(self) -> ThresholdAnalysis:
        """A fresh analysis."""
        return ThresholdAnalysis(self.settings)


class ThresholdAnalysis(IntervalAnalysis):
    """One rollout's interval-by-interval analysis."""

    def __init__(self, settings: ThresholdSettings) -> None:
        first = Verdict(
            CONTINUE,
            f"first interval ends after {settings.interval:g}s",
            {"judge": "threshold", "intervals": 0},
        )
        super().__init__(settings.interval, first)
        self.settings = settings
        self._interval_start = (0, 0, 0, 0)  # canary and baseline totals when it began
        self._intervals = 0
        self._failed_in_a_row = 0
        self._passed = 0

    def _new_stage(self) -> None:
        self._passed = 0  # a new weight: its intervals must pass again

    def _check(self) -> Verdict:
        s = self.settings
        c_req0, c_fail0, b_req0, b_fail0 = self._interval_start
        c_req, c_fail = self._canary.requests - c_req0, self._canary.failures - c_fail0
        b_req, b_fail = self._baseline.requests - b_req0, self._baseline.failures - b_fail0
        self._interval_start = (
            self._canary.requests,
            self._canary.failures,
            self._baseline.requests,
            self._baseline.failures,
        )
        canary_latencies = sorted(self._canary_latencies)
        baseline_latencies = sorted(self._baseline_latencies)
        self._canary_latencies.clear()
        self._baseline_latencies.clear()
        self._intervals += 1

        c_rate = c_fail / c_req if c_req else 0.0
        b_rate = b_fail / b_req if b_req else 0.0
        figures: dict[str, Figure] = {
            "judge": "threshold",
            "intervals": self._intervals,
            "interval_canary_requests": c_req,
            "interval_canary_failures": c_fail,
            "interval_canary_error_rate": c_rate,
            "interval_baseline_requests": b_req,
            "interval_baseline_failures": b_fail,
            "interval_baseline_error_rate": b_rate,
            **count_figures(self._canary, self._baseline),
            **latency_figures(canary_latencies, baseline_latencies),
        }
        if c_req < s.min_requests:
            figures |= self._tally_figures()
            return Verdict(
                NO_DATA,
                f"not enough data: interval {self._intervals} had {c_req} canary requests, "
                f"{s.min_requests} needed",
                figures,
            )

        problems = _error_problems(s, c_rate, b_rate, b_req)
        problems += _latency_problems(s, canary_latencies, baseline_latencies)
        outcome: Outcome
        if problems:
            self._failed_in_a_row += 1
            outcome = FAIL if self._failed_in_a_row >= s.failure_limit else CONTINUE
            summary = (
                f"interval {self._intervals} failed ({self._failed_in_a_row} of "
                f"{s.failure_limit} in a row): " + "; ".join(problems)
            )
        else:
            self._failed_in_a_row = 0
            self._passed += 1
            outcome = PASS if self._passed >= s.pass_intervals else CONTINUE
            summary = (
                f"interval {self._intervals} passed ({self._passed} of {s.pass_intervals}): "
                f"error rate {percent(c_rate)} over {c_req} canary requests"
            )
        figures |= self._tally_figures()
        return Verdict(outcome, summary, figures)

    def _tally_figures(self) -> dict[str, Figure]:
        return {"failed_in_a_row": self._failed_in_a_row, "passed_intervals": self._passed}


def _error_problems(s: ThresholdSettings, c_rate: float, b_rate: float, b_req: int) -> list[str]:
    problems = []
    if c_rate > s.max_error_rate:
        problems.append(f"error rate {percent(c_rate)} > {percent(s.max_error_rate)}")
    if s.error_margin is not None and b_req and c_rate > b_rate + s.error_margin:
        problems.append(
            f"error rate {percent(c_rate)} > baseline {percent(b_rate)} + {percent(s.error_margin)}"
        )
    return problems


def _latency_problems(
    s: ThresholdSettings, canary: list[float], baseline: list[float]
) -> list[str]:
    if len(canary) < s.min_latency_samples:
        return []  # too few samples for a p99 worth acting on
    problems = []
    c_p99 = quantile(canary, 0.99)
    if s.max_p99_ms is not None and c_p99 > s.max_p99_ms:
        problems.append(f"p99 {c_p99:.0f} ms > {s.max_p99_ms:g} ms")
    if s.max_p99_ratio is not None and len(baseline) >= s.min_latency_samples:
        b_p99 = quantile(baseline, 0.99)
        if c_p99 > b_p99 * s.max_p99_ratio:
            problems.append(
                f"p99 {c_p99:.0f} ms > baseline p99 {b_p99:.0f} ms x {s.max_p99_ratio:g}"
            )
    return problems
