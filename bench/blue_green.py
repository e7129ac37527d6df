"""Blast radius after a blue-green switch: all traffic on the new release, none beside it.

Run:  .venv/bin/python -m bench.blue_green [--runs N] [--aa-runs N] [--jobs J] [--quick]

The old release served alone for the ten minutes before the switch (error rate 0.5 %,
latencies lognormal with median 60 ms and p99 192 ms, as in bench/blast_radius.py); then
the new one takes every request, at 10, 100 or 1000 requests/s, failing at 2, 5, 20 or
100 %, or 50 % or 200 % slower (or failing 5 %, or 50 % slower, only from 90 s after the
switch: a regression that comes with load, a leak or a cache), or like the old one (A/A),
while the old one stays warm, with no traffic, for a ten-minute warm period: the time in
which a rollback is a weight change. Time moves in 0.25 s ticks; per tick the request
count is Poisson, the failures binomial, and the latencies HAProxy logs are drawn (the
share of requests the HAProxy provider's `log_shares` sets: all of them at these rates),
from one seeded stream per run shared by every policy. For each scenario it prints, per
policy, how often the bad release was rolled back within the warm period, the median and
p95 failed requests (slowed requests, for a slower release) served once the fault began
and before the decision (">N": the median run never rolled back, N is what it served in
the whole warm period), and the median time to the decision; then every policy's
false-rollback rate over the A/A runs.

The policies
    canarist sequential (default): fed every tick from the rollout's start, as the
        controller does: a second with the new release starting, no weight (the old one
        serving), then all the traffic on it (canary_weight 1); told the old release's
        requests and failures over its last ten minutes and the latencies of those
        minutes, the latest 16,384 at most (what the HAProxy provider's history gives).
    CodeDeploy blue/green, with the CloudWatch alarms of bench/blast_radius.py: 60 s
        periods, one datapoint, error rate > 1 % or p99 > 500 ms; evaluated at each
        minute's end, the deployment (and its original environment) kept through the
        warm period.
    Argo Rollouts blue-green with the AnalysisTemplate of its docs as post-promotion
        analysis: a measurement every 5 minutes of the success rate over 5 minutes,
        >= 95 % to succeed, failureLimit 3 (fails at the 4th failed measurement). Argo
        keeps the old release until that analysis ends, so it could still roll back
        after the ten minutes followed here, at 20 minutes at the earliest: its figure
        is what it let through by then.
    Flagger blue/green: its checks run before the switch, on the new release's own
        test traffic; after the switch nothing rolls back (listed for what it lets
        through, not simulated).
    Wald SPRT, true rates known: the log-likelihood ratio of the true rate (or
        latency shift) against the old release's, over what was served once the fault
        began (it knows when), rolling back at log(1 / 0.01): a lower bound, not a
        deployable policy (in A/A runs, of twice the rate and of 25 % slower, each at
        half of 0.01).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.blast_radius import (
    ALPHA,
    BASELINE_ERROR,
    LATENCY_MEDIAN_MS,
    LATENCY_SIGMA,
    P99_LIMIT_MS,
    TICK,
    binomial,
    latency_table,
    poisson,
    run_work,
    simulation_main,
    split_work,
    window_p99,
)

from canarist.judges import Observation, Sample, make_judge
from canarist.metrics.base import RECENT_LATENCIES
from canarist.metrics.haproxy import log_shares

RATES = (10, 100, 1000)
ERRORS = (0.02, 0.05, 0.20, 1.0)
SLOWDOWNS = (1.5, 3.0)
WARM = 600.0  # the warm period after the switch
HISTORY = 600.0  # the old release's traffic the reference is taken from
TICKS = round(WARM / TICK)
STARTING_TICKS = 4  # the new release's instances start and turn healthy: about a second
LATE = 90.0  # when a late fault starts, after the switch
POLICIES = (
    "canarist sequential (default)",
    "CodeDeploy blue/green, 60 s alarm",
    "Argo Rollouts post-promotion example",
    "Flagger blue/green",
    "Wald SPRT, true rates known",
)
PEERS = POLICIES[1:4]


@dataclass(frozen=True)
class Scenario:
    """A new release alone after the switch: its error rate and latency factor, at a
    request rate."""

    error: float
    rps: int
    slowdown: float = 1.0
    fault_from: float = 0.0  # seconds after the switch

    @property
    def aa(self) -> bool:
        """Whether the new release is like the old one."""
        return self.error == BASELINE_ERROR and self.slowdown == 1.0

    @property
    def label(self) -> str:
        """How the report names it."""
        if self.aa:
            return f"A/A (0.5 %), {self.rps} req/s"
        late = f" from {self.fault_from:g} s after the switch" if self.fault_from else ""
        if self.slowdown != 1.0:
            return f"new release {self.slowdown - 1:.0%} slower{late}, {self.rps} req/s"
        return f"new release failing {self.error:.0%}{late}, {self.rps} req/s"


@dataclass(frozen=True)
class Decision:
    """Whether a policy rolled back, when, the requests served until then, and the failed
    and the slowed requests served from the fault's start until then."""

    rolled_back: bool
    at: float
    requests: int
    failures: int
    slowed: int  # requests served once slower (the scenario's slowdown, if any)


