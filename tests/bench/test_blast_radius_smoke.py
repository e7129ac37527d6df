"""The blast-radius benchmark runs end to end and reports every policy and scenario."""

from __future__ import annotations

from bench.blast_radius import POLICY_NAMES, quick, scenarios


def test_quick_run_reports_every_policy_and_scenario() -> None:
    """--quick mode, in process: one table per scenario, the A/A table and the goals."""
    report = quick()
    for scenario in scenarios():
        if scenario.kind != "aa":
            assert f"{scenario.label} (baseline error 0.5 %), {scenario.rps} req/s" in report
    for policy in POLICY_NAMES:
        assert report.count(policy) >= 19  # 18 scenario tables and the A/A table
    assert "A/A (canary = baseline" in report
    for rps in (10, 100, 1000):
        assert f"A/A {rps:>5} req/s: false rollback" in report
    assert report.count("goal <=") == 15  # 12 error scenarios and 3 A/A rates
