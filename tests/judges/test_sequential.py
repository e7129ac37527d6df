"""The sequential judge: quick on bad canaries, patient on good ones, never fooled by noise."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from canarist.errors import ConfigError
from canarist.judges import Observation, Sample, Verdict, make_judge
from canarist.judges.sequential import SequentialAnalysis, SequentialJudge, SequentialSettings


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Exact binomial draw by inversion (fine for the small n * p of these tests)."""
    if p >= 1:
        return n
    if p <= 0 or n == 0:
        return 0
    mass = (1 - p) ** n
    cumulative, k, u = mass, 0, rng.random()
    while u > cumulative and k < n:
        mass *= (n - k) / (k + 1) * p / (1 - p)
        k += 1
        cumulative += mass
    return k


def traffic(
    rng: random.Random,
    *,
    rps: float,
    canary_error: float,
    baseline_error: float = 0.005,
    canary_slowdown: float = 1.0,
    canary_added_ms: float = 0.0,
    weight: float = 0.1,
    tick: float = 0.25,
    seconds: float = 600.0,
    latencies_per_tick: int = 3,
) -> Iterator[Observation]:
    """Observations of seeded traffic: canary at `weight`, lognormal latencies (median 60 ms)."""
    totals = [0, 0, 0, 0]  # canary requests, failures; baseline requests, failures
    carry = [0.0, 0.0]
    elapsed = 0.0
    while elapsed < seconds - 1e-9:
        elapsed += tick
        fresh = []
        for side, (share, error, slowdown, added) in enumerate(
            (
                (weight, canary_error, canary_slowdown, canary_added_ms),
                (1 - weight, baseline_error, 1.0, 0.0),
            )
        ):
            carry[side] += rps * share * tick  # requests split by weight, as a router does
            n = int(carry[side])
            carry[side] -= n
            totals[2 * side] += n
            totals[2 * side + 1] += binomial(rng, n, error)
            count = min(n, latencies_per_tick)
            fresh.append(
                tuple(60 * slowdown * rng.lognormvariate(0, 0.5) + added for _ in range(count))
            )
        yield Observation(
            elapsed,
            Sample(totals[0], totals[1], fresh[0]),
            Sample(totals[2], totals[3], fresh[1]),
        )


def judge_until_decided(
    analysis: SequentialAnalysis, observations: Iterator[Observation]
) -> tuple[Verdict, Observation]:
    """Feed observations until pass or fail (or they run out): the last verdict and observation."""
    verdict = observation = None
    for observation in observations:
        verdict = analysis.update(observation)
        if verdict.outcome in ("pass", "fail"):
            break
    assert verdict is not None and observation is not None
    return verdict, observation


