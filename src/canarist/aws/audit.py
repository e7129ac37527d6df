"""Immutability findings for an AWS account, in one region.

What breaks the pattern, and is reported:

- `open-admin-port`: a security group lets the whole internet (0.0.0.0/0 or ::/0) reach
  SSH (22) or RDP (3389), by a rule for that port, a range covering it, or all traffic.
  Nobody should log into an immutable server, least of all from anywhere.
- `launch-template-key-pair`: the latest or default version of a launch template gives
  its instances a key pair, so a way to log in.
- `instance-key-pair`: a running instance was launched with a key pair.
- `old-instance`: a running instance is older than the age allowed. Immutable servers
  are replaced, not patched in place: an old one is one that missed its replacements.

Blocking calls: run them in a thread from async code.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from canarist.aws.clients import aws_call
from canarist.errors import AWSError, ConfigError

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import IpPermissionOutputTypeDef

Kind = Literal["open-admin-port", "launch-template-key-pair", "instance-key-pair", "old-instance"]

ADMIN_PORTS = {22: "SSH", 3389: "RDP"}
_TCP = ("tcp", "6")
_ALL_TRAFFIC = "-1"


@dataclass(frozen=True)
class Finding:
    """One thing in the account that breaks the immutable pattern."""

    kind: Kind
    resource: str  # the security group, launch template or instance id
    region: str
    detail: str  # one line: what and why

    def to_json(self) -> dict[str, str]:
        """The finding as `--json` prints it."""
        return {
            "kind": self.kind,
            "resource": self.resource,
            "region": self.region,
            "detail": self.detail,
        }


def audit(
    session: Session,
    max_age_days: float,
    *,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> list[Finding]:
    """Every finding in the session's region, ordered by kind then resource."""
    if max_age_days < 0:
        raise ConfigError(f"the maximum instance age cannot be negative ({max_age_days:g} days)")
    region = session.region_name
    if not region:
        raise ConfigError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    try:
        with aws_call("connect to EC2"):
            ec2: EC2Client = session.client("ec2")
    except AWSError as exc:
        if isinstance(exc.__cause__, ValueError):  # botocore's InvalidRegionError
            raise ConfigError(f"{region!r} is not an AWS region name") from exc
        raise
    findings = [
        *_open_admin_ports(ec2, region),
        *_launch_template_key_pairs(ec2, region),
        *_instances(ec2, region, max_age_days, now()),
    ]
    return sorted(findings, key=lambda f: (f.kind, f.resource, f.detail))


def _open_admin_ports(ec2: EC2Client, region: str) -> Iterator[Finding]:
    with aws_call("list security groups"):
        pages = list(ec2.get_paginator("describe_security_groups").paginate())
    for page in pages:
        for group in page.get("SecurityGroups", []):
            for port, name in ADMIN_PORTS.items():
                for rule in group.get("IpPermissions", []):
                    world = _world_sources(rule)
                    if world and _covers(rule, port):
                        yield Finding(
                            kind="open-admin-port",
                            resource=group["GroupId"],
                            region=region,
                            detail=f"{name} (port {port}) open to {', '.join(world)} "
                            f"by rule {_describe_rule(rule)} in {group.get('GroupName', '?')}",
                        )
                        break  # one finding per group and port


def _world_sources(rule: IpPermissionOutputTypeDef) -> list[str]:
    sources = [r.get("CidrIp", "") for r in rule.get("IpRanges", [])]
    sources += [r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges", [])]
    world = []
    for cidr in sources:
        try:
            if ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
                world.append(cidr)
        except ValueError:
            continue
    return world


def _covers(rule: IpPermissionOutputTypeDef, port: int) -> bool:
    protocol = str(rule.get("IpProtocol", ""))
    if protocol == _ALL_TRAFFIC:
        return True
    if protocol not in _TCP:
        return False
    low, high = rule.get("FromPort", 0), rule.get("ToPort", 65535)
    # A TCP rule with port -1 ... -1 (or none) means every port.
    return low == -1 or high == -1 or low <= port <= high


def _describe_rule(rule: IpPermissionOutputTypeDef) -> str:
    if str(rule.get("IpProtocol")) == _ALL_TRAFFIC:
        return "all traffic"
    low, high = rule.get("FromPort"), rule.get("ToPort")
    ports = f"{low}" if low == high else f"{low}-{high}"
    return f"tcp {ports}"


def _launch_template_key_pairs(ec2: EC2Client, region: str) -> Iterator[Finding]:
    with aws_call("list launch templates"):
        pages = list(ec2.get_paginator("describe_launch_templates").paginate())
    for page in pages:
        for template in page.get("LaunchTemplates", []):
            template_id = template["LaunchTemplateId"]
            with aws_call(f"read launch template {template_id}"):
                versions = ec2.describe_launch_template_versions(
                    LaunchTemplateId=template_id, Versions=["$Latest", "$Default"]
                )["LaunchTemplateVersions"]
            keyed = {
                v["VersionNumber"]: v["LaunchTemplateData"]["KeyName"]
                for v in versions
                if v.get("LaunchTemplateData", {}).get("KeyName")
            }
            for number, key in sorted(keyed.items()):
                which = []
                if number == template.get("LatestVersionNumber"):
                    which.append("latest")
                if number == template.get("DefaultVersionNumber"):
                    which.append("default")
                yield Finding(
                    kind="launch-template-key-pair",
                    resource=template_id,
                    region=region,
                    detail=f"version {number} ({' and '.join(which) or 'current'}) of "
                    f"{template.get('LaunchTemplateName', '?')} gives instances key pair {key!r}",
                )


def _instances(
    ec2: EC2Client, region: str, max_age_days: float, now: datetime.datetime
) -> Iterator[Finding]:
    oldest = now - datetime.timedelta(days=max_age_days)
    with aws_call("list running instances"):
        pages = list(
            ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
            )
        )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                instance_id = instance["InstanceId"]
                key = instance.get("KeyName")
                if key:
                    yield Finding(
                        kind="instance-key-pair",
                        resource=instance_id,
                        region=region,
                        detail=f"launched with key pair {key!r}",
                    )
                launched = instance.get("LaunchTime")
                if launched is not None and launched <= oldest:
                    age = (now - launched).total_seconds() / 86400
                    yield Finding(
                        kind="old-instance",
                        resource=instance_id,
                        region=region,
                        detail=f"running for {age:.1f} days, since "
                        f"{launched.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC "
                        f"(more than {max_age_days:g}): replace it with a fresh one",
                    )
