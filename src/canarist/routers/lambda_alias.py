"""A Lambda alias as a router: its version, and one additional version with a weight.

Callers invoke a service's function through its alias. Each release of the service is
a published version of the function (`RouteTable.targets` maps a release to its version
number), and the alias sends the traffic to its primary `FunctionVersion` except for the
share it gives its one additional version (`RoutingConfig.AdditionalVersionWeights`,
a fraction below 1).

Which release is the primary is read from the alias itself, so that a step only moves
the additional weight and never swaps versions under the traffic: while two releases
take traffic, the one the alias already points at stays primary and the other gets its
percent as the additional weight. When the alias points at neither (its first apply, or
a change made outside canarist), the release with the larger percent becomes primary,
the older version on a tie. A table with one release above 0 % is a promotion (or a
rollback): the alias points at that release's version and its routing is cleared.
`promote` and `rollback` do the same by name, without a table.

AWS refuses a weight of 1 or more, a second additional version and an additional version
equal to the primary; canarist refuses them first, since moto does not.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from canarist.aws.clients import aws_call
from canarist.errors import AWSError, ConfigError, RouterError
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.by_release import ServiceBook
from canarist.routers.weights import percent_to_lambda, primary_and_canary

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_lambda import LambdaClient

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^[1-9][0-9]*$")  # a published version: never $LATEST, which changes
_TOLERANCE = 1e-9  # weights travel as JSON doubles; equal fractions come back equal or close


class LambdaAliasService(BaseModel):
    """The function and alias that carry one service's traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function_name: str = Field(min_length=1)  # name, or ARN without a qualifier
    alias: str = Field(default="live", pattern=r"^[A-Za-z0-9_-]{1,128}$")

    @field_validator("alias")
    @classmethod
    def _not_a_version(cls, value: str) -> str:
        if value.isdigit():
            raise ValueError("an alias name cannot be all digits (that is a version)")
        return value


class LambdaAliasSettings(BaseModel):
    """The Lambda alias router's settings: each service's function and alias."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, LambdaAliasService]


@dataclass(frozen=True)
class AliasRouting:
    """Where an alias sends traffic: its primary version and the additional weights."""

    version: str
    additional: Mapping[str, float] = field(default_factory=dict)  # version -> fraction

    def same_as(self, other: AliasRouting | None) -> bool:
        """Whether `other` routes the same, weights compared within rounding."""
        return (
            other is not None
            and other.version == self.version
            and other.additional.keys() == self.additional.keys()
            and all(abs(other.additional[v] - w) <= _TOLERANCE for v, w in self.additional.items())
        )

    def percents(self) -> dict[str, float]:
        """Each version's share of invocations, in percent."""
        extra = {v: 100.0 * w for v, w in self.additional.items()}
        return {self.version: 100.0 - sum(extra.values()), **extra}


@dataclass(frozen=True)
class _Alias:
    """An alias as read: its routing, and the revision a write must match."""

    routing: AliasRouting
    revision: str


def check_version(release: str, version: str | None) -> str:
    """`version`, or ConfigError unless it is a published version number."""
    if version is None or not _VERSION.match(version):
        raise ConfigError(
            f"release {release!r}: {version!r} is not a published Lambda version number"
        )
    return version


def shares_of(table: RouteTable) -> list[tuple[str, int]]:
    """(version, percent) of each release `table` sends traffic to; ConfigError if an alias
    cannot carry them."""
    return primary_and_canary(
        table.weights,
        table.targets,
        check_version,
        "a Lambda alias routes to its version and at most one additional version",
        "Lambda version",
    )


def routing_for(shares: Sequence[tuple[str, int]], primary: str | None) -> AliasRouting:
    """The alias routing for `shares`, keeping the alias's `primary` version when it is one."""
    if len(shares) == 1:
        return AliasRouting(shares[0][0])
    (first, _), (second, percent) = sorted(
        shares, key=lambda s: (s[0] != primary, -s[1], int(s[0]))
    )
    return AliasRouting(first, {second: percent_to_lambda(percent)})


