"""The Auto Scaling platform against moto: launch template versions, groups, rolling swaps."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canarist.domain.release import reference_hex
from canarist.errors import ConfigError, UnknownRelease
from canarist.platforms.autoscaling import (
    AutoScalingPlatform,
    AutoScalingSettings,
    render_user_data,
    rolling_steps,
)
from canarist.releases.build import build_release
from canarist.releases.s3 import S3ArtifactStore
from canarist.releases.store import LocalArtifactStore
from tests.aws.conftest import REGION, moto_server
from tests.releases.conftest import write_app

pytestmark = pytest.mark.aws

BUCKET = "canarist-artifacts"

# moto 5.2 keeps the user data of a version made by CreateLaunchTemplateVersion as plain
# text (only CreateLaunchTemplate decodes it), then fails an assertion as soon as a group
# launches instances from that version. This module runs moto's server with that one
# method mended, and everything else as moto ships it.
_MENDED_MOTO = """
import sys
from moto.ec2.models.launch_templates import LaunchTemplate
from moto.ec2.utils import parse_user_data
from moto.server import main

shipped = LaunchTemplate.create_version

def create_version(self, data, description):
    if isinstance(data.get("UserData"), str):
        data = {**data, "UserData": parse_user_data(data["UserData"])}
    return shipped(self, data, description)

LaunchTemplate.create_version = create_version
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server of this module's own, with launch template versions mended (above)."""
    with moto_server(sys.executable, "-c", _MENDED_MOTO) as url:
        yield url


class Untouchable:
    """A session that fails the test if anything asks it for a client."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an AWS call was attempted ({name})")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalArtifactStore, str, str]:
    """A local store with two releases of one app (v1 and v2)."""
    base = tmp_path_factory.mktemp("releases")
    store = LocalArtifactStore(base / "state" / "artifacts")
    refs = []
    for version in ("v1", "v2"):
        app = write_app(base / version)
        (app / "VERSION").write_text(version)
        refs.append(build_release(app, store))
    return store, refs[0], refs[1]


# Settings that never reach AWS, for the tests of their validation.
OFFLINE_SETTINGS = {
    "service": "web",
    "vpc_id": "vpc-0123456789abcdef0",
    "subnets": ["subnet-0123456789abcdef0"],
    "bucket": BUCKET,
    "image_id": "ami-0123456789abcdef0",
}


@pytest.fixture
def settings(aws: Any) -> dict[str, Any]:
    """Settings for the service `web` in moto's default VPC, with the bucket made."""
    ec2 = aws.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    aws.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return {
        **OFFLINE_SETTINGS,
        "vpc_id": vpc["VpcId"],
        "subnets": [s["SubnetId"] for s in subnets["Subnets"]][:2],
        "instance_profile": "canarist-web",
    }


@pytest.fixture
def platform(
    aws: Any, settings: dict[str, Any], releases: tuple[LocalArtifactStore, str, str]
) -> AutoScalingPlatform:
    """The platform, with both releases pushed to S3."""
    store, v1, v2 = releases
    s3 = S3ArtifactStore(aws, BUCKET)
    s3.push(store, v1)
    s3.push(store, v2)
    return AutoScalingPlatform(aws, settings, poll=0.01)


def sizes(aws: Any, platform: AutoScalingPlatform, *refs: str) -> tuple[int, ...]:
    """Desired capacity of each release's group, read back through boto3."""
    names = [platform.group_name(r) for r in refs]
    found = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=names)
    by_name = {g["AutoScalingGroupName"]: g for g in found["AutoScalingGroups"]}
    for name in names:
        group = by_name[name]
        assert group["MinSize"] == group["MaxSize"] == group["DesiredCapacity"]
    return tuple(by_name[n]["DesiredCapacity"] for n in names)


# -- the pure plan of a roll ------------------------------------------------------------------


