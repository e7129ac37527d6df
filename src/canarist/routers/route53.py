"""Route 53 as a router: one weighted record per release under a service's DNS name.

Each release of a service gets a weighted record at the service's name and type, whose
`SetIdentifier` is the release reference (71 characters, within Route 53's 128) and whose
value is the release's target in the route table (an address, several comma-separated
addresses, or a host name for CNAME). The TTL is low so resolvers follow a weight change
within seconds. All the changes of one step go in one ChangeBatch, which Route 53 applies
atomically; a release in the table at 0 % keeps its record at weight 0, and the record of
a release no longer in the table is deleted.

Route 53 answers with every record in equal shares when all weights are 0, rather than
with none, so a table whose percents do not sum to 100 is refused before any call
(`check_percents`), and `read_weights` reports a record set left all at 0 by someone else
as the equal split Route 53 serves.

The service's name and type belong to canarist: every weighted record there is taken as
one of its releases', and `ensure` refuses a name that holds a record of another routing
policy (Route 53 would refuse to mix them anyway).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from canarist.aws.clients import aws_call
from canarist.errors import ConfigError, RouterError
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.by_release import ServiceBook
from canarist.routers.weights import check_percents, percent_to_route53, shares

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.type_defs import (
        ChangeTypeDef,
        ResourceRecordSetOutputTypeDef,
        ResourceRecordSetTypeDef,
    )

log = logging.getLogger(__name__)

RecordType = Literal["A", "AAAA", "CNAME"]

SET_IDENTIFIER_MAX = 128
_SYNC_POLL = 2.0  # seconds between GetChange calls while a change reaches the name servers
_HOST_NAME = re.compile(r"^[a-z0-9_*]([a-z0-9_.-]{0,251}[a-z0-9_])?$")


class Route53Service(BaseModel):
    """Where one service's weighted records live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosted_zone_id: str = Field(min_length=1)
    record_name: str = Field(min_length=1)  # a name inside the zone, e.g. web.example.com
    record_type: RecordType = "CNAME"
    ttl: int = Field(default=10, ge=0, le=86400)  # seconds a resolver may keep an answer
    # Record value -> Route 53 health check id. A record with that value carries the check,
    # so Route 53 stops answering with a release whose endpoint fails it.
    health_checks: dict[str, str] = Field(default_factory=dict)


class Route53Settings(BaseModel):
    """The Route 53 router's settings: each service's records, and how changes are awaited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, Route53Service]
    # Wait for Route 53 to report each change INSYNC (on all its name servers) before
    # the step counts as done; without it, a weight is set but maybe not yet served.
    wait_for_sync: bool = True
    sync_timeout: float = Field(default=120.0, gt=0)


@dataclass(frozen=True)
class WeightedRecord:
    """One release's weighted record, with its values normalized for comparison."""

    release: str  # the SetIdentifier
    weight: int
    values: tuple[str, ...]
    ttl: int | None  # None for an alias record, which has no TTL of its own
    health_check_id: str | None = None


def fqdn(name: str) -> str:
    """A DNS name as Route 53 reports it: lower case, with the trailing dot."""
    return name.strip().lower().rstrip(".") + "."


def normalize_value(record_type: RecordType, value: str) -> str:
    """One record value in the form Route 53 stores it, or ConfigError if it is not one."""
    text = value.strip()
    try:
        if record_type == "A":
            return str(ipaddress.IPv4Address(text))
        if record_type == "AAAA":
            return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ConfigError(f"{value!r} is not an {record_type} record value") from None
    host = text.lower().rstrip(".")
    if not _HOST_NAME.match(host):
        raise ConfigError(f"{value!r} is not a host name for a CNAME record")
    return host


def desired_records(conf: Route53Service, table: RouteTable) -> dict[str, WeightedRecord | None]:
    """The weighted records `table` asks for, by release; ConfigError before any AWS call.

    A release at 0 % without a target maps to None: its record, if it has one, keeps its
    values at weight 0 (see `resolve`).
    """
    percents = check_percents(table.weights)
    health = health_checks(conf)
    records: dict[str, WeightedRecord | None] = {}
    for release, percent in percents.items():
        if not 0 < len(release) <= SET_IDENTIFIER_MAX:
            raise ConfigError(
                f"release {release!r} cannot be a Route 53 set identifier (1..128 characters)"
            )
        target = table.targets.get(release)
        if not target:
            if percent > 0:
                raise ConfigError(f"release {release!r} has no record value in the route table")
            records[release] = None
            continue
        values = record_values(conf.record_type, target)
        records[release] = WeightedRecord(
            release, percent_to_route53(percent), values, conf.ttl, health.get(values)
        )
    return records


