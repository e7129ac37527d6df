"""The API Gateway router, driven through botocore's Stubber.

moto does not implement a stage's canary settings, so these tests put a Stubber on the
router's real `apigateway` client: every call the router makes is checked against the
API's own model (operation, parameter names and types) and against the exact parameters
expected here, patch operations included, and the stage the router reads back is the
stubbed `get_stage` answer. No request leaves the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from canarist.errors import AWSError, ConfigError, RouterError
from canarist.routers.apigateway import (
    ApiGatewayRouter,
    ApiGatewayService,
    ApiGatewaySettings,
    StageRouting,
    plan_patches,
)
from canarist.routers.base import RouteTable, ServiceRoute

pytestmark = pytest.mark.aws

STABLE = "sha256:" + "1" * 64
CANARY = "sha256:" + "2" * 64
THIRD = "sha256:" + "3" * 64
DEPLOYMENTS = {STABLE: "d1stab", CANARY: "d2cana"}
WEB = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz")
STAGE = {"restApiId": "a1b2c3d4e5", "stageName": "prod"}


def table(**weights: int) -> RouteTable:
    """A table from `stable=` and `canary=` percents, with both releases' deployments."""
    refs = {"stable": STABLE, "canary": CANARY}
    return RouteTable((), {refs[k]: v for k, v in weights.items()}, targets=DEPLOYMENTS)


def stage(deployment: str, canary: str | None = None, percent: float = 0.0) -> dict[str, Any]:
    """A `get_stage` answer: the stage's deployment and, if given, its canary."""
    out: dict[str, Any] = {"stageName": "prod", "deploymentId": deployment}
    if canary is not None:
        out["canarySettings"] = {
            "deploymentId": canary,
            "percentTraffic": percent,
            "useStageCache": False,
        }
    return out


def replace(path: str, value: str) -> dict[str, str]:
    """A `replace` patch operation."""
    return {"op": "replace", "path": path, "value": value}


REMOVE_CANARY = {"op": "remove", "path": "/canarySettings"}


