"""The `mann-whitney` judge: a rank test on latencies at every interval, as Kayenta does.

Every `interval` (60 s by default) it tests everything seen so far (the most recent
`max_samples` latencies of each release):

- latency: the Mann-Whitney U test (Mann & Whitney 1947) of "canary latencies are
  stochastically larger than the baseline's", one-sided, with mid-ranks for ties, the
  tie-corrected variance and a continuity correction in the normal approximation
  (Lehmann, Nonparametrics, 1975, ch. 1). It fails when p < 1 - confidence *and* the
  canary's median is at least `min_effect` times the baseline's: with enough samples any
  difference is significant, and Kayenta likewise requires a minimum effect size;
- errors: a one-sided two-proportion test on the error rates (Fisher's exact test, which
  stays honest with a handful of failures), which fails when p < 1 - confidence and the
  canary's rate exceeds the baseline's by at least `error_margin`.

It passes after `pass_intervals` evaluations with enough data and no failure at the
canary's weight (each new weight passes again; the tests go on after a pass). Like
Kayenta, it does not correct for testing again at every interval, so its false-rollback
rate grows with the number of evaluations; the sequential judge is built for that.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass

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
    Verdict,
    count_figures,
    latency_figures,
    percent,
)


class MannWhitneySettings(JudgeSettings):
    """Settings of the Mann-Whitney judge."""

    interval: Seconds = Field(default=60.0, gt=0)
    """How often the tests run, each time on everything seen so far."""
    confidence: float = Field(default=0.99, gt=0.5, lt=1)
    """One-sided confidence a regression needs: fail when p < 1 - confidence."""
    min_effect: float = Field(default=1.1, ge=1)
    """Canary median over baseline median that a latency failure also needs."""
    error_margin: float = Field(default=0.005, ge=0)
    """Canary error rate minus baseline's that an error failure also needs."""
    min_samples: int = Field(default=50, ge=8)
    """Latency samples each release needs before latencies are tested."""
    min_requests: int = Field(default=100, ge=1)
    """Canary requests needed before error rates are tested."""
    max_samples: int = Field(default=2000, ge=100)
    """Most recent latency samples kept per release."""
    pass_intervals: int = Field(default=3, ge=1)
    """Evaluations with enough data and no failure that pass the analysis."""


class MannWhitneyJudge:
    """Rank test on latencies and a two-proportion test on errors, once per interval."""

    name = "mann-whitney"

    def __init__(self, settings: MannWhitneySettings | None = None) -> None:
        self.settings = settings or MannWhitneySettings()

    def begin(self) -> MannWhitneyAnalysis:
        """A fresh analysis."""
        return MannWhitneyAnalysis(self.settings)


