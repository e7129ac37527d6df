"""Strategies compiled into plans: pure functions from a strategy spec to steps.

CodeDeploy's deployment configuration names are accepted as presets, with or without
their prefixes: `Canary10Percent5Minutes`, `CodeDeployDefault.LambdaLinear10PercentEvery1Minute`,
`ECSCanary10Percent15Minutes`, `AllAtOnce`, and the rest of that family.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from canarist.domain.plan import Analyze, Pause, Plan, Promote, Scale, SetWeight, Step
from canarist.errors import ConfigError

if TYPE_CHECKING:
    from canarist.domain.spec import StrategySpec

_PREFIX = re.compile(r"^(CodeDeployDefault\.)?(Lambda|ECS)?")
_CANARY = re.compile(r"^Canary(\d+)Percent(\d+)Minutes?$")
_LINEAR = re.compile(r"^Linear(\d+)PercentEvery(\d+)Minutes?$")
_KINDS = ("canary", "linear", "blue-green", "rolling", "all-at-once")


def _preset(name: str) -> tuple[str, int, float] | None:
    """(kind, percent, seconds) for a CodeDeploy configuration name, else None."""
    bare = _PREFIX.sub("", name, count=1)
    if bare == "AllAtOnce":
        return ("all-at-once", 100, 0.0)
    for kind, pattern in (("canary", _CANARY), ("linear", _LINEAR)):
        match = pattern.match(bare)
        if match:
            percent, minutes = int(match.group(1)), int(match.group(2))
            if 1 <= percent <= 99 and minutes >= 1:
                return (kind, percent, minutes * 60.0)
    return None


def known_strategy(name: str) -> bool:
    """True for a strategy kind or a CodeDeploy preset name."""
    return name in _KINDS or _preset(name) is not None


def strategy_names() -> str:
    """The valid names, for error messages."""
    return ", ".join(_KINDS) + ", or a CodeDeploy preset such as Canary10Percent5Minutes"


def override(spec: StrategySpec, name: str) -> StrategySpec:
    """The strategy switched to `name` (`deploy --strategy`), keeping the shared settings."""
    if not known_strategy(name):
        raise ConfigError(f"unknown strategy {name!r}; valid: {strategy_names()}")
    if name == spec.kind:
        return spec
    return spec.model_copy(update={"kind": name, "steps": type(spec)().steps})


def compile_plan(strategy: StrategySpec, instances: int, *, first: bool = False) -> Plan:
    """The steps that take a service from its stable release to a new one.

    `first` is the very first release of a service: there is nothing to shift traffic
    from, so it is started at full size and given all traffic.
    """
    if first:
        return (Scale("canary", instances), SetWeight(100), Promote(0.0))
    delay = strategy.scale_down_delay
    preset = _preset(strategy.kind)
    if preset is not None:
        kind, percent, seconds = preset
        if kind == "canary":
            return _canary((SetWeight(percent), Pause(seconds)), instances, delay)
        if kind == "linear":
            return _linear(percent, seconds, instances, delay)
        return _all_at_once(instances, 0.0)
    if strategy.kind == "canary":
        steps: list[Step] = []
        for item in strategy.steps:
            if item.set_weight is not None:
                steps.append(SetWeight(item.set_weight))
            elif item.analyze is not None:
                steps.append(Analyze(item.analyze))
            else:
                steps.append(Pause(None if item.manual else item.pause))
        return _canary(tuple(steps), instances, delay)
    if strategy.kind == "linear":
        return _linear(strategy.step_percent, strategy.step_interval, instances, delay)
    if strategy.kind == "blue-green":
        return _blue_green(strategy, instances, delay)
    if strategy.kind == "rolling":
        return _rolling(instances, strategy.max_surge, strategy.max_unavailable)
    return _all_at_once(instances, 0.0)


def _canary(steps: tuple[Step, ...], instances: int, delay: float) -> Plan:
    # The canary runs at full size from the start so that any weight, 100 % included,
    # is only a router change, and an abort is instant.
    plan: list[Step] = [Scale("canary", instances), *steps]
    if not any(isinstance(s, SetWeight) and s.percent == 100 for s in steps[-1:]):
        plan.append(SetWeight(100))
    plan.append(Promote(delay))
    return tuple(plan)


def _linear(percent: int, interval: float, instances: int, delay: float) -> Plan:
    steps: list[Step] = []
    weight = percent
    while weight < 100:
        steps += [SetWeight(weight), Pause(interval)]
        weight += percent
    return _canary(tuple(steps), instances, delay)


def _blue_green(strategy: StrategySpec, instances: int, delay: float) -> Plan:
    plan: list[Step] = [Scale("canary", instances)]
    if strategy.preview_manual:
        plan.append(Pause(None))
    elif strategy.preview:
        plan.append(Pause(strategy.preview))
    plan.append(SetWeight(100))
    if delay > 0:
        # The warm period belongs to the rollout: the judge keeps watching, and a rollback
        # in it is a weight change back to the old release, still running at full size.
        plan.append(Pause(delay))
    plan.append(Promote(0.0))
    return tuple(plan)


def _all_at_once(instances: int, delay: float) -> Plan:
    return (Scale("canary", instances), SetWeight(100), Promote(delay))


def _rolling(instances: int, max_surge: int, max_unavailable: int) -> Plan:
    """Batches that keep at most instances+surge running and at least instances-unavailable."""
    if max_surge + max_unavailable < 1:
        raise ConfigError("rolling needs max_surge + max_unavailable >= 1")
    new, old = 0, instances
    steps: list[Step] = []
    while new < instances or old > 0:
        add = min(instances - new, max(0, instances + max_surge - new - old))
        if add:
            new += add
            steps += [Scale("canary", new), SetWeight(_share(new, old))]
        remove = min(old, max(0, new + old - instances + max_unavailable))
        if remove:
            old -= remove
            # Traffic leaves the instances before they are drained and stopped.
            steps += [SetWeight(_share(new, old)), Scale("stable", old)]
        if not add and not remove:  # pragma: no cover - guarded by the check above
            raise ConfigError("rolling plan cannot make progress")
    steps.append(Promote(0.0))
    return tuple(_merge_weights(steps))


def _share(new: int, old: int) -> int:
    """Percent of traffic for `new` instances out of new+old equal ones."""
    if new + old == 0:
        return 100
    return min(100, math.floor(100 * new / (new + old) + 0.5))


def _merge_weights(steps: list[Step]) -> list[Step]:
    out: list[Step] = []
    for step in steps:
        if out and isinstance(step, SetWeight) and isinstance(out[-1], SetWeight):
            out[-1] = step  # two weight moves in a row: only the last one matters
            continue
        out.append(step)
    return out
