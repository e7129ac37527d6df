"""The Route 53 router against moto's server: weighted records read back after every step."""

from __future__ import annotations

from typing import Any

import pytest

from canarist.errors import AWSError, ConfigError, RouterError
from canarist.routers.base import RouteTable, ServiceRoute
from canarist.routers.route53 import Route53Router, Route53Service, Route53Settings

pytestmark = pytest.mark.aws

STABLE = "sha256:" + "1" * 64
CANARY = "sha256:" + "2" * 64
TARGETS = {STABLE: "blue.example.com", CANARY: "green.example.com"}
WEB = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz")
NAME = "web.example.com."


def table(**weights: int) -> RouteTable:
    """A table from `stable=` and `canary=` percents, with both releases' record values."""
    refs = {"stable": STABLE, "canary": CANARY}
    return RouteTable(members=(), weights={refs[k]: v for k, v in weights.items()}, targets=TARGETS)


@pytest.fixture
def zone(aws: Any) -> str:
    """A hosted zone for example.com."""
    r53 = aws.client("route53")
    return str(r53.create_hosted_zone(Name="example.com", CallerReference="t")["HostedZone"]["Id"])


def router_for(aws: Any, zone: str, **conf: Any) -> Route53Router:
    """A Route 53 router for the service `web` at web.example.com in `zone`."""
    service = Route53Service(hosted_zone_id=zone, record_name="web.example.com", **conf)
    return Route53Router(aws, Route53Settings(services={"web": service}))


def records(aws: Any, zone: str) -> dict[str, tuple[int, str, int]]:
    """(weight, value, TTL) of each weighted record at web.example.com, read through boto3."""
    sets = aws.client("route53").list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    return {
        s["SetIdentifier"]: (s["Weight"], s["ResourceRecords"][0]["Value"], s["TTL"])
        for s in sets
        if s["Name"] == NAME and "SetIdentifier" in s
    }


def writes(router: Route53Router) -> list[str]:
    """The names of the write calls the router's client makes from now on."""
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        if not model.name.startswith(("Get", "List")):
            calls.append(model.name)

    router.client.meta.events.register("before-call", count)
    return calls


def all_calls(router: Route53Router) -> list[str]:
    """The names of every call the router's client makes from now on."""
    calls: list[str] = []
    router.client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    return calls


async def test_full_canary_10_50_100(aws: Any, zone: str) -> None:
    """Each step moves the weights in one batch; promotion deletes the old release's record."""
    router = router_for(aws, zone)
    await router.ensure([WEB])
    await router.apply("web", table(stable=100))
    assert records(aws, zone) == {STABLE: (100, "blue.example.com", 10)}
    assert await router.read_weights("web") == {STABLE: 100.0}

    for percent in (10, 50):
        await router.apply("web", table(stable=100 - percent, canary=percent))
        assert records(aws, zone) == {
            STABLE: (100 - percent, "blue.example.com", 10),
            CANARY: (percent, "green.example.com", 10),
        }
        assert await router.read_weights("web") == {
            STABLE: 100.0 - percent,
            CANARY: float(percent),
        }

    await router.apply("web", table(stable=0, canary=100))
    assert records(aws, zone) == {
        STABLE: (0, "blue.example.com", 10),
        CANARY: (100, "green.example.com", 10),
    }
    assert await router.read_weights("web") == {STABLE: 0.0, CANARY: 100.0}

    await router.apply("web", table(canary=100))
    assert records(aws, zone) == {CANARY: (100, "green.example.com", 10)}
    assert await router.read_weights("web") == {CANARY: 100.0}


async def test_rollback_after_10_50(aws: Any, zone: str) -> None:
    """Back to stable: the canary's record goes to 0, then leaves with the canary."""
    router = router_for(aws, zone, ttl=5)
    await router.ensure([WEB])
    await router.apply("web", table(stable=100))
    for percent in (10, 50):
        await router.apply("web", table(stable=100 - percent, canary=percent))
        assert records(aws, zone)[CANARY] == (percent, "green.example.com", 5)

    await router.apply("web", table(stable=100, canary=0))
    assert records(aws, zone) == {
        STABLE: (100, "blue.example.com", 5),
        CANARY: (0, "green.example.com", 5),
    }
    assert await router.read_weights("web") == {STABLE: 100.0, CANARY: 0.0}

    await router.apply("web", table(stable=100))
    assert records(aws, zone) == {STABLE: (100, "blue.example.com", 5)}


async def test_apply_is_idempotent(aws: Any, zone: str) -> None:
    """A table AWS already matches issues no change batch."""
    router = router_for(aws, zone)
    await router.ensure([WEB])
    calls = writes(router)
    await router.apply("web", table(stable=90, canary=10))
    assert calls == ["ChangeResourceRecordSets"]
    await router.apply("web", table(stable=90, canary=10))
    assert calls == ["ChangeResourceRecordSets"]


