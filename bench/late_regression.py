"""Late regressions: a canary that turns bad after minutes of good traffic.

Run:  .venv/bin/python -m bench.late_regression [--runs N] [--aa-runs N] [--jobs J] [--quick]

A long rollout (a slow linear or rolling one, or a canary held for an hour) judges its
canary for as long as it runs, and a regression may begin long after the canary took
traffic: load builds up, a cache fills, a leak grows, a nightly job starts. A test that
accumulates evidence from the start must not make such a regression first outweigh the
good minutes before it. This benchmark measures what that costs.

The traffic model (as in bench/blast_radius.py)
    The canary gets 10 % of 100 or 1000 requests/s in 0.25 s ticks; per tick and
    release the request count is Poisson and the failures binomial. The canary fails
    like the baseline (0.5 %) until the fault starts, at 0 s, 90 s, 10 minutes or 40
    minutes, and from then on 2 % or 5 % of its requests. Each run is followed until
    its policy rolls back, or for 10 minutes after the fault began. The harm is the
    canary's failed requests from the fault's start to the rollback decision. Counts
    only: no latency (bench/blast_radius.py and bench/blue_green.py cover latency, the
    judge's tests cover a late latency regression).

The policies
    canarist sequential (default): fed every tick from the start; a pass verdict is
        not the end (a long rollout's background analysis goes on through every step,
        and its rollback tests go on after a pass).
    Flagger (interval 1m, threshold 1 or 5): a check every 60 s over the last minute,
        success rate >= 99 %, rollback at the threshold-th failed check (its count of
        failed checks is not reset by passed ones), for as long as the analysis runs.
    CloudWatch alarm: 60 s periods, one datapoint, canary error rate > 1 %, evaluated at
        each minute's end (what rolls back a CodeDeploy deployment long enough to be
        there, such as Linear10PercentEvery10Minutes).
    Wald SPRT, fault known: the log-likelihood ratio of the true rate against the
        baseline's over the canary's requests from the fault's start (it knows when),
        rolling back at log(1 / 0.01): a lower bound, not a deployable policy.

A/A: canary like the baseline for 50 minutes; every policy's false rollbacks then.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench.blast_radius import (
    ALPHA,
    BASELINE_ERROR,
    CANARY_WEIGHT,
    TICK,
    binomial,
    poisson,
    run_work,
    simulation_main,
    split_work,
)

from canarist.judges import Observation, Sample, make_judge

RATES = (100, 1000)
ERRORS = (0.02, 0.05)
STARTS = (0.0, 90.0, 600.0, 2400.0)  # when the fault begins, seconds after the canary
AFTER = 600.0  # how long a run is followed once the fault began
AA_SECONDS = 3000.0
POLICIES = (
    "canarist sequential (default)",
    "Flagger, threshold 1",
    "Flagger, threshold 5",
    "CloudWatch alarm, 60 s",
    "Wald SPRT, fault known",
)


@dataclass(frozen=True)
class Scenario:
    """A canary failing at `error` from `start` seconds on (A/A: never), at a rate."""

    error: float
    start: float
    rps: int

    @property
    def aa(self) -> bool:
        """Whether the canary stays like the baseline."""
        return self.error == BASELINE_ERROR

    @property
    def end(self) -> float:
        """How long a run is followed."""
        return AA_SECONDS if self.aa else self.start + AFTER

    @property
    def label(self) -> str:
        """How the report names it."""
        if self.aa:
            return f"A/A (0.5 %) for {AA_SECONDS / 60:g} min, {self.rps} req/s"
        return f"canary failing {self.error:.0%} from {_when(self.start)}, {self.rps} req/s"


def _when(seconds: float) -> str:
    if seconds == 0:
        return "the start"
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


@dataclass(frozen=True)
class Decision:
    """Whether a policy rolled back, when (seconds after the fault began), and the
    canary's failed requests served from the fault's start until then; `early`: it
    rolled back before the fault began (a false rollback)."""

    rolled_back: bool
    at: float
    failures: int
    early: bool = False


def run_once(scenario: Scenario, seed: int) -> dict[str, Decision]:
    """One seeded stream through every policy."""
    rng = random.Random(seed)
    judge = make_judge("sequential").begin()
    fault_tick = round(scenario.start / TICK)
    ticks = round(scenario.end / TICK)
    minute = round(60 / TICK)
    canary = [0, 0]  # requests, failures
    baseline = [0, 0]
    at_fault = 0  # the canary's failures when the fault began
    marks = [(0, 0)]  # the canary's totals at each minute's end
    failed_checks = 0
    wald = 0.0
    per_failure = math.log(scenario.error / BASELINE_ERROR)
    per_success = math.log((1 - scenario.error) / (1 - BASELINE_ERROR))
    decided: dict[str, Decision] = {}

    def decide(name: str, tick: int) -> None:
        if name not in decided:
            early = tick <= fault_tick
            failures = 0 if early else canary[1] - at_fault
            decided[name] = Decision(True, tick * TICK - scenario.start, failures, early)

    for tick in range(1, ticks + 1):
        faulty = not scenario.aa and tick > fault_tick
        if tick == fault_tick + 1:
            at_fault = canary[1]
        n_c = poisson(rng, scenario.rps * CANARY_WEIGHT * TICK)
        x_c = binomial(rng, n_c, scenario.error if faulty else BASELINE_ERROR)
        n_b = poisson(rng, scenario.rps * (1 - CANARY_WEIGHT) * TICK)
        canary = [canary[0] + n_c, canary[1] + x_c]
        baseline = [baseline[0] + n_b, baseline[1] + binomial(rng, n_b, BASELINE_ERROR)]
        if POLICIES[0] not in decided:
            verdict = judge.update(Observation(tick * TICK, Sample(*canary), Sample(*baseline)))
            if verdict.outcome == "fail":
                decide(POLICIES[0], tick)
        if faulty and POLICIES[4] not in decided:
            wald += x_c * per_failure + (n_c - x_c) * per_success
            if wald >= math.log(1 / ALPHA):
                decide(POLICIES[4], tick)
        if tick % minute == 0:
            n = canary[0] - marks[-1][0]
            x = canary[1] - marks[-1][1]
            marks.append((canary[0], canary[1]))
            # Flagger compares its count with the threshold at the next check
            for threshold, name in ((1, POLICIES[1]), (5, POLICIES[2])):
                if failed_checks >= threshold:
                    decide(name, tick)
            failed_checks += n == 0 or x / n > 0.01
            if n > 0 and x / n > 0.01:
                decide(POLICIES[3], tick)
        if len(decided) == len(POLICIES) - scenario.aa:
            break
    last = Decision(False, scenario.end - scenario.start, canary[1] - at_fault)
    return {name: decided.get(name, last) for name in POLICIES}


def _chunk(args: tuple[Scenario, int, int]) -> list[dict[str, Decision]]:
    scenario, first, count = args
    # The same seeds whenever the fault starts: runs differ only from the fault on.
    seed = round(scenario.error * 10_000) * 100_003 + scenario.rps * 1_000_003
    return [run_once(scenario, seed + i) for i in range(first, first + count)]


def scenarios() -> list[Scenario]:
    """Every late fault at every rate, then the A/A runs."""
    bad = [Scenario(e, s, rps) for rps in RATES for e in ERRORS for s in STARTS]
    return bad + [Scenario(BASELINE_ERROR, 0.0, rps) for rps in RATES]


def benchmark(runs: int, aa_runs: int, jobs: int) -> dict[Scenario, list[dict[str, Decision]]]:
    """Every scenario's decisions, run by run (the long A/A runs first)."""
    work = []
    for scenario in sorted(scenarios(), key=lambda s: not s.aa):
        work += split_work(scenario, aa_runs if scenario.aa else runs, jobs)
    return run_work(scenarios(), work, _chunk, jobs)


