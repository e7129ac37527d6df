"""Blast radius after a blue-green switch: all traffic on the new release, none beside it.

Run:  .venv/bin/python -m bench.blue_green [--runs N] [--aa-runs N] [--jobs J] [--quick]

The old release served alone for the ten minutes before the switch (error rate 0.5 %);
then the new one takes every request, at 10, 100 or 1000 requests/s, failing at 2, 5, 20
or 100 % (or at 0.5 %: A/A), while the old one stays warm, with no traffic, for a
ten-minute warm period: the time in which a rollback is a weight change. Time moves in
0.25 s ticks; per tick the request count is Poisson and the failures binomial, from one
seeded stream per run shared by every policy. For each scenario it prints, per policy,
how often the bad release was rolled back within the warm period, the median and p95
failed requests served before the decision (">N": the median run never rolled back, N
is what it served in the whole warm period), and the median time to the decision; then
every policy's false-rollback rate over the A/A runs.

The policies
    canarist sequential (default): fed every tick from the rollout's start, as the
        controller does: a second with the new release starting, no weight (the old one
        serving), then all the traffic on it (canary_weight 1); told the old release's
        requests and failures over its last ten minutes (what the HAProxy provider's
        history gives).
    CodeDeploy blue/green, with the CloudWatch alarm of bench/blast_radius.py: 60 s
        periods, one datapoint, error rate > 1 %; evaluated at each minute's end, the
        deployment (and its original environment) kept through the warm period.
    Argo Rollouts blue-green with the AnalysisTemplate of its docs as post-promotion
        analysis: a measurement every 5 minutes of the success rate over 5 minutes,
        >= 95 % to succeed, failureLimit 3 (fails at the 4th failed measurement). Argo
        keeps the old release until that analysis ends, so it could still roll back
        after the ten minutes followed here, at 20 minutes at the earliest: its figure
        is what it let through by then.
    Flagger blue/green: its checks run before the switch, on the new release's own
        test traffic; after the switch nothing rolls back (listed for what it lets
        through, not simulated).
    Wald SPRT, true rates known: the log-likelihood ratio of the true rate against
        0.5 %, rolling back at log(1 / 0.01): a lower bound, not a deployable policy (in
        A/A runs, of twice the rate against 0.5 %).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.blast_radius import (
    ALPHA,
    BASELINE_ERROR,
    TICK,
    binomial,
    poisson,
    run_work,
    split_work,
)

from canarist.judges import Observation, Sample, make_judge

RATES = (10, 100, 1000)
ERRORS = (0.02, 0.05, 0.20, 1.0)
WARM = 600.0  # the warm period after the switch
HISTORY = 600.0  # the old release's traffic the reference is taken from
TICKS = round(WARM / TICK)
STARTING_TICKS = 4  # the new release's instances start and turn healthy: about a second
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
    """A new release alone after the switch: its error rate, at a request rate."""

    error: float
    rps: int

    @property
    def label(self) -> str:
        """How the report names it."""
        if self.error == BASELINE_ERROR:
            return f"A/A (0.5 %), {self.rps} req/s"
        return f"new release failing {self.error:.0%}, {self.rps} req/s"


@dataclass(frozen=True)
class Decision:
    """Whether a policy rolled back, when, and the failed requests served until then."""

    rolled_back: bool
    at: float
    failures: int


def run_once(scenario: Scenario, seed: int) -> dict[str, Decision]:
    """One seeded stream (reference, then the warm period) through every policy."""
    rng = random.Random(seed)
    reference_requests = poisson(rng, scenario.rps * HISTORY)
    reference = (reference_requests, binomial(rng, reference_requests, BASELINE_ERROR))
    starting = []  # the old release's traffic while the new one starts (no weight yet)
    for _ in range(STARTING_TICKS):
        n = poisson(rng, scenario.rps * TICK)
        starting.append((n, binomial(rng, n, BASELINE_ERROR)))
    requests, failures = [0], [0]  # cumulative, per tick
    for _ in range(TICKS):
        n = poisson(rng, scenario.rps * TICK)
        requests.append(requests[-1] + n)
        failures.append(failures[-1] + binomial(rng, n, scenario.error))
    return {
        POLICIES[0]: _canarist(reference, starting, requests, failures),
        POLICIES[1]: _interval(requests, failures, 60.0, lambda n, x: n > 0 and x / n > 0.01, 1),
        POLICIES[2]: _interval(
            requests, failures, 300.0, lambda n, x: n == 0 or (n - x) / n < 0.95, 4
        ),
        POLICIES[3]: Decision(False, WARM, failures[-1]),
        POLICIES[4]: _wald(scenario.error, requests, failures),
    }


def _canarist(
    reference: tuple[int, int],
    starting: Sequence[tuple[int, int]],
    requests: Sequence[int],
    failures: Sequence[int],
) -> Decision:
    """As the controller feeds it: from the rollout's start, the new release starting with
    no weight beside the old one, then all the traffic on it."""
    analysis = make_judge("sequential").begin()
    old = [0, 0]
    for tick, (n, x) in enumerate(starting, start=1):
        old = [old[0] + n, old[1] + x]
        analysis.update(
            Observation(tick * TICK, Sample(), Sample(*old), 0.0, baseline_recent=reference)
        )
    start = len(starting) * TICK
    for tick in range(1, TICKS + 1):
        verdict = analysis.update(
            Observation(
                start + tick * TICK,
                Sample(requests[tick], failures[tick]),
                Sample(*old),
                canary_weight=1.0,
                baseline_recent=reference,
            )
        )
        if verdict.outcome == "fail":
            return Decision(True, tick * TICK, failures[tick])
    return Decision(False, WARM, failures[-1])


def _interval(
    requests: Sequence[int],
    failures: Sequence[int],
    interval: float,
    failed: Callable[[int, int], bool],
    limit: int,
) -> Decision:
    """A check of the last `interval` seconds at each interval's end; rollback at the
    `limit`-th failed check."""
    step = round(interval / TICK)
    count = 0
    for end in range(step, TICKS + 1, step):
        n = requests[end] - requests[end - step]
        x = failures[end] - failures[end - step]
        count += failed(n, x)
        if count >= limit:
            return Decision(True, end * TICK, failures[end])
    return Decision(False, WARM, failures[-1])


def _wald(error: float, requests: Sequence[int], failures: Sequence[int]) -> Decision:
    if error <= BASELINE_ERROR:  # A/A: the one-sided test never crosses on average
        per_failure, per_success = math.log(2), math.log((1 - 2 * BASELINE_ERROR) / 0.995)
    else:
        per_failure = math.log(error / BASELINE_ERROR)
        per_success = math.log((1 - error) / (1 - BASELINE_ERROR)) if error < 1 else -math.inf
    bar = math.log(1 / ALPHA)
    for tick in range(1, TICKS + 1):
        x = failures[tick]
        n = requests[tick]
        llr = x * per_failure + ((n - x) * per_success if n > x else 0.0)
        if llr >= bar:
            return Decision(True, tick * TICK, x)
    return Decision(False, WARM, failures[-1])


def _chunk(args: tuple[Scenario, int, int]) -> list[dict[str, Decision]]:
    scenario, first, count = args
    seed = round(scenario.error * 10_000) * 100_003 + scenario.rps * 1_000_003
    return [run_once(scenario, seed + i) for i in range(first, first + count)]


def scenarios() -> list[Scenario]:
    """Bad releases at every rate, then the A/A ones."""
    bad = [Scenario(error, rps) for rps in RATES for error in ERRORS]
    return bad + [Scenario(BASELINE_ERROR, rps) for rps in RATES]


def benchmark(runs: int, aa_runs: int, jobs: int) -> dict[Scenario, list[dict[str, Decision]]]:
    """Every scenario's decisions, run by run."""
    work = []
    for scenario in scenarios():
        work += split_work(scenario, aa_runs if scenario.error == BASELINE_ERROR else runs, jobs)
    return run_work(scenarios(), work, _chunk, jobs)