def test_a_failing_canary_is_rolled_back_after_a_few_failures() -> None:
    """5 % errors against 0.5 %: rolled back within seconds, on a handful of failed requests."""
    failures = []
    for seed in range(20):
        rng = random.Random(seed)
        verdict, last = judge_until_decided(
            SequentialJudge().begin(), traffic(rng, rps=100, canary_error=0.05)
        )
        assert verdict.outcome == "fail", verdict.reason
        assert "fails more" in verdict.reason
        failures.append(last.canary.failures)
    assert sorted(failures)[len(failures) // 2] <= 10  # median


def test_a_total_failure_is_caught_on_its_first_few_requests() -> None:
    """A canary failing everything is rolled back after a few failures, not a minute's worth."""
    for seed in range(10):
        verdict, last = judge_until_decided(
            SequentialJudge().begin(), traffic(random.Random(seed), rps=100, canary_error=1.0)
        )
        assert verdict.outcome == "fail"
        assert last.canary.failures <= 10
        assert last.elapsed <= 2.0


def test_a_healthy_canary_passes_with_the_figures_behind_it() -> None:
    """Same error rate and latency as the baseline: passes, saying so with its evidence."""
    verdict, last = judge_until_decided(
        SequentialJudge().begin(), traffic(random.Random(7), rps=1000, canary_error=0.005)
    )
    assert verdict.outcome == "pass", verdict.reason
    assert last.elapsed < 120
    figures = verdict.figures
    assert figures["canary_requests"] == last.canary.requests
    assert figures["baseline_failures"] == last.baseline.failures
    assert float(figures["error_pass_evidence"]) >= float(figures["evidence_to_pass"])
    for key in (
        "canary_error_rate",
        "baseline_error_rate",
        "error_evidence",
        "error_p_value",
        "latency_evidence",
        "latency_p_value",
        "canary_p50_ms",
        "canary_p90_ms",
        "canary_p99_ms",
        "baseline_p50_ms",
        "baseline_p90_ms",
        "baseline_p99_ms",
    ):
        assert key in figures, key
    assert 50 < float(figures["canary_p50_ms"]) < 72  # the true median is 60 ms


def test_too_little_traffic_is_not_enough_data_and_never_a_pass() -> None:
    """Below min_requests the judge says so, however clean the traffic looks."""
    analysis = SequentialJudge(SequentialSettings(min_requests=200)).begin()
    verdicts = [
        analysis.update(o)
        for o in traffic(random.Random(1), rps=10, canary_error=0.0, baseline_error=0.0)
    ]
    early = verdicts[: 4 * 150]  # 1 canary request a second: 150 requests in 150 s
    assert {v.outcome for v in early} == {"no_data"}
    assert "not enough data" in early[-1].reason
    assert all(v.outcome != "pass" for v in verdicts[: 4 * 199])


def test_releases_that_never_fail_can_pass() -> None:
    """With no failure on either side, the absolute test lets a clean canary through."""
    verdict, _ = judge_until_decided(
        SequentialJudge().begin(),
        traffic(random.Random(2), rps=200, canary_error=0.0, baseline_error=0.0, seconds=900),
    )
    assert verdict.outcome == "pass", verdict.reason


def few_failures_against_a_perfect_baseline(failures: int, **settings: float) -> Verdict:
    """200 s of 5,000 req/s, canary at 10 %: `failures` canary failures, one a second from
    the 100th, and none on the baseline; the last verdict."""
    analysis = SequentialJudge(SequentialSettings(min_requests=10**9, **settings)).begin()
    verdict = Verdict("continue", "")
    for step in range(1, 201):
        canary = Sample(step * 500, min(max(0, step - 100), failures))
        verdict = analysis.update(Observation(step * 1.0, canary, Sample(step * 4500, 0)))
        if verdict.outcome == "fail":
            break
    return verdict


def test_a_few_failures_against_a_perfect_baseline_are_tolerated() -> None:
    """Error rates below min_error_rate never roll back, even against a baseline with none:
    2, or 8, failures in 100,000 requests. With no such floor (min_error_rate 0), 8 are
    rolled back."""
    assert few_failures_against_a_perfect_baseline(2).outcome != "fail"
    assert few_failures_against_a_perfect_baseline(8).outcome != "fail"
    unfloored = few_failures_against_a_perfect_baseline(8, min_error_rate=0.0)
    assert unfloored.outcome == "fail" and "fails more" in unfloored.reason


def test_a_shared_outage_is_no_evidence_against_the_canary() -> None:
    """Both releases failing alike (a dependency down) is not a reason to roll back."""
    analysis = SequentialJudge().begin()
    outage = traffic(random.Random(3), rps=100, canary_error=0.3, baseline_error=0.3, seconds=60)
    assert all(analysis.update(o).outcome != "fail" for o in outage)


def step_then_outage(
    seed: int, *, tell_weight: bool, outage: float = 1.0, canary_error: float = 0.005
) -> Verdict:
    """400 req/s; the canary's weight goes 10 % -> 50 % at 20 s, and for the half second
    after that both releases fail at `outage` (a shared dependency down). From then on
    the canary fails at `canary_error`. The judge is told the weight, or not."""
    rng = random.Random(seed)
    analysis = SequentialJudge().begin()
    totals, carry, elapsed = [0, 0, 0, 0], [0.0, 0.0], 0.0
    verdict = Verdict("continue", "")
    while elapsed < 60 and verdict.outcome not in ("pass", "fail"):
        elapsed += 0.25
        weight = 0.1 if elapsed <= 20 else 0.5
        shared = outage if 20 < elapsed <= 20.5 else 0.005
        for side, share in enumerate((weight, 1 - weight)):
            carry[side] += 400 * share * 0.25
            n = int(carry[side])
            carry[side] -= n
            error = canary_error if side == 0 and elapsed > 20.5 else shared
            totals[2 * side] += n
            totals[2 * side + 1] += binomial(rng, n, error)
        verdict = analysis.update(
            Observation(
                elapsed,
                Sample(totals[0], totals[1]),
                Sample(totals[2], totals[3]),
                weight if tell_weight else None,
            )
        )
    return verdict


def test_an_outage_just_after_a_weight_change_is_no_evidence_against_the_canary() -> None:
    """Told the router's weights, the judge never pools requests across a change of them.

    The control shows the hazard is real: pooled across the step from 10 % to 50 %, the
    outage's failures fall on the canary more often than the block's successes did.
    """
    told = sum(step_then_outage(seed, tell_weight=True).outcome == "fail" for seed in range(60))
    assert told == 0
    blind = sum(step_then_outage(seed, tell_weight=False).outcome == "fail" for seed in range(60))
    assert blind >= 10  # the control: without the weights, pooled blocks are fooled


def test_a_regression_that_comes_with_a_weight_change_is_still_caught() -> None:
    """Leaving the change's half second out costs little: 20 % errors go within seconds."""
    verdict = step_then_outage(1, tell_weight=True, outage=0.005, canary_error=0.2)
    assert verdict.outcome == "fail"
    assert float(verdict.figures["elapsed_s"]) < 25


def alone_after(
    seed: int,
    canary_error: float,
    *,
    before: float = 30.0,
    recent: tuple[int, int] | None = None,
    rps: int = 100,
    seconds: float = 300.0,
) -> tuple[Verdict, int]:
    """`before` seconds at 10 % canary weight (both releases failing 0.5 %), then all the
    traffic on the canary, failing at `canary_error`, for `seconds`; the judge is told
    the weights (and the baseline's `recent` counts once the canary is alone). Returns
    the last verdict and the canary's failures since it was alone."""
    rng = random.Random(seed)
    analysis = SequentialJudge().begin()
    counts = [0, 0, 0, 0]  # canary requests, failures; baseline requests, failures
    elapsed, alone_failures = 0.0, 0
    verdict = Verdict("continue", "")
    while elapsed < before + seconds and verdict.outcome != "fail":
        elapsed += 0.25
        weight = 0.1 if elapsed <= before else 1.0
        n_c = round(rps * 0.25 * weight)
        n_b = round(rps * 0.25) - n_c
        x_c = binomial(rng, n_c, 0.005 if weight < 1 else canary_error)
        alone_failures += x_c if weight == 1.0 else 0
        counts = [
            counts[0] + n_c,
            counts[1] + x_c,
            counts[2] + n_b,
            counts[3] + binomial(rng, n_b, 0.005),
        ]
        verdict = analysis.update(
            Observation(
                elapsed,
                Sample(counts[0], counts[1]),
                Sample(counts[2], counts[3]),
                weight,
                recent if weight == 1.0 else None,
            )
        )
    return verdict, alone_failures


def test_a_canary_alone_is_judged_against_the_baselines_rate_before() -> None:
    """All traffic on the canary (blue-green's warm period): 20 % errors against the
    baseline's 0.5 % before are rolled back after a few failures."""
    verdict, failures = alone_after(1, 0.2)
    assert verdict.outcome == "fail"
    assert "before it took all traffic" in verdict.reason
    assert failures <= 25
    assert float(verdict.figures["reference_rate_bound"]) < 0.05


def test_a_healthy_canary_alone_is_not_rolled_back() -> None:
    """The same 0.5 % after as before: over 200 seeded five-minute stretches, none (the
    whole judge may roll back at most 1 %)."""
    rolled_back = sum(alone_after(seed, 0.005)[0].outcome == "fail" for seed in range(200))
    assert rolled_back <= 2


def test_the_routers_recent_history_is_a_better_reference() -> None:
    """With 2 s of analysis before the switch, the bound on the baseline's rate is loose;
    the router's last minutes (60,000 requests) make a 5 % canary show within seconds."""
    short, short_failures = alone_after(2, 0.05, before=2.0, seconds=60.0)
    recent, recent_failures = alone_after(2, 0.05, before=2.0, seconds=60.0, recent=(60_000, 300))
    assert recent.outcome == "fail"
    assert recent_failures < 30
    assert short.outcome != "fail" or short_failures > recent_failures
    assert int(recent.figures["reference_requests"]) == 60_000


def alone_with_latencies(
    seed: int,
    slowdown: float,
    seconds: float = 120.0,
    *,
    slower_from: float = 0.0,
    added_ms: float = 0.0,
    logged: int = 5,
) -> Verdict:
    """All traffic on the canary (100 req/s, 0.5 % errors like before), `logged` of its
    latencies a tick: from `slower_from` seconds on, `slowdown` times the baseline's
    (its 2,048 latest from before the switch), plus `added_ms`."""
    rng = random.Random(seed)
    before = tuple(60 * rng.lognormvariate(0, 0.5) for _ in range(2048))
    analysis = SequentialJudge().begin()
    verdict, requests, failures, elapsed = Verdict("continue", ""), 0, 0, 0.0
    while elapsed < seconds and verdict.outcome != "fail":
        elapsed += 0.25
        requests += 25
        failures += binomial(rng, 25, 0.005)
        factor, added = (slowdown, added_ms) if elapsed > slower_from else (1.0, 0.0)
        fresh = tuple(60 * factor * rng.lognormvariate(0, 0.5) + added for _ in range(logged))
        verdict = analysis.update(
            Observation(
                elapsed,
                Sample(requests, failures, fresh),
                Sample(),
                canary_weight=1.0,
                baseline_recent=(60_000, 300),
                baseline_recent_ms=before,
            )
        )
    return verdict


def test_a_slower_canary_alone_is_rolled_back_against_the_baselines_latencies_before() -> None:
    """Twice as slow as the old release was before the switch: rolled back for latency
    within seconds, though nothing runs beside it."""
    verdict = alone_with_latencies(1, 2.0)
    assert verdict.outcome == "fail"
    assert "slower than baseline before it took all traffic" in verdict.reason
    assert float(verdict.figures["elapsed_s"]) < 10


def test_a_canary_alone_as_fast_as_before_is_not_rolled_back_for_latency() -> None:
    """The same latencies as before: no rollback over 100 seeded two-minute stretches."""
    assert sum(alone_with_latencies(seed, 1.0).outcome == "fail" for seed in range(100)) <= 1


def test_a_canary_alone_is_still_watched_once_the_latencies_from_before_are_used_up() -> None:
    """Every request logged: the 2,048 latencies from before are used up within seconds,
    yet a release that turns 50 % slower a minute and a half after the switch is rolled
    back within seconds, held to a bound on the old release's median."""
    verdict = alone_with_latencies(4, 1.5, 180.0, slower_from=90.0, logged=25)
    assert verdict.outcome == "fail", verdict.reason
    assert "later ones over" in verdict.reason
    assert 90 < float(verdict.figures["elapsed_s"]) < 100
    assert int(verdict.figures["latency_pairs"]) < 1000  # the rank test had stopped
    assert int(verdict.figures["latency_beyond_reference"]) > 1000


def test_a_canary_alone_within_the_tolerance_is_not_rolled_back_after_the_reference() -> None:
    """Five minutes alone, every request logged, each as slow as the tolerance and the
    floor allow (10 % slower plus 5 ms: the hardest case for the null): no rollback in
    60 seeded runs, long after the latencies from before are used up."""
    rolled_back = sum(
        alone_with_latencies(seed, 1.1, 300.0, added_ms=5.0, logged=25).outcome == "fail"
        for seed in range(60)
    )
    assert rolled_back <= 1


def test_a_canary_alone_with_no_baseline_rate_is_not_judged_alone() -> None:
    """No baseline request ever seen: nothing to compare with, and the verdict says so."""
    verdict, _ = alone_after(3, 1.0, before=0.0, seconds=30.0)
    assert verdict.outcome != "fail"
    assert "no baseline rate to compare with" in verdict.reason


def on_request(seed: int, canary_error: float, seconds: float = 120.0) -> Verdict:
    """The canary has no weight: 100 req/s go to the baseline (0.5 % errors) and 2 req/s
    of testers' requests ask for the canary with the header, failing at `canary_error`."""
    rng = random.Random(seed)
    analysis = SequentialJudge().begin()
    counts = [0, 0, 0, 0]
    verdict, elapsed = Verdict("continue", ""), 0.0
    while elapsed < seconds and verdict.outcome != "fail":
        elapsed += 0.25
        n_c, n_b = poisson_small(rng, 0.5), 25
        counts = [
            counts[0] + n_c,
            counts[1] + binomial(rng, n_c, canary_error),
            counts[2] + n_b,
            counts[3] + binomial(rng, n_b, 0.005),
        ]
        verdict = analysis.update(
            Observation(elapsed, Sample(counts[0], counts[1]), Sample(counts[2], counts[3]), 0.0)
        )
    return verdict


def poisson_small(rng: random.Random, mean: float) -> int:
    """A Poisson draw for small means (inversion by multiplication)."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def test_requests_that_ask_for_a_canary_with_no_weight_are_judged_on_their_own() -> None:
    """Testers' requests to a canary with no weight (blue-green's preview) are chosen by
    the testers, not at random: they are judged against the baseline's rate instead, and
    a canary failing a third of them is rolled back before it gets any weight."""
    verdict = on_request(1, 0.33)
    assert verdict.outcome == "fail"
    assert "asked for it" in verdict.reason
    assert verdict.figures["judged_on_its_own"] == "on request"


def test_the_latencies_of_requests_on_request_are_not_compared() -> None:
    """Testers may well ask for slow pages: with no weight, a canary whose requests are
    three times slower than the baseline's is not rolled back for latency."""
    rng = random.Random(3)
    analysis = SequentialJudge().begin()
    verdict, counts = Verdict("continue", ""), [0, 0]
    for tick in range(1, 241):
        counts = [counts[0] + 1, counts[1] + 25]
        slow = tuple(180 * rng.lognormvariate(0, 0.5) for _ in range(1))
        usual = tuple(60 * rng.lognormvariate(0, 0.5) for _ in range(4))
        verdict = analysis.update(
            Observation(tick * 0.25, Sample(counts[0], 0, slow), Sample(counts[1], 0, usual), 0.0)
        )
        assert verdict.outcome != "fail", verdict.reason


