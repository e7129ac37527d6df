"""The ALB router against moto's server: the listener's weighted forward read back each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from canarist.errors import AWSError, ConfigError, RouterError
from canarist.routers.alb import AlbRouter, AlbService, AlbSettings
from canarist.routers.base import RouteTable, ServiceRoute

pytestmark = pytest.mark.aws

STABLE = "sha256:" + "1" * 64
CANARY = "sha256:" + "2" * 64
WEB = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz")


@dataclass(frozen=True)
class Alb:
    """A load balancer with an HTTP listener and one target group per release."""

    listener: str
    stable_tg: str
    canary_tg: str

    def table(self, **weights: int) -> RouteTable:
        """A table from `stable=` and `canary=` percents, with both target groups."""
        refs = {"stable": STABLE, "canary": CANARY}
        targets = {STABLE: self.stable_tg, CANARY: self.canary_tg}
        return RouteTable((), {refs[k]: v for k, v in weights.items()}, targets=targets)


@pytest.fixture
def alb(aws: Any) -> Alb:
    """A VPC with two subnets, an ALB, two target groups and a listener answering 503."""
    ec2, elb = aws.client("ec2"), aws.client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"eu-west-1{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    lb = elb.create_load_balancer(Name="web", Subnets=subnets, Type="application")
    tgs = [
        elb.create_target_group(Name=f"web-{n}", Protocol="HTTP", Port=80, VpcId=vpc)[
            "TargetGroups"
        ][0]["TargetGroupArn"]
        for n in ("stable", "canary")
    ]
    listener = elb.create_listener(
        LoadBalancerArn=lb["LoadBalancers"][0]["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}],
    )["Listeners"][0]["ListenerArn"]
    return Alb(listener, tgs[0], tgs[1])


def router_for(aws: Any, **conf: Any) -> AlbRouter:
    """An ALB router for the service `web`."""
    return AlbRouter(aws, AlbSettings(services={"web": AlbService(**conf)}))


def forward(actions: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, Any]]:
    """(weight per target group ARN, stickiness) of the single forward action."""
    assert [a["Type"] for a in actions] == ["forward"]
    config = actions[0]["ForwardConfig"]
    weights = {tg["TargetGroupArn"]: tg["Weight"] for tg in config["TargetGroups"]}
    return weights, config["TargetGroupStickinessConfig"]


def listener_forward(aws: Any, alb: Alb) -> tuple[dict[str, int], dict[str, Any]]:
    """The listener's forward, read through boto3."""
    listener = aws.client("elbv2").describe_listeners(ListenerArns=[alb.listener])["Listeners"][0]
    return forward(listener["DefaultActions"])


def calls_of(router: AlbRouter, *, writes_only: bool) -> list[str]:
    """The names of the calls (or only the write calls) the router's client makes from now on."""
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        if not writes_only or not model.name.startswith("Describe"):
            calls.append(model.name)

    router.client.meta.events.register("before-call", count)
    return calls


NOT_STICKY = {"Enabled": False}


async def test_full_canary_10_50_100(aws: Any, alb: Alb) -> None:
    """The listener forwards to both target groups with the step's weights, then to one."""
    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])
    await router.apply("web", alb.table(stable=100))
    assert listener_forward(aws, alb) == ({alb.stable_tg: 100}, NOT_STICKY)
    assert await router.read_weights("web") == {STABLE: 100.0}

    for percent in (10, 50):
        await router.apply("web", alb.table(stable=100 - percent, canary=percent))
        weights = {alb.stable_tg: 100 - percent, alb.canary_tg: percent}
        assert listener_forward(aws, alb) == (weights, NOT_STICKY)
        assert await router.read_weights("web") == {
            STABLE: 100.0 - percent,
            CANARY: float(percent),
        }

    await router.apply("web", alb.table(stable=0, canary=100))
    assert listener_forward(aws, alb) == ({alb.stable_tg: 0, alb.canary_tg: 100}, NOT_STICKY)
    await router.apply("web", alb.table(canary=100))
    assert listener_forward(aws, alb) == ({alb.canary_tg: 100}, NOT_STICKY)
    assert await router.read_weights("web") == {CANARY: 100.0}


