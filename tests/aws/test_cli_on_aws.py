"""The same commands drive AWS: `canarist up` / `deploy` / `promote` / `rollback` on a
Lambda alias, through the real controller process, against moto's server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canarist.platforms.aws_lambda import LambdaPlatform
from tests.aws.conftest import REGION, create_lambda, package
from tests.e2e.harness import Canarist

pytestmark = [pytest.mark.aws, pytest.mark.e2e]

SPEC = """\
services:
  api:
    instances: 1
    strategy:
      kind: canary
      steps: [{set_weight: 20}, {pause: manual}]
      scale_down_delay: 0s
    analysis: {judge: none}
    aws:
      region: eu-west-1
      platform: lambda
      router: lambda-alias
      lambda: {function_name: checkout, bucket: releases}
      lambda_alias: {function_name: checkout, alias: live}
"""


@pytest.fixture
def project(aws: Any, tmp_path: Path) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """A project whose service runs on Lambda; two releases built and packaged in S3."""
    create_lambda(aws, "checkout", package("initial"))
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="releases", CreateBucketConfiguration={"LocationConstraint": REGION})
    (tmp_path / "canarist.yaml").write_text(SPEC)
    cli = Canarist(tmp_path, 0)  # its environment carries the `aws` fixture's moto settings
    refs = {}
    for version in ("1", "2"):
        app = tmp_path / f"app{version}"
        app.mkdir()
        (app / "handler.py").write_text(f"def main(event, context):\n    return {version!r}\n")
        (app / "pyproject.toml").write_text(
            '[tool.canarist.app]\ncommand = ["python", "handler.py"]\n'
        )
        ref = cli("build", str(app)).stdout.strip().splitlines()[-1]
        platform = LambdaPlatform(aws, "checkout", bucket="releases")
        s3.put_object(Bucket="releases", Key=platform.package_key(ref), Body=package(version))
        refs[version] = ref
    cli("up")
    try:
        yield cli, refs
    finally:
        cli("down", check=False, timeout=60)


def alias(aws: Any) -> tuple[str, dict[str, float]]:
    got = aws.client("lambda").get_alias(FunctionName="checkout", Name="live")
    return got["FunctionVersion"], dict(
        got.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})
    )


def test_deploy_promote_and_rollback_on_a_lambda_alias(
    aws: Any, project: tuple[Canarist, dict[str, str]]
) -> None:
    """The CLI's verbs move the alias; every step is read back through boto3."""
    cli, refs = project
    assert cli("deploy", "api", refs["1"], "--wait").code == 0
    assert alias(aws) == ("1", {})
    status = cli.status("api")
    assert status["stable"] == refs["1"] and status["endpoint"] is None
    cli("deploy", "api", refs["2"])
    cli.wait_for(lambda s: s["phase"] == "paused", what="the manual gate", service="api")
    assert alias(aws) == ("1", {"2": pytest.approx(0.2)})
    cli("promote", "api")
    cli.wait_for(lambda s: s["phase"] == "stable" and s["stable"] == refs["2"], service="api")
    assert alias(aws) == ("2", {})
    cli("rollback", "api")
    cli.wait_for(lambda s: s["phase"] == "stable" and s["stable"] == refs["1"], service="api")
    assert alias(aws) == ("1", {})
    history = json.loads(cli("history", "api", "--json").stdout)
    assert [h["strategy"] for h in history] == ["rollback", "canary", "initial"]
