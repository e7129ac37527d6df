"""Release percents as AWS weights, and the bounds AWS enforces (and moto does not)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest

from canarist.errors import ConfigError
from canarist.routers.weights import (
    check_alb_weight,
    check_apigateway_percent,
    check_lambda_weight,
    check_percent,
    check_percents,
    check_route53_weight,
    percent_to_alb,
    percent_to_apigateway,
    percent_to_lambda,
    percent_to_route53,
    shares,
)


@pytest.mark.parametrize("percent", [0, 1, 10, 50, 99, 100])
def test_percents_are_exact_weights_on_integer_scales(percent: int) -> None:
    """Route 53 and ALB split by weight over the total: a percent is already exact."""
    assert percent_to_route53(percent) == percent
    assert percent_to_alb(percent) == percent


def test_a_split_keeps_its_ratio_on_every_scale() -> None:
    """10/90 is 10 % of the weight on each provider's scale."""
    for convert in (percent_to_route53, percent_to_alb):
        canary, stable = convert(10), convert(90)
        assert canary / (canary + stable) == pytest.approx(0.10)
    assert percent_to_lambda(10) == pytest.approx(0.10)
    assert percent_to_apigateway(10) == 10.0


def test_lambda_weights_are_fractions_below_one() -> None:
    """The additional version's share is a fraction; a whole share is a promotion instead."""
    assert percent_to_lambda(0) == 0.0
    assert percent_to_lambda(50) == 0.5
    assert percent_to_lambda(99) == pytest.approx(0.99)
    with pytest.raises(ConfigError, match=re.escape("0 ≤ w < 1, got 1.0")):
        percent_to_lambda(100)


@pytest.mark.parametrize(
    ("check", "bad", "message"),
    [
        (check_route53_weight, 300, "Route 53 weights are 0–255, got 300"),
        (check_route53_weight, 256, "Route 53 weights are 0–255, got 256"),
        (check_route53_weight, -1, "Route 53 weights are 0–255, got -1"),
        (check_route53_weight, 1.5, "Route 53 weights are 0–255, got 1.5"),
        (check_alb_weight, 1000, "ALB target group weights are 0–999, got 1000"),
        (check_alb_weight, -5, "ALB target group weights are 0–999, got -5"),
        (check_alb_weight, True, "ALB target group weights are 0–999, got True"),
        (check_lambda_weight, 1.5, "Lambda alias additional version weights are 0 ≤ w < 1"),
        (check_lambda_weight, 1, "Lambda alias additional version weights are 0 ≤ w < 1"),
        (check_lambda_weight, -0.1, "Lambda alias additional version weights are 0 ≤ w < 1"),
        (check_lambda_weight, math.nan, "Lambda alias additional version weights are 0 ≤ w < 1"),
        (check_apigateway_percent, 100.5, "API Gateway canary percents are 0.0–100.0"),
        (check_apigateway_percent, "10", "API Gateway canary percents are 0.0–100.0"),
    ],
)
def test_out_of_range_weights_are_one_clear_line(
    check: Callable[[object], object], bad: object, message: str
) -> None:
    """Each provider's bound is checked by canarist, with the bound and the value named."""
    with pytest.raises(ConfigError) as caught:
        check(bad)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_weights_at_the_bounds_pass() -> None:
    """The largest weights AWS takes are taken."""
    assert check_route53_weight(255) == 255
    assert check_alb_weight(999) == 999
    assert check_lambda_weight(0.999) == 0.999
    assert check_apigateway_percent(100) == 100.0


@pytest.mark.parametrize("bad", [-1, 101, 300, 12.5, True, "10", None])
def test_a_percent_is_an_int_in_0_100(bad: object) -> None:
    """Conversions refuse anything but an int percent, before any scale is looked at."""
    with pytest.raises(ConfigError, match=re.escape("a percent is an int in 0..100")):
        check_percent(bad, "v2")
    for convert in (percent_to_route53, percent_to_alb, percent_to_lambda, percent_to_apigateway):
        with pytest.raises(ConfigError):
            convert(bad)  # type: ignore[arg-type]


def test_a_table_sums_to_100() -> None:
    """A table's percents sum to 100: all at 0 would make Route 53 split equally."""
    assert check_percents({"v1": 90, "v2": 10}) == {"v1": 90, "v2": 10}
    assert check_percents({"v1": 100, "v2": 0}) == {"v1": 100, "v2": 0}
    with pytest.raises(ConfigError, match="must sum to 100, got 0"):
        check_percents({"v1": 0, "v2": 0})
    with pytest.raises(ConfigError, match="must sum to 100, got 0"):
        check_percents({})
    with pytest.raises(ConfigError, match="must sum to 100, got 110"):
        check_percents({"v1": 90, "v2": 20})
    with pytest.raises(
        ConfigError, match=re.escape("release 'v1': a percent is an int in 0..100, got 300")
    ):
        check_percents({"v1": 300, "v2": -200})


def test_shares_of_weights() -> None:
    """Read-back weights become percents of their total."""
    assert shares({"a": 1.0, "b": 3.0}) == {"a": 25.0, "b": 75.0}
    assert shares({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}
    assert shares({}) == {}