def report(results: dict[Scenario, list[dict[str, Decision]]]) -> str:
    """A table per bad scenario, the A/A table."""
    lines: list[str] = []
    for scenario, runs in results.items():
        if scenario.error == BASELINE_ERROR:
            continue
        lines.append(f"{scenario.label}, {len(runs)} runs - failed requests before rollback")
        lines.append(f"  {'policy':38} {'rolled back':>11} {'median':>8} {'p95':>8} {'time':>8}")
        for name in POLICIES:
            decisions = [run[name] for run in runs]
            values = sorted(d.failures for d in decisions)
            rolled = sum(d.rolled_back for d in decisions) / len(decisions)
            median = statistics.median(values)
            p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
            times = [d.at for d in decisions if d.rolled_back]
            when = f"{statistics.median(times):.1f}s" if len(times) * 2 >= len(decisions) else "-"
            shown = f"{'>' if rolled < 0.5 else ''}{median:g}"
            lines.append(f"  {name:38} {rolled:>10.0%} {shown:>8} {p95:>8g} {when:>8}")
        lines.append("")
    lines.append("A/A (the new release fails at 0.5 % too): false rollbacks in the warm period")
    aa = [s for s in results if s.error == BASELINE_ERROR]
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per bad scenario")
    parser.add_argument("--aa-runs", type=int, default=2000, help="A/A runs per request rate")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs, one process")
    args = parser.parse_args(argv)
    if args.quick:
        print(report(benchmark(runs=2, aa_runs=4, jobs=1)))
    else:
        print(report(benchmark(args.runs, args.aa_runs, args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