@dataclass(frozen=True)
class Stream:
    """One run's traffic after the switch, cumulative per tick, and what came before."""

    reference: tuple[int, int]  # the old release's requests and failures, last 10 min
    reference_ms: tuple[float, ...]  # its latest latencies
    starting: tuple[tuple[int, int], ...]  # its traffic while the new release starts
    requests: tuple[int, ...]
    failures: tuple[int, ...]
    latencies: tuple[tuple[float, ...], ...]  # logged in each tick
    fault_tick: int  # the first tick of the fault

    def decision(self, rolled_back: bool, tick: int) -> Decision:
        """A decision at the end of `tick` (the last one: none within the warm period)."""
        before = min(tick, self.fault_tick - 1)
        failures = self.failures[tick] - self.failures[before]
        slowed = self.requests[tick] - self.requests[before]
        return Decision(rolled_back, tick * TICK, self.requests[tick], failures, slowed)


def stream(scenario: Scenario, rng: random.Random) -> Stream:
    """The seeded traffic of one run."""
    reference_requests = poisson(rng, scenario.rps * HISTORY)
    reference = (reference_requests, binomial(rng, reference_requests, BASELINE_ERROR))
    # HAProxy's history: the latest latencies of those minutes' successful requests.
    logged = min(RECENT_LATENCIES, reference[0] - reference[1])
    reference_ms = tuple(rng.choices(latency_table(1.0), k=logged))
    starting = []
    for _ in range(STARTING_TICKS):
        n = poisson(rng, scenario.rps * TICK)
        starting.append((n, binomial(rng, n, BASELINE_ERROR)))
    requests, failures, latencies = [0], [0], [()]
    fault_tick = round(scenario.fault_from / TICK) + 1
    tables = (latency_table(1.0), latency_table(scenario.slowdown))
    # The share of the new release's requests HAProxy logs, as the provider sets it.
    share = log_shares({"new": scenario.rps})["new"] / 1000
    for tick in range(1, TICKS + 1):
        n = poisson(rng, scenario.rps * TICK)
        requests.append(requests[-1] + n)
        error = scenario.error if tick >= fault_tick else BASELINE_ERROR
        failures.append(failures[-1] + binomial(rng, n, error))
        logged = n if share >= 1 else binomial(rng, n, share)
        latencies.append(tuple(rng.choices(tables[tick >= fault_tick], k=logged)))
    return Stream(
        reference,
        reference_ms,
        tuple(starting),
        tuple(requests),
        tuple(failures),
        tuple(latencies),
        fault_tick,
    )


