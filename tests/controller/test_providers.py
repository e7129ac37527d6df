"""The `aws:` section of a service: registries of drivers and one-line errors."""

from __future__ import annotations

import pytest

from canarist.controller.providers import group_drivers
from canarist.domain.spec import parse_spec
from canarist.errors import ConfigError
from canarist.platforms.aws_lambda import LambdaPlatform
from canarist.routers.lambda_alias import LambdaAliasRouter

LAMBDA = """
services:
  api:
    instances: 1
    aws:
      region: eu-west-1
      platform: lambda
      router: lambda-alias
      lambda: {function_name: checkout, bucket: releases}
      lambda_alias: {function_name: checkout, alias: live}
"""


def test_a_lambda_service_gets_its_drivers() -> None:
    """platform: lambda + router: lambda-alias build those drivers; others stay local."""
    spec = parse_spec(LAMBDA + "  web:\n    listen: 127.0.0.1:9999\n")
    drivers = group_drivers(spec)
    assert set(drivers) == {"api"}
    assert isinstance(drivers["api"].platform, LambdaPlatform)
    assert isinstance(drivers["api"].router, LambdaAliasRouter)
    assert drivers["api"].metrics is None


def test_two_aws_services_need_no_distinct_listeners() -> None:
    """Services on AWS have no local listener, so they never clash on one."""
    text = LAMBDA + LAMBDA.split("services:\n")[1].replace("  api:", "  api2:")
    assert set(parse_spec(text).services) == {"api", "api2"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ("platform: lambda", "platform: k8s"),
            "unknown platform 'k8s' (valid: autoscaling, external, lambda)",
        ),
        (("router: lambda-alias", "router: nginx"), "unknown router 'nginx' (valid: alb,"),
        (("      lambda_alias: {function_name: checkout, alias: live}\n", ""), "lambda_alias"),
        (("alias: live", "alias: '42'"), "services.api.aws.lambda_alias"),
        (("bucket: releases", "bucket: releases, colour: blue"), "unknown setting 'colour'"),
        (("region: eu-west-1", "region: eu-west-1\n      metrics: graphite"), "unknown metrics"),
    ],
)
def test_bad_aws_sections_are_one_config_error(change: tuple[str, str], fragment: str) -> None:
    """Each mistake names where it is, in one line."""
    spec = parse_spec(LAMBDA.replace(*change))
    with pytest.raises(ConfigError) as caught:
        group_drivers(spec)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_autoscaling_key_pair_is_refused() -> None:
    """Immutability: launch templates never carry a key pair."""
    text = LAMBDA.replace("platform: lambda", "platform: autoscaling").replace(
        "      lambda: {function_name: checkout, bucket: releases}\n",
        "      autoscaling: {vpc_id: vpc-1, subnets: [subnet-1], bucket: b, image_id: ami-1,"
        " key_name: ops}\n",
    )
    with pytest.raises(ConfigError, match="key"):
        group_drivers(parse_spec(text))
