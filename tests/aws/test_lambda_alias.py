"""The Lambda alias router against moto's server: the alias's routing read back each step.

The function is created and its versions published, never invoked: moto would need
Docker to run it, and routing is all this router does.
"""

from __future__ import annotations

from typing import Any

import pytest

from canarist.errors import AWSError, ConfigError, RouterError
from canarist.routers.base import RouteTable, ServiceRoute
from canarist.routers.lambda_alias import (
    LambdaAliasRouter,
    LambdaAliasService,
    LambdaAliasSettings,
)
from tests.aws.conftest import create_lambda, lambda_zip

pytestmark = pytest.mark.aws

STABLE = "sha256:" + "1" * 64
CANARY = "sha256:" + "2" * 64
THIRD = "sha256:" + "3" * 64
WEB = ServiceRoute("web", "127.0.0.1", 8080, 4, "/healthz")


@pytest.fixture
def function(aws: Any) -> dict[str, str]:
    """The function `web` with versions 1 (stable) and 2 (canary) published: release -> version."""
    create_lambda(
        aws,
        "web",
        lambda_zip("def handler(event, context):\n    return 1\n", "app.py"),
        "app.handler",
    )
    lam = aws.client("lambda")
    versions = {STABLE: lam.publish_version(FunctionName="web")["Version"]}
    lam.update_function_code(
        FunctionName="web", ZipFile=lambda_zip("def handler(e, c):\n    return 2\n", "app.py")
    )
    versions[CANARY] = lam.publish_version(FunctionName="web")["Version"]
    assert versions == {STABLE: "1", CANARY: "2"}
    return versions


def table(versions: dict[str, str], **weights: int) -> RouteTable:
    """A table from `stable=` and `canary=` percents, with both releases' versions."""
    refs = {"stable": STABLE, "canary": CANARY}
    return RouteTable((), {refs[k]: v for k, v in weights.items()}, targets=versions)


def router_for(aws: Any, function: str = "web") -> LambdaAliasRouter:
    """A Lambda alias router for the service `web` through the alias `live`."""
    service = LambdaAliasService(function_name=function, alias="live")
    return LambdaAliasRouter(aws, LambdaAliasSettings(services={"web": service}))


def alias(aws: Any) -> tuple[str, dict[str, float]]:
    """(FunctionVersion, AdditionalVersionWeights) of the alias `live`, read through boto3."""
    got = aws.client("lambda").get_alias(FunctionName="web", Name="live")
    return got["FunctionVersion"], got.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})


def calls_of(router: LambdaAliasRouter, *, writes_only: bool) -> list[str]:
    """The names of the calls (or only the write calls) the router's client makes from now on."""
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        if not writes_only or not model.name.startswith("Get"):
            calls.append(model.name)

    router.client.meta.events.register("before-call", count)
    return calls


async def test_full_canary_10_50_100(aws: Any, function: dict[str, str]) -> None:
    """The alias stays on version 1 while version 2's weight grows; at 100 % it moves."""
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=100))
    assert alias(aws) == ("1", {})
    assert await router.read_weights("web") == {STABLE: 100.0}

    for percent in (10, 50):
        await router.apply("web", table(function, stable=100 - percent, canary=percent))
        assert alias(aws) == ("1", {"2": percent / 100})
        assert await router.read_weights("web") == pytest.approx(
            {STABLE: 100.0 - percent, CANARY: float(percent)}
        )

    await router.apply("web", table(function, stable=0, canary=100))
    assert alias(aws) == ("2", {})
    assert await router.read_weights("web") == {CANARY: 100.0}


async def test_promote_by_name(aws: Any, function: dict[str, str]) -> None:
    """`promote` moves the alias to the release's version and clears its routing."""
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=50, canary=50))
    assert alias(aws) == ("1", {"2": 0.5})
    await router.promote("web", CANARY)
    assert alias(aws) == ("2", {})
    calls = calls_of(router, writes_only=True)
    await router.promote("web", CANARY)
    assert calls == []


