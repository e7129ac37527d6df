"""An API Gateway REST API stage as a router: the stage's deployment and its canary.

Each release of a service is a deployment of the REST API (`RouteTable.targets` maps a
release to its deployment id). The stage serves its `deploymentId`, except for the
`canarySettings.percentTraffic` percent of requests it sends to
`canarySettings.deploymentId`. Steps are `update_stage` patch operations: a canary is
created and moved by replacing `/canarySettings/deploymentId` and
`/canarySettings/percentTraffic`, and removed by removing `/canarySettings`.

As with a Lambda alias, the stage's own deployment stays primary while two releases take
traffic, so a step only moves the canary's percent; when the stage serves neither, the
release with the larger percent becomes its deployment. A table with one release above
0 % is a promotion or a rollback: the stage serves that release's deployment and has no
canary. Promotion replaces `/deploymentId` first and then removes the canary, so while
it happens the stage and its canary both serve the new deployment and no request goes
back to the old one. `promote` and `rollback` do the same by name, without a table.

moto has no stage canary settings: this router's tests drive a real client through
botocore's Stubber, which checks every call against the API's model.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from canarist.aws.clients import aws_call
from canarist.errors import ConfigError, RouterError
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.by_release import ServiceBook
from canarist.routers.weights import percent_to_apigateway, primary_and_canary

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_apigateway import APIGatewayClient
    from mypy_boto3_apigateway.type_defs import PatchOperationTypeDef

log = logging.getLogger(__name__)

_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_TOLERANCE = 1e-9  # percents travel as JSON doubles


class ApiGatewayService(BaseModel):
    """The REST API stage that serves one service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rest_api_id: str = Field(min_length=1)
    stage: str = Field(min_length=1)


class ApiGatewaySettings(BaseModel):
    """The API Gateway router's settings: each service's REST API and stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, ApiGatewayService]


@dataclass(frozen=True)
class StageRouting:
    """Where a stage sends requests: its deployment, and a canary deployment's percent."""

    deployment: str
    canary: str | None = None  # None: the stage has no canarySettings
    percent: float = 0.0

    def same_as(self, other: StageRouting | None) -> bool:
        """Whether `other` routes the same, percents compared within rounding."""
        if other is None or (other.deployment, other.canary) != (self.deployment, self.canary):
            return False
        return self.canary is None or abs(other.percent - self.percent) <= _TOLERANCE

    def percents(self) -> dict[str, float]:
        """Each deployment's share of requests, in percent."""
        if self.canary is None or self.canary in ("", self.deployment):
            return {self.deployment: 100.0}
        return {self.deployment: 100.0 - self.percent, self.canary: self.percent}


def check_deployment(release: str, deployment: str | None) -> str:
    """`deployment`, or ConfigError unless it looks like an API Gateway deployment id."""
    if deployment is None or not _DEPLOYMENT_ID.match(deployment):
        raise ConfigError(
            f"release {release!r}: {deployment!r} is not an API Gateway deployment id"
        )
    return deployment


def serving(table: RouteTable) -> list[tuple[str, int]]:
    """(deployment, percent) of each release taking traffic; ConfigError past one canary."""
    return primary_and_canary(
        table.weights,
        table.targets,
        check_deployment,
        "an API Gateway stage routes to its deployment and one canary",
        "API Gateway deployment",
    )


def routing_for(shares: Sequence[tuple[str, int]], current: str | None) -> StageRouting:
    """The stage routing for `shares`, keeping the stage's `current` deployment primary."""
    if len(shares) == 1:
        return StageRouting(shares[0][0])
    (primary, _), (canary, percent) = sorted(shares, key=lambda s: (s[0] != current, -s[1], s[0]))
    return StageRouting(primary, canary, percent_to_apigateway(percent))


def plan_patches(current: StageRouting, desired: StageRouting) -> list[list[PatchOperationTypeDef]]:
    """The `update_stage` calls, each a list of patch operations, from `current` to `desired`."""
    if desired.canary is None:
        move: list[PatchOperationTypeDef] = []
        if current.deployment != desired.deployment:
            move = [{"op": "replace", "path": "/deploymentId", "value": desired.deployment}]
        drop: list[PatchOperationTypeDef] = []
        if current.canary is not None:
            drop = [{"op": "remove", "path": "/canarySettings"}]
        # Promoting the canary: serve it as the stage first, so that dropping the canary
        # sends nothing back to the old deployment. Otherwise drop the canary first, so
        # that it takes no traffic of the new deployment's.
        calls = [move, drop] if current.canary == desired.deployment else [drop, move]
        return [c for c in calls if c]
    ops: list[PatchOperationTypeDef] = []
    if current.deployment != desired.deployment:
        ops.append({"op": "replace", "path": "/deploymentId", "value": desired.deployment})
    if current.canary != desired.canary:
        ops.append(
            {"op": "replace", "path": "/canarySettings/deploymentId", "value": desired.canary}
        )
    if current.canary is None or abs(current.percent - desired.percent) > _TOLERANCE:
        ops.append(
            {
                "op": "replace",
                "path": "/canarySettings/percentTraffic",
                "value": str(desired.percent),
            }
        )
    return [ops] if ops else []


