"""What a controller restart costs after a long analysis: the evidence kept, and the time
to take the analysis up again, with the judge's state saved every CHECKPOINT_EVERY
seconds (as canarist does) against keeping and replaying every row (as before).

Run:  .venv/bin/python -m bench.resume [--minutes M] [--quick]

A canary at 10 % of 1,000 requests/s, 0.5 % failing like its baseline, every latency
logged (lognormal, median 60 ms), is judged by the default judge through `Watch` at the
controller's 0.1 s tick for M minutes (60 by default), its evidence stored in a real
SQLite state database as the engine stores it. Then, as a restarted controller does, the
rows and the saved state are read back and the analysis taken up. Both runs see the same
seeded traffic; the figures printed are the database's size, the rows it keeps, and the
median of five timed take-ups (reading the rows included), with their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from canarist.controller import watch as watch_module
from canarist.controller.watch import Watch
from canarist.domain.spec import AnalysisSpec, parse_spec
from canarist.metrics.base import ReleaseWindow
from canarist.store.sqlite import SQLiteStore

TICK = 0.1
RATE = 1000
WEIGHT = 0.1
ERROR = 0.005


def judged(path: Path, minutes: float, checkpoint_every: float) -> int:
    """Judge `minutes` of traffic, storing the evidence in a database at `path`; the
    rollout's id."""
    spec = parse_spec("services:\n  web: {}\n").service("web").analysis
    store = SQLiteStore(path)
    rollout_id = 1
    rng = random.Random(7)
    default, watch_module.CHECKPOINT_EVERY = watch_module.CHECKPOINT_EVERY, checkpoint_every
    try:
        _judge(store, spec, rollout_id, rng, minutes)
    finally:
        watch_module.CHECKPOINT_EVERY = default
        store.close()
    return rollout_id


def _judge(
    store: SQLiteStore, spec: AnalysisSpec, rollout_id: int, rng: random.Random, minutes: float
) -> None:
    now = 1_000.0
    watch = Watch.begin(spec, rollout_id, now)
    watch.last = watch.persisted = watch.last._replace(at=now)
    store.add_observation(rollout_id, watch.last)
    counts = [0, 0, 0, 0]
    per_tick = (round(RATE * WEIGHT * TICK), round(RATE * (1 - WEIGHT) * TICK))
    for _ in range(round(minutes * 60 / TICK)):
        now += TICK
        windows = []
        for side, n in enumerate(per_tick):
            counts[2 * side] += n
            counts[2 * side + 1] += sum(rng.random() < ERROR for _ in range(n))
            latencies = tuple(rng.lognormvariate(4.094, 0.5) for _ in range(n))
            windows.append(ReleaseWindow(counts[2 * side], counts[2 * side + 1], latencies, n, now))
        watch.observe(spec, now, windows[0], windows[1], WEIGHT)
        row = watch.to_persist()
        if row is not None:
            store.add_observation(rollout_id, row)
            checkpoint = watch.checkpoint(row)
            if checkpoint is not None:
                store.save_checkpoint(rollout_id, checkpoint)


def take_up(path: Path, rollout_id: int) -> float:
    """Seconds to read a rollout's evidence and saved state back and resume its watch."""
    spec = parse_spec("services:\n  web: {}\n").service("web").analysis
    store = SQLiteStore(path)
    started = time.perf_counter()
    Watch.resume(spec, rollout_id, store.observations(rollout_id), store.checkpoint(rollout_id))
    took = time.perf_counter() - started
    store.close()
    return took


def measure(minutes: float, checkpoint_every: float) -> tuple[float, int, float]:
    """(database MB, rows kept, median take-up seconds) after `minutes` of analysis."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        rollout_id = judged(path, minutes, checkpoint_every)
        size = path.stat().st_size / 1e6  # closed: the write-ahead log is folded in
        store = SQLiteStore(path)
        rows = len(store.observations(rollout_id))
        store.close()
        took = statistics.median(take_up(path, rollout_id) for _ in range(5))
    return size, rows, took


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="two minutes, to smoke-test")
    args = parser.parse_args(argv)
    minutes = 2.0 if args.quick else args.minutes
    default = watch_module.CHECKPOINT_EVERY
    saved = measure(minutes, default)
    replayed = measure(minutes, float("inf"))
    print(f"after {minutes:g} minutes of analysis at {RATE} requests/s (canary {WEIGHT:.0%}):")
    print(f"{'':34} {'database':>10} {'rows kept':>10} {'take-up':>9}")
    for name, (size, rows, took) in (
        (f"state saved every {default:g} s (canarist)", saved),
        ("every row kept and replayed", replayed),
    ):
        print(f"{name:34} {size:8.1f} MB {rows:10,} {took:8.2f}s")
    print(
        f"ratio (saved / replayed): database {saved[0] / replayed[0]:.3f},"
        f" take-up {saved[2] / replayed[2]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