def run_once(scenario: Scenario, seed: int) -> dict[str, Decision]:
    """One seeded stream (reference, then the warm period) through every policy."""
    rng = random.Random(seed)
    traffic = stream(scenario, rng)
    peer_rng = random.Random(seed * 7919 + 17)  # p99 draws, apart from the stream

    def alarm(n: int, x: int, end: int) -> bool:
        # A window that ends in the slowdown counts as slow throughout (generous).
        factor = scenario.slowdown if end >= traffic.fault_tick else 1.0
        too_slow = n > 0 and window_p99(peer_rng, n, factor) > P99_LIMIT_MS
        return (n > 0 and x / n > 0.01) or too_slow

    return {
        POLICIES[0]: _canarist(traffic),
        POLICIES[1]: _interval(traffic, 60.0, alarm, 1),
        POLICIES[2]: _interval(traffic, 300.0, lambda n, x, _: n == 0 or (n - x) / n < 0.95, 4),
        POLICIES[3]: traffic.decision(False, TICKS),
        POLICIES[4]: _wald(scenario, traffic),
    }


def _canarist(traffic: Stream) -> Decision:
    """As the controller feeds it: from the rollout's start, the new release starting with
    no weight beside the old one, then all the traffic on it."""
    analysis = make_judge("sequential").begin()
    old = [0, 0]
    for tick, (n, x) in enumerate(traffic.starting, start=1):
        old = [old[0] + n, old[1] + x]
        analysis.update(
            Observation(tick * TICK, Sample(), Sample(*old), 0.0, baseline_recent=traffic.reference)
        )
    start = len(traffic.starting) * TICK
    for tick in range(1, TICKS + 1):
        verdict = analysis.update(
            Observation(
                start + tick * TICK,
                Sample(traffic.requests[tick], traffic.failures[tick], traffic.latencies[tick]),
                Sample(*old),
                canary_weight=1.0,
                baseline_recent=traffic.reference,
                baseline_recent_ms=traffic.reference_ms,
            )
        )
        if verdict.outcome == "fail":
            return traffic.decision(True, tick)
    return traffic.decision(False, TICKS)


def _interval(
    traffic: Stream, interval: float, failed: Callable[[int, int, int], bool], limit: int
) -> Decision:
    """A check of the last `interval` seconds at each interval's end; rollback at the
    `limit`-th failed check."""
    step = round(interval / TICK)
    count = 0
    for end in range(step, TICKS + 1, step):
        n = traffic.requests[end] - traffic.requests[end - step]
        x = traffic.failures[end] - traffic.failures[end - step]
        count += failed(n, x, end)
        if count >= limit:
            return traffic.decision(True, end)
    return traffic.decision(False, TICKS)


def _wald(scenario: Scenario, traffic: Stream) -> Decision:
    """Wald's one-sided SPRTs with the true rate and shift known (module docstring)."""
    tests = []  # (log ratio per failure, per success, per-sample latency shift, bar)
    if scenario.aa:
        bar = math.log(2 / ALPHA)
        tests.append((math.log(2), math.log((1 - 2 * BASELINE_ERROR) / 0.995), 0.0, bar))
        tests.append((0.0, 0.0, math.log(1.25), bar))
    elif scenario.slowdown != 1.0:
        tests.append((0.0, 0.0, math.log(scenario.slowdown), math.log(1 / ALPHA)))
    else:
        error = scenario.error
        success = math.log((1 - error) / (1 - BASELINE_ERROR)) if error < 1 else -math.inf
        tests.append((math.log(error / BASELINE_ERROR), success, 0.0, math.log(1 / ALPHA)))
    latency_llr = [0.0] * len(tests)
    mu0 = math.log(LATENCY_MEDIAN_MS)
    before = traffic.fault_tick - 1  # it knows when the fault starts, too
    for tick in range(traffic.fault_tick, TICKS + 1):
        x = traffic.failures[tick] - traffic.failures[before]
        n = traffic.requests[tick] - traffic.requests[before]
        logged = [math.log(v) - mu0 for v in traffic.latencies[tick]]
        for i, (per_failure, per_success, shift, bar) in enumerate(tests):
            llr = x * per_failure + ((n - x) * per_success if n > x else 0.0)
            if shift:
                latency_llr[i] += sum(shift * z - shift**2 / 2 for z in logged) / LATENCY_SIGMA**2
                llr = latency_llr[i]
            if llr >= bar:
                return traffic.decision(True, tick)
    return traffic.decision(False, TICKS)


