"""The blue-green benchmark runs end to end and reports every policy and scenario."""

from __future__ import annotations

from bench.blue_green import POLICIES, Scenario, benchmark, report, run_once, scenarios


def test_quick_run_reports_every_policy_and_scenario() -> None:
    """A few runs, in process: one table per bad scenario, and the A/A table."""
    text = report(benchmark(runs=2, aa_runs=2, jobs=1))
    for scenario in scenarios():
        if not scenario.aa:
            assert f"{scenario.label}, 2 runs" in text
    bad = sum(not scenario.aa for scenario in scenarios())
    for policy in POLICIES:
        assert text.count(policy) == bad + 1  # the bad-release tables and the A/A table


def test_the_policies_see_the_same_stream() -> None:
    """Flagger's line is what the stream served in the whole warm period: no policy that
    rolled back served more than that, and a dead release is caught on its first look."""
    decisions = run_once(Scenario(1.0, 100), seed=1)
    served = decisions["Flagger blue/green"]
    assert all(d.failures <= served.failures for d in decisions.values())
    assert all(d.requests <= served.requests for d in decisions.values())
    ours = decisions["canarist sequential (default)"]
    assert ours.rolled_back and ours.at == 0.25


def test_a_late_slowdown_counts_only_what_was_served_slower() -> None:
    """50 % slower from 90 s after the switch: the harm is what was served from then on,
    and canarist rolls back after the slowdown began, not before."""
    decisions = run_once(Scenario(0.005, 100, 1.5, fault_from=90.0), seed=1)
    served = decisions["Flagger blue/green"]  # never rolls back: the whole warm period
    assert 0.8 * served.requests * 510 / 600 < served.slowed < served.requests
    ours = decisions["canarist sequential (default)"]
    assert ours.rolled_back and ours.at > 90 and 0 < ours.slowed < served.slowed


def test_a_late_fault_counts_only_the_failures_served_once_it_began() -> None:
    """Failing 5 % from 90 s after the switch: canarist rolls back after it began, and
    what it counts are the failures from then on."""
    decisions = run_once(Scenario(0.05, 100, fault_from=90.0), seed=1)
    served = decisions["Flagger blue/green"]  # never rolls back: the whole warm period
    expected = 0.05 * served.requests * 510 / 600
    assert 0.7 * expected < served.failures < 1.3 * expected
    ours = decisions["canarist sequential (default)"]
    assert ours.rolled_back and ours.at > 90 and 0 < ours.failures < served.failures
