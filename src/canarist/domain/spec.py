"""The deployment spec (`canarist.yaml`): services, their health checks and strategies."""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from canarist.domain.durations import Seconds
from canarist.domain.validation import parse_settings
from canarist.errors import ConfigError

STRATEGY_KINDS = ("canary", "linear", "blue-green", "rolling", "all-at-once")
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# A service served on this machine routes through HAProxy backends named after it with
# these suffixes (the canary header's, the sticky cookie's): no other service may take them.
RESERVED_SUFFIXES = ("_canary", "_pinned")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthSpec(_Model):
    """How instances are checked."""

    path: str | None = None  # default: the release's own health path
    interval: Seconds = Field(default=1.0, gt=0)
    timeout: Seconds = Field(default=1.0, gt=0)
    start_timeout: Seconds = Field(default=30.0, gt=0)
    failures: int = Field(default=3, ge=1)  # consecutive failed probes before replacement

    @model_validator(mode="after")
    def _path_is_absolute(self) -> HealthSpec:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("health.path must start with '/'")
        return self


class CanaryStepSpec(_Model):
    """One step of an explicit canary: exactly one of set_weight, pause or analyze."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    # analyze: judge for up to this long; a pass ends it early
    analyze: Seconds | None = Field(default=None, gt=0)
    # pause: a duration, or "manual" / {} / null for a gate that waits for `promote`
    pause: Seconds | None = None
    manual: bool = False

    @model_validator(mode="before")
    @classmethod
    def _manual_pause(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pause" in data:
            value = data["pause"]
            if value in (None, {}, "manual", "promote"):
                rest = {k: v for k, v in data.items() if k != "pause"}
                other = any(rest.get(k) is not None for k in ("set_weight", "analyze"))
                # A null pause beside another action is an absent one (a dumped spec).
                return rest if other else {**rest, "manual": True}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> CanaryStepSpec:
        actions = [
            self.set_weight is not None,
            self.pause is not None or self.manual,
            self.analyze is not None,
        ]
        if sum(actions) != 1:
            raise ValueError(
                "a canary step is one of {set_weight: N}, {pause: DURATION|manual},"
                " {analyze: DURATION}"
            )
        return self


def _default_ladder() -> list[CanaryStepSpec]:
    steps: list[CanaryStepSpec] = []
    for weight in (10, 25, 50):
        steps += [CanaryStepSpec(set_weight=weight), CanaryStepSpec(analyze=30.0)]
    return steps


class StrategySpec(_Model):
    """How a new release replaces the stable one."""

    kind: str = "canary"
    steps: list[CanaryStepSpec] = Field(default_factory=_default_ladder)  # canary
    step_percent: int = Field(default=10, ge=1, le=100)  # linear
    step_interval: Seconds = Field(default=60.0, gt=0)  # linear
    max_surge: int = Field(default=1, ge=0)  # rolling
    max_unavailable: int = Field(default=0, ge=0)  # rolling
    preview: Seconds | None = None  # blue-green: time to hold the new release before the switch
    preview_manual: bool = False  # blue-green: wait for `promote` before the switch
    scale_down_delay: Seconds = 30.0  # how long the previous release stays warm after promotion

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"kind": data}
        return data

    @model_validator(mode="after")
    def _known_kind(self) -> StrategySpec:
        from canarist.domain.strategies import known_strategy

        if not known_strategy(self.kind):
            raise ValueError(f"unknown strategy {self.kind!r}")
        if self.kind == "rolling" and self.max_surge + self.max_unavailable < 1:
            raise ValueError("rolling needs max_surge + max_unavailable >= 1")
        return self


class AnalysisSpec(_Model):
    """How canary and stable are compared while a rollout runs."""

    judge: str = "sequential"  # sequential | threshold | mann-whitney | none
    settings: dict[str, Any] = Field(default_factory=dict)  # the judge's own settings
    background: bool = True  # judge through every step while the canary takes traffic
    # What an analyze step does when its time is up with too little traffic to judge:
    # keep waiting, pause for a person to `promote`, or roll back.
    no_data: Literal["wait", "pause", "fail"] = "wait"
    max_failed_requests: int | None = Field(default=None, ge=1)  # canary failures budget
    max_instance_failures: int = Field(default=3, ge=1)  # canary instances lost, then rollback
    alarms: list[str] = Field(default_factory=list)  # any of these in ALARM rolls back
    # A sticky service's requests its cookie kept on their client's release: left out of
    # the comparison (the false-rollback rate holds whatever the clients do), or judged as
    # the split's (a decision on more requests, but a client that fails on every release,
    # pinned to the canary, counts against it).
    pinned: Literal["leave_out", "judge"] = "leave_out"

    @model_validator(mode="after")
    def _known_judge(self) -> AnalysisSpec:
        if self.judge == "none":
            if self.settings:
                raise ValueError("judge 'none' takes no settings")
            return self
        from canarist.judges import judge_names, make_judge

        if self.judge not in judge_names():
            valid = ", ".join(sorted([*judge_names(), "none"]))
            raise ValueError(f"unknown judge {self.judge!r} (valid: {valid})")
        try:
            make_judge(self.judge, self.settings)
        except ConfigError as exc:  # as a ValueError, the error names the service
            raise ValueError(str(exc)) from None
        return self


class ServiceSpec(_Model):
    """One service: where it listens, how many instances, how it is checked and rolled out."""

    name: str
    listen: str = "127.0.0.1:8080"
    instances: int = Field(default=2, ge=1, le=64)
    health: HealthSpec = Field(default_factory=HealthSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    # Run on AWS instead of this machine: platform, router, metrics and their settings
    # (checked by the drivers when the controller builds them).
    aws: dict[str, Any] | None = None
    sticky: bool = False
    canary_header: str | None = "X-Canarist-Canary"
    drain_timeout: Seconds = 10.0
    stop_grace: Seconds = 10.0
    slots: int | None = Field(default=None, ge=2, le=512)

    @model_validator(mode="after")
    def _check(self) -> ServiceSpec:
        if not _SERVICE_NAME.match(self.name):
            raise ValueError(
                f"service name {self.name!r} must be lowercase letters, digits, '-' or '_'"
            )
        self.listen_address()  # raises on a malformed address
        if self.canary_header is not None and not _HEADER_NAME.match(self.canary_header):
            raise ValueError(f"canary_header {self.canary_header!r} is not a header name")
        if self.slots is not None and self.slots < self.max_instances():
            raise ValueError(f"slots ({self.slots}) must be at least {self.max_instances()}")
        return self

    def listen_address(self) -> tuple[str, int]:
        """(host, port) of the public listener."""
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen {self.listen!r} must be HOST:PORT")
        return host, int(port)

    def max_instances(self) -> int:
        """Most instances the service runs at once, old and new releases together."""
        return 2 * self.instances + self.strategy.max_surge

    def slot_count(self) -> int:
        """Server slots the router declares for this service."""
        return self.slots if self.slots is not None else self.max_instances() + 2


class DeploymentSpec(_Model):
    """The whole of `canarist.yaml`."""

    services: dict[str, ServiceSpec]

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("services"), dict):
            services = {}
            for name, body in data["services"].items():
                body = {} if body is None else body
                if isinstance(body, dict):
                    body = {**body, "name": name}
                services[name] = body
            return {**data, "services": services}
        return data

    @model_validator(mode="after")
    def _distinct_listeners(self) -> DeploymentSpec:
        local = {n for n, s in self.services.items() if s.aws is None}
        for name in sorted(local):
            for suffix in RESERVED_SUFFIXES:
                if name.endswith(suffix) and name.removesuffix(suffix) in local:
                    raise ValueError(
                        f"service {name!r}: the name of {name.removesuffix(suffix)!r} followed"
                        f" by {suffix!r} is taken by that service's own routing; rename it"
                    )
        seen: dict[tuple[str, int], str] = {}
        for name, service in self.services.items():
            if service.aws is not None:
                continue  # served by AWS, not by a listener on this machine
            address = service.listen_address()
            if address in seen:
                raise ValueError(
                    f"services {seen[address]!r} and {name!r} both listen on {address}"
                )
            seen[address] = name
        return self

    def service(self, name: str) -> ServiceSpec:
        """The named service; UnknownService lists the declared ones."""
        from canarist.errors import UnknownService

        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise UnknownService(f"unknown service {name!r} (declared: {known})") from None


def parse_spec(text: str, source: str = "canarist.yaml") -> DeploymentSpec:
    """Parse and validate a spec; any problem is one ConfigError line naming where it is."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}{where}: {problem}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigError(f"{source}: expected a mapping with a 'services' mapping")
    return parse_settings(DeploymentSpec, data, source)
