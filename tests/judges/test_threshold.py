"""The threshold judge: per-interval limits, decided at interval ends only."""

from __future__ import annotations

import random

from canarist.judges import Observation, Sample, Verdict
from canarist.judges.threshold import ThresholdJudge, ThresholdSettings


class Traffic:
    """Seeded cumulative traffic of both releases, advanced interval by interval."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.elapsed = 0.0
        self.canary = [0, 0]
        self.baseline = [0, 0]

    def advance(
        self,
        seconds: float,
        *,
        canary_rps: float = 10.0,
        baseline_rps: float = 90.0,
        canary_error: float = 0.005,
        baseline_error: float = 0.005,
        canary_slowdown: float = 1.0,
        samples: int = 200,
    ) -> Observation:
        """`seconds` more traffic as one observation, with `samples` latencies per release."""
        self.elapsed += seconds
        fresh = []
        for side, rps, error, slowdown in (
            (self.canary, canary_rps, canary_error, canary_slowdown),
            (self.baseline, baseline_rps, baseline_error, 1.0),
        ):
            n = round(rps * seconds)
            side[0] += n
            side[1] += sum(self.rng.random() < error for _ in range(n))
            count = min(n, samples)
            fresh.append(
                tuple(60 * slowdown * self.rng.lognormvariate(0, 0.5) for _ in range(count))
            )
        canary = Sample(self.canary[0], self.canary[1], fresh[0])
        return Observation(
            self.elapsed, canary, Sample(self.baseline[0], self.baseline[1], fresh[1])
        )


def run(settings: ThresholdSettings, intervals: int, **traffic: float) -> list[Verdict]:
    """The verdict at each interval end, fed an observation every 15 s."""
    analysis = ThresholdJudge(settings).begin()
    flow = Traffic(seed=1)
    verdicts = []
    for _ in range(intervals):
        for _ in range(round(settings.interval / 15)):
            verdict = analysis.update(flow.advance(15, **traffic))  # type: ignore[arg-type]
        verdicts.append(verdict)
    return verdicts


def test_a_failing_canary_fails_at_the_first_interval_end() -> None:
    """5 % errors against a 1 % limit: continue during the interval, fail at its end."""
    analysis = ThresholdJudge().begin()
    flow = Traffic(seed=2)
    during = [analysis.update(flow.advance(15, canary_error=0.05)) for _ in range(3)]
    assert {v.outcome for v in during} == {"continue"}
    verdict = analysis.update(flow.advance(15, canary_error=0.05))
    assert verdict.outcome == "fail"
    assert "error rate" in verdict.reason
    assert verdict.figures["interval_canary_requests"] == 600
    assert float(verdict.figures["interval_canary_error_rate"]) > 0.01


def test_a_healthy_canary_passes_after_the_required_intervals() -> None:
    """Five clean intervals pass the analysis; the fourth is still a continue."""
    verdicts = run(ThresholdSettings(), 5, canary_rps=100, baseline_rps=900, canary_error=0.001)
    assert [v.outcome for v in verdicts] == ["continue"] * 4 + ["pass"]
    assert verdicts[-1].figures["passed_intervals"] == 5
    for key in ("canary_p50_ms", "canary_p99_ms", "baseline_p90_ms", "canary_requests"):
        assert key in verdicts[-1].figures


def test_an_interval_with_too_few_requests_is_no_data() -> None:
    """Fewer than min_requests canary requests: no_data, counted neither way."""
    verdicts = run(ThresholdSettings(min_requests=20), 2, canary_rps=0.2, canary_error=1.0)
    assert [v.outcome for v in verdicts] == ["no_data", "no_data"]
    assert "not enough data" in verdicts[0].reason
    assert verdicts[-1].figures["failed_in_a_row"] == 0


def test_the_failure_limit_counts_failed_intervals_in_a_row() -> None:
    """With failure_limit 2, one bad interval is forgiven by a good one; two in a row fail."""
    analysis = ThresholdJudge(ThresholdSettings(interval=30, failure_limit=2)).begin()
    flow = Traffic(seed=3)

    def interval(error: float) -> Verdict:
        analysis.update(flow.advance(15, canary_error=error))
        return analysis.update(flow.advance(15, canary_error=error))

    assert interval(0.2).outcome == "continue"
    assert interval(0.0).outcome == "continue"
    assert interval(0.2).outcome == "continue"
    last = interval(0.2)
    assert last.outcome == "fail"
    assert "2 of 2 in a row" in last.reason


def test_a_slow_canary_fails_on_p99_against_the_baseline() -> None:
    """p99 limit relative to the baseline: twice as slow fails, the same speed does not."""
    slow = run(ThresholdSettings(interval=30), 1, canary_slowdown=2.0, canary_error=0.0)
    assert slow[0].outcome == "fail"
    assert "baseline p99" in slow[0].reason
    same = run(ThresholdSettings(interval=30), 1, canary_error=0.0)
    assert same[0].outcome == "continue"


def test_an_absolute_p99_limit_and_an_error_margin() -> None:
    """max_p99_ms and error_margin are limits of their own."""
    settings = ThresholdSettings(interval=30, max_p99_ms=100, max_p99_ratio=None)
    verdict = run(settings, 1, canary_error=0.0)[0]
    assert verdict.outcome == "fail"
    assert "p99" in verdict.reason  # the p99 of traffic with a 60 ms median is ~190 ms
    margin = ThresholdSettings(interval=30, max_error_rate=0.5, error_margin=0.01)
    verdict = run(margin, 1, canary_error=0.1, baseline_error=0.02)[0]
    assert verdict.outcome == "fail", verdict.reason
    assert "baseline" in verdict.reason


def test_a_gap_in_observations_closes_one_interval() -> None:
    """Observations that skip interval ends are judged as one interval, not several."""
    analysis = ThresholdJudge().begin()
    flow = Traffic(seed=4)
    verdict = analysis.update(flow.advance(150, canary_error=0.0))
    assert verdict.figures["intervals"] == 1
    assert analysis.update(flow.advance(20, canary_error=0.0)).figures["intervals"] == 1
    assert analysis.update(flow.advance(20, canary_error=0.0)).figures["intervals"] == 2


def test_the_false_rollback_rate_is_the_binomial_tail_of_the_limit() -> None:
    """A/A, 600 canary requests an interval at 0.5 %: an interval fails when more than 6
    fail (rate > 1 %), P = 1 - P(Bin(600, 0.005) <= 6) = 3.8 %. Over 1,500 seeded first
    intervals the judge's rollbacks match that tail: it has no stated rate of its own."""
    from math import comb, sqrt

    tail = 1 - sum(comb(600, k) * 0.005**k * 0.995 ** (600 - k) for k in range(7))
    settings = ThresholdSettings(max_p99_ratio=None)
    runs, failed = 1500, 0
    for seed in range(runs):
        analysis, flow = ThresholdJudge(settings).begin(), Traffic(seed=seed)
        for _ in range(4):
            verdict = analysis.update(flow.advance(15, samples=0))
        failed += verdict.outcome == "fail"
    rate = failed / runs
    assert abs(rate - tail) <= 4 * sqrt(tail * (1 - tail) / runs), (rate, tail)


def test_a_pass_holds_for_its_weight_and_intervals_are_checked_after_it() -> None:
    """Passed at 10 %: a failing interval later still fails the analysis; and a new weight
    must pass its own intervals (told by `canary_weight`)."""
    settings = ThresholdSettings(pass_intervals=2, max_p99_ratio=None)
    analysis, flow = ThresholdJudge(settings).begin(), Traffic(seed=3)

    def interval(weight: float, **traffic: float) -> Verdict:
        for _ in range(4):
            o = flow.advance(15, samples=0, **traffic)  # type: ignore[arg-type]
            verdict = analysis.update(
                Observation(o.elapsed, o.canary, o.baseline, canary_weight=weight)
            )
        return verdict

    assert [interval(0.1).outcome for _ in range(2)] == ["continue", "pass"]
    assert interval(0.1).outcome == "pass"  # holds at the same weight
    assert interval(0.5, canary_rps=50, baseline_rps=50).outcome == "continue"  # new weight
    assert interval(0.5, canary_rps=50, baseline_rps=50).outcome == "pass"
    failed = interval(0.5, canary_rps=50, baseline_rps=50, canary_error=0.2)
    assert failed.outcome == "fail"