@pytest.fixture
def router() -> ApiGatewayRouter:
    """A router for the service `web` on the stage prod of REST API a1b2c3d4e5."""
    session = boto3.session.Session(
        region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    service = ApiGatewayService(rest_api_id="a1b2c3d4e5", stage="prod")
    return ApiGatewayRouter(session, ApiGatewaySettings(services={"web": service}))


@pytest.fixture
def stub(router: ApiGatewayRouter) -> Iterator[Stubber]:
    """The Stubber on the router's client; every queued answer must have been used."""
    with Stubber(router.client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def get_stage(stub: Stubber, answer: dict[str, Any]) -> None:
    """Expect one `get_stage` of the service's stage, answered with `answer`."""
    stub.add_response("get_stage", answer, STAGE)


def update_stage(stub: Stubber, *ops: dict[str, str]) -> None:
    """Expect one `update_stage` with exactly these patch operations."""
    stub.add_response("update_stage", {}, {**STAGE, "patchOperations": list(ops)})


async def test_full_canary_10_50_100(router: ApiGatewayRouter, stub: Stubber) -> None:
    """The canary is created at 10 %, moved to 50 %, then promoted and removed."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])

    get_stage(stub, stage("d1stab"))  # already serving stable: nothing to write
    await router.apply("web", table(stable=100))

    get_stage(stub, stage("d1stab"))
    update_stage(
        stub,
        replace("/canarySettings/deploymentId", "d2cana"),
        replace("/canarySettings/percentTraffic", "10.0"),
    )
    get_stage(stub, stage("d1stab", "d2cana", 10.0))
    await router.apply("web", table(stable=90, canary=10))

    get_stage(stub, stage("d1stab", "d2cana", 10.0))
    update_stage(stub, replace("/canarySettings/percentTraffic", "50.0"))
    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    await router.apply("web", table(stable=50, canary=50))

    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    assert await router.read_weights("web") == {STABLE: 50.0, CANARY: 50.0}

    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    update_stage(stub, replace("/deploymentId", "d2cana"))
    update_stage(stub, REMOVE_CANARY)
    get_stage(stub, stage("d2cana"))
    await router.apply("web", table(stable=0, canary=100))

    get_stage(stub, stage("d2cana"))
    assert await router.read_weights("web") == {CANARY: 100.0}


async def test_promote_by_name(router: ApiGatewayRouter, stub: Stubber) -> None:
    """`promote` serves the canary's deployment on the stage, then removes the canary."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    get_stage(stub, stage("d1stab", "d2cana", 50.0))  # already at 50 %: nothing to write
    await router.apply("web", table(stable=50, canary=50))

    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    update_stage(stub, replace("/deploymentId", "d2cana"))
    update_stage(stub, REMOVE_CANARY)
    get_stage(stub, stage("d2cana"))
    await router.promote("web", CANARY)


async def test_rollback_after_10_50(router: ApiGatewayRouter, stub: Stubber) -> None:
    """`rollback` removes the canary; the stage never left the stable deployment."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    for before, after in ((None, 10.0), (10.0, 50.0)):
        get_stage(stub, stage("d1stab") if before is None else stage("d1stab", "d2cana", before))
        if before is None:
            update_stage(
                stub,
                replace("/canarySettings/deploymentId", "d2cana"),
                replace("/canarySettings/percentTraffic", "10.0"),
            )
        else:
            update_stage(stub, replace("/canarySettings/percentTraffic", str(after)))
        get_stage(stub, stage("d1stab", "d2cana", after))
        await router.apply("web", table(stable=100 - int(after), canary=int(after)))

    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    update_stage(stub, REMOVE_CANARY)
    get_stage(stub, stage("d1stab"))
    await router.rollback("web")

    get_stage(stub, stage("d1stab"))
    assert await router.read_weights("web") == {STABLE: 100.0}


async def test_rollback_by_table_drops_the_canary_first(
    router: ApiGatewayRouter, stub: Stubber
) -> None:
    """Back at stable 100 % by a table: the canary is removed, the deployment untouched."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    get_stage(stub, stage("d1stab", "d2cana", 50.0))
    update_stage(stub, REMOVE_CANARY)
    get_stage(stub, stage("d1stab"))
    await router.apply("web", table(stable=100, canary=0))


async def test_apply_is_idempotent(router: ApiGatewayRouter, stub: Stubber) -> None:
    """A stage that already routes as asked is only read (the Stubber refuses any write)."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    for _ in range(2):
        get_stage(stub, stage("d1stab", "d2cana", 10.0))
        await router.apply("web", table(stable=90, canary=10))


@pytest.mark.parametrize(
    ("weights", "targets"),
    [
        ({STABLE: 150, CANARY: -50}, DEPLOYMENTS),
        ({STABLE: 80, CANARY: 10, THIRD: 10}, {**DEPLOYMENTS, THIRD: "d3thrd"}),  # two canaries
        ({STABLE: 90, CANARY: 10}, {STABLE: "d1stab", CANARY: "not an id"}),
        ({STABLE: 90, CANARY: 10}, {STABLE: "d1stab", CANARY: "d1stab"}),
        ({STABLE: 90, CANARY: 20}, DEPLOYMENTS),
    ],
)
async def test_bad_tables_are_refused_before_any_call(
    router: ApiGatewayRouter, stub: Stubber, weights: dict[str, int], targets: dict[str, str]
) -> None:
    """ConfigError with no call made: the Stubber has no answer queued for one."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    with pytest.raises(ConfigError):
        await router.apply("web", RouteTable((), weights, targets=targets))


async def test_read_back_that_differs_is_an_error(router: ApiGatewayRouter, stub: Stubber) -> None:
    """A stage that does not report the canary asked for is a RouterError."""
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    get_stage(stub, stage("d1stab", "d2cana", 10.0))
    update_stage(stub, replace("/canarySettings/percentTraffic", "50.0"))
    get_stage(stub, stage("d1stab", "d2cana", 10.0))
    with pytest.raises(RouterError, match="AWS reports deployment d1stab with canary d2cana at 10"):
        await router.apply("web", table(stable=50, canary=50))


async def test_aws_errors_surface_as_aws_error(router: ApiGatewayRouter, stub: Stubber) -> None:
    """A stage AWS does not know is its NotFoundException, as an AWSError."""
    stub.add_client_error(
        "get_stage", "NotFoundException", "Invalid stage identifier specified", 404, STAGE
    )
    with pytest.raises(AWSError) as caught:
        await router.ensure([WEB])
    assert caught.value.code == "NotFoundException"
    get_stage(stub, stage("d1stab"))
    await router.ensure([WEB])
    get_stage(stub, stage("d1stab"))
    stub.add_client_error("update_stage", "ConflictException", "Stage is being updated", 409)
    with pytest.raises(AWSError) as caught:
        await router.apply("web", table(stable=90, canary=10))
    assert caught.value.code == "ConflictException"


def test_leaving_a_canary_never_sends_traffic_back() -> None:
    """Promotion serves the canary as the stage before the canary goes; moving to a third
    deployment drops the canary first, so it never takes the new deployment's share."""
    at_50 = StageRouting("d1stab", "d2cana", 50.0)
    assert plan_patches(at_50, StageRouting("d2cana")) == [
        [replace("/deploymentId", "d2cana")],
        [REMOVE_CANARY],
    ]
    assert plan_patches(at_50, StageRouting("d3thrd")) == [
        [REMOVE_CANARY],
        [replace("/deploymentId", "d3thrd")],
    ]
    assert plan_patches(at_50, StageRouting("d1stab")) == [[REMOVE_CANARY]]
    assert plan_patches(StageRouting("d1stab"), StageRouting("d1stab")) == []