async def test_rollback_after_10_50(aws: Any, function: dict[str, str]) -> None:
    """`rollback` clears the additional weight; the alias never left version 1."""
    router = router_for(aws)
    await router.ensure([WEB])
    for percent in (10, 50):
        await router.apply("web", table(function, stable=100 - percent, canary=percent))
        assert alias(aws) == ("1", {"2": percent / 100})
    await router.rollback("web")
    assert alias(aws) == ("1", {})
    assert await router.read_weights("web") == {STABLE: 100.0}
    calls = calls_of(router, writes_only=True)
    await router.apply("web", table(function, stable=100, canary=0))  # the same, as a table
    assert calls == []


async def test_rollback_by_table(aws: Any, function: dict[str, str]) -> None:
    """A table back at stable 100 % does what `rollback` does."""
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=50, canary=50))
    await router.apply("web", table(function, stable=100, canary=0))
    assert alias(aws) == ("1", {})


async def test_the_alias_keeps_its_primary_version(aws: Any, function: dict[str, str]) -> None:
    """Two releases taking traffic never swap the alias's version: the other one is weighted."""
    aws.client("lambda").create_alias(FunctionName="web", Name="live", FunctionVersion="2")
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=90, canary=10))
    assert alias(aws) == ("2", {"1": 0.9})
    assert await router.read_weights("web") == pytest.approx({CANARY: 10.0, STABLE: 90.0})


async def test_apply_is_idempotent(aws: Any, function: dict[str, str]) -> None:
    """A routing the alias already has is not written again."""
    router = router_for(aws)
    await router.ensure([WEB])
    calls = calls_of(router, writes_only=True)
    await router.apply("web", table(function, stable=100))
    await router.apply("web", table(function, stable=90, canary=10))
    await router.apply("web", table(function, stable=90, canary=10))
    assert calls == ["CreateAlias", "UpdateAlias"]


@pytest.mark.parametrize(
    ("weights", "targets"),
    [
        ({STABLE: 150, CANARY: -50}, {STABLE: "1", CANARY: "2"}),
        ({STABLE: 80, CANARY: 10, THIRD: 10}, {STABLE: "1", CANARY: "2", THIRD: "3"}),
        ({STABLE: 90, CANARY: 10}, {STABLE: "1", CANARY: "$LATEST"}),
        ({STABLE: 90, CANARY: 10}, {STABLE: "1", CANARY: "1"}),
        ({STABLE: 90, CANARY: 10}, {STABLE: "1"}),
    ],
)
async def test_bad_tables_are_refused_before_any_call(
    aws: Any, function: dict[str, str], weights: dict[str, int], targets: dict[str, str]
) -> None:
    """ConfigError, no call to AWS, and the alias as it was."""
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=100))
    calls = calls_of(router, writes_only=False)
    with pytest.raises(ConfigError):
        await router.apply("web", RouteTable((), weights, targets=targets))
    assert calls == []
    assert alias(aws) == ("1", {})


async def test_read_back_that_differs_is_an_error(aws: Any, function: dict[str, str]) -> None:
    """An alias that does not report the routing asked for is a RouterError."""
    router = router_for(aws)
    await router.ensure([WEB])
    await router.apply("web", table(function, stable=100))

    def stale(parsed: dict[str, Any], **_: Any) -> None:
        parsed["RoutingConfig"] = {"AdditionalVersionWeights": {}}

    router.client.meta.events.register("after-call.lambda.GetAlias", stale)
    with pytest.raises(RouterError, match="AWS reports"):
        await router.apply("web", table(function, stable=90, canary=10))


async def test_aws_errors_surface_as_aws_error(aws: Any, function: dict[str, str]) -> None:
    """A function AWS does not know is its ResourceNotFoundException, as an AWSError."""
    with pytest.raises(AWSError) as caught:
        await router_for(aws, function="missing").ensure([WEB])
    assert caught.value.code == "ResourceNotFoundException"

    router = router_for(aws)
    await router.ensure([WEB])
    with pytest.raises(RouterError, match="does not exist"):
        await router.rollback("web")  # no alias yet
    with pytest.raises(ConfigError, match="no known Lambda version"):
        await router.promote("web", CANARY)
    with pytest.raises(AWSError) as caught:
        await router.promote("web", CANARY, version="9")
    assert caught.value.code == "ResourceNotFoundException"
