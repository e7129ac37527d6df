"""Sticky sessions: what leaving the requests a cookie pins out of the comparison costs and saves.

Run:  .venv/bin/python -m bench.sticky [--runs N] [--quick]

With sticky sessions a share of each release's requests carry the cookie that keeps a
client on the release of its first request; canarist counts them apart and leaves them
out of the comparison on both sides (the split did not choose their release), unless
`analysis.pinned: judge` says to judge them as the split's (as canarist did before it
counted them apart). The same seeded
streams go through the default judge's watch both ways, at 100 and 1,000 requests/s,
baseline error 0.5 %, canary weight 10 %, 0.25 s observations, counts only:

- a canary failing 5 % of every request, with 0, 50 or 90 % of the requests pinned:
  the median canary failures served (pinned ones included) and seconds until rollback;
  the price of judging the split's requests only;
- a healthy canary (0.5 %) beside which one client, pinned to the canary, asks twice a
  second for something that fails on every release (90 % of requests pinned): the share
  of runs rolled back within 10 minutes, a false rollback every one of them.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.blast_radius import binomial, poisson, run_arguments

from canarist.controller.watch import Watch
from canarist.domain.spec import parse_spec
from canarist.metrics.base import ReleaseWindow

TICK = 0.25
WEIGHT = 0.10
BASELINE_ERROR = 0.005
BAD_ERROR = 0.05
MINUTES = 10.0
NOISY_CLIENT = 2.0  # requests a second, all failing, pinned to the canary
RATES = (100, 1000)
SHARES = (0.0, 0.5, 0.9)
POLICIES = ("left out (default)", "pinned: judge")


@dataclass(frozen=True)
class Run:
    """One run's outcome under one policy."""

    rolled_back: bool
    seconds: float  # until the rollback (or the end)
    failures: int  # canary failures served until then, pinned ones included


def run(rate: int, share: float, error: float, noisy: float, seed: int, leave_out: bool) -> Run:
    """One seeded stream through the default judge's watch."""
    pinned = "leave_out" if leave_out else "judge"
    spec = parse_spec(f"services:\n  web: {{analysis: {{pinned: {pinned}}}}}\n")
    spec = spec.service("web").analysis
    watch = Watch.begin(spec, 1, 0.0)
    rng = random.Random(seed)
    # Per release: requests, failures, pinned requests, pinned failures (cumulative).
    counts = [[0, 0, 0, 0], [0, 0, 0, 0]]
    served = 0
    ticks = round(MINUTES * 60 / TICK)
    for tick in range(1, ticks + 1):
        for side, (weight, p) in enumerate(((WEIGHT, error), (1 - WEIGHT, BASELINE_ERROR))):
            n = poisson(rng, rate * weight * TICK)
            pinned = binomial(rng, n, share)
            failed_pinned = binomial(rng, pinned, p)
            failed = failed_pinned + binomial(rng, n - pinned, p)
            if side == 0:
                extra = poisson(rng, noisy * TICK)  # the noisy client's, all failing
                n, pinned, failed, failed_pinned = (
                    n + extra,
                    pinned + extra,
                    failed + extra,
                    failed_pinned + extra,
                )
                served += failed
            c = counts[side]
            c[0], c[1], c[2], c[3] = c[0] + n, c[1] + failed, c[2] + pinned, c[3] + failed_pinned
        canary, baseline = (
            ReleaseWindow(
                c[0],
                c[1],
                (),
                0,
                tick * TICK,
                pinned=c[2],
                pinned_failures=c[3],
            )
            for c in counts
        )
        watch.observe(spec, tick * TICK, canary, baseline, WEIGHT)
        if watch.rollback_reason(spec) is not None:
            return Run(True, tick * TICK, served)
    return Run(False, ticks * TICK, served)


def main(argv: Sequence[str] | None = None) -> int:
    args = run_arguments(__doc__.splitlines()[0], argv)
    runs = 3 if args.quick else min(args.runs, 200)
    print(
        f"# sticky sessions, {runs} runs per row; canary weight {WEIGHT:.0%},"
        f" baseline error {BASELINE_ERROR:.1%}"
    )
    print(f"\n## a canary failing {BAD_ERROR:.0%}: median canary failures served / seconds")
    print(f"{'req/s':>6} {'pinned':>7}  " + "  ".join(f"{p:>24}" for p in POLICIES) + "   ratio")
    for rate in RATES:
        for share in SHARES:
            cells = []
            for leave_out in (True, False):
                done = [run(rate, share, BAD_ERROR, 0.0, s, leave_out) for s in range(runs)]
                cells.append(
                    (
                        statistics.median(r.failures for r in done),
                        statistics.median(r.seconds for r in done),
                    )
                )
            ratio = cells[0][0] / max(cells[1][0], 1)
            print(
                f"{rate:>6} {share:>7.0%}  "
                + "  ".join(f"{f:>15.1f} / {s:>5.1f} s" for f, s in cells)
                + f"   {ratio:.2f}x"
            )
    print(
        f"\n## a healthy canary and one client failing everywhere, pinned to it"
        f" ({NOISY_CLIENT:g} requests/s; 90 % of requests pinned): rolled back within"
        f" {MINUTES:g} min"
    )
    print(f"{'req/s':>6}  " + "  ".join(f"{p:>24}" for p in POLICIES))
    for rate in RATES:
        shares = []
        for leave_out in (True, False):
            done = [run(rate, 0.9, BASELINE_ERROR, NOISY_CLIENT, s, leave_out) for s in range(runs)]
            shares.append(sum(r.rolled_back for r in done) / runs)
        print(f"{rate:>6}  " + "  ".join(f"{s:>24.1%}" for s in shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
