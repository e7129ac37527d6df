"""A plan: the ordered steps a rollout walks through. Pure data, stored as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from canarist.errors import ConfigError

Role = Literal["canary", "stable"]


@dataclass(frozen=True)
class Scale:
    """Run `count` healthy instances of the role's release (fewer: drain, then stop)."""

    role: Role
    count: int
    kind: Literal["scale"] = "scale"


@dataclass(frozen=True)
class SetWeight:
    """Send `percent` of the service's traffic to the canary, the rest to stable."""

    percent: int
    kind: Literal["set_weight"] = "set_weight"


@dataclass(frozen=True)
class Pause:
    """Wait `seconds`, or until `promote` when `seconds` is None."""

    seconds: float | None
    kind: Literal["pause"] = "pause"


@dataclass(frozen=True)
class Analyze:
    """Judge the canary against stable for up to `seconds`; a pass ends it early."""

    seconds: float
    kind: Literal["analyze"] = "analyze"


@dataclass(frozen=True)
class Promote:
    """The canary becomes stable; the old release stays warm for `scale_down_delay` seconds."""

    scale_down_delay: float
    kind: Literal["promote"] = "promote"


Step = Scale | SetWeight | Pause | Analyze | Promote
Plan = tuple[Step, ...]


def step_to_dict(step: Step) -> dict[str, Any]:
    """The JSON form of a step."""
    if isinstance(step, Scale):
        return {"kind": step.kind, "role": step.role, "count": step.count}
    if isinstance(step, SetWeight):
        return {"kind": step.kind, "percent": step.percent}
    if isinstance(step, Pause):
        return {"kind": step.kind, "seconds": step.seconds}
    if isinstance(step, Analyze):
        return {"kind": step.kind, "seconds": step.seconds}
    return {"kind": step.kind, "scale_down_delay": step.scale_down_delay}


def step_from_dict(data: dict[str, Any]) -> Step:
    """Inverse of `step_to_dict`."""
    kind = data.get("kind")
    if kind == "scale":
        role = data["role"]
        if role not in ("canary", "stable"):
            raise ConfigError(f"unknown role in plan: {role!r}")
        return Scale(role=role, count=int(data["count"]))
    if kind == "set_weight":
        return SetWeight(percent=int(data["percent"]))
    if kind == "pause":
        seconds = data.get("seconds")
        return Pause(seconds=None if seconds is None else float(seconds))
    if kind == "analyze":
        return Analyze(seconds=float(data["seconds"]))
    if kind == "promote":
        return Promote(scale_down_delay=float(data["scale_down_delay"]))
    raise ConfigError(f"unknown step kind in plan: {kind!r}")


def plan_to_list(plan: Plan) -> list[dict[str, Any]]:
    """The JSON form of a plan."""
    return [step_to_dict(step) for step in plan]


def plan_from_list(data: list[dict[str, Any]]) -> Plan:
    """Inverse of `plan_to_list`."""
    return tuple(step_from_dict(item) for item in data)


def describe(step: Step) -> str:
    """One short line for a step, as `status` shows it."""
    if isinstance(step, Scale):
        return f"scale {step.role} to {step.count}"
    if isinstance(step, SetWeight):
        return f"set canary weight {step.percent}%"
    if isinstance(step, Pause):
        return "pause until promote" if step.seconds is None else f"pause {step.seconds:g}s"
    if isinstance(step, Analyze):
        return f"analyze up to {step.seconds:g}s"
    return "promote"