def _chunk(args: tuple[Scenario, int, int]) -> list[dict[str, Decision]]:
    scenario, first, count = args
    seed = (
        round(scenario.error * 10_000) * 100_003
        + scenario.rps * 1_000_003
        + round(scenario.slowdown * 10) * 7
    )
    return [run_once(scenario, seed + i) for i in range(first, first + count)]


def scenarios() -> list[Scenario]:
    """Bad releases at every rate (errors, then latency), then the A/A ones."""
    bad = []
    for rps in RATES:
        bad += [Scenario(error, rps) for error in ERRORS]
        bad += [Scenario(BASELINE_ERROR, rps, slowdown) for slowdown in SLOWDOWNS]
        bad.append(Scenario(0.05, rps, fault_from=LATE))
        bad.append(Scenario(BASELINE_ERROR, rps, SLOWDOWNS[0], LATE))
    return bad + [Scenario(BASELINE_ERROR, rps) for rps in RATES]


def benchmark(runs: int, aa_runs: int, jobs: int) -> dict[Scenario, list[dict[str, Decision]]]:
    """Every scenario's decisions, run by run."""
    work = []
    for scenario in scenarios():
        work += split_work(scenario, aa_runs if scenario.aa else runs, jobs)
    return run_work(scenarios(), work, _chunk, jobs)


def report(results: dict[Scenario, list[dict[str, Decision]]]) -> str:
    """A table per bad scenario, the A/A table."""
    lines: list[str] = []
    for scenario, runs in results.items():
        if scenario.aa:
            continue
        slower = scenario.slowdown != 1.0
        harm = "slowed requests" if slower else "failed requests"
        lines.append(f"{scenario.label}, {len(runs)} runs - {harm} before rollback")
        lines.append(f"  {'policy':38} {'rolled back':>11} {'median':>8} {'p95':>8} {'time':>8}")
        for name in POLICIES:
            decisions = [run[name] for run in runs]
            values = sorted(d.slowed if slower else d.failures for d in decisions)
            rolled = sum(d.rolled_back for d in decisions) / len(decisions)
            median = statistics.median(values)
            p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
            times = [d.at for d in decisions if d.rolled_back]
            when = f"{statistics.median(times):.1f}s" if len(times) * 2 >= len(decisions) else "-"
            shown = f"{'>' if rolled < 0.5 else ''}{median:g}"
            lines.append(f"  {name:38} {rolled:>10.0%} {shown:>8} {p95:>8g} {when:>8}")
        lines.append("")
    lines.append("A/A (the new release like the old one): false rollbacks in the warm period")
    aa = [s for s in results if s.aa]
    lines.append(f"  {'policy':38}" + "".join(f"{f'{s.rps} req/s':>12}" for s in aa))
    for name in POLICIES:
        cells = []
        for scenario in aa:
            runs = results[scenario]
            rate = sum(run[name].rolled_back for run in runs) / len(runs)
            cells.append(f"{rate:>12.2%}")
        lines.append(f"  {name:38}" + "".join(cells))
    lines.append("  (" + ", ".join(f"{len(results[s])} runs at {s.rps} req/s" for s in aa) + ")")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    return simulation_main(__doc__.splitlines()[0], benchmark, report, argv, quick=(2, 4))


if __name__ == "__main__":
    sys.exit(main())
