"""The late-regression benchmark runs end to end and counts harm from the fault's start."""

from __future__ import annotations

from bench.late_regression import POLICIES, Scenario, benchmark, report, run_once


def test_quick_run_reports_every_policy_and_start() -> None:
    """A few runs, in process: a table per rate and error with every policy and start,
    the ratios of late to early, and the A/A false rollbacks."""
    text = report(benchmark(runs=1, aa_runs=1, jobs=1))
    for policy in POLICIES:
        assert text.count(policy) >= 4
    for start in ("from 90 s", "from 10 min", "from 40 min"):
        assert text.count(start) == 4  # a column in each table
    assert text.count("late against from the start") == 4
    assert "A/A (0.5 %) for 50 min, 1000 req/s" in text


def test_a_late_fault_is_judged_from_when_it_began() -> None:
    """A canary failing 5 % from 90 s at 1000 req/s: the judge rolls back after the fault
    began, counting only the failures served since; the clairvoyant Wald test, which
    knows when, needs no more failures than the judge."""
    decisions = run_once(Scenario(0.05, 90.0, 1000), seed=3)
    ours = decisions["canarist sequential (default)"]
    assert ours.rolled_back and not ours.early and 0 < ours.at < 30
    assert 0 < ours.failures < 0.05 * 100 * ours.at * 2 + 10
    assert decisions["Wald SPRT, fault known"].failures <= ours.failures