class LambdaAliasRouter:
    """Splits each service's invocations between two versions through a Lambda alias."""

    def __init__(self, session: Session, settings: LambdaAliasSettings) -> None:
        self.settings = settings
        self.client: LambdaClient = session.client("lambda")
        self._services = ServiceBook(settings.services, "Lambda alias")
        self._versions: dict[str, dict[str, str]] = {}  # service -> release -> version

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Check each service's function exists; the first apply creates a missing alias."""
        for route in services:
            conf = self._services.conf(route.name)
            await asyncio.to_thread(self._check_function, conf)
            self._services.add(route)

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge the alias to `table`: move the additional weight, or promote at 100 %."""
        conf = self._services.routed(service)[0]
        if not table.weights:
            # AWS's data plane outlives the controller: an empty table (the controller
            # shutting down) leaves the alias routing as it does.
            log.info("lambda %s: empty route table, alias left as it is", service)
            return
        wanted = shares_of(table)
        async with self._services.lock(service):
            self._remember(service, table)
            alias = await asyncio.to_thread(self._get_alias, conf)
            primary = alias.routing.version if alias is not None else None
            await self._converge(service, conf, alias, routing_for(wanted, primary))

    async def promote(self, service: str, release: str, version: str | None = None) -> None:
        """Point the alias at `release`'s version (the last table's target unless given) alone."""
        conf = self._services.routed(service)[0]
        target = version if version is not None else self._versions.get(service, {}).get(release)
        if target is None:
            raise ConfigError(
                f"release {release!r} has no known Lambda version; give it, or apply a table"
                " that names it first"
            )
        routing = AliasRouting(check_version(release, target))
        async with self._services.lock(service):
            if version is not None:
                self._versions.setdefault(service, {})[release] = version
            alias = await asyncio.to_thread(self._get_alias, conf)
            await self._converge(service, conf, alias, routing)

    async def rollback(self, service: str) -> None:
        """Clear the alias's additional weight: all traffic back to its primary version."""
        conf = self._services.routed(service)[0]
        async with self._services.lock(service):
            alias = await asyncio.to_thread(self._get_alias, conf)
            if alias is None:
                raise RouterError(f"{_where(conf)} does not exist; nothing to roll back")
            await self._converge(service, conf, alias, AliasRouting(alias.routing.version))

    async def read_weights(self, service: str) -> dict[str, float]:
        """Each release's share of invocations (percent), read from the alias.

        A version canarist has not routed since it started is reported by its number.
        """
        alias = await asyncio.to_thread(self._get_alias, self._services.conf(service))
        if alias is None:
            return {}
        names = {v: r for r, v in self._versions.get(service, {}).items()}
        return {names.get(v, v): p for v, p in alias.routing.percents().items()}

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """0: an invocation runs to its end on the version it started on."""
        return 0

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Nothing here: invocations and errors per version come from CloudWatch."""
        return {}

    async def stop(self) -> None:
        """Nothing to stop: the alias keeps routing without canarist."""

    async def _converge(
        self, service: str, conf: LambdaAliasService, alias: _Alias | None, routing: AliasRouting
    ) -> None:
        """Write `routing` unless the alias has it already, then read it back."""
        if alias is not None and routing.same_as(alias.routing):
            return
        log.info(
            "lambda %s: alias %s -> %s %s",
            service,
            conf.alias,
            routing.version,
            dict(routing.additional),
        )
        await asyncio.to_thread(self._write_alias, conf, alias, routing)
        seen = await asyncio.to_thread(self._get_alias, conf)
        if seen is None or not routing.same_as(seen.routing):
            raise RouterError(
                f"{_where(conf)}: asked for {_describe(routing)}, AWS reports"
                f" {_describe(seen.routing if seen else None)}"
            )

    def _remember(self, service: str, table: RouteTable) -> None:
        self._versions.setdefault(service, {}).update(table.targets)

    def _check_function(self, conf: LambdaAliasService) -> None:
        with aws_call(f"lambda get_function_configuration {conf.function_name}"):
            self.client.get_function_configuration(FunctionName=conf.function_name)

    def _get_alias(self, conf: LambdaAliasService) -> _Alias | None:
        try:
            with aws_call(f"lambda get_alias {conf.function_name}:{conf.alias}"):
                alias = self.client.get_alias(FunctionName=conf.function_name, Name=conf.alias)
        except AWSError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise
        weights = alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
        routing = AliasRouting(alias["FunctionVersion"], dict(weights))
        return _Alias(routing, alias.get("RevisionId", ""))

    def _write_alias(
        self, conf: LambdaAliasService, alias: _Alias | None, routing: AliasRouting
    ) -> None:
        what = f"lambda {'update' if alias else 'create'}_alias {conf.function_name}:{conf.alias}"
        with aws_call(what):
            if alias is None:
                self.client.create_alias(
                    FunctionName=conf.function_name,
                    Name=conf.alias,
                    FunctionVersion=routing.version,
                    RoutingConfig={"AdditionalVersionWeights": routing.additional},
                )
            elif alias.revision:
                # The revision makes AWS refuse the write if someone changed the alias
                # since it was read, rather than silently undo their change.
                self.client.update_alias(
                    FunctionName=conf.function_name,
                    Name=conf.alias,
                    FunctionVersion=routing.version,
                    RoutingConfig={"AdditionalVersionWeights": routing.additional},
                    RevisionId=alias.revision,
                )
            else:
                self.client.update_alias(
                    FunctionName=conf.function_name,
                    Name=conf.alias,
                    FunctionVersion=routing.version,
                    RoutingConfig={"AdditionalVersionWeights": routing.additional},
                )


def _where(conf: LambdaAliasService) -> str:
    return f"alias {conf.function_name}:{conf.alias}"


def _describe(routing: AliasRouting | None) -> str:
    if routing is None:
        return "no alias"
    return f"version {routing.version} with {dict(routing.additional) or 'no additional weights'}"