def test_rolling_steps_swap_in_batches() -> None:
    """Without surge the two groups always add up to the total."""
    assert rolling_steps(4, 0, 4, 1) == [(3, 1), (2, 2), (1, 3), (0, 4)]
    assert rolling_steps(4, 0, 4, 3) == [(1, 3), (0, 4)]
    assert rolling_steps(5, 0, 5, 2) == [(3, 2), (1, 4), (0, 5)]


def test_rolling_steps_with_surge_never_lose_capacity() -> None:
    """With surge the new group grows before the old one shrinks."""
    assert rolling_steps(4, 0, 4, 1, surge=True) == [
        (4, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 4), (0, 4),
    ]  # fmt: skip
    assert all(old + new >= 4 for old, new in rolling_steps(4, 0, 4, 2, surge=True))


def test_rolling_steps_edge_cases() -> None:
    """Half-way back is a roll the other way; nothing to do gives no step."""
    assert rolling_steps(2, 2, 4, 1) == [(1, 3), (0, 4)]
    assert rolling_steps(0, 4, 4, 1) == []
    assert rolling_steps(0, 6, 4, 1) == [(0, 4)]
    assert rolling_steps(3, 0, 0, 1) == [(0, 0)]
    with pytest.raises(ValueError):
        rolling_steps(4, 0, 4, 0)


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["key_name", "KeyName", "key_pair"])
def test_a_key_pair_is_refused_before_any_aws_call(key: str) -> None:
    """Settings naming a key pair: ConfigError, and no client is even made."""
    settings = {**OFFLINE_SETTINGS, key: "ops"}
    with pytest.raises(ConfigError, match="key pair") as caught:
        AutoScalingPlatform(Untouchable(), settings)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="key pair"):
        AutoScalingSettings(**settings)


def test_bad_settings_are_one_config_error() -> None:
    """A missing or unknown setting is a ConfigError naming it."""
    settings = OFFLINE_SETTINGS
    missing = {k: v for k, v in settings.items() if k != "vpc_id"}
    with pytest.raises(ConfigError, match=r"autoscaling: vpc_id"):
        AutoScalingPlatform(Untouchable(), missing)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"autoscaling: colour"):
        AutoScalingPlatform(Untouchable(), {**settings, "colour": "blue"})  # type: ignore[arg-type]


# -- prepare -----------------------------------------------------------------------------------