class ApiGatewayRouter:
    """Splits each service's requests between a REST API stage's deployment and its canary."""

    def __init__(self, session: Session, settings: ApiGatewaySettings) -> None:
        self.settings = settings
        self.client: APIGatewayClient = session.client("apigateway")
        self._services = ServiceBook(settings.services, "API Gateway")
        self._deployments: dict[str, dict[str, str]] = {}  # service -> release -> deployment

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Check each service's stage exists; the canary is made by the steps that need it."""
        for route in services:
            await asyncio.to_thread(self._get_stage, self._services.conf(route.name))
            self._services.add(route)

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge the stage to `table`: move the canary's percent, or promote at 100 %."""
        conf = self._services.routed(service)[0]
        if not table.weights:
            # AWS's data plane outlives the controller: an empty table (the controller
            # shutting down) leaves the stage serving as it does.
            log.info("apigateway %s: empty route table, stage left as it is", service)
            return
        wanted = serving(table)
        async with self._services.lock(service):
            self._deployments.setdefault(service, {}).update(table.targets)
            current = await asyncio.to_thread(self._get_stage, conf)
            await self._converge(service, conf, current, routing_for(wanted, current.deployment))

    async def promote(self, service: str, release: str, deployment: str | None = None) -> None:
        """Serve `release`'s deployment (the last table's, unless given), without a canary."""
        conf = self._services.routed(service)[0]
        known = self._deployments.setdefault(service, {})
        target = deployment if deployment is not None else known.get(release)
        if target is None:
            raise ConfigError(
                f"release {release!r} has no known deployment; give it, or apply a table"
                " that names it first"
            )
        routing = StageRouting(check_deployment(release, target))
        async with self._services.lock(service):
            known[release] = target
            current = await asyncio.to_thread(self._get_stage, conf)
            await self._converge(service, conf, current, routing)

    async def rollback(self, service: str) -> None:
        """Remove the stage's canary: every request back to the stage's own deployment."""
        conf = self._services.routed(service)[0]
        async with self._services.lock(service):
            current = await asyncio.to_thread(self._get_stage, conf)
            await self._converge(service, conf, current, StageRouting(current.deployment))

    async def read_weights(self, service: str) -> dict[str, float]:
        """Each release's share of requests (percent), read from the stage.

        A deployment canarist has not routed since it started is reported by its id.
        """
        routing = await asyncio.to_thread(self._get_stage, self._services.conf(service))
        names = {d: r for r, d in self._deployments.get(service, {}).items()}
        return {names.get(d, d): p for d, p in routing.percents().items()}

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """0: a request runs to its end on the deployment it reached."""
        return 0

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Nothing here: counts per stage and canary come from CloudWatch's metrics."""
        return {}

    async def stop(self) -> None:
        """Nothing to stop: the stage keeps serving without canarist."""

    async def _converge(
        self, service: str, conf: ApiGatewayService, current: StageRouting, desired: StageRouting
    ) -> None:
        """Patch the stage from `current` to `desired` unless it is there, then read it back."""
        if desired.same_as(current):
            return
        for ops in plan_patches(current, desired):
            log.info("apigateway %s: %s", service, ops)
            await asyncio.to_thread(self._update_stage, conf, ops)
        seen = await asyncio.to_thread(self._get_stage, conf)
        if not desired.same_as(seen):
            raise RouterError(
                f"{_where(conf)}: asked for {_describe(desired)}, AWS reports {_describe(seen)}"
            )

    def _get_stage(self, conf: ApiGatewayService) -> StageRouting:
        with aws_call(f"apigateway get_stage {_where(conf)}"):
            stage = self.client.get_stage(restApiId=conf.rest_api_id, stageName=conf.stage)
        canary = stage.get("canarySettings")
        if canary is None:
            return StageRouting(stage.get("deploymentId", ""))
        return StageRouting(
            stage.get("deploymentId", ""),
            canary.get("deploymentId", ""),
            float(canary.get("percentTraffic", 0.0)),
        )

    def _update_stage(self, conf: ApiGatewayService, ops: list[PatchOperationTypeDef]) -> None:
        with aws_call(f"apigateway update_stage {_where(conf)}"):
            self.client.update_stage(
                restApiId=conf.rest_api_id, stageName=conf.stage, patchOperations=ops
            )


def _where(conf: ApiGatewayService) -> str:
    return f"stage {conf.stage} of REST API {conf.rest_api_id}"


def _describe(routing: StageRouting) -> str:
    if routing.canary is None:
        return f"deployment {routing.deployment or '(none)'} without a canary"
    return (
        f"deployment {routing.deployment or '(none)'} with canary {routing.canary or '(none)'}"
        f" at {routing.percent:g} %"
    )
