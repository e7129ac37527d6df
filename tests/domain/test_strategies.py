"""Strategies compile to the plans users expect."""

from __future__ import annotations

import pytest

from canarist.domain.plan import (
    Analyze,
    Pause,
    Promote,
    Scale,
    SetWeight,
    plan_from_list,
    plan_to_list,
)
from canarist.domain.spec import StrategySpec
from canarist.domain.strategies import compile_plan, known_strategy, override
from canarist.errors import ConfigError


def weights(plan: tuple[object, ...]) -> list[int]:
    return [s.percent for s in plan if isinstance(s, SetWeight)]


def test_first_release_goes_straight_to_full_traffic() -> None:
    """Nothing to shift from: start at full size, all traffic, no delay."""
    plan = compile_plan(StrategySpec(), 3, first=True)
    assert plan == (Scale("canary", 3), SetWeight(100), Promote(0.0))


def test_default_canary_ladder() -> None:
    """The default canary is 10 → 25 → 50 → 100, each step analyzed for up to 30 s."""
    plan = compile_plan(StrategySpec(), 2)
    assert plan[0] == Scale("canary", 2)
    assert weights(plan) == [10, 25, 50, 100]
    assert [s.seconds for s in plan if isinstance(s, Analyze)] == [30.0, 30.0, 30.0]
    assert plan[-1] == Promote(30.0)


def test_explicit_canary_with_a_manual_gate() -> None:
    """`pause: manual` becomes a pause without a timer."""
    spec = StrategySpec.model_validate(
        {"kind": "canary", "steps": [{"set_weight": 5}, {"pause": "manual"}, {"set_weight": 100}]}
    )
    plan = compile_plan(spec, 1)
    assert plan[1:4] == (SetWeight(5), Pause(None), SetWeight(100))
    assert isinstance(plan[-1], Promote)


def test_linear_moves_n_percent_every_m_seconds() -> None:
    """linear 25 % every 10 s: 25, 50, 75, 100."""
    spec = StrategySpec(kind="linear", step_percent=25, step_interval=10)
    plan = compile_plan(spec, 2)
    assert weights(plan) == [25, 50, 75, 100]
    assert [s.seconds for s in plan if isinstance(s, Pause)] == [10.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("name", "expected_weights", "pauses"),
    [
        ("Canary10Percent5Minutes", [10, 100], [300.0]),
        ("CodeDeployDefault.LambdaCanary10Percent30Minutes", [10, 100], [1800.0]),
        ("ECSCanary10Percent15Minutes", [10, 100], [900.0]),
        ("Linear10PercentEvery1Minute", list(range(10, 101, 10)), [60.0] * 9),
        (
            "CodeDeployDefault.ECSLinear10PercentEvery3Minutes",
            list(range(10, 101, 10)),
            [180.0] * 9,
        ),
        ("AllAtOnce", [100], []),
        ("CodeDeployDefault.LambdaAllAtOnce", [100], []),
    ],
)
def test_codedeploy_presets(name: str, expected_weights: list[int], pauses: list[float]) -> None:
    """CodeDeploy's configuration names, with or without prefixes, compile to their meaning."""
    assert known_strategy(name)
    plan = compile_plan(StrategySpec(kind=name), 2)
    assert weights(plan) == expected_weights
    assert [s.seconds for s in plan if isinstance(s, Pause)] == pauses


def test_blue_green_holds_full_size_with_no_traffic_then_switches() -> None:
    """Blue-green: full size first, switch at once, old kept warm inside the rollout."""
    spec = StrategySpec(kind="blue-green", preview=5, scale_down_delay=60)
    plan = compile_plan(spec, 4)
    assert plan == (Scale("canary", 4), Pause(5.0), SetWeight(100), Pause(60.0), Promote(0.0))
    manual = compile_plan(StrategySpec(kind="blue-green", preview_manual=True), 4)
    assert Pause(None) in manual


def test_all_at_once_retires_the_old_release_at_once() -> None:
    """all-at-once: no warm period."""
    assert compile_plan(StrategySpec(kind="all-at-once"), 2)[-1] == Promote(0.0)


@pytest.mark.parametrize(
    ("n", "surge", "unavailable"), [(3, 1, 0), (4, 2, 0), (3, 0, 1), (5, 1, 1)]
)
def test_rolling_respects_surge_and_unavailable(n: int, surge: int, unavailable: int) -> None:
    """Walking the plan never runs more than n+surge nor fewer than n-unavailable serving."""
    plan = compile_plan(
        StrategySpec(kind="rolling", max_surge=surge, max_unavailable=unavailable), n
    )
    new, old = 0, n
    for step in plan:
        if isinstance(step, Scale):
            if step.role == "canary":
                new = step.count
            else:
                old = step.count
            assert new + old <= n + surge
            assert new + old >= n - unavailable
    assert (new, old) == (n, 0)
    shares = weights(plan)
    assert shares == sorted(shares) and shares[-1] == 100


def test_rolling_needs_some_room() -> None:
    """max_surge = max_unavailable = 0 cannot make progress: refused."""
    with pytest.raises(ValueError, match="max_surge"):
        StrategySpec(kind="rolling", max_surge=0, max_unavailable=0)


def test_override_switches_kind_and_rejects_unknown_names() -> None:
    """`deploy --strategy` picks another strategy; an unknown name lists the valid ones."""
    base = StrategySpec(kind="canary", scale_down_delay=12)
    switched = override(base, "blue-green")
    assert switched.kind == "blue-green" and switched.scale_down_delay == 12
    with pytest.raises(ConfigError, match="valid: canary"):
        override(base, "yolo")


def test_plans_round_trip_through_json() -> None:
    """Plans are stored as JSON and read back identical."""
    plan = compile_plan(StrategySpec(kind="rolling", max_surge=1), 3)
    assert plan_from_list(plan_to_list(plan)) == plan