async def test_prepare_makes_one_version_per_release(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """One launch template, one version per release, found again on a second prepare."""
    _, v1, v2 = releases
    ec2 = aws.client("ec2")
    arn1 = await platform.prepare(v1)
    arn2 = await platform.prepare(v2)
    assert await platform.prepare(v1) == arn1  # idempotent
    assert await platform.prepare(v2) == arn2
    versions = ec2.describe_launch_template_versions(LaunchTemplateName="canarist-web")[
        "LaunchTemplateVersions"
    ]
    assert sorted((v["VersionNumber"], v["VersionDescription"]) for v in versions) == [
        (1, f"canarist {v1}"),
        (2, f"canarist {v2}"),
    ]
    assert len(ec2.describe_launch_templates()["LaunchTemplates"]) == 1
    for version in versions:
        data = version["LaunchTemplateData"]
        assert "KeyName" not in data
        assert data["IamInstanceProfile"] == {"Name": "canarist-web"}
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        script = base64.b64decode(data["UserData"]).decode()
        release = version["VersionDescription"].removeprefix("canarist ")
        assert f"DIGEST={reference_hex(release)}" in script
        assert "sha256sum --check --strict --quiet" in script
        assert "hashlib.sha256" in script  # each archive member checked too
        assert f"s3://{BUCKET}/releases/{reference_hex(release)}/release.tar.gz" in script


async def test_prepare_makes_a_target_group_and_an_empty_group(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """The group starts at 0, on the release's version, attached to the release's target group."""
    _, v1, _ = releases
    arn = await platform.prepare(v1)
    target_group = aws.client("elbv2").describe_target_groups(TargetGroupArns=[arn])[
        "TargetGroups"
    ][0]
    assert target_group["TargetGroupName"] == platform.target_group_name(v1)
    assert target_group["HealthCheckPath"] == "/healthz"  # the release's own health path
    group = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[platform.group_name(v1)]
    )["AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 0, 0)
    assert group["LaunchTemplate"]["Version"] == "1"
    assert group["TargetGroupARNs"] == [arn]
    assert group["HealthCheckType"] == "ELB"
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert tags["canarist:release"] == v1


async def test_prepare_refuses_a_release_not_in_s3(
    aws: Any, settings: dict[str, Any], releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """Nothing is created for a release the artifact store does not hold."""
    _, v1, _ = releases
    with pytest.raises(UnknownRelease):
        await AutoScalingPlatform(aws, settings).prepare(v1)
    assert aws.client("ec2").describe_launch_templates()["LaunchTemplates"] == []


def test_long_service_names_still_make_valid_target_group_names(aws: Any) -> None:
    """At most 32 characters, distinct for services sharing a long prefix."""
    ref = "sha256:" + "ab" * 32
    names = {
        AutoScalingPlatform(aws, {**OFFLINE_SETTINGS, "service": service}).target_group_name(ref)
        for service in (
            "a_very_long_service_name_one",
            "a_very_long_service_name_two",
            "a_b",
            "a-b",
        )
    }
    assert len(names) == 4
    assert all(len(n) <= 32 and "_" not in n and n.endswith("ababababab") for n in names)


# -- scaling, rolling, rollback, retire -------------------------------------------------------


async def test_rolling_update_in_batches_then_rollback(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """Old 4 → new 4 one at a time, group sizes read back after every step; then back."""
    _, old, new = releases
    await platform.prepare(old)
    await platform.prepare(new)
    await platform.scale(old, 4)
    assert sizes(aws, platform, old, new) == (4, 0)
    assert await platform.healthy_count(old) == 4

    seen: list[tuple[int, ...]] = []

    def read_back(size_old: int, size_new: int) -> None:
        seen.append(sizes(aws, platform, old, new))
        assert seen[-1] == (size_old, size_new)

    await platform.roll(old, new, 4, 1, on_step=read_back, healthy_timeout=5)
    assert seen == [(3, 1), (2, 2), (1, 3), (0, 4)]
    assert await platform.healthy_count(new) == 4
    assert await platform.healthy_count(old) == 0

    # Rollback: the old group, kept, grows back while the new one shrinks.
    seen.clear()

    def read_back_swapped(size_new: int, size_old: int) -> None:
        seen.append(sizes(aws, platform, old, new))
        assert seen[-1] == (size_old, size_new)

    await platform.roll(new, old, 4, 2, on_step=read_back_swapped, healthy_timeout=5)
    assert seen == [(2, 2), (4, 0)]
    assert await platform.healthy_count(old) == 4


async def test_surge_rolling_keeps_full_capacity(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """With surge, every step read back has at least the total running."""
    _, old, new = releases
    await platform.prepare(old)
    await platform.prepare(new)
    await platform.scale(old, 4)
    seen: list[tuple[int, ...]] = []

    async def read_back(size_old: int, size_new: int) -> None:
        seen.append(sizes(aws, platform, old, new))

    await platform.roll(old, new, 4, 1, surge=True, on_step=read_back, healthy_timeout=5)
    assert seen == [(4, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 4), (0, 4)]


async def test_a_roll_midway_rolled_back(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """Stopped at (2, 2), a rollback scales the new group to 0 and the old back to 4."""
    _, old, new = releases
    await platform.prepare(old)
    await platform.prepare(new)
    await platform.scale(old, 2)
    await platform.scale(new, 2)
    await platform.roll(new, old, 4, 4)
    assert sizes(aws, platform, old, new) == (4, 0)


async def test_retire_removes_the_group_and_its_target_group(
    aws: Any, platform: AutoScalingPlatform, releases: tuple[LocalArtifactStore, str, str]
) -> None:
    """After scale to 0, retire deletes the group and its target group; a new prepare
    finds the release's launch template version again."""
    _, v1, v2 = releases
    await platform.prepare(v1)
    arn = await platform.prepare(v2)
    await platform.scale(v2, 2)
    await platform.scale(v2, 0)
    await platform.retire(v2)
    await platform.retire(v2)  # idempotent
    groups = aws.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [g["AutoScalingGroupName"] for g in groups] == [platform.group_name(v1)]
    target_groups = aws.client("elbv2").describe_target_groups()["TargetGroups"]
    assert arn not in [t["TargetGroupArn"] for t in target_groups]
    assert await platform.healthy_count(v2) == 0
    running = [
        i
        for r in aws.client("ec2").describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] == "running"
    ]
    assert running == []
    await platform.prepare(v2)
    versions = aws.client("ec2").describe_launch_template_versions(
        LaunchTemplateName="canarist-web"
    )["LaunchTemplateVersions"]
    assert len(versions) == 2


# -- the user data, run for real with stand-ins for AWS and systemd ----------------------------


def fake_tools(root: Path, store: LocalArtifactStore, ref: str) -> dict[str, str]:
    """A PATH where `aws s3 cp` copies from a directory and `systemd-run` records its argv."""
    bucket = root / "s3" / BUCKET / "releases" / reference_hex(ref)
    bucket.mkdir(parents=True)
    entry = store.root / reference_hex(ref)
    for name in ("manifest.json", "release.tar.gz"):
        (bucket / name).write_bytes((entry / name).read_bytes())
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(
        "#!/bin/sh\n# aws s3 cp --only-show-errors s3://BUCKET/KEY DEST\n"
        f'exec cp "{root}/s3/${{4#s3://}}" "$5"\n'
    )
    (bin_dir / "systemd-run").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{root}/started"\n')
    (bin_dir / "id").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("aws", "systemd-run", "id"):
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CANARIST_INSTALL_ROOT": str(root / "installed"),
        "HOME": str(root),
    }


def run_user_data(
    tmp_path: Path, store: LocalArtifactStore, ref: str, settings: dict[str, Any], aws: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    env = fake_tools(tmp_path / "instance", store, ref)
    parsed = AutoScalingSettings.parse(settings)
    script = render_user_data(parsed, ref, store.manifest(ref), S3ArtifactStore(aws, BUCKET))
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return result, tmp_path / "instance"


def test_the_user_data_checks_and_starts_the_release(
    tmp_path: Path,
    releases: tuple[LocalArtifactStore, str, str],
    settings: dict[str, Any],
    aws: Any,
) -> None:
    """The script fetches by digest, verifies, unpacks read-only and starts the command."""
    store, ref, _ = releases
    result, root = run_user_data(tmp_path, store, ref, settings, aws)
    assert result.returncode == 0, result.stderr
    installed = root / "installed" / reference_hex(ref)
    assert (installed / "app" / "VERSION").read_text() == "v1"
    assert not os.access(installed / "app" / "server.py", os.W_OK) or os.geteuid() == 0
    argv = (root / "started").read_text().splitlines()
    assert f"--setenv=CANARIST_RELEASE={ref}" in argv
    assert "--setenv=PORT=8080" in argv
    assert argv[-2:] == [str(installed / "venv" / "bin" / "python"), "server.py"]


@pytest.mark.parametrize("damage", ["manifest.json", "release.tar.gz"])
def test_the_user_data_refuses_a_tampered_release(
    tmp_path: Path,
    releases: tuple[LocalArtifactStore, str, str],
    settings: dict[str, Any],
    aws: Any,
    damage: str,
) -> None:
    """One changed byte in what S3 serves: the script stops before anything is started."""
    store, ref, other = releases
    env = fake_tools(tmp_path / "instance", store, ref)
    served = tmp_path / "instance" / "s3" / BUCKET / "releases" / reference_hex(ref) / damage
    if damage == "release.tar.gz":
        # A well-formed archive, of another release: only the member hashes tell.
        served.write_bytes((store.root / reference_hex(other) / damage).read_bytes())
    else:
        data = bytearray(served.read_bytes())
        data[10] ^= 0x01
        served.write_bytes(bytes(data))
    script = render_user_data(
        AutoScalingSettings.parse(settings), ref, store.manifest(ref), S3ArtifactStore(aws, BUCKET)
    )
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert not (tmp_path / "instance" / "started").exists()
    assert not (tmp_path / "instance" / "installed" / reference_hex(ref)).exists()


# -- the controller's engine on Auto Scaling behind an ALB ------------------------------------


async def test_the_engine_runs_a_canary_on_groups_behind_an_alb(
    aws: Any,
    platform: AutoScalingPlatform,
    settings: dict[str, Any],
    releases: tuple[LocalArtifactStore, str, str],
    tmp_path: Path,
) -> None:
    """v1 → v2 as a canary through the engine: group sizes and listener weights read back
    through boto3 after every step, then v1's group retired."""
    import asyncio

    from canarist.controller.engine import Engine, GroupDrivers
    from canarist.domain.spec import parse_spec
    from canarist.routers.alb import AlbRouter, AlbService, AlbSettings
    from canarist.store.sqlite import SQLiteStore
    from canarist.testing import FakeCatalog, FakeClock, FakePlatform, FakeRouter

    _, v1, v2 = releases
    elb = aws.client("elbv2")
    lb = elb.create_load_balancer(Name="web", Subnets=settings["subnets"], Type="application")
    listener = elb.create_listener(
        LoadBalancerArn=lb["LoadBalancers"][0]["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}],
    )["Listeners"][0]["ListenerArn"]
    router = AlbRouter(aws, AlbSettings(services={"web": AlbService(listener_arn=listener)}))
    catalog = FakeCatalog({v1: "/healthz", v2: "/healthz"})
    clock = FakeClock()
    spec = parse_spec(
        "services:\n  web:\n    instances: 2\n    analysis: {judge: none}\n"
        "    strategy: {steps: [{set_weight: 10}, {pause: manual}, {set_weight: 50},"
        " {pause: manual}], scale_down_delay: 0s}\n"
        "    aws: {platform: autoscaling, router: alb}\n"
    )
    engine = Engine(
        spec,
        SQLiteStore(tmp_path / "state.db"),
        FakePlatform(catalog),
        FakeRouter(),
        catalog,
        clock,
        groups={"web": GroupDrivers(platform, router)},
    )

    async def settle(ticks: int = 6) -> None:
        for _ in range(ticks):
            await engine.tick()
            await asyncio.sleep(0)
            clock.advance(1)

    def weights() -> dict[str, int]:
        actions = elb.describe_listeners(ListenerArns=[listener])["Listeners"][0]["DefaultActions"]
        config = actions[0]["ForwardConfig"]["TargetGroups"]
        by_arn = {tg["TargetGroupArn"]: tg["Weight"] for tg in config}
        names = {platform.target_group_name(r): r for r in (v1, v2)}
        found = elb.describe_target_groups(TargetGroupArns=list(by_arn))["TargetGroups"]
        return {names[tg["TargetGroupName"]]: by_arn[tg["TargetGroupArn"]] for tg in found}

    await engine.deploy("web", v1)
    await settle()
    assert engine.status("web")[0]["stable"] == v1
    assert sizes(aws, platform, v1) == (2,)
    assert weights() == {v1: 100}

    await engine.deploy("web", v2)
    await settle()
    assert sizes(aws, platform, v1, v2) == (2, 2)
    assert weights() == {v1: 90, v2: 10}
    await engine.promote("web")
    await settle()
    assert weights() == {v1: 50, v2: 50}
    await engine.promote("web")
    await settle()
    assert weights() == {v2: 100}
    status = engine.status("web")[0]
    assert (status["stable"], status["phase"]) == (v2, "stable")
    groups = aws.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [g["AutoScalingGroupName"] for g in groups] == [platform.group_name(v2)]
