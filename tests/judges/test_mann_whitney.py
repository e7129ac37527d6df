"""The Mann-Whitney judge: a rank test on latencies, a proportion test on errors."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from canarist.judges import Observation, Sample, Verdict
from canarist.judges.mann_whitney import (
    MannWhitneyJudge,
    MannWhitneySettings,
    error_rate_test,
    mann_whitney_u,
    normal_sf,
)


def test_u_counts_pairs_with_ties_as_halves() -> None:
    """U equals the brute-force count of (first > second) pairs, ties counting one half."""
    rng = random.Random(0)
    first = [float(rng.randint(1, 20)) for _ in range(37)]
    second = sorted(float(rng.randint(1, 20)) for _ in range(45))
    brute = sum((a > b) + 0.5 * (a == b) for a in first for b in second)
    assert mann_whitney_u(first, second).u == brute


def test_u_test_against_a_worked_example() -> None:
    """{4,5,6} vs {1,2,3}: U = 9, mean 4.5, variance 5.25, continuity-corrected z = 1.7457."""
    test = mann_whitney_u([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert test.u == 9
    assert test.z == pytest.approx(4 / math.sqrt(5.25))
    assert test.p_value == pytest.approx(0.0404278, abs=1e-7)
    tied = mann_whitney_u([1.0, 1.0], [1.0, 1.0])  # every value equal: no evidence
    assert (tied.u, tied.p_value) == (2.0, 1.0)


def test_tie_correction_shrinks_the_variance() -> None:
    """With ties, the variance n1 n2/12 ((N+1) - sum(t^3 - t)/(N(N-1))) is used."""
    first, second = [2.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 3.0]
    n1, n2, total = 4, 4, 8
    ties = (4**3 - 4) + (2**3 - 2)  # four 2s, two 3s
    variance = n1 * n2 / 12 * ((total + 1) - ties / (total * (total - 1)))
    u = 2 * (1 + 0.5 + 0.5) + (3 + 0.5) + 4  # each 2 beats 1 and ties 2, 2; 3; 4 beats all
    test = mann_whitney_u(first, second)
    assert test.u == u
    assert test.z == pytest.approx((u - n1 * n2 / 2 - 0.5) / math.sqrt(variance))


def test_normal_tail_matches_the_standard_library() -> None:
    """P(Z > z), including far in the tail where 1 - cdf would lose every digit."""
    reference = NormalDist()
    for z in (-3.0, -0.5, 0.0, 1.0, 1.959964, 2.326348, 4.0):
        assert normal_sf(z) == pytest.approx(1 - reference.cdf(z), rel=1e-9, abs=1e-15)
    assert normal_sf(10.0) == pytest.approx(7.6199846e-24, rel=1e-6)


def test_error_rates_by_fishers_exact_test() -> None:
    """The lady tasting tea: 4 of 4 right is p = 1/70, 3 of 4 is 17/70 (Fisher 1935)."""
    assert error_rate_test(4, 4, 0, 4) == pytest.approx(1 / 70)
    assert error_rate_test(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert error_rate_test(0, 100, 0, 900) == 1.0
    # A handful of failures: far less sure than the normal approximation would be.
    assert error_rate_test(12, 1200, 46, 10800) > 0.01


def observe(
    rng: random.Random,
    elapsed: float,
    totals: list[int],
    *,
    canary_slowdown: float = 1.0,
    canary_error: float = 0.005,
    samples: int = 100,
) -> Observation:
    """One 30-second observation at 10 + 90 req/s; `totals` accumulates the counts."""
    totals[0] += 300
    totals[1] += sum(rng.random() < canary_error for _ in range(300))
    totals[2] += 2700
    totals[3] += sum(rng.random() < 0.005 for _ in range(2700))
    canary = tuple(60 * canary_slowdown * rng.lognormvariate(0, 0.5) for _ in range(samples))
    baseline = tuple(60 * rng.lognormvariate(0, 0.5) for _ in range(samples))
    return Observation(
        elapsed, Sample(totals[0], totals[1], canary), Sample(totals[2], totals[3], baseline)
    )


def run(
    minutes: int, settings: MannWhitneySettings | None = None, **canary: float
) -> list[Verdict]:
    """Verdicts of an analysis fed every 30 s for `minutes`."""
    analysis = MannWhitneyJudge(settings).begin()
    rng, totals = random.Random(5), [0, 0, 0, 0]
    return [
        analysis.update(observe(rng, 30.0 * (i + 1), totals, **canary))  # type: ignore[arg-type]
        for i in range(2 * minutes)
    ]


def test_a_slower_canary_fails_at_the_first_test() -> None:
    """50 % slower: significant and above the minimum effect at the first interval end."""
    verdicts = run(1, canary_slowdown=1.5)
    assert [v.outcome for v in verdicts] == ["continue", "fail"]
    figures = verdicts[-1].figures
    assert float(figures["latency_p_value"]) < 0.01
    assert float(figures["median_ratio"]) > 1.3
    assert "slower" in verdicts[-1].reason


def test_the_same_latencies_pass_after_three_clean_tests() -> None:
    """Same distributions: three clean evaluations pass."""
    verdicts = run(3)
    assert [v.outcome for v in verdicts[1::2]] == ["continue", "continue", "pass"]
    assert "canary_p99_ms" in verdicts[-1].figures


def test_a_significant_but_tiny_slowdown_is_not_a_failure() -> None:
    """5 % slower is below min_effect (10 %): not a rollback, however many samples."""
    settings = MannWhitneySettings(max_samples=20_000)
    verdicts = run(3, settings, canary_slowdown=1.05, samples=3000)
    assert all(v.outcome != "fail" for v in verdicts)
    assert float(verdicts[1].figures["latency_p_value"]) < 0.01


def test_more_errors_fail_too() -> None:
    """A canary failing 5 % of requests against 0.5 % fails on the proportion test."""
    verdicts = run(1, canary_error=0.05)
    assert verdicts[-1].outcome == "fail"
    assert "fails more" in verdicts[-1].reason
    assert float(verdicts[-1].figures["error_p_value"]) < 0.01


def test_too_few_samples_is_no_data() -> None:
    """Fewer latency samples than min_samples: no_data, saying what is missing."""
    verdicts = run(1, MannWhitneySettings(min_samples=500), samples=100)
    assert verdicts[-1].outcome == "no_data"
    assert "not enough data" in verdicts[-1].reason


def first_test_fails(runs: int, settings: MannWhitneySettings) -> float:
    """Share of A/A analyses (same latencies, same 0.5 % errors) failed at the first test."""
    failed = 0
    for seed in range(runs):
        analysis, rng, totals = MannWhitneyJudge(settings).begin(), random.Random(seed), [0] * 4
        analysis.update(observe(rng, 30.0, totals))
        failed += analysis.update(observe(rng, 60.0, totals)).outcome == "fail"
    return failed / runs


def test_the_false_rollback_rate_of_a_test_is_at_most_one_minus_confidence() -> None:
    """A/A with no minimum effect: each test fails at most 1 - confidence of the time for
    latency plus as much for errors; at confidence 0.8 that level is really spent."""
    bare = {"min_effect": 1.0, "error_margin": 0.0}
    runs = 400
    strict = first_test_fails(runs, MannWhitneySettings(confidence=0.99, **bare))
    assert strict <= 0.02 + 3 * math.sqrt(0.02 * 0.98 / runs)
    loose = first_test_fails(runs, MannWhitneySettings(confidence=0.8, **bare))
    assert 0.1 <= loose <= 0.4 + 3 * math.sqrt(0.4 * 0.6 / runs), loose


def test_a_pass_holds_for_its_weight_and_the_tests_go_on_after_it() -> None:
    """After three clean tests at one weight the analysis passes; the tests go on, so a
    regression that shows later still fails it, and a new weight starts its count again."""
    analysis, rng, totals = MannWhitneyJudge().begin(), random.Random(9), [0] * 4

    def minute(start: float, weight: float, **canary: float) -> Verdict:
        for k in (1, 2):
            o = observe(rng, start + 30.0 * k, totals, **canary)  # type: ignore[arg-type]
            verdict = analysis.update(
                Observation(o.elapsed, o.canary, o.baseline, canary_weight=weight)
            )
        return verdict

    outcomes = [minute(60.0 * i, 0.1).outcome for i in range(3)]
    assert outcomes == ["continue", "continue", "pass"]
    assert minute(180.0, 0.5).outcome == "continue"  # a new weight: clean tests again
    assert minute(240.0, 0.5, canary_slowdown=3.0).outcome == "fail"
