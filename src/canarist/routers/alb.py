"""An Application Load Balancer as a router: weighted target groups, one per release.

A service's traffic enters through a listener's default action, or through one listener
rule, whose single action canarist owns: a `forward` over the target group of each
release in the route table (`RouteTable.targets` maps a release to its target group's
ARN), weighted by the release's percent. An ALB splits by weight over the sum of weights,
so the percent is the weight (0..999, checked before any call: moto takes 1000). A
release in the table at 0 % stays in the forward at weight 0 (or leaves it, when the
table gives no target group for it); a release no longer in the table leaves it. With
stickiness, the ALB's cookie keeps a client on the target group it first reached for the
configured duration, so a user does not flip between releases.

Whatever the listener or rule did before (a fixed response, a redirect, a plain forward)
is replaced by the weighted forward at the first apply. A listener or rule with an
authenticate action is refused: rewriting it would need the client secret AWS never
returns, and dropping it would open the service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from canarist.aws.clients import aws_call
from canarist.errors import ConfigError, RouterError
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.by_release import ServiceBook
from canarist.routers.weights import (
    ALB_MAX_TARGET_GROUPS,
    check_percents,
    percent_to_alb,
    shares,
)

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import (
        ActionOutputTypeDef,
        ActionTypeDef,
        ForwardActionConfigTypeDef,
        TargetGroupStickinessConfigTypeDef,
    )

log = logging.getLogger(__name__)

STICKINESS_MAX = 604800  # seconds: AWS's limit for target group stickiness (7 days)


class AlbService(BaseModel):
    """The listener, or the listener rule, that forwards one service's traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listener_arn: str | None = None  # its default action is the service's forward
    rule_arn: str | None = None  # or this rule's action (not a listener's default rule)
    sticky: bool | None = None  # None: as the service's own `sticky` says
    stickiness_seconds: int = Field(default=3600, ge=1, le=STICKINESS_MAX)

    @model_validator(mode="after")
    def _one_entry(self) -> AlbService:
        if (self.listener_arn is None) == (self.rule_arn is None):
            raise ValueError("give exactly one of listener_arn and rule_arn")
        return self