def test_healthy_requests_on_request_roll_nothing_back() -> None:
    """The same 0.5 % on the testers' requests: no rollback over 200 two-minute runs."""
    assert sum(on_request(seed, 0.005).outcome == "fail" for seed in range(200)) <= 2


def test_a_latency_regression_is_rolled_back() -> None:
    """Twice as slow, same errors: rolled back for latency within seconds."""
    verdict, last = judge_until_decided(
        SequentialJudge().begin(),
        traffic(random.Random(4), rps=100, canary_error=0.005, canary_slowdown=2.0),
    )
    assert verdict.outcome == "fail"
    assert "slower" in verdict.reason
    assert last.elapsed < 30
    assert float(verdict.figures["canary_p50_ms"]) > 1.5 * float(verdict.figures["baseline_p50_ms"])


def test_a_few_milliseconds_on_a_fast_service_are_no_regression() -> None:
    """A 1 ms service whose canary takes 3 ms (whole milliseconds, as HAProxy logs them)
    is three times slower but only 2 ms: under the 5 ms floor, no rollback. With no
    floor the same data is a regression."""

    def verdict(settings: SequentialSettings) -> Verdict:
        rng, analysis = random.Random(13), SequentialJudge(settings).begin()
        result = Verdict("continue", "")
        for tick in range(1, 241):
            canary = tuple(float(rng.choice((2, 3, 3, 4))) for _ in range(3))
            baseline = tuple(float(rng.choice((0, 1, 1, 2))) for _ in range(12))
            result = analysis.update(
                Observation(
                    tick * 0.25, Sample(tick * 10, 0, canary), Sample(tick * 90, 0, baseline)
                )
            )
            if result.outcome == "fail":
                break
        return result

    assert verdict(SequentialSettings()).outcome != "fail"
    assert verdict(SequentialSettings(latency_floor_ms=0)).outcome == "fail"