async def test_rollback_after_10_50(aws: Any, alb: Alb) -> None:
    """Back to stable: the canary's target group goes to 0, then leaves the forward; a 0 %
    release without a target group is left out, and an empty table changes nothing."""
    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])
    for percent in (10, 50):
        await router.apply("web", alb.table(stable=100 - percent, canary=percent))
        assert listener_forward(aws, alb)[0][alb.canary_tg] == percent
    await router.apply("web", alb.table(stable=100, canary=0))
    assert listener_forward(aws, alb) == ({alb.stable_tg: 100, alb.canary_tg: 0}, NOT_STICKY)
    assert await router.read_weights("web") == {STABLE: 100.0, CANARY: 0.0}
    await router.apply("web", alb.table(stable=100))
    assert listener_forward(aws, alb) == ({alb.stable_tg: 100}, NOT_STICKY)
    calls = calls_of(router, writes_only=True)
    await router.apply(
        "web", RouteTable((), {STABLE: 100, CANARY: 0}, targets={STABLE: alb.stable_tg})
    )
    await router.apply("web", RouteTable((), {}))  # the controller shutting down
    assert calls == []


async def test_stickiness_from_the_service_or_the_settings(aws: Any, alb: Alb) -> None:
    """A sticky service gets target group stickiness for the configured duration."""
    sticky_web = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz", sticky=True)
    router = router_for(aws, listener_arn=alb.listener, stickiness_seconds=600)
    await router.ensure([sticky_web])
    await router.apply("web", alb.table(stable=90, canary=10))
    sticky = {"Enabled": True, "DurationSeconds": 600}
    assert listener_forward(aws, alb) == ({alb.stable_tg: 90, alb.canary_tg: 10}, sticky)

    unsticky = router_for(aws, listener_arn=alb.listener, sticky=False)
    await unsticky.ensure([sticky_web])
    await unsticky.apply("web", alb.table(stable=90, canary=10))
    assert listener_forward(aws, alb) == ({alb.stable_tg: 90, alb.canary_tg: 10}, NOT_STICKY)


async def test_a_listener_rule(aws: Any, alb: Alb) -> None:
    """A rule's action is weighted the same way, through modify_rule."""
    elb = aws.client("elbv2")
    rule = elb.create_rule(
        ListenerArn=alb.listener,
        Priority=10,
        Conditions=[{"Field": "path-pattern", "Values": ["/api/*"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": alb.stable_tg}],
    )["Rules"][0]["RuleArn"]
    router = router_for(aws, rule_arn=rule)
    await router.ensure([WEB])
    assert await router.read_weights("web") == {alb.stable_tg: 100.0}  # not routed yet: by ARN
    calls = calls_of(router, writes_only=True)
    for percent in (10, 50):
        await router.apply("web", alb.table(stable=100 - percent, canary=percent))
        actions = elb.describe_rules(RuleArns=[rule])["Rules"][0]["Actions"]
        weights = {alb.stable_tg: 100 - percent, alb.canary_tg: percent}
        assert forward(actions) == (weights, NOT_STICKY)
    assert calls == ["ModifyRule", "ModifyRule"]
    listener = elb.describe_listeners(ListenerArns=[alb.listener])["Listeners"][0]
    assert listener["DefaultActions"][0]["Type"] == "fixed-response"  # the listener is untouched


async def test_apply_is_idempotent(aws: Any, alb: Alb) -> None:
    """A forward AWS already has is not written again."""
    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])
    calls = calls_of(router, writes_only=True)
    await router.apply("web", alb.table(stable=50, canary=50))
    await router.apply("web", alb.table(stable=50, canary=50))
    assert calls == ["ModifyListener"]


async def test_bad_tables_are_refused_before_any_call(aws: Any, alb: Alb) -> None:
    """Out-of-range or unsummed weights, too many target groups, and missing, foreign or
    shared targets: ConfigError, no call to AWS, and the listener as it was."""
    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])
    await router.apply("web", alb.table(stable=100))
    calls = calls_of(router, writes_only=False)
    both = {STABLE: alb.stable_tg, CANARY: alb.canary_tg}
    many = {f"sha256:{i:064x}": 10 for i in range(10)}
    bad = [
        ({STABLE: 1000, CANARY: -900}, both),  # moto takes a weight of 1000; AWS stops at 999
        ({STABLE: 60, CANARY: 60}, both),
        ({STABLE: 0, CANARY: 0}, both),
        (many, {r: f"{alb.canary_tg[:-16]}{i:016x}" for i, r in enumerate(many)}),  # 10 > 5
        ({STABLE: 50, CANARY: 50}, {STABLE: alb.stable_tg}),
        ({STABLE: 50, CANARY: 50}, {STABLE: alb.stable_tg, CANARY: "web-canary"}),
        ({STABLE: 50, CANARY: 50}, {STABLE: alb.stable_tg, CANARY: alb.stable_tg}),
    ]
    for weights, targets in bad:
        with pytest.raises(ConfigError):
            await router.apply("web", RouteTable((), weights, targets=targets))
    assert calls == []
    assert listener_forward(aws, alb) == ({alb.stable_tg: 100}, NOT_STICKY)