class AlbSettings(BaseModel):
    """The ALB router's settings: where each service's forward action lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, AlbService]


@dataclass(frozen=True)
class Forward:
    """A weighted forward as canarist compares it: weight per target group, stickiness."""

    weights: Mapping[str, int]  # target group ARN -> weight
    sticky_seconds: int | None = None  # None: stickiness disabled

    def action(self) -> ActionTypeDef:
        """The forward action that carries these weights."""
        stickiness: TargetGroupStickinessConfigTypeDef = {"Enabled": False}
        if self.sticky_seconds is not None:
            stickiness = {"Enabled": True, "DurationSeconds": self.sticky_seconds}
        config: ForwardActionConfigTypeDef = {
            "TargetGroups": [
                {"TargetGroupArn": arn, "Weight": w} for arn, w in self.weights.items()
            ],
            "TargetGroupStickinessConfig": stickiness,
        }
        return {"Type": "forward", "ForwardConfig": config}


def desired_forward(table: RouteTable, sticky_seconds: int | None) -> Forward:
    """The forward `table` asks for; ConfigError before any AWS call if ALB cannot carry it."""
    percents = check_percents(table.weights)
    if len(percents) > ALB_MAX_TARGET_GROUPS:
        raise ConfigError(
            f"an ALB forward weighs at most {ALB_MAX_TARGET_GROUPS} target groups,"
            f" the table has {len(percents)} releases"
        )
    weights: dict[str, int] = {}
    for release, percent in percents.items():
        arn = table.targets.get(release, "")
        if not arn and percent == 0:
            continue  # a release at 0 % whose target group is not known just leaves the forward
        if not arn.startswith("arn:") or ":targetgroup/" not in arn:
            raise ConfigError(f"release {release!r}: {arn!r} is not a target group ARN")
        if arn in weights:
            raise ConfigError(f"two releases share the target group {arn}")
        weights[arn] = percent_to_alb(percent)
    return Forward(weights, sticky_seconds)


def current_forward(actions: Sequence[ActionOutputTypeDef]) -> Forward | None:
    """The forward among a listener's or rule's actions, as ALB reports it; None if none."""
    for action in actions:
        if action["Type"] != "forward":
            continue
        config = action.get("ForwardConfig")
        if config is None:
            # A plain forward to one target group takes all of the traffic.
            return Forward({action.get("TargetGroupArn", ""): 1})
        weights = {
            tg.get("TargetGroupArn", ""): tg.get("Weight", 1)
            for tg in config.get("TargetGroups", [])
        }
        stickiness = config.get("TargetGroupStickinessConfig", {})
        seconds = stickiness.get("DurationSeconds") if stickiness.get("Enabled") else None
        return Forward(weights, seconds)
    return None


def check_actions(where: str, actions: Sequence[ActionOutputTypeDef]) -> None:
    """Raise ConfigError for actions canarist cannot rewrite without losing something."""
    for action in actions:
        if action["Type"].startswith("authenticate-"):
            raise ConfigError(
                f"{where} has an {action['Type']} action; canarist only drives listeners"
                " and rules whose one action it may replace"
            )


class AlbRouter:
    """Splits each service's traffic over weighted target groups of an ALB listener or rule."""

    def __init__(self, session: Session, settings: AlbSettings) -> None:
        self.settings = settings
        self.client: ElasticLoadBalancingv2Client = session.client("elbv2")
        self._services = ServiceBook(settings.services, "ALB")
        self._releases: dict[str, dict[str, str]] = {}  # service -> target group ARN -> release

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Check each service's listener or rule exists and may be rewritten; nothing is created."""
        for route in services:
            conf = self._services.conf(route.name)
            if conf.listener_arn is not None:
                protocol = await asyncio.to_thread(self._listener_protocol, conf.listener_arn)
                if protocol not in ("HTTP", "HTTPS"):
                    raise ConfigError(
                        f"service {route.name!r}: listener protocol {protocol} cannot weigh"
                        " target groups (an ALB listener is HTTP or HTTPS)"
                    )
            check_actions(_where(conf), await asyncio.to_thread(self._actions, conf))
            self._services.add(route)

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge the service's forward to `table`'s weights, then read it back."""
        conf, route = self._services.routed(service)
        if not table.weights:
            # AWS's data plane outlives the controller: an empty table (the controller
            # shutting down) leaves the load balancer forwarding as it does.
            log.info("alb %s: empty route table, forward left as it is", service)
            return
        sticky = conf.sticky if conf.sticky is not None else route.sticky
        desired = desired_forward(table, conf.stickiness_seconds if sticky else None)
        async with self._services.lock(service):
            self._remember(service, table)
            actions = await asyncio.to_thread(self._actions, conf)
            check_actions(_where(conf), actions)
            if current_forward(actions) == desired:
                return
            log.info("alb %s: forward %s", service, dict(desired.weights))
            await asyncio.to_thread(self._modify, conf, desired.action())
            seen = current_forward(await asyncio.to_thread(self._actions, conf))
            if seen != desired:
                raise RouterError(
                    f"{_where(conf)}: asked for {_describe(desired)}, AWS reports {_describe(seen)}"
                )

    async def read_weights(self, service: str) -> dict[str, float]:
        """Each release's share of new requests (percent), from the forward's weights.

        A target group canarist has not routed since it started is reported by its ARN.
        """
        conf = self._services.conf(service)
        forward = current_forward(await asyncio.to_thread(self._actions, conf))
        if forward is None:
            return {}
        names = self._releases.get(service, {})
        return shares({names.get(arn, arn): float(w) for arn, w in forward.weights.items()})

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """0: the ALB drains its own targets (deregistration delay), not canarist."""
        return 0

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Nothing here: request counts per target group come from CloudWatch's metrics."""
        return {}

    async def stop(self) -> None:
        """Nothing to stop: the load balancer keeps forwarding without canarist."""

    def _remember(self, service: str, table: RouteTable) -> None:
        names = self._releases.setdefault(service, {})
        names.update({arn: release for release, arn in table.targets.items()})

    def _listener_protocol(self, arn: str) -> str:
        with aws_call(f"elbv2 describe_listeners {arn}"):
            listener = self.client.describe_listeners(ListenerArns=[arn])["Listeners"][0]
        return str(listener.get("Protocol", ""))

    def _actions(self, conf: AlbService) -> list[ActionOutputTypeDef]:
        if conf.listener_arn is not None:
            with aws_call(f"elbv2 describe_listeners {conf.listener_arn}"):
                listeners = self.client.describe_listeners(ListenerArns=[conf.listener_arn])
            return listeners["Listeners"][0].get("DefaultActions", [])
        assert conf.rule_arn is not None
        with aws_call(f"elbv2 describe_rules {conf.rule_arn}"):
            rules = self.client.describe_rules(RuleArns=[conf.rule_arn])
        return rules["Rules"][0].get("Actions", [])

    def _modify(self, conf: AlbService, action: ActionTypeDef) -> None:
        if conf.listener_arn is not None:
            with aws_call(f"elbv2 modify_listener {conf.listener_arn}"):
                self.client.modify_listener(ListenerArn=conf.listener_arn, DefaultActions=[action])
            return
        assert conf.rule_arn is not None
        with aws_call(f"elbv2 modify_rule {conf.rule_arn}"):
            self.client.modify_rule(RuleArn=conf.rule_arn, Actions=[action])


def _where(conf: AlbService) -> str:
    return f"listener {conf.listener_arn}" if conf.listener_arn else f"rule {conf.rule_arn}"


def _describe(forward: Forward | None) -> str:
    if forward is None:
        return "no forward action"
    sticky = f", sticky {forward.sticky_seconds} s" if forward.sticky_seconds else ""
    return f"weights {dict(forward.weights)}{sticky}"
