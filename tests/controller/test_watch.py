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


def test_requests_clients_chose_are_left_out_on_both_sides_also_after_a_restart() -> None:
    """While the split is random, the canary's requests sent with the canary header or
    kept on it by a sticky cookie, and the baseline's kept by the cookie, are left out of
    the judged counts; a window taken up after a restart goes on from the parts its last
    row had seen, so nothing is left out twice or not at all."""
    spec = parse_spec(SPEC).service("web").analysis
    first = Watch.begin(spec, 1, 0.0).last._replace(window=(0,) * 8)
    last = first._replace(
        at=10.0,
        canary_requests=90,
        canary_failures=1,
        baseline_requests=900,
        baseline_failures=4,
        window=(100, 1, 1200, 6, 10, 0, 300, 2),
    )
    watch = Watch.resume(spec, 1, [first, last], window_continues=True)
    watch.observe(
        spec,
        10.2,
        ReleaseWindow(150, 4, (), 0, 10.2, requested=10, pinned=20, pinned_failures=1),
        ReleaseWindow(1300, 8, (), 0, 10.2, pinned=350, pinned_failures=3),
        0.1,
    )
    # 50 more canary requests, 20 pinned; 3 more failures, 1 pinned. 100 more baseline
    # requests, 50 pinned; 2 more failures, 1 pinned.
    assert watch.last.counts == (120, 3, 950, 5)
    assert watch.last.window == (150, 4, 1300, 8, 30, 1, 350, 3)

    # With the canary alone, what clients chose is what there is to judge.
    watch.observe(
        spec,
        10.3,
        ReleaseWindow(160, 5, (), 0, 10.3, requested=10, pinned=30, pinned_failures=2),
        ReleaseWindow(1300, 8, (), 0, 10.3, pinned=350, pinned_failures=3),
        1.0,
    )
    assert watch.last.counts == (130, 4, 950, 5)


def test_a_window_taken_up_counts_on_and_never_goes_back() -> None:
    """Resumed with the window taken up: counts go on from the last row plus what the
    window counted since; no reading yet is not judged; a reading behind the window the
    last row saw (it should not come) counts on from the last row, never back."""
    spec = parse_spec(SPEC).service("web").analysis
    first = Watch.begin(spec, 1, 0.0).last._replace(window=(0,) * 6)
    last = first._replace(
        at=10.0,
        canary_requests=90,
        canary_failures=1,
        baseline_requests=900,
        baseline_failures=4,
        window=(100, 1, 900, 4, 10, 0),
    )
    watch = Watch.resume(spec, 1, [first, last], window_continues=True)
    assert watch.observe(spec, 10.1, None, None, 0.1) is watch.verdict
    assert watch.last.counts == (90, 1, 900, 4)  # nothing judged
    watch.observe(
        spec,
        10.2,
        ReleaseWindow(150, 3, (), 0, 10.2, 10, 0),
        ReleaseWindow(1000, 4, (), 0, 10.2),
        0.1,
    )
    assert watch.last.counts == (140, 3, 1000, 4)  # 50 and 2 more, from the window

    behind = Watch.resume(spec, 1, [first, last], window_continues=True)
    behind.observe(
        spec, 10.2, ReleaseWindow(20, 0, (), 0, 10.2), ReleaseWindow(200, 0, (), 0, 10.2), 0.1
    )
    assert behind.last.counts == (90, 1, 900, 4)
    behind.observe(
        spec, 10.3, ReleaseWindow(30, 1, (), 0, 10.3), ReleaseWindow(300, 0, (), 0, 10.3), 0.1
    )
    assert behind.last.counts == (100, 2, 1000, 4)