async def test_read_back_that_differs_is_an_error(aws: Any, alb: Alb) -> None:
    """A forward the ALB does not report back as asked is a RouterError."""
    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])

    def stale(parsed: dict[str, Any], **_: Any) -> None:
        for listener in parsed.get("Listeners", []):
            for action in listener.get("DefaultActions", []):
                for tg in action.get("ForwardConfig", {}).get("TargetGroups", []):
                    tg["Weight"] = 1

    router.client.meta.events.register(
        "after-call.elastic-load-balancing-v2.DescribeListeners", stale
    )
    with pytest.raises(RouterError, match="AWS reports"):
        await router.apply("web", alb.table(stable=90, canary=10))


async def test_aws_errors_surface_as_aws_error(aws: Any, alb: Alb) -> None:
    """A listener AWS does not know (or no longer knows) is an AWSError with AWS's code."""
    with pytest.raises(AWSError) as caught:
        await router_for(aws, listener_arn=alb.listener + "0").ensure([WEB])
    assert caught.value.code == "ListenerNotFound"

    router = router_for(aws, listener_arn=alb.listener)
    await router.ensure([WEB])
    aws.client("elbv2").delete_listener(ListenerArn=alb.listener)
    with pytest.raises(AWSError) as caught:
        await router.apply("web", alb.table(stable=90, canary=10))
    assert caught.value.code == "ListenerNotFound"


async def test_authenticate_actions_are_not_rewritten(aws: Any, alb: Alb) -> None:
    """A listener that authenticates is refused rather than stripped of its authentication."""
    elb = aws.client("elbv2")
    elb.modify_listener(
        ListenerArn=alb.listener,
        DefaultActions=[
            {
                "Type": "authenticate-cognito",
                "Order": 1,
                "AuthenticateCognitoConfig": {
                    "UserPoolArn": "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/p",
                    "UserPoolClientId": "c",
                    "UserPoolDomain": "d",
                },
            },
            {"Type": "forward", "Order": 2, "TargetGroupArn": alb.stable_tg},
        ],
    )
    with pytest.raises(ConfigError, match="authenticate-cognito"):
        await router_for(aws, listener_arn=alb.listener).ensure([WEB])


def test_settings_need_exactly_one_entry_point() -> None:
    """A listener or a rule, not both and not neither."""
    with pytest.raises(ValueError, match="exactly one"):
        AlbService()
    with pytest.raises(ValueError, match="exactly one"):
        AlbService(listener_arn="a", rule_arn="b")