def resolve(
    desired: Mapping[str, WeightedRecord | None], have: Mapping[str, WeightedRecord]
) -> dict[str, WeightedRecord]:
    """`desired` with each release at 0 % without a target kept as it stands, at weight 0."""
    out: dict[str, WeightedRecord] = {}
    for release, record in desired.items():
        if record is not None:
            out[release] = record
        elif release in have:
            out[release] = replace(have[release], weight=0)
    return out


def record_values(record_type: RecordType, target: str) -> tuple[str, ...]:
    """The normalized values of a target: comma-separated addresses, or one host name."""
    values = tuple(sorted({normalize_value(record_type, v) for v in target.split(",")}))
    if record_type == "CNAME" and len(values) != 1:
        raise ConfigError(f"a CNAME record has exactly one value, got {target!r}")
    return values


def health_checks(conf: Route53Service) -> dict[tuple[str, ...], str]:
    """The configured health checks by normalized record values."""
    return {record_values(conf.record_type, k): v for k, v in conf.health_checks.items()}


def as_weighted(
    record_type: RecordType, raw: ResourceRecordSetOutputTypeDef
) -> WeightedRecord | None:
    """The weighted record Route 53 reports, normalized; None for another routing policy."""
    if "SetIdentifier" not in raw or "Weight" not in raw:
        return None
    values = []
    for rr in raw.get("ResourceRecords", []):
        try:
            values.append(normalize_value(record_type, rr["Value"]))
        except ConfigError:
            values.append(rr["Value"])  # kept as is: it differs from any wanted value
    return WeightedRecord(
        release=raw["SetIdentifier"],
        weight=raw["Weight"],
        values=tuple(sorted(set(values))),
        ttl=raw.get("TTL"),
        health_check_id=raw.get("HealthCheckId"),
    )


def weighted_records(
    record_type: RecordType, current: Sequence[ResourceRecordSetOutputTypeDef]
) -> dict[str, WeightedRecord]:
    """The weighted records among `current`, by release."""
    return {
        r.release: r for r in (as_weighted(record_type, raw) for raw in current) if r is not None
    }


def plan_changes(
    name: str,
    record_type: RecordType,
    current: Sequence[ResourceRecordSetOutputTypeDef],
    desired: Mapping[str, WeightedRecord],
) -> list[ChangeTypeDef]:
    """The UPSERTs and DELETEs that turn the `current` record sets into `desired`."""
    have = weighted_records(record_type, current)
    changes: list[ChangeTypeDef] = []
    for release, record in desired.items():
        if have.get(release) != record:
            changes.append(
                {"Action": "UPSERT", "ResourceRecordSet": _record_set(name, record_type, record)}
            )
    for raw in current:
        # A DELETE must name the record exactly as Route 53 holds it.
        if raw.get("SetIdentifier") in have and raw["SetIdentifier"] not in desired:
            changes.append({"Action": "DELETE", "ResourceRecordSet": raw})
    return changes


def _record_set(
    name: str, record_type: RecordType, record: WeightedRecord
) -> ResourceRecordSetTypeDef:
    out: ResourceRecordSetTypeDef = {
        "Name": name,
        "Type": record_type,
        "SetIdentifier": record.release,
        "Weight": record.weight,
        "TTL": record.ttl if record.ttl is not None else 0,
        "ResourceRecords": [{"Value": v} for v in record.values],
    }
    if record.health_check_id:
        out["HealthCheckId"] = record.health_check_id
    return out


def _weights(records: Mapping[str, WeightedRecord]) -> dict[str, str]:
    return {release: f"{r.weight} {','.join(r.values)}" for release, r in records.items()}


