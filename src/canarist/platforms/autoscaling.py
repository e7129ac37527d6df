"""EC2 Auto Scaling as a platform: each release runs as its own group behind its own target group.

AWS sizes instances by the group, so this platform works by groups, not instance by
instance, through the `GroupPlatform` protocol of `platforms/base.py`:

- `prepare(release)` makes, idempotently, everything the release runs on: one version
  of the service's launch template (the release's AMI, and user data that fetches the
  release from S3 by digest and checks it before anything of it runs), the release's own
  target group, and its own Auto Scaling group attached to it, at size 0. It returns the
  target group's ARN, for the ALB router (`RouteTable.targets`).
- `scale(release, count)` sets the group's size (min = max = desired).
- `healthy_count(release)` counts the group's instances in service that its target group
  also reports healthy: those the load balancer would route to.
- `retire(release)` removes the group, its instances and its target group; the launch
  template version stays as the record of what the release ran on.

Rolling from one release to another is two groups swapped in batches (`rolling_steps`,
`AutoScalingPlatform.roll`): the new group grows while the old one shrinks. The old group
is only ever scaled down, never removed, by a roll: it stays for the rollout's scale-down
delay so a rollback is a resize, and the controller retires it when that delay is over.

Nothing here gives a way into a running instance: a launch template never carries a key
pair (settings naming one are refused), instances require IMDSv2 tokens, and a group
checks the load balancer's health so an instance that fails is replaced, not repaired.
`max_instance_lifetime_days` has AWS replace instances that grow old.

What the AMI must carry: the Python the release was built for (`python3`, with `venv`),
the AWS CLI, `sha256sum`, systemd and cloud-init, as Amazon Linux 2023 does. The instance
profile must allow `s3:GetObject` on the release prefix. On EC2 the load balancer reaches
the app on the instance's own address, so the app is started with `HOST=0.0.0.0` beside
`PORT` and should listen on `${HOST:-127.0.0.1}`.

Names: the launch template is `canarist-<service>`, one version per release described as
`canarist <reference>`; the group is `canarist-<service>-<12 hex>`; the target group
`cn-<service>-<12 hex>` (at most 32 characters and no underscore, so a long service name,
or one with an underscore, is shortened or respelled and suffixed with a hash of itself).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from canarist.aws.clients import aws_call
from canarist.domain.release import (
    Manifest,
    parse_reference,
    reference_hex,
    short_reference,
)
from canarist.domain.validation import parse_settings
from canarist.errors import AWSError, ConfigError, InstanceFailed, UnknownRelease
from canarist.releases.s3 import S3ArtifactStore
from canarist.releases.store import ARCHIVE, MANIFEST

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType
    from mypy_boto3_ec2.type_defs import RequestLaunchTemplateDataTypeDef, TagTypeDef
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client

log = logging.getLogger(__name__)

RELEASE_TAG = "canarist:release"
SERVICE_TAG = "canarist:service"
INSTALL_ROOT = "/opt/canarist/releases"
# A launch template's user data may hold 16 KB before base64.
USER_DATA_MAX = 16 * 1024

_SERVICE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
_TARGET_GROUP_NAME_MAX = 32
# Settings keys that would give instances a key pair, in the spellings people use.
_KEY_PAIR_KEYS = ("key_name", "key_pair", "keyname", "KeyName")
_LT_NOT_FOUND = "InvalidLaunchTemplateName.NotFoundException"
_LT_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"


class AutoScalingSettings(BaseModel):
    """Where and how a service's releases run on EC2 Auto Scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    vpc_id: str = Field(min_length=1)
    subnets: tuple[str, ...] = Field(min_length=1)
    bucket: str = Field(min_length=3)  # the S3 artifact store's bucket
    prefix: str = "releases"  # and prefix
    image_id: str | None = None  # the AMI of every release that `images` does not name
    images: dict[str, str] = Field(default_factory=dict)  # release reference -> AMI
    instance_type: str = "t3.micro"
    security_groups: tuple[str, ...] = ()
    instance_profile: str | None = None  # name or ARN; must allow s3:GetObject on the prefix
    port: int = Field(default=8080, ge=1, le=65535)  # PORT of the app, the target group's port
    health_check_grace: int = Field(default=120, ge=0)  # seconds after launch
    deregistration_delay: int = Field(default=30, ge=0, le=3600)  # seconds of draining
    max_instance_lifetime_days: int | None = Field(default=None, ge=1, le=365)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_key_pair(cls, data: Any) -> Any:
        # Raised as ConfigError itself (pydantic lets it through): one clear line, no
        # "extra field" noise, before any AWS call.
        if isinstance(data, Mapping):
            named = [k for k in _KEY_PAIR_KEYS if k in data]
            if named:
                raise ConfigError(
                    f"autoscaling: {named[0]!r} is refused: a key pair opens instances to "
                    "SSH, and canarist replaces instances instead of logging into them"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> AutoScalingSettings:
        if not _SERVICE.match(self.service):
            raise ValueError(f"service name {self.service!r} is not valid")
        for ref in self.images:
            try:
                parse_reference(ref)
            except UnknownRelease:
                raise ValueError(f"images: {ref!r} is not a release reference") from None
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> AutoScalingSettings:
        """Settings from a mapping (a canarist.yaml section); ConfigError on any problem."""
        return parse_settings(cls, dict(data), "autoscaling")

    def image_for(self, ref: str) -> str:
        """The AMI a release runs on; ConfigError when none is set for it."""
        image = self.images.get(ref, self.image_id)
        if not image:
            raise ConfigError(
                f"autoscaling: no AMI for release {short_reference(ref)}: "
                "set image_id, or images for this release"
            )
        return image


def rolling_steps(
    old: int, new: int, total: int, batch: int, *, surge: bool = False
) -> list[tuple[int, int]]:
    """The (old, new) group sizes, step by step, that move `total` instances from old to new.

    Without surge, each step grows the new group by `batch` and shrinks the old one so the
    two add up to `total`: 4 instances, batch 1: (3, 1), (2, 2), (1, 3), (0, 4). With
    surge, the new group grows first and the old one shrinks in a step of its own, so the
    healthy capacity never falls below `total`: (4, 1), (3, 1), (3, 2), (2, 2) ... (0, 4).
    The starting sizes are not repeated; sizes already at the goal give no step.
    """
    if min(old, new, total) < 0 or batch < 1:
        raise ValueError("group sizes must be >= 0 and the batch >= 1")
    steps: list[tuple[int, int]] = []
    while new != total or old > 0:
        grown = min(total, new + batch) if new < total else total
        if surge and grown != new and old > 0:
            new = grown
            steps.append((old, new))
        new = grown
        old = min(old, max(0, total - new))
        if not steps or steps[-1] != (old, new):
            steps.append((old, new))
    return steps


StepHook = Callable[[int, int], Awaitable[None] | None]


class AutoScalingPlatform:
    """A service's releases as Auto Scaling groups (see the module's docstring)."""

    def __init__(
        self,
        session: Session,
        settings: AutoScalingSettings | Mapping[str, Any],
        *,
        poll: float = 5.0,
    ) -> None:
        # Settings are checked before any client is made, so a refusal costs no AWS call.
        if not isinstance(settings, AutoScalingSettings):
            settings = AutoScalingSettings.parse(settings)
        self.settings = settings
        self.poll = poll
        self.artifacts = S3ArtifactStore(session, settings.bucket, settings.prefix)
        self.ec2: EC2Client = session.client("ec2")
        self.autoscaling: AutoScalingClient = session.client("autoscaling")
        self.elbv2: ElasticLoadBalancingv2Client = session.client("elbv2")

    # -- names -----------------------------------------------------------------------------

    @property
    def launch_template_name(self) -> str:
        """The service's launch template: one version per release."""
        return f"canarist-{self.settings.service}"

    def group_name(self, release: str) -> str:
        """The release's Auto Scaling group."""
        return f"canarist-{self.settings.service}-{reference_hex(release)[:12]}"

    def target_group_name(self, release: str) -> str:
        """The release's target group: at most 32 letters, digits and hyphens."""
        service = self.settings.service
        room = _TARGET_GROUP_NAME_MAX - len("cn--") - 12
        if len(service) > room or "_" in service:
            # Shortened or respelled, the name gets a hash of the real one, so "a_b" and
            # "a-b", or two long names alike at the start, stay apart.
            suffix = hashlib.sha256(service.encode()).hexdigest()[:4]
            service = service.replace("_", "-")[: room - 5].rstrip("-") + "-" + suffix
        return f"cn-{service}-{reference_hex(release)[:12]}"

    @staticmethod
    def version_description(release: str) -> str:
        """How the release's launch template version is found again."""
        return f"canarist {release}"

    # -- GroupPlatform ---------------------------------------------------------------------

    async def prepare(self, release: str) -> str:
        """Launch template version, target group and empty group of the release; its TG ARN."""
        release = parse_reference(release)
        image = self.settings.image_for(release)
        manifest = await asyncio.to_thread(self.artifacts.manifest, release)
        user_data = render_user_data(self.settings, release, manifest, self.artifacts)
        version = await asyncio.to_thread(self._ensure_version, release, image, user_data)
        target_group = await asyncio.to_thread(self._ensure_target_group, release, manifest)
        await asyncio.to_thread(self._ensure_group, release, version, target_group)
        return target_group

    async def scale(self, release: str, count: int) -> None:
        """Set the release's group to exactly `count` instances."""
        if count < 0:
            raise ValueError("an instance count cannot be negative")
        name = self.group_name(parse_reference(release))

        def call() -> None:
            with aws_call(f"resize Auto Scaling group {name} to {count}"):
                self.autoscaling.update_auto_scaling_group(
                    AutoScalingGroupName=name,
                    MinSize=count,
                    MaxSize=count,
                    DesiredCapacity=count,
                )

        await asyncio.to_thread(call)

    async def healthy_count(self, release: str) -> int:
        """Instances of the group in service that its target group reports healthy."""
        return await asyncio.to_thread(self._healthy_count, parse_reference(release))

    async def retire(self, release: str) -> None:
        """Delete the group (terminating what it still runs) and its target group.

        Meant for after `scale(release, 0)` and once no listener forwards to the target
        group: AWS refuses to delete a target group in use (AWSError, to retry later). The
        launch template version stays, a record of what ran, and is found again should the
        release be prepared anew.
        """
        release = parse_reference(release)
        await asyncio.to_thread(self._retire, release)

    # -- rolling ---------------------------------------------------------------------------

    async def roll(
        self,
        from_release: str,
        to_release: str,
        total: int,
        batch: int,
        *,
        surge: bool = False,
        healthy_timeout: float = 600.0,
        on_step: StepHook | None = None,
    ) -> None:
        """Move `total` instances from one release's group to the other's, in batches.

        Each step grows the `to` group first, then shrinks the `from` group, then waits
        until the `to` group has as many healthy instances as asked (InstanceFailed after
        `healthy_timeout`, the groups left as they stand for the controller to decide).
        `on_step(from_size, to_size)` runs after each step. A rollback is the same call
        with the releases swapped; neither group is removed.
        """
        current_from = await self._desired(from_release)
        current_to = await self._desired(to_release)
        for size_from, size_to in rolling_steps(
            current_from, current_to, total, batch, surge=surge
        ):
            if size_to > current_to:
                await self.scale(to_release, size_to)
            if size_from != current_from:
                await self.scale(from_release, size_from)
            if size_to < current_to:
                await self.scale(to_release, size_to)
            current_from, current_to = size_from, size_to
            await self.wait_healthy(to_release, size_to, timeout=healthy_timeout)
            if on_step is not None:
                result = on_step(size_from, size_to)
                if result is not None:
                    await result

    async def wait_healthy(self, release: str, count: int, *, timeout: float) -> None:
        """Return once `count` instances of the release are healthy; InstanceFailed after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (healthy := await self.healthy_count(release)) < count:
            if time.monotonic() >= deadline:
                raise InstanceFailed(
                    f"release {short_reference(release)}: {healthy} of {count} instances "
                    f"healthy after {timeout:g}s in {self.group_name(release)}"
                )
            await asyncio.sleep(self.poll)

    async def _desired(self, release: str) -> int:
        group = await asyncio.to_thread(self._group, self.group_name(parse_reference(release)))
        return 0 if group is None else int(group["DesiredCapacity"])

    # -- blocking internals ----------------------------------------------------------------

    def _ensure_version(self, release: str, image: str, user_data: str) -> int:
        """The number of the release's launch template version, created if missing."""
        name = self.launch_template_name
        description = self.version_description(release)
        data = self._launch_template_data(release, image, user_data)
        template_id = self._launch_template_id()
        if template_id is None:
            try:
                with aws_call(f"create launch template {name}"):
                    created = self.ec2.create_launch_template(
                        LaunchTemplateName=name,
                        VersionDescription=description,
                        LaunchTemplateData=data,
                        TagSpecifications=[
                            {
                                "ResourceType": "launch-template",
                                "Tags": [{"Key": SERVICE_TAG, "Value": self.settings.service}],
                            }
                        ],
                    )
                return int(created["LaunchTemplate"]["LatestVersionNumber"])
            except AWSError as exc:
                if exc.code != _LT_EXISTS:  # another controller made it meanwhile
                    raise
            template_id = self._launch_template_id()
            if template_id is None:
                raise AWSError(f"launch template {name} exists and cannot be found")
        existing = self._find_version(template_id, description)
        if existing is not None:
            return existing
        with aws_call(f"create a version of launch template {name}"):
            made = self.ec2.create_launch_template_version(
                LaunchTemplateId=template_id,
                VersionDescription=description,
                LaunchTemplateData=data,
            )
        return int(made["LaunchTemplateVersion"]["VersionNumber"])

    def _launch_template_data(
        self, release: str, image: str, user_data: str
    ) -> RequestLaunchTemplateDataTypeDef:
        tags: list[TagTypeDef] = [
            {"Key": SERVICE_TAG, "Value": self.settings.service},
            {"Key": RELEASE_TAG, "Value": release},
        ]
        tags.extend({"Key": k, "Value": v} for k, v in sorted(self.settings.tags.items()))
        data: RequestLaunchTemplateDataTypeDef = {
            "ImageId": image,
            "InstanceType": cast("InstanceTypeType", self.settings.instance_type),
            "UserData": base64.b64encode(user_data.encode("utf-8")).decode("ascii"),
            # Instance credentials only through session tokens (IMDSv2).
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if self.settings.security_groups:
            data["SecurityGroupIds"] = list(self.settings.security_groups)
        profile = self.settings.instance_profile
        if profile and profile.startswith("arn:"):
            data["IamInstanceProfile"] = {"Arn": profile}
        elif profile:
            data["IamInstanceProfile"] = {"Name": profile}
        assert "KeyName" not in data  # the one thing a launch template of canarist never has
        return data

    def _launch_template_id(self) -> str | None:
        name = self.launch_template_name
        try:
            with aws_call(f"describe launch template {name}"):
                found = self.ec2.describe_launch_templates(LaunchTemplateNames=[name])
        except AWSError as exc:
            if exc.code == _LT_NOT_FOUND:
                return None
            raise
        templates = found.get("LaunchTemplates", [])
        return templates[0]["LaunchTemplateId"] if templates else None

    def _find_version(self, template_id: str, description: str) -> int | None:
        with aws_call(f"list versions of launch template {self.launch_template_name}"):
            pages = self.ec2.get_paginator("describe_launch_template_versions").paginate(
                LaunchTemplateId=template_id
            )
            for page in pages:
                for version in page.get("LaunchTemplateVersions", []):
                    if version.get("VersionDescription") == description:
                        return int(version["VersionNumber"])
        return None

    def _ensure_target_group(self, release: str, manifest: Manifest) -> str:
        name = self.target_group_name(release)
        existing = self._target_group_arn(name)
        if existing is not None:
            return existing
        with aws_call(f"create target group {name}"):
            created = self.elbv2.create_target_group(
                Name=name,
                Protocol="HTTP",
                Port=self.settings.port,
                VpcId=self.settings.vpc_id,
                TargetType="instance",
                HealthCheckProtocol="HTTP",
                HealthCheckPath=manifest.health,
                HealthCheckIntervalSeconds=10,
                HealthyThresholdCount=2,
                UnhealthyThresholdCount=2,
                Matcher={"HttpCode": "200-299"},
                Tags=[
                    {"Key": SERVICE_TAG, "Value": self.settings.service},
                    {"Key": RELEASE_TAG, "Value": release},
                ],
            )
        arn = created["TargetGroups"][0]["TargetGroupArn"]
        with aws_call(f"set the draining delay of target group {name}"):
            self.elbv2.modify_target_group_attributes(
                TargetGroupArn=arn,
                Attributes=[
                    {
                        "Key": "deregistration_delay.timeout_seconds",
                        "Value": str(self.settings.deregistration_delay),
                    }
                ],
            )
        return arn

    def _target_group_arn(self, name: str) -> str | None:
        try:
            with aws_call(f"describe target group {name}"):
                found = self.elbv2.describe_target_groups(Names=[name])
        except AWSError as exc:
            if exc.code == "TargetGroupNotFound":
                return None
            raise
        groups = found.get("TargetGroups", [])
        return groups[0]["TargetGroupArn"] if groups else None

    def _group(self, name: str) -> AutoScalingGroupTypeDef | None:
        with aws_call(f"describe Auto Scaling group {name}"):
            found = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        groups = found.get("AutoScalingGroups", [])
        return groups[0] if groups else None

    def _ensure_group(self, release: str, version: int, target_group: str) -> None:
        name = self.group_name(release)
        if self._group(name) is not None:
            return
        template_id = self._launch_template_id()
        if template_id is None:
            raise AWSError(f"launch template {self.launch_template_name} vanished")
        lifetime = self.settings.max_instance_lifetime_days
        extra: dict[str, Any] = {}
        if lifetime is not None:
            extra["MaxInstanceLifetime"] = lifetime * 86400
        try:
            with aws_call(f"create Auto Scaling group {name}"):
                self.autoscaling.create_auto_scaling_group(
                    AutoScalingGroupName=name,
                    LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
                    MinSize=0,
                    MaxSize=0,
                    DesiredCapacity=0,
                    VPCZoneIdentifier=",".join(self.settings.subnets),
                    TargetGroupARNs=[target_group],
                    # The load balancer's checks decide: a failing instance is replaced.
                    HealthCheckType="ELB",
                    HealthCheckGracePeriod=self.settings.health_check_grace,
                    Tags=[
                        {
                            "Key": key,
                            "Value": value,
                            "PropagateAtLaunch": True,
                            "ResourceId": name,
                            "ResourceType": "auto-scaling-group",
                        }
                        for key, value in (
                            (SERVICE_TAG, self.settings.service),
                            (RELEASE_TAG, release),
                        )
                    ],
                    **extra,
                )
        except AWSError as exc:
            if exc.code != "AlreadyExists":  # another controller made it meanwhile
                raise

    def _healthy_count(self, release: str) -> int:
        group = self._group(self.group_name(release))
        if group is None:
            return 0
        in_service = {
            i["InstanceId"]
            for i in group.get("Instances", [])
            if i.get("LifecycleState") == "InService" and i.get("HealthStatus") == "Healthy"
        }
        target_groups = group.get("TargetGroupARNs", [])
        if not in_service or not target_groups:
            return len(in_service)
        with aws_call(f"read target health of {self.target_group_name(release)}"):
            health = self.elbv2.describe_target_health(TargetGroupArn=target_groups[0])
        healthy = {
            t["Target"]["Id"]
            for t in health.get("TargetHealthDescriptions", [])
            if t.get("TargetHealth", {}).get("State") == "healthy"
        }
        return len(in_service & healthy)

    def _retire(self, release: str) -> None:
        name = self.group_name(release)
        if self._group(name) is not None:
            try:
                with aws_call(f"delete Auto Scaling group {name}"):
                    # ForceDelete terminates whatever the group still runs.
                    self.autoscaling.delete_auto_scaling_group(
                        AutoScalingGroupName=name, ForceDelete=True
                    )
            except AWSError:
                if self._group(name) is not None:  # not merely deleted by someone else
                    raise
        target_group = self._target_group_arn(self.target_group_name(release))
        if target_group is not None:
            try:
                with aws_call(f"delete target group {self.target_group_name(release)}"):
                    self.elbv2.delete_target_group(TargetGroupArn=target_group)
            except AWSError as exc:
                if exc.code != "TargetGroupNotFound":
                    raise


# -- user data -----------------------------------------------------------------------------

# Run on the instance with the system's python3 (stdlib only): every member of the archive
# must be one the manifest pins, with its sha256, and every pinned one must be there.
VERIFY_SCRIPT = r"""
import hashlib, json, os, sys, tarfile

manifest_path, archive_path, dest = sys.argv[1:4]
with open(manifest_path, "rb") as f:
    manifest = json.load(f)
expected = {"app/" + e["path"]: e for e in manifest["files"]}
expected.update({"wheels/" + w["filename"]: w for w in manifest["wheels"]})
seen = set()
os.makedirs(dest)
with tarfile.open(archive_path, "r:gz") as tar:
    for member in tar:
        entry = expected.get(member.name)
        parts = member.name.split("/")
        if entry is None or member.name in seen or not member.isreg():
            sys.exit("release archive: unexpected member " + member.name)
        if any(p in ("", ".", "..") for p in parts):
            sys.exit("release archive: bad path " + member.name)
        seen.add(member.name)
        target = os.path.join(dest, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        digest = hashlib.sha256()
        with tar.extractfile(member) as src, open(target, "xb") as out:
            for chunk in iter(lambda: src.read(65536), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            sys.exit("release archive: " + member.name + " does not match the manifest")
        os.chmod(target, 0o555 if entry.get("mode") == 0o755 else 0o444)
missing = sorted(set(expected) - seen)
if missing:
    sys.exit("release archive: " + missing[0] + " is missing")
"""

_USER_DATA = """\
#!/bin/bash
# canarist: run release {release} of service {service} on this instance.
# The release is fetched by digest and checked before anything of it runs.
set -euo pipefail
RELEASE={release}
DIGEST={digest}
INSTALL_ROOT=${{CANARIST_INSTALL_ROOT:-{root}}}
ROOT=$INSTALL_ROOT/$DIGEST
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
aws s3 cp --only-show-errors {manifest_url} "$WORK/manifest.json"
aws s3 cp --only-show-errors {archive_url} "$WORK/release.tar.gz"
# The manifest names every byte of the release, and its sha256 is the release's digest.
echo "$DIGEST  $WORK/manifest.json" | sha256sum --check --strict --quiet -
# Each file of the archive must then be the one the manifest pins (sha256 of each).
python3 - "$WORK/manifest.json" "$WORK/release.tar.gz" "$WORK/release" <<'VERIFY'
{verify}
VERIFY
mkdir -p "$INSTALL_ROOT"
rm -rf "$ROOT"
mv "$WORK/release" "$ROOT"
if compgen -G "$ROOT/wheels/*.whl" >/dev/null; then
  python3 -m venv "$ROOT/venv"
  # Every dependency is in the release: nothing is downloaded at run time.
  "$ROOT/venv/bin/pip" install --quiet --no-index --find-links "$ROOT/wheels" "$ROOT"/wheels/*.whl
else
  python3 -m venv --without-pip "$ROOT/venv"
fi
chmod -R a-w "$ROOT"
id canarist >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin canarist
INSTANCE=$(cat /var/lib/cloud/data/instance-id 2>/dev/null || hostname)
PROGRAM=$(PATH="$ROOT/venv/bin:/usr/local/bin:/usr/bin:/bin" command -v {program})
# No restart: an instance whose app dies fails its health check and is replaced.
systemd-run --unit=canarist-{service} --uid=canarist --property=Restart=no \\
  --property=NoNewPrivileges=yes \\
  --working-directory="$ROOT/app" \\
  --setenv=PORT={port} --setenv=HOST=0.0.0.0 \\
  --setenv=CANARIST_RELEASE="$RELEASE" --setenv=CANARIST_INSTANCE="$INSTANCE" \\
  --setenv=CANARIST_SERVICE={service} --setenv=PATH="$ROOT/venv/bin:/usr/local/bin:/usr/bin:/bin" \\
  --setenv=PYTHONDONTWRITEBYTECODE=1 --setenv=PYTHONUNBUFFERED=1 \\
  -- "$PROGRAM"{args}
"""


def render_user_data(
    settings: AutoScalingSettings, release: str, manifest: Manifest, artifacts: S3ArtifactStore
) -> str:
    """The shell script an instance runs at first boot to fetch, check and start `release`."""
    program, *args = manifest.command
    if program in ("python", "python3"):
        program = "python"  # the release's venv's own
    script = _USER_DATA.format(
        release=release,
        digest=reference_hex(release),
        service=settings.service,
        root=INSTALL_ROOT,
        manifest_url=shlex.quote(artifacts.url(release, MANIFEST)),
        archive_url=shlex.quote(artifacts.url(release, ARCHIVE)),
        verify=VERIFY_SCRIPT.strip(),
        program=shlex.quote(program),
        args="".join(" " + shlex.quote(a) for a in args),
        port=settings.port,
    )
    if len(script.encode("utf-8")) > USER_DATA_MAX:
        raise ConfigError(
            f"release {short_reference(release)}: its start script exceeds EC2's 16 KB of "
            "user data (a very long command?)"
        )
    return script
