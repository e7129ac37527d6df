"""Release percents as the weights of each AWS router, checked before any AWS call.

A route table gives each release a percent: an int in 0..100, the percents of a table
summing to 100. Route 53 and ALB split traffic by weight over the sum of weights, so a
percent is already an exact weight on their integer scales (0..255 and 0..999) and is
passed through unchanged; rescaling it would only add rounding. A Lambda alias carries
its one additional version's share as a fraction in [0, 1), and an API Gateway stage its
canary's share as a percent in 0.0..100.0.

The bounds of each scale are checked here, because moto accepts values that AWS rejects
(a Route 53 weight of 300, an ALB weight of 1000, a Lambda weight of 1.5): a router that
relied on the API to refuse them would pass its tests and fail in production.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

from canarist.errors import ConfigError

K = TypeVar("K", bound=Hashable)

ROUTE53_MAX = 255
ALB_MAX = 999
ALB_MAX_TARGET_GROUPS = 5  # target groups one forward action may weigh


def _int(value: object) -> int | None:
    # bool is an int to Python, but True is no weight.
    return value if type(value) is int else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_percent(percent: object, release: str | None = None) -> int:
    """`percent`, or ConfigError unless it is an int in 0..100."""
    p = _int(percent)
    if p is None or not 0 <= p <= 100:
        whose = f"release {release!r}: " if release is not None else ""
        raise ConfigError(f"{whose}a percent is an int in 0..100, got {percent!r}")
    return p


def check_percents(weights: Mapping[str, object]) -> dict[str, int]:
    """A table's percents, or ConfigError unless each is in 0..100 and they sum to 100.

    A sum of 0 is refused too: Route 53 answers with every record in equal shares when all
    weights are 0, and neither ALB nor a Lambda alias nor a stage can route nothing.
    """
    percents = {release: check_percent(p, release) for release, p in weights.items()}
    total = sum(percents.values())
    if total != 100:
        listed = ", ".join(f"{r}: {p}" for r, p in percents.items())
        raise ConfigError(f"a route table's percents must sum to 100, got {total} ({listed})")
    return percents


def primary_and_canary(
    weights: Mapping[str, object],
    targets: Mapping[str, str],
    check: Callable[[str, str | None], str],
    holder: str,
    target: str,
) -> list[tuple[str, int]]:
    """(target, percent) of each release a table sends traffic to, its target checked by
    `check(release, target)`. ConfigError past two releases (`holder` says what routes to a
    primary and one other) or when two share a target (`target` names one)."""
    percents = check_percents(weights)
    out = [(check(release, targets.get(release)), p) for release, p in percents.items() if p > 0]
    if len(out) > 2:
        raise ConfigError(f"{holder}; the table sends traffic to {len(out)} releases")
    if len({t for t, _ in out}) != len(out):
        raise ConfigError(f"two releases share the {target} {out[0][0]}")
    return out


def check_route53_weight(weight: object) -> int:
    """`weight`, or ConfigError unless it is a Route 53 weight (an int in 0..255)."""
    w = _int(weight)
    if w is None or not 0 <= w <= ROUTE53_MAX:
        raise ConfigError(f"Route 53 weights are 0–{ROUTE53_MAX}, got {weight!r}")
    return w


def check_alb_weight(weight: object) -> int:
    """`weight`, or ConfigError unless it is an ALB target group weight (an int in 0..999)."""
    w = _int(weight)
    if w is None or not 0 <= w <= ALB_MAX:
        raise ConfigError(f"ALB target group weights are 0–{ALB_MAX}, got {weight!r}")
    return w


def check_lambda_weight(weight: object) -> float:
    """`weight`, or ConfigError unless it is a Lambda additional version weight, 0 ≤ w < 1."""
    w = _number(weight)
    # A whole share for the additional version is a promotion, not a weight: AWS refuses 1.
    if w is None or not 0.0 <= w < 1.0:
        raise ConfigError(f"Lambda alias additional version weights are 0 ≤ w < 1, got {weight!r}")
    return w


def check_apigateway_percent(percent: object) -> float:
    """`percent`, or ConfigError unless it is an API Gateway canary percent, 0.0..100.0."""
    p = _number(percent)
    if p is None or not 0.0 <= p <= 100.0:
        raise ConfigError(f"API Gateway canary percents are 0.0–100.0, got {percent!r}")
    return p


def percent_to_route53(percent: int) -> int:
    """The Route 53 record weight of a release's percent."""
    return check_route53_weight(check_percent(percent))


def percent_to_alb(percent: int) -> int:
    """The ALB target group weight of a release's percent."""
    return check_alb_weight(check_percent(percent))


def percent_to_lambda(percent: int) -> float:
    """The Lambda alias additional version weight (a fraction below 1) of a percent."""
    return check_lambda_weight(check_percent(percent) / 100)


def percent_to_apigateway(percent: int) -> float:
    """The API Gateway stage canary `percentTraffic` of a release's percent."""
    return check_apigateway_percent(float(check_percent(percent)))


def shares(weights: Mapping[K, float]) -> dict[K, float]:
    """Each key's share of the total weight, in percent; all 0 when the total is 0."""
    total = sum(weights.values())
    return {k: (100.0 * w / total if total > 0 else 0.0) for k, w in weights.items()}