def continued(last: Observation, later: Iterator[Observation]) -> Iterator[Observation]:
    """`later`'s traffic as if it came after `last`: its clock and totals carry on."""
    for o in later:
        yield Observation(
            last.elapsed + o.elapsed,
            Sample(
                last.canary.requests + o.canary.requests,
                last.canary.failures + o.canary.failures,
                o.canary.latencies_ms,
            ),
            Sample(
                last.baseline.requests + o.baseline.requests,
                last.baseline.failures + o.baseline.failures,
                o.baseline.latencies_ms,
            ),
        )


def late_regression(
    seed: int, *, good_seconds: float, rps: float, latencies_per_tick: int = 3, **regression: float
) -> tuple[Verdict, Observation, Observation]:
    """`good_seconds` of a canary as good as the baseline, then the `regression` (traffic's
    keywords); a judge that never passes. The last verdict, the last good observation,
    and the last observation judged."""
    analysis = SequentialJudge(SequentialSettings(min_requests=10**9)).begin()
    rng = random.Random(seed)
    for o in traffic(
        rng,
        rps=rps,
        canary_error=0.005,
        latencies_per_tick=latencies_per_tick,
        seconds=good_seconds,
    ):
        assert analysis.update(o).outcome != "fail"
    later = traffic(rng, rps=rps, latencies_per_tick=latencies_per_tick, seconds=600, **regression)
    verdict, last = judge_until_decided(analysis, continued(o, later))
    return verdict, o, last