class Route53Router:
    """Splits each service's traffic by Route 53 weighted records, one per release."""

    def __init__(self, session: Session, settings: Route53Settings) -> None:
        self.settings = settings
        self.client: Route53Client = session.client("route53")
        self._services = ServiceBook(settings.services, "Route 53")

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Check each service's zone, name and health checks; Route 53 needs nothing created."""
        for route in services:
            conf = self._services.conf(route.name)
            zone = await asyncio.to_thread(self._zone_name, conf.hosted_zone_id)
            name = fqdn(conf.record_name)
            if name != zone and not name.endswith("." + zone):
                raise ConfigError(f"service {route.name!r}: {name} is not inside the zone {zone}")
            if conf.record_type == "CNAME" and name == zone:
                raise ConfigError(f"service {route.name!r}: a zone apex cannot hold a CNAME")
            for check in health_checks(conf).values():
                await asyncio.to_thread(self._check_health_check, check)
            for raw in await asyncio.to_thread(self._record_sets, conf):
                if as_weighted(conf.record_type, raw) is None:
                    raise ConfigError(
                        f"service {route.name!r}: {name} {conf.record_type} already has a"
                        " record without a weight; give canarist a name of its own"
                    )
            self._services.add(route)

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge the service's weighted records to `table`, then read them back."""
        conf = self._services.routed(service)[0]
        if not table.weights:
            # AWS's data plane outlives the controller: an empty table (the controller
            # shutting down) leaves the records answering as they are.
            log.info("route53 %s: empty route table, records left as they are", service)
            return
        asked = desired_records(conf, table)
        name = fqdn(conf.record_name)
        async with self._services.lock(service):
            current = await asyncio.to_thread(self._record_sets, conf)
            desired = resolve(asked, weighted_records(conf.record_type, current))
            changes = plan_changes(name, conf.record_type, current, desired)
            if not changes:
                return
            log.info(
                "route53 %s: %s",
                service,
                "; ".join(
                    f"{c['Action']} {c['ResourceRecordSet'].get('SetIdentifier')}" for c in changes
                ),
            )
            change_id = await asyncio.to_thread(self._change, conf, changes)
            if self.settings.wait_for_sync:
                await self._wait_in_sync(change_id)
            after = await asyncio.to_thread(self._record_sets, conf)
            seen = weighted_records(conf.record_type, after)
            if seen != desired:
                raise RouterError(
                    f"Route 53 {name} {conf.record_type}: asked for weights {_weights(desired)},"
                    f" AWS reports {_weights(seen)}"
                )

    async def read_weights(self, service: str) -> dict[str, float]:
        """Each release's share of DNS answers (percent), from its record's weight."""
        conf = self._services.conf(service)
        current = await asyncio.to_thread(self._record_sets, conf)
        records = weighted_records(conf.record_type, current).values()
        if records and all(r.weight == 0 for r in records):
            return {r.release: 100.0 / len(records) for r in records}  # Route 53's equal split
        return shares({r.release: float(r.weight) for r in records})

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """0: DNS routing has no per-member sessions to drain."""
        return 0

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Nothing: DNS sees no requests; CloudWatch is the metrics source for AWS."""
        return {}

    async def stop(self) -> None:
        """Nothing to stop: the records keep answering without canarist."""

    async def _wait_in_sync(self, change_id: str) -> None:
        timeout = self.settings.sync_timeout
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(self._change_status, change_id) != "INSYNC":
            if time.monotonic() > deadline:
                raise RouterError(f"Route 53 change {change_id} not in sync after {timeout:g} s")
            await asyncio.sleep(_SYNC_POLL)

    def _zone_name(self, zone_id: str) -> str:
        with aws_call(f"route53 get_hosted_zone {zone_id}"):
            zone = self.client.get_hosted_zone(Id=zone_id)["HostedZone"]
        return fqdn(zone["Name"])

    def _check_health_check(self, check_id: str) -> None:
        with aws_call(f"route53 get_health_check {check_id}"):
            self.client.get_health_check(HealthCheckId=check_id)

    def _record_sets(self, conf: Route53Service) -> list[ResourceRecordSetOutputTypeDef]:
        """Every record set at the service's name and type, over as many pages as it takes."""
        name = fqdn(conf.record_name)
        out: list[ResourceRecordSetOutputTypeDef] = []
        start_id = ""
        while True:
            with aws_call(f"route53 list_resource_record_sets {name}"):
                if start_id:
                    page = self.client.list_resource_record_sets(
                        HostedZoneId=conf.hosted_zone_id,
                        StartRecordName=name,
                        StartRecordType=conf.record_type,
                        StartRecordIdentifier=start_id,
                    )
                else:
                    page = self.client.list_resource_record_sets(
                        HostedZoneId=conf.hosted_zone_id,
                        StartRecordName=name,
                        StartRecordType=conf.record_type,
                    )
            for raw in page["ResourceRecordSets"]:
                if fqdn(raw["Name"]) != name or raw["Type"] != conf.record_type:
                    return out  # sets come sorted by name and type: ours are all read
                out.append(raw)
            more = (
                page["IsTruncated"]
                and fqdn(page.get("NextRecordName", "")) == name
                and page.get("NextRecordType") == conf.record_type
            )
            if not more or not page.get("NextRecordIdentifier"):
                return out
            start_id = page["NextRecordIdentifier"]

    def _change(self, conf: Route53Service, changes: list[ChangeTypeDef]) -> str:
        with aws_call(f"route53 change_resource_record_sets {fqdn(conf.record_name)}"):
            info = self.client.change_resource_record_sets(
                HostedZoneId=conf.hosted_zone_id,
                ChangeBatch={"Comment": "canarist", "Changes": changes},
            )["ChangeInfo"]
        return info["Id"]

    def _change_status(self, change_id: str) -> str:
        with aws_call(f"route53 get_change {change_id}"):
            return self.client.get_change(Id=change_id)["ChangeInfo"]["Status"]
