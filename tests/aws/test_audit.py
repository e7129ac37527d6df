"""The immutability audit against moto, and `canarist audit`'s output and exit codes."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from canarist.aws.audit import Finding, audit
from canarist.cli.audit import audit as audit_command
from canarist.errors import ConfigError
from tests.aws.conftest import REGION

pytestmark = pytest.mark.aws


def kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, f.resource) for f in findings]


def open_group(aws: Any, name: str, *rules: dict[str, Any]) -> str:
    ec2 = aws.client("ec2")
    group = ec2.create_security_group(GroupName=name, Description=name)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=list(rules))
    return str(group)


# moto launches from any AMI id; listing its catalogue of real ones takes a second.
AMI = "ami-0123456789abcdef0"


def world(port_from: int, port_to: int, *, v6: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": port_from, "ToPort": port_to}
    if v6:
        rule["Ipv6Ranges"] = [{"CidrIpv6": "::/0"}]
    else:
        rule["IpRanges"] = [{"CidrIp": "0.0.0.0/0"}]
    return rule


def test_a_clean_account_has_no_finding(aws: Any) -> None:
    """moto's default VPCs have a default security group with no inbound rule from the world."""
    groups = aws.client("ec2").describe_security_groups()["SecurityGroups"]
    assert groups and all(g["GroupName"] == "default" for g in groups)
    assert all(not r.get("IpRanges") for g in groups for r in g["IpPermissions"])
    assert audit(aws, 30) == []


def test_security_groups_open_to_the_world_on_admin_ports(aws: Any) -> None:
    """22 or 3389 from 0.0.0.0/0 or ::/0, by port, range or all traffic; others are fine."""
    ssh = open_group(aws, "ssh", world(22, 22))
    rdp_v6 = open_group(aws, "rdp-v6", world(3000, 3400, v6=True))
    everything = open_group(aws, "all", {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    open_group(aws, "web", world(80, 80), world(443, 443))
    office = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    open_group(aws, "office-ssh", {**office, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]})
    found = audit(aws, 30)
    assert sorted(kinds(found)) == sorted(
        [
            ("open-admin-port", ssh),
            ("open-admin-port", rdp_v6),
            ("open-admin-port", everything),  # SSH
            ("open-admin-port", everything),  # and RDP
        ]
    )
    details = {f.detail for f in found if f.resource == rdp_v6}
    assert details == {"RDP (port 3389) open to ::/0 by rule tcp 3000-3400 in rdp-v6"}
    assert all(f.region == REGION for f in found)


def test_launch_templates_with_a_key_pair(aws: Any) -> None:
    """A key pair in the latest or the default version is a finding; in neither, it is not."""
    ec2 = aws.client("ec2")
    clean = ec2.create_launch_template(
        LaunchTemplateName="clean", LaunchTemplateData={"ImageId": AMI}
    )["LaunchTemplate"]["LaunchTemplateId"]
    keyed = ec2.create_launch_template(
        LaunchTemplateName="keyed", LaunchTemplateData={"ImageId": AMI}
    )["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=keyed, LaunchTemplateData={"ImageId": AMI, "KeyName": "ops"}
    )
    fixed = ec2.create_launch_template(
        LaunchTemplateName="fixed", LaunchTemplateData={"ImageId": AMI, "KeyName": "ops"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=fixed, LaunchTemplateData={"ImageId": AMI})
    ec2.modify_launch_template(LaunchTemplateId=fixed, DefaultVersion="2")
    found = audit(aws, 30)
    assert kinds(found) == [("launch-template-key-pair", keyed)]
    assert found[0].detail == "version 2 (latest) of keyed gives instances key pair 'ops'"
    assert clean not in {f.resource for f in found}


def test_old_instances_and_instances_with_a_key_pair(aws: Any) -> None:
    """Instances past the age allowed are to be replaced; a key pair is a finding too."""
    ec2 = aws.client("ec2")
    ec2.create_key_pair(KeyName="ops")
    keyed = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, KeyName="ops")
    plain = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
    keyed_id = keyed["Instances"][0]["InstanceId"]
    plain_id = plain["Instances"][0]["InstanceId"]
    assert kinds(audit(aws, 30)) == [("instance-key-pair", keyed_id)]

    def later() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=31)

    found = audit(aws, 30, now=later)
    assert sorted(kinds(found)) == sorted(
        [
            ("instance-key-pair", keyed_id),
            ("old-instance", keyed_id),
            ("old-instance", plain_id),
        ]
    )
    assert "replace it" in next(f.detail for f in found if f.kind == "old-instance")
    ec2.terminate_instances(InstanceIds=[keyed_id, plain_id])
    assert audit(aws, 30, now=later) == []  # only running instances count


def test_bad_input_is_a_config_error(aws: Any) -> None:
    with pytest.raises(ConfigError, match="negative"):
        audit(aws, -1)


# -- the command ----------------------------------------------------------------------------


def run(*args: str) -> Any:
    """`canarist audit ARGS` on a Typer app of its own, as the CLI registers it."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(audit_command)
    app.command("noop")(lambda: None)  # two commands, so `audit` is a sub-command
    return CliRunner().invoke(app, ["audit", *args])


def test_command_on_a_clean_account_exits_0(aws: Any) -> None:
    result = run("--region", REGION)
    assert result.exit_code == 0, result.output
    assert "no findings" in result.stdout
    as_json = run("--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == []


def test_command_with_findings_exits_1(aws: Any) -> None:
    group = open_group(aws, "ssh", world(22, 22))
    aws.client("ec2").run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
    result = run("--json", "--max-age", "0")
    assert result.exit_code == 1
    listed = json.loads(result.stdout)
    assert {(f["kind"], f["region"]) for f in listed} == {
        ("open-admin-port", REGION),
        ("old-instance", REGION),
    }
    assert {"kind", "resource", "region", "detail"} == set(listed[0])
    table = run()
    assert table.exit_code == 1
    assert group in table.stdout and "open-admin-port" in table.stdout
    assert "1 finding" in table.stderr


def test_command_bad_input_exits_2(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    negative = run("--max-age", "-3")
    assert negative.exit_code == 2
    assert negative.stderr.strip().count("\n") == 0
    assert "negative" in negative.stderr
    assert run("--region", "not a region!").exit_code == 2
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    no_region = run()
    assert no_region.exit_code == 2
    assert "no AWS region" in no_region.stderr