def test_a_regression_that_starts_late_is_caught_quickly() -> None:
    """After ten good minutes, a 5 % error rate is still rolled back on few failures."""
    verdict, good, last = late_regression(5, good_seconds=600, rps=100, canary_error=0.05)
    assert verdict.outcome == "fail"
    assert last.canary.failures - good.canary.failures <= 30


def test_an_error_regression_after_forty_good_minutes_is_caught_on_few_failures() -> None:
    """Heavy traffic (1000 req/s, canary at 10 %): after 40 good minutes, a canary that
    turns to 2 % errors is rolled back after a median of at most 50 failures (about 14
    from the start; the minute restarts this judge once had stopped at 30 minutes and
    let through 171)."""
    failures = []
    for seed in range(5):
        verdict, good, last = late_regression(seed, good_seconds=2400, rps=1000, canary_error=0.02)
        assert verdict.outcome == "fail" and "fails more" in verdict.reason
        failures.append(last.canary.failures - good.canary.failures)
    assert sorted(failures)[2] <= 50


def test_a_latency_regression_that_starts_late_is_caught_within_seconds() -> None:
    """Heavy traffic, every request's latency logged: 90 good seconds (tens of thousands
    of comparisons the canary did not lose), then 50 % slower. Rolled back within a few
    seconds of the change, not first after the good stretch is climbed back or at the
    next restart."""
    verdict, good, last = late_regression(
        6,
        good_seconds=90,
        rps=1000,
        latencies_per_tick=1000,
        canary_error=0.005,
        canary_slowdown=1.5,
    )
    assert verdict.outcome == "fail"
    assert "slower" in verdict.reason
    assert last.elapsed - good.elapsed <= 5