async def test_a_release_at_0_without_a_target_keeps_its_record(aws: Any, zone: str) -> None:
    """A table may leave a retired release's value out: its record stays, at weight 0."""
    router = router_for(aws, zone)
    await router.ensure([WEB])
    await router.apply("web", table(stable=50, canary=50))
    only_stable = {STABLE: "blue.example.com"}
    await router.apply("web", RouteTable((), {STABLE: 100, CANARY: 0}, targets=only_stable))
    assert records(aws, zone) == {
        STABLE: (100, "blue.example.com", 10),
        CANARY: (0, "green.example.com", 10),
    }
    calls = writes(router)
    third = "sha256:" + "3" * 64  # at 0 %, no target and no record: nothing to do
    await router.apply(
        "web", RouteTable((), {STABLE: 100, CANARY: 0, third: 0}, targets=only_stable)
    )
    await router.apply("web", RouteTable((), {}))  # the controller shutting down
    assert calls == []
    assert records(aws, zone)[CANARY] == (0, "green.example.com", 10)


@pytest.mark.parametrize(
    "weights",
    [
        {STABLE: 300, CANARY: -200},  # sums to 100; moto would store a weight of 300
        {STABLE: 0, CANARY: 0},  # all at 0: Route 53 would split equally
        {STABLE: 90, CANARY: 20},
        {STABLE: 50.5, CANARY: 49.5},
    ],
)
async def test_bad_weights_are_refused_before_any_call(
    aws: Any, zone: str, weights: dict[str, Any]
) -> None:
    """moto takes a weight of 300; canarist refuses it (and other bad tables) itself."""
    router = router_for(aws, zone)
    await router.ensure([WEB])
    await router.apply("web", table(stable=100))
    calls = all_calls(router)
    with pytest.raises(ConfigError):
        await router.apply("web", RouteTable(members=(), weights=weights, targets=TARGETS))
    assert calls == []
    assert records(aws, zone) == {STABLE: (100, "blue.example.com", 10)}


async def test_bad_record_values_are_refused(aws: Any, zone: str) -> None:
    """A value that is not an address of the record's type is refused before any call."""
    router = router_for(aws, zone, record_type="A")
    await router.ensure([WEB])
    calls = all_calls(router)
    bad = RouteTable(members=(), weights={STABLE: 100}, targets={STABLE: "blue.example.com"})
    with pytest.raises(ConfigError):
        await router.apply("web", bad)
    assert calls == []


async def test_a_records_with_several_addresses_and_a_health_check(aws: Any, zone: str) -> None:
    """Comma-separated targets give one record of several values; a health check rides along."""
    check = aws.client("route53").create_health_check(
        CallerReference="hc",
        HealthCheckConfig={
            "IPAddress": "10.0.0.1",
            "Port": 80,
            "Type": "HTTP",
            "ResourcePath": "/",
        },
    )["HealthCheck"]["Id"]
    router = router_for(aws, zone, record_type="A", health_checks={"10.0.0.2, 10.0.0.1": check})
    await router.ensure([WEB])
    targets = {STABLE: "10.0.0.1,10.0.0.2", CANARY: "10.0.1.1"}
    await router.apply("web", RouteTable((), {STABLE: 80, CANARY: 20}, targets=targets))
    sets = aws.client("route53").list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    by_id = {s["SetIdentifier"]: s for s in sets if "SetIdentifier" in s}
    assert sorted(v["Value"] for v in by_id[STABLE]["ResourceRecords"]) == ["10.0.0.1", "10.0.0.2"]
    assert by_id[STABLE]["HealthCheckId"] == check
    assert "HealthCheckId" not in by_id[CANARY]
    assert by_id[CANARY]["Weight"] == 20
    calls = writes(router)
    await router.apply("web", RouteTable((), {STABLE: 80, CANARY: 20}, targets=targets))
    assert calls == []


async def test_read_back_that_differs_is_an_error(aws: Any, zone: str) -> None:
    """A change Route 53 does not report back is a RouterError, not a silent success."""
    router = router_for(aws, zone)
    await router.ensure([WEB])
    await router.apply("web", table(stable=100))

    def lose_the_change(parsed: dict[str, Any], **_: Any) -> None:
        for s in parsed.get("ResourceRecordSets", []):
            if s.get("SetIdentifier") == CANARY:
                s["Weight"] = 0

    router.client.meta.events.register(
        "after-call.route-53.ListResourceRecordSets", lose_the_change
    )
    with pytest.raises(RouterError, match="AWS reports"):
        await router.apply("web", table(stable=90, canary=10))


async def test_aws_errors_surface_as_aws_error(aws: Any) -> None:
    """A hosted zone that does not exist is AWS's NoSuchHostedZone, as an AWSError."""
    router = router_for(aws, "Z0000000000000000000")
    with pytest.raises(AWSError) as caught:
        await router.ensure([WEB])
    assert caught.value.code == "NoSuchHostedZone"


async def test_ensure_refuses_a_name_it_does_not_own(aws: Any, zone: str) -> None:
    """A plain record at the service's name would conflict with weighted ones."""
    aws.client("route53").change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": NAME,
                        "Type": "CNAME",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": "legacy.example.com"}],
                    },
                }
            ]
        },
    )
    with pytest.raises(ConfigError, match="without a weight"):
        await router_for(aws, zone).ensure([WEB])


async def test_unconfigured_or_unensured_services_are_refused(aws: Any, zone: str) -> None:
    """A service with no settings is a ConfigError; apply before ensure is a RouterError."""
    router = router_for(aws, zone)
    with pytest.raises(ConfigError, match="no Route 53 settings"):
        await router.ensure([ServiceRoute("api", "127.0.0.1", 8081, 4, "/healthz")])
    with pytest.raises(RouterError, match="call ensure first"):
        await router.apply("web", table(stable=100))
