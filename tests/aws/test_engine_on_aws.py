"""The same rollouts on AWS: the controller's engine drives a Lambda alias through moto.

The engine, its strategies and its store are canarist's own; the platform publishes a
Lambda version per release and the router moves the alias's weights, over HTTP against
moto's server. After every step the alias is read back through boto3.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from canarist.controller.engine import Engine, GroupDrivers
from canarist.domain.spec import parse_spec
from canarist.platforms.aws_lambda import LambdaPlatform
from canarist.routers.lambda_alias import LambdaAliasRouter, LambdaAliasService, LambdaAliasSettings
from canarist.store.sqlite import SQLiteStore
from canarist.testing import FakeCatalog, FakeClock, FakePlatform, FakeRouter
from tests.aws.conftest import REGION, create_lambda, package

pytestmark = pytest.mark.aws

FUNCTION = "checkout"
BUCKET = "releases"
SPEC = """
services:
  api:
    listen: 127.0.0.1:1
    instances: 1
    strategy:
      kind: canary
      steps: [{set_weight: 10}, {pause: 5s}, {set_weight: 50}, {pause: manual}]
      scale_down_delay: 0s
    analysis: {judge: none}
"""


class AwsWorld:
    """An engine whose one service runs on Lambda, with a fake clock."""

    def __init__(self, aws: Any, tmp: Path) -> None:
        self.aws = aws
        self.clock = FakeClock()
        self.catalog = FakeCatalog()
        self.refs = {name: self.catalog.add(name) for name in ("v1", "v2", "v3")}
        create_lambda(aws, FUNCTION, package("initial"))
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        self.platform = LambdaPlatform(aws, FUNCTION, bucket=BUCKET, poll=0.01)
        for name, ref in self.refs.items():
            s3.put_object(Bucket=BUCKET, Key=self.platform.package_key(ref), Body=package(name))
        router = LambdaAliasRouter(
            aws, LambdaAliasSettings(services={"api": LambdaAliasService(function_name=FUNCTION)})
        )
        self.store = SQLiteStore(tmp / "state.db")
        self.engine = Engine(
            parse_spec(SPEC),
            self.store,
            FakePlatform(self.catalog),
            FakeRouter(),
            self.catalog,
            self.clock,
            groups={"api": GroupDrivers(self.platform, router)},
        )

    async def settle(self, ticks: int = 4) -> None:
        for _ in range(ticks):
            await self.engine.tick()
            await asyncio.sleep(0)
            self.clock.advance(0.5)

    def alias(self) -> tuple[str, dict[str, float]]:
        """The alias read back through boto3: primary version and additional weights."""
        got = self.aws.client("lambda").get_alias(FunctionName=FUNCTION, Name="live")
        weights = got.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
        return got["FunctionVersion"], dict(weights)

    async def version(self, name: str) -> str:
        found = await self.platform.version_of(self.refs[name])
        assert found is not None
        return found

    def phase(self) -> str:
        return str(self.engine.status("api")[0]["phase"])


@pytest.fixture
def world(aws: Any, tmp_path: Path) -> AwsWorld:
    return AwsWorld(aws, tmp_path)


async def test_a_canary_on_a_lambda_alias_step_by_step(world: AwsWorld) -> None:
    """v1 → v2 at 10 %, 50 %, then promoted: the alias read back after every step."""
    await world.engine.deploy("api", world.refs["v1"])
    await world.settle()
    v1 = await world.version("v1")
    assert world.alias() == (v1, {})
    await world.engine.deploy("api", world.refs["v2"])
    await world.settle()
    v2 = await world.version("v2")
    assert world.alias() == (v1, {v2: pytest.approx(0.10)})
    await world.settle(12)  # the 5 s pause
    assert world.alias() == (v1, {v2: pytest.approx(0.50)})
    assert world.phase() == "paused"
    await world.engine.promote("api")
    await world.settle()
    assert world.alias() == (v2, {})
    assert world.engine.status("api")[0]["stable"] == world.refs["v2"]


async def test_a_rollback_on_a_lambda_alias(world: AwsWorld) -> None:
    """Mid-canary rollback: the alias serves only the stable version again."""
    await world.engine.deploy("api", world.refs["v1"])
    await world.settle()
    v1 = await world.version("v1")
    await world.engine.deploy("api", world.refs["v3"])
    await world.settle()
    v3 = await world.version("v3")
    assert world.alias() == (v1, {v3: pytest.approx(0.10)})
    ended = await world.engine.rollback("api")
    assert ended.phase == "rolled_back"
    await world.settle()
    assert world.alias() == (v1, {})


async def test_a_canary_on_route53_weighted_records(aws: Any, tmp_path: Path) -> None:
    """Releases deployed elsewhere, one weighted record each: records read back per step."""
    from canarist.platforms.external import ExternalPlatform
    from canarist.routers.route53 import Route53Router, Route53Service, Route53Settings

    zone = aws.client("route53").create_hosted_zone(Name="example.com", CallerReference="t")
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    catalog = FakeCatalog()
    v1, v2 = catalog.add("v1"), catalog.add("v2")
    platform = ExternalPlatform({v1: "blue.example.com", v2[:20]: "green.example.com"})
    router = Route53Router(
        aws,
        Route53Settings(
            services={"api": Route53Service(hosted_zone_id=zone_id, record_name="api.example.com")}
        ),
    )
    clock = FakeClock()
    engine = Engine(
        parse_spec(SPEC),
        SQLiteStore(tmp_path / "state.db"),
        FakePlatform(catalog),
        FakeRouter(),
        catalog,
        clock,
        groups={"api": GroupDrivers(platform, router)},
    )

    async def settle(ticks: int = 4) -> None:
        for _ in range(ticks):
            await engine.tick()
            await asyncio.sleep(0)
            clock.advance(0.5)

    def records() -> dict[str, int]:
        found = aws.client("route53").list_resource_record_sets(HostedZoneId=zone_id)
        return {
            r["ResourceRecords"][0]["Value"]: r["Weight"]
            for r in found["ResourceRecordSets"]
            if r["Name"] == "api.example.com." and r["Type"] == "CNAME"
        }

    await engine.deploy("api", v1)
    await settle()
    assert records() == {"blue.example.com": 100}
    await engine.deploy("api", v2)
    await settle()
    assert records() == {"blue.example.com": 90, "green.example.com": 10}
    await settle(12)
    assert records() == {"blue.example.com": 50, "green.example.com": 50}
    await engine.promote("api")
    await settle()
    assert records() == {"green.example.com": 100}


async def test_a_cloudwatch_alarm_in_alarm_rolls_the_canary_back(aws: Any, tmp_path: Path) -> None:
    """analysis.alarms: set_alarm_state to ALARM mid-canary and the alias returns to stable."""
    from canarist.metrics.cloudwatch import CloudWatchMetrics, CloudWatchSettings

    world = AwsWorld(aws, tmp_path)
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="checkout-errors",
        MetricName="Errors",
        Namespace="AWS/Lambda",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    metrics = CloudWatchMetrics(
        aws,
        CloudWatchSettings.model_validate(
            {"services": {"api": {"kind": "lambda", "function_name": FUNCTION, "alias": "live"}}}
        ),
    )
    spec = parse_spec(
        SPEC.replace(
            "analysis: {judge: none}", "analysis: {judge: none, alarms: [checkout-errors]}"
        )
    )
    drivers = world.engine.groups["api"]
    world.engine = Engine(
        spec,
        world.store,
        FakePlatform(world.catalog),
        FakeRouter(),
        world.catalog,
        world.clock,
        groups={"api": GroupDrivers(drivers.platform, drivers.router, metrics)},
    )
    await world.engine.deploy("api", world.refs["v1"])
    await world.settle()
    v1 = await world.version("v1")
    await world.engine.deploy("api", world.refs["v2"])
    await world.settle()
    assert world.alias()[1]  # the canary takes its share
    await world.settle(4)
    assert world.engine.status("api")[0]["phase"] == "progressing"  # OK: no rollback
    cloudwatch.set_alarm_state(
        AlarmName="checkout-errors", StateValue="ALARM", StateReason="errors on the canary"
    )
    await world.settle(2)
    history = world.engine.history("api")[0]
    assert history["phase"] == "rolled_back"
    assert "checkout-errors" in history["reason"]
    assert world.alias() == (v1, {})