def test_a_verdict_of_fail_is_final() -> None:
    """Once failed, the analysis keeps its verdict whatever comes next."""
    analysis = SequentialJudge().begin()
    verdict, last = judge_until_decided(
        analysis, traffic(random.Random(6), rps=100, canary_error=1.0)
    )
    later = Observation(last.elapsed + 1, Sample(10**6, 0), Sample(10**7, 0))
    assert analysis.update(later) is verdict


def staged(seed: int, stages: list[tuple[float, float, float]]) -> list[Verdict]:
    """Traffic at 400 req/s in stages of (seconds, canary weight, canary error), baseline
    at 0.5 %, the judge told the weight; the verdict at the end of each stage."""
    rng = random.Random(seed)
    analysis = SequentialJudge().begin()
    counts, elapsed, ends = [0, 0, 0, 0], 0.0, []
    for seconds, weight, error in stages:
        verdict = Verdict("continue", "")
        for _ in range(round(seconds / 0.25)):
            elapsed += 0.25
            n_c = round(100 * weight)
            counts = [
                counts[0] + n_c,
                counts[1] + binomial(rng, n_c, error),
                counts[2] + 100 - n_c,
                counts[3] + binomial(rng, 100 - n_c, 0.005),
            ]
            canary_ms = tuple(60 * rng.lognormvariate(0, 0.5) for _ in range(3))
            baseline_ms = tuple(60 * rng.lognormvariate(0, 0.5) for _ in range(12))
            verdict = analysis.update(
                Observation(
                    elapsed,
                    Sample(counts[0], counts[1], canary_ms),
                    Sample(counts[2], counts[3], baseline_ms),
                    weight,
                )
            )
        ends.append(verdict)
    return ends


