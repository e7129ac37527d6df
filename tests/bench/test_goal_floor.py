"""The bound on what any policy needs to meet a failed-request goal, against closed forms."""

from __future__ import annotations

import math

import pytest
from bench.blast_radius import least_false_rollback


def test_rolling_back_before_any_failure_costs_half_of_healthy_canaries() -> None:
    """With no failure to go on, the canary's outcomes tell nothing: P(aa) = P(bad) = 1/2."""
    assert least_false_rollback(0.005, 0.02, 0, 600) == pytest.approx(0.5)


def test_one_failure_budget_matches_the_first_failure_rule() -> None:
    """At most one failure: the best rule rolls back at a first failure among the first k
    requests (randomised between k and k + 1 to get exactly one half of bad canaries)."""
    p0, p1 = 0.005, 0.20
    k = math.floor(math.log(0.5) / math.log(1 - p1))
    bad = [1 - (1 - p1) ** n for n in (k, k + 1)]
    aa = [1 - (1 - p0) ** n for n in (k, k + 1)]
    mix = (0.5 - bad[0]) / (bad[1] - bad[0])
    expected = aa[0] + mix * (aa[1] - aa[0])
    assert least_false_rollback(p0, p1, 1, 600) == pytest.approx(expected, rel=1e-6)
    assert expected > 0.01  # the 20 %, 10 req/s goal is out of reach at 1 %


def test_a_dead_canary_is_caught_by_its_first_request() -> None:
    """A canary that fails everything: roll back on its first failure (half the time)."""
    assert least_false_rollback(0.005, 1.0, 1, 600) == pytest.approx(0.5 * 0.005)


def test_a_larger_budget_never_costs_more() -> None:
    """More failures allowed, or a worse canary, can only make the goal cheaper."""
    costs = [least_false_rollback(0.005, 0.05, f, 1000) for f in range(4)]
    assert costs == sorted(costs, reverse=True)
    assert least_false_rollback(0.005, 0.2, 2, 1000) < least_false_rollback(0.005, 0.05, 2, 1000)
