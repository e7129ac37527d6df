"""The `mann-whitney` judge: a rank test on latencies at every interval, as Kayenta does.

Every `interval` (60 s by default) it tests everything seen so far (the most recent
`max_samples` latencies of each release):

- latency: the Mann-Whitney U test (Mann & Whitney 1947) of "canary latencies are
  stochastically larger than the baseline's", one-sided, with mid-ranks for ties, the
  tie-corrected variance and a continuity correction in the normal approximation
  (Lehmann, Nonparametrics, 1975, ch. 1). It fails when p < 1 - confidence *and* the
  canary's median is at least `min_effect` times the baseline's: with enough samples any
  difference is significant, and Kayenta likewise requires a minimum effect size;
- errors: a one-sided two-proportion z-test on the error rates (pooled variance), which
  fails when p < 1 - confidence and the canary's rate exceeds the baseline's by at least
  `error_margin`.

It passes after `pass_intervals` evaluations with enough data and no failure. Like
Kayenta, it does not correct for testing again at every interval, so its false-rollback
rate grows with the number of evaluations; the sequential judge is built for that.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pydantic import Field

from canarist.judges.base import (
    CONTINUE,
    FAIL,
    NO_DATA,
    PASS,
    Counts,
    Figure,
    JudgeSettings,
    Observation,
    Seconds,
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
    max_samples: int = Field(default=5000, ge=100)
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


class MannWhitneyAnalysis:
    """One rollout's analysis: samples accumulate, tests run at each interval's end."""

    def __init__(self, settings: MannWhitneySettings) -> None:
        self.settings = settings
        self._canary = Counts()
        self._baseline = Counts()
        self._canary_latencies: deque[float] = deque(maxlen=settings.max_samples)
        self._baseline_latencies: deque[float] = deque(maxlen=settings.max_samples)
        self._ends_at = settings.interval
        self._evaluations = 0
        self._clean = 0
        self._last = Verdict(
            CONTINUE,
            f"first test after {settings.interval:g}s",
            {"judge": "mann-whitney", "evaluations": 0},
        )
        self._final: Verdict | None = None

    def update(self, observation: Observation) -> Verdict:
        """Take in one observation; at an interval's end, run the tests."""
        if self._final is not None:
            return self._final
        self._canary.advance(observation.canary)
        self._baseline.advance(observation.baseline)
        self._canary_latencies.extend(observation.canary.latencies_ms)
        self._baseline_latencies.extend(observation.baseline.latencies_ms)
        if observation.elapsed < self._ends_at:
            return self._last
        interval = self.settings.interval
        self._ends_at = (math.floor(observation.elapsed / interval) + 1) * interval
        self._last = self._evaluate()
        if self._last.outcome in (PASS, FAIL):
            self._final = self._last
        return self._last

    def _evaluate(self) -> Verdict:
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
            ratio = _median(canary) / _median(baseline) if _median(baseline) > 0 else math.inf
            figures |= {"u": test.u, "z": test.z, "latency_p_value": test.p_value}
            figures["median_ratio"] = ratio
            if test.p_value < alpha and ratio >= s.min_effect:
                problems.append(
                    f"canary slower: median {_median(canary):.0f} ms vs "
                    f"{_median(baseline):.0f} ms (x{ratio:.2f}), p = {test.p_value:.2g}"
                )
        if enough_requests:
            z, p = two_proportion_test(
                self._canary.failures,
                self._canary.requests,
                self._baseline.failures,
                self._baseline.requests,
            )
            figures |= {"error_z": z, "error_p_value": p}
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

    Mid-ranks for ties, tie-corrected variance, continuity correction, normal
    approximation (good from about 8 samples a side; callers ask for more).
    """
    n1, n2 = len(first), len(second)
    merged = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    total = n1 + n2
    rank_sum = 0.0
    tie_term = 0.0
    i = 0
    while i < total:
        value, j, from_first = merged[i][0], i, 0
        while j < total and merged[j][0] == value:
            from_first += merged[j][1] == 0
            j += 1
        ties = j - i
        rank_sum += (i + 1 + j) / 2 * from_first  # a tied group shares the mid-rank
        tie_term += ties**3 - ties
        i = j
    u = rank_sum - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((total + 1) - tie_term / (total * (total - 1)))
    if variance <= 0:
        return RankTest(u, 0.0, 1.0)  # every value equal: no evidence either way
    z = (u - mean - 0.5) / math.sqrt(variance)
    return RankTest(u, z, normal_sf(z))


def two_proportion_test(
    failures_1: int, requests_1: int, failures_2: int, requests_2: int
) -> tuple[float, float]:
    """One-sided z-test that rate 1 exceeds rate 2, pooled variance: (z, p-value)."""
    pooled = (failures_1 + failures_2) / (requests_1 + requests_2)
    variance = pooled * (1 - pooled) * (1 / requests_1 + 1 / requests_2)
    if variance <= 0:
        return 0.0, 1.0  # no failure anywhere (or only failures): nothing to compare
    z = (failures_1 / requests_1 - failures_2 / requests_2) / math.sqrt(variance)
    return z, normal_sf(z)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z, accurate in the far tail too."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