def report(results: dict[Scenario, list[dict[str, Decision]]]) -> str:
    """Per rate and error: each policy's median failed requests from the fault's start to
    the rollback, by when the fault began; then the A/A false rollbacks."""
    lines: list[str] = []
    bad = [s for s in results if not s.aa]
    for rps in RATES:
        for error in ERRORS:
            row = [s for s in bad if s.rps == rps and s.error == error]
            if not row:
                continue
            runs = len(results[row[0]])
            lines.append(
                f"canary failing {error:.0%} (baseline 0.5 %), {rps} req/s, {runs} runs - "
                "median failed canary requests from the fault's start to the rollback "
                "(median seconds; [share of runs rolled back before the fault began, left "
                "out of the medians])"
            )
            header = "".join(f"{'from ' + _when(s.start):>26}" for s in row)
            lines.append(f"  {'policy':32}{header}")
            for name in POLICIES:
                cells = []
                for scenario in row:
                    every = [run[name] for run in results[scenario]]
                    decisions = [d for d in every if not d.early]
                    shown = "-"
                    if decisions:
                        failures = statistics.median(d.failures for d in decisions)
                        rolled = sum(d.rolled_back for d in decisions) * 2 >= len(decisions)
                        seconds = statistics.median(d.at for d in decisions)
                        shown = f"{'' if rolled else '>'}{failures:g} ({seconds:.0f}s)"
                    early = 1 - len(decisions) / len(every)
                    shown += f" [{early:.0%} early]" if early else ""
                    cells.append(f"{shown:>26}")
                lines.append(f"  {name:32}" + "".join(cells))
            ours = [statistics.median(r[POLICIES[0]].failures for r in results[s]) for s in row]
            ratios = ", ".join(f"{o / ours[0]:.2f}x" for o in ours[1:])
            lines.append(f"  canarist, late against from the start: {ratios}")
            lines.append("")
    aa = [s for s in results if s.aa]
    if aa:
        lines.append("A/A: false rollbacks")
        lines.append(f"  {'policy':32}" + "".join(f"{s.label:>36}" for s in aa))
        for name in POLICIES[:4]:
            cells = []
            for scenario in aa:
                every = results[scenario]
                rate = sum(r[name].rolled_back for r in every) / len(every)
                cells.append(f"{f'{rate:.2%} of {len(every)}':>36}")
            lines.append(f"  {name:32}" + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    return simulation_main(__doc__.splitlines()[0], benchmark, report, argv, quick=(2, 2))


if __name__ == "__main__":
    sys.exit(main())
