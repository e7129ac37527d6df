"""Builds the drivers of services that run on AWS, from their `aws:` section.

A registry per driver kind maps the name the spec uses to a factory; an unknown name is
a ConfigError that lists the valid ones. Each factory hands its own section of the spec
to its driver's settings model, so a malformed setting is one ConfigError line naming
the setting. boto3 is reached only through the driver modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from canarist.controller.engine import GroupDrivers
from canarist.domain.spec import DeploymentSpec
from canarist.domain.validation import parse_settings
from canarist.errors import AWSError, ConfigError
from canarist.metrics.base import Metrics
from canarist.platforms.base import GroupPlatform
from canarist.routers.base import Router

Section = Mapping[str, Any]


def _section(aws: Section, key: str, service: str) -> dict[str, Any]:
    value = aws.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"services.{service}.aws.{key}: a mapping of its settings is required")
    return dict(value)


# -- platforms ---------------------------------------------------------------------------


def _autoscaling(service: str, aws: Section, session: Any) -> GroupPlatform:
    from canarist.platforms.autoscaling import AutoScalingPlatform, AutoScalingSettings

    data = {**_section(aws, "autoscaling", service), "service": service}
    settings = parse_settings(AutoScalingSettings, data, f"services.{service}.aws.autoscaling")
    return AutoScalingPlatform(session, settings)


def _lambda(service: str, aws: Section, session: Any) -> GroupPlatform:
    from canarist.platforms.aws_lambda import LambdaPlatform

    data = _section(aws, "lambda", service)
    unknown = set(data) - {"function_name", "bucket", "prefix"}
    if unknown:
        raise ConfigError(f"services.{service}.aws.lambda: unknown setting {sorted(unknown)[0]!r}")
    return LambdaPlatform(
        session,
        str(data.get("function_name", "")),
        bucket=data.get("bucket"),
        prefix=str(data.get("prefix", "releases")),
    )


def _external(service: str, aws: Section, session: Any) -> GroupPlatform:
    from canarist.platforms.external import ExternalPlatform

    data = _section(aws, "external", service)
    targets = data.get("targets")
    if not isinstance(targets, dict) or set(data) - {"targets"}:
        raise ConfigError(
            f"services.{service}.aws.external: expected {{targets: {{release: target}}}}"
        )
    return ExternalPlatform(targets)


# -- routers -----------------------------------------------------------------------------


def _route53(service: str, aws: Section, session: Any) -> Router:
    from canarist.routers.route53 import Route53Router, Route53Service, Route53Settings

    body = parse_settings(
        Route53Service, _section(aws, "route53", service), f"services.{service}.aws.route53"
    )
    return Route53Router(session, Route53Settings(services={service: body}))


def _alb(service: str, aws: Section, session: Any) -> Router:
    from canarist.routers.alb import AlbRouter, AlbService, AlbSettings

    body = parse_settings(AlbService, _section(aws, "alb", service), f"services.{service}.aws.alb")
    return AlbRouter(session, AlbSettings(services={service: body}))


def _lambda_alias(service: str, aws: Section, session: Any) -> Router:
    from canarist.routers.lambda_alias import (
        LambdaAliasRouter,
        LambdaAliasService,
        LambdaAliasSettings,
    )

    where = f"services.{service}.aws.lambda_alias"
    body = parse_settings(LambdaAliasService, _section(aws, "lambda_alias", service), where)
    return LambdaAliasRouter(session, LambdaAliasSettings(services={service: body}))


def _apigateway(service: str, aws: Section, session: Any) -> Router:
    from canarist.routers.apigateway import ApiGatewayRouter, ApiGatewayService, ApiGatewaySettings

    where = f"services.{service}.aws.apigateway"
    body = parse_settings(ApiGatewayService, _section(aws, "apigateway", service), where)
    return ApiGatewayRouter(session, ApiGatewaySettings(services={service: body}))


# -- metrics -----------------------------------------------------------------------------


def _cloudwatch(service: str, aws: Section, session: Any) -> Metrics | None:
    from canarist.metrics.cloudwatch import CloudWatchMetrics, CloudWatchSettings

    data = _section(aws, "cloudwatch", service)
    source = {k: v for k, v in data.items() if k not in ("period", "latency_statistics", "settle")}
    shared = {k: v for k, v in data.items() if k in ("period", "latency_statistics", "settle")}
    settings = parse_settings(
        CloudWatchSettings,
        {**shared, "services": {service: source}},
        f"services.{service}.aws.cloudwatch",
    )
    return CloudWatchMetrics(session, settings)


def _no_metrics(service: str, aws: Section, session: Any) -> Metrics | None:
    return None


PLATFORMS: dict[str, Callable[[str, Section, Any], GroupPlatform]] = {
    "autoscaling": _autoscaling,
    "external": _external,
    "lambda": _lambda,
}
ROUTERS: dict[str, Callable[[str, Section, Any], Router]] = {
    "alb": _alb,
    "apigateway": _apigateway,
    "lambda-alias": _lambda_alias,
    "route53": _route53,
}
METRICS: dict[str, Callable[[str, Section, Any], Metrics | None]] = {
    "cloudwatch": _cloudwatch,
    "none": _no_metrics,
}


def _pick(registry: Mapping[str, Any], kind: str, name: object, service: str) -> Any:
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ConfigError(
            f"services.{service}.aws.{kind}: unknown {kind} {name!r} (valid: {valid})"
        )
    return registry[str(name)]


def group_drivers(spec: DeploymentSpec) -> dict[str, GroupDrivers]:
    """The drivers of every service with an `aws:` section (none for the others)."""
    found: dict[str, GroupDrivers] = {}
    for name, svc in spec.services.items():
        aws = svc.aws
        if aws is None:
            continue
        platform = _pick(PLATFORMS, "platform", aws.get("platform"), name)
        router = _pick(ROUTERS, "router", aws.get("router"), name)
        metrics = _pick(METRICS, "metrics", aws.get("metrics", "none"), name)
        from canarist.aws.clients import aws_call
        from canarist.aws.clients import session as make_session

        try:
            with aws_call(f"services.{name}.aws"):
                session = make_session(region=aws.get("region"), profile=aws.get("profile"))
                found[name] = GroupDrivers(
                    platform=platform(name, aws, session),
                    router=router(name, aws, session),
                    metrics=metrics(name, aws, session),
                )
        except AWSError as exc:
            raise ConfigError(str(exc)) from exc  # no region, no such profile: the spec's
    return found