class MannWhitneyAnalysis(IntervalAnalysis):
    """One rollout's analysis: samples accumulate, tests run at each interval's end."""

    def __init__(self, settings: MannWhitneySettings) -> None:
        first = Verdict(
            CONTINUE,
            f"first test after {settings.interval:g}s",
            {"judge": "mann-whitney", "evaluations": 0},
        )
        super().__init__(settings.interval, first, keep=settings.max_samples)
        self.settings = settings
        self._evaluations = 0
        self._clean = 0

    def _new_stage(self) -> None:
        self._clean = 0  # a new weight: it must come through clean tests again

    def _check(self) -> Verdict:
        s = self.settings
        self._evaluations += 1
        canary = sorted(self._canary_latencies)
        baseline = sorted(self._baseline_latencies)
        alpha = 1 - s.confidence
        figures: dict[str, Figure] = {
            "judge": "mann-whitney",
            "evaluations": self._evaluations,
            **count_figures(self._canary, self._baseline),
            **latency_figures(canary, baseline),
        }
        enough_latency = len(canary) >= s.min_samples and len(baseline) >= s.min_samples
        enough_requests = self._canary.requests >= s.min_requests
        problems: list[str] = []
        if enough_latency:
            test = mann_whitney_u(canary, baseline)
            figures |= {"u": test.u, "z": test.z, "latency_p_value": test.p_value}
            # Logs count whole milliseconds: a fast baseline's median can be 0.
            ratio = _median(canary) / _median(baseline) if _median(baseline) > 0 else math.inf
            if math.isfinite(ratio):
                figures["median_ratio"] = ratio
            if test.p_value < alpha and ratio >= s.min_effect:
                problems.append(
                    f"canary slower: median {_median(canary):.0f} ms vs "
                    f"{_median(baseline):.0f} ms (x{ratio:.2f}), p = {test.p_value:.2g}"
                )
        if enough_requests:
            p = error_rate_test(
                self._canary.failures,
                self._canary.requests,
                self._baseline.failures,
                self._baseline.requests,
            )
            figures["error_p_value"] = p
            excess = self._canary.rate - self._baseline.rate
            if p < alpha and excess >= s.error_margin:
                problems.append(
                    f"canary fails more: {percent(self._canary.rate)} vs "
                    f"{percent(self._baseline.rate)}, p = {p:.2g}"
                )
        if problems:
            return Verdict(FAIL, "; ".join(problems), figures)
        if not (enough_latency and enough_requests):
            return Verdict(
                NO_DATA,
                f"not enough data: {len(canary)} canary and {len(baseline)} baseline latency "
                f"samples (need {s.min_samples}), {self._canary.requests} canary requests "
                f"(need {s.min_requests})",
                figures,
            )
        self._clean += 1
        figures["clean_evaluations"] = self._clean
        if self._clean >= s.pass_intervals:
            return Verdict(
                PASS,
                f"no regression at {1 - alpha:.0%} confidence in {self._clean} evaluations",
                figures,
            )
        return Verdict(
            CONTINUE,
            f"no regression so far ({self._clean} of {s.pass_intervals} clean evaluations)",
            figures,
        )


@dataclass(frozen=True)
class RankTest:
    """Result of a one-sided Mann-Whitney U test (first sample larger)."""

    u: float
    z: float
    p_value: float


def mann_whitney_u(first: list[float], second: list[float]) -> RankTest:
    """One-sided Mann-Whitney U test that `first` is stochastically larger than `second`.

    U counts the pairs where `first` is larger, ties counting one half (mid-ranks);
    the variance is tie-corrected and the normal approximation continuity-corrected
    (good from about 8 samples a side; callers ask for more). `second` must be sorted.
    """
    n1, n2 = len(first), len(second)
    u = 0.0
    for value in first:
        below = bisect.bisect_left(second, value)
        u += below + (bisect.bisect_right(second, value, lo=below) - below) / 2
    total = n1 + n2
    tie_term = sum(t**3 - t for t in Counter(first + second).values() if t > 1)
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((total + 1) - tie_term / (total * (total - 1)))
    if variance <= 0:
        return RankTest(u, 0.0, 1.0)  # every value equal: no evidence either way
    z = (u - mean - 0.5) / math.sqrt(variance)
    return RankTest(u, z, normal_sf(z))


def error_rate_test(failures_1: int, requests_1: int, failures_2: int, requests_2: int) -> float:
    """One-sided p-value that rate 1 exceeds rate 2: Fisher's exact test of the 2x2 table.

    Given the f failures in all, release 1's share x of them is hypergeometric when the
    rates are equal; p = P(X >= x). Exact at any count, unlike the normal approximation
    of the z-test, which is too quick to reject with a handful of failures (Fisher 1935,
    The Design of Experiments, the lady tasting tea).
    """
    f = failures_1 + failures_2
    low, high = max(0, f - requests_2), min(f, requests_1)
    if f == 0 or low == high:
        return 1.0  # no failure, or where they fell was forced: nothing to compare
    # log P(X = y) up to a constant, by the ratio of neighbouring terms
    logs = [0.0]
    for y in range(low, high):
        ratio = (requests_1 - y) * (f - y) / ((y + 1) * (requests_2 - f + y + 1))
        logs.append(logs[-1] + math.log(ratio))
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    tail = sum(weights[max(failures_1, low) - low :])
    return min(1.0, tail / sum(weights))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z, accurate in the far tail too."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
