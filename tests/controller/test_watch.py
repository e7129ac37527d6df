"""The watch stores the evidence as it comes, at a bounded pace."""

from __future__ import annotations

from canarist.controller.watch import Watch
from canarist.domain.spec import parse_spec
from canarist.metrics.base import ReleaseWindow

SPEC = """
services:
  web:
    analysis:
      judge: threshold
      settings: {interval: 1s, pass_intervals: 1, min_requests: 5}
"""


def test_evidence_is_stored_four_times_a_second_also_after_a_pass() -> None:
    """Ticks every 0.1 s for a minute: a row at most every 0.25 s (and one at once when
    the verdict turns), whether or not the canary has passed."""
    spec = parse_spec(SPEC).service("web").analysis
    watch = Watch.begin(spec, 1, 0.0)
    stored = []
    for k in range(1, 601):
        now = k / 10
        canary = ReleaseWindow(10 * k, 0, (60.0,), 1, now)
        baseline = ReleaseWindow(90 * k, 0, (60.0,), 1, now)
        watch.observe(spec, now, canary, baseline, 0.1)
        row = watch.to_persist()
        if row is not None:
            stored.append(row.at)
    assert watch.verdict is not None and watch.verdict.outcome == "pass"
    assert len(stored) <= 60 * 4 + 1
    assert len(stored) >= 60 * 3