def test_a_pass_holds_for_its_stage_and_a_later_regression_still_rolls_back() -> None:
    """Passed at 10 %, then failing a fifth of requests at the same weight (a bug that
    needs time or load to show): the pass does not shield it, it is rolled back."""
    passed, later = staged(1, [(120, 0.1, 0.005), (30, 0.1, 0.2)])
    assert passed.outcome == "pass"
    assert later.outcome == "fail"


def test_each_weight_earns_its_own_pass() -> None:
    """A pass at 10 % is not a pass at 50 %: right after the change the verdict is back
    to gathering evidence, and the new stage passes on its own traffic."""
    passed, just_after, again = staged(
        2, [(120, 0.1, 0.005), (0.25, 0.5, 0.005), (120, 0.5, 0.005)]
    )
    assert passed.outcome == "pass"
    assert just_after.outcome in ("continue", "no_data")
    assert again.outcome == "pass"


def test_settings_are_checked() -> None:
    """A latency degradation that does not exceed the tolerance is a configuration error."""
    with pytest.raises(ConfigError, match="latency_degradation"):
        make_judge("sequential", {"latency_tolerance": 0.3, "latency_degradation": 0.2})


def aa_false_rollbacks(runs: int, settings: dict[str, object], seed: int) -> float:
    """Share of A/A runs rolled back: 2 minutes at 100 req/s, looked at every 10 seconds."""
    rolled_back = 0
    for run in range(runs):
        rng = random.Random(seed * 1_000_003 + run)
        analysis = make_judge("sequential", settings).begin()
        batches = traffic(rng, rps=100, canary_error=0.005, tick=10.0, seconds=120)
        for o in batches:
            if analysis.update(o).outcome == "fail":
                rolled_back += 1
                break
    return rolled_back / runs


def test_the_false_rollback_rate_holds_under_continuous_monitoring() -> None:
    """Over 2,000 seeded A/A runs looked at after every batch: at most alpha rolled back."""
    runs, alpha = 2000, 0.01
    # min_requests out of reach: no run ends early by passing, the worst case for alpha.
    rate = aa_false_rollbacks(runs, {"alpha": alpha, "min_requests": 10**9}, seed=11)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def pass_rate(runs: int, seed: int, **stream: float) -> float:
    """Share of runs of the default judge that pass: 1,000 req/s (canary at 10 %) for up
    to 10 minutes, looked at every 5 seconds."""
    passed = 0
    for run in range(runs):
        rng = random.Random(seed * 1_000_003 + run)
        analysis = make_judge("sequential", {}).begin()
        batches = traffic(rng, rps=1000, tick=5.0, latencies_per_tick=20, **stream)
        verdict, _ = judge_until_decided(analysis, batches)
        passed += verdict.outcome == "pass"
    return passed / runs


def test_a_canary_twice_as_likely_to_fail_passes_at_most_beta_of_the_time() -> None:
    """The stated power: failure odds twice the baseline's (0.5 % against about 1 %)."""
    runs, beta = 400, 0.1
    odds = 2 * 0.005 / 0.995
    rate = pass_rate(runs, 21, canary_error=odds / (1 + odds))
    assert rate <= beta + 3 * math.sqrt(beta * (1 - beta) / runs)


def test_a_canary_slower_by_the_stated_degradation_passes_at_most_beta_of_the_time() -> None:
    """The stated power for latency: every canary latency 25 % higher plus the 5 ms floor
    (25 % alone is not enough: on this 60 ms service the floor is another 8 %)."""
    runs, beta = 400, 0.1
    rate = pass_rate(runs, 22, canary_error=0.005, canary_slowdown=1.25, canary_added_ms=5.0)
    assert rate <= beta + 3 * math.sqrt(beta * (1 - beta) / runs)


def test_a_generous_alpha_is_still_respected() -> None:
    """With alpha = 0.2 the bound is tight enough that a too-optimistic test would show."""
    runs, alpha = 400, 0.2
    rate = aa_false_rollbacks(runs, {"alpha": alpha, "min_requests": 10**9}, seed=12)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
