"""The engine walks plans and converges services, checked with in-memory drivers."""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

import pytest

from canarist.controller.engine import Engine
from canarist.domain.spec import parse_spec
from canarist.errors import (
    BadInput,
    RolloutInProgress,
    RouterError,
    UnknownRelease,
    UnknownService,
)
from canarist.store.sqlite import SQLiteStore
from canarist.testing import FakeCatalog, FakeClock, FakeMetrics, FakePlatform, FakeRouter

SPEC = """
services:
  web:
    listen: 127.0.0.1:18080
    instances: 2
    strategy:
      kind: canary
      steps:
        - set_weight: 20
        - pause: 10s
        - set_weight: 50
        - pause: manual
      scale_down_delay: 30s
"""


class World:
    """An engine with fake drivers over a real SQLite store."""

    def __init__(self, tmp: Path, spec: str = SPEC) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.catalog = FakeCatalog()
        self.platform = FakePlatform(self.catalog)
        self.router = FakeRouter()
        self.metrics = FakeMetrics()
        self.spec = parse_spec(spec)
        self.store = SQLiteStore(tmp / "state.db")
        self.engine = self.new_engine()
        self.v1 = self.catalog.add("v1")
        self.v2 = self.catalog.add("v2")

    def new_engine(self) -> Engine:
        """A fresh engine over the same store and drivers: a restarted controller."""
        return Engine(
            self.spec,
            self.store,
            self.platform,
            self.router,
            self.catalog,
            self.clock,
            self.metrics,
        )

    async def settle(self, ticks: int = 6, step: float = 0.5) -> None:
        """Tick a few times, letting start/stop tasks run and time pass."""
        import asyncio

        for _ in range(ticks):
            await self.engine.tick()
            for _ in range(3):
                await asyncio.sleep(0)
            self.clock.advance(step)

    def weights(self) -> dict[str, int]:
        """Effective weights last applied to the router."""
        return self.router.history[-1][1] if self.router.history else {}

    def status(self) -> dict[str, object]:
        """status --json of the service."""
        return self.engine.status("web")[0]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def deploy_stable(world: World) -> None:
    await world.engine.deploy("web", world.v1)
    await world.settle()
    assert world.status()["phase"] == "stable"


async def test_first_deploy_starts_full_size_and_takes_all_traffic(world: World) -> None:
    """The first release of a service has nothing to shift from: all traffic, promoted."""
    rollout = await world.engine.deploy("web", world.v1)
    assert rollout.strategy == "initial"
    await world.settle()
    status = world.status()
    assert status["stable"] == world.v1
    assert status["phase"] == "stable"
    assert world.weights() == {world.v1: 100}
    assert len(world.platform.running) == 2


async def test_canary_walks_its_steps_and_waits_at_the_manual_gate(world: World) -> None:
    """Weights follow the plan; the manual pause holds until promote."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(4)
    assert world.weights() == {world.v1: 80, world.v2: 20}
    assert len(world.platform.running) == 4  # the canary runs at full size beside stable
    await world.settle(24)  # 10 s timed pause passes
    assert world.weights() == {world.v1: 50, world.v2: 50}
    assert world.status()["phase"] == "paused"
    await world.settle(10)
    assert world.status()["phase"] == "paused"  # a manual gate does not time out
    await world.engine.promote("web")
    await world.settle(4)
    status = world.status()
    assert status["phase"] == "stable"
    assert status["stable"] == world.v2
    assert world.weights() == {world.v2: 100}
    history = world.engine.history("web")
    assert history[0]["phase"] == "promoted"
    assert history[0]["exit_code"] == 0


async def test_previous_release_stays_warm_then_retires(world: World) -> None:
    """After promotion the old release keeps running for scale_down_delay, then stops."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.engine.promote("web", full=True)
    await world.settle(6)
    releases = [i.release for i in world.platform.running.values()]
    assert releases.count(world.v1) == 2 and releases.count(world.v2) == 2
    await world.settle(70)  # 35 s > 30 s delay
    releases = [i.release for i in world.platform.running.values()]
    assert releases.count(world.v1) == 0 and releases.count(world.v2) == 2


async def test_abort_returns_traffic_and_retires_the_canary(world: World) -> None:
    """Abort: stable takes 100 %, the canary's instances are drained and stopped."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(4)
    ended = await world.engine.abort("web")
    assert ended.phase == "aborted"
    await world.settle(6)
    assert world.weights() == {world.v1: 100}
    assert {i.release for i in world.platform.running.values()} == {world.v1}
    assert world.engine.history("web")[0]["exit_code"] == 4


async def test_rollback_after_promotion_switches_to_the_warm_previous_release(
    world: World,
) -> None:
    """Within the warm window, rollback is a weight change: no new instance starts."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.engine.promote("web", full=True)
    await world.settle(6)
    started = len(world.platform.started)
    rollout = await world.engine.rollback("web")
    assert rollout.strategy == "rollback"
    await world.settle(6)
    assert world.status()["stable"] == world.v1
    assert world.weights() == {world.v1: 100}
    assert len(world.platform.started) == started


async def test_rollback_mid_rollout_ends_it_as_rolled_back(world: World) -> None:
    """During a rollout, rollback restores stable and the outcome is rolled_back (exit 3)."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(4)
    ended = await world.engine.rollback("web")
    assert ended.phase == "rolled_back"
    await world.settle(4)
    assert world.weights() == {world.v1: 100}
    assert world.engine.history("web")[0]["exit_code"] == 3


async def test_an_idle_service_costs_one_read_a_tick(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between releases a tick reads the service's instances once and no rollout (a
    rollout begins with a write, after which it is looked for again); a dead instance and
    a deploy are still seen at the next tick."""
    await deploy_stable(world)
    reads: collections.Counter[str] = collections.Counter()
    for name in ("instances", "active_rollout"):
        read = getattr(world.store, name)

        def counted(*args: object, _name: str = name, _read: Any = read, **kw: object) -> Any:
            reads[_name] += 1
            return _read(*args, **kw)

        monkeypatch.setattr(world.store, name, counted)
    await world.settle(10)
    assert reads == {"instances": 10}

    victim = next(iter(world.platform.running))
    world.platform.kill(victim)
    await world.settle(1)
    assert victim not in world.platform.running
    await world.engine.deploy("web", world.v2)
    await world.settle(4)  # the canary's instance starts, then takes its weight
    assert world.weights() == {world.v1: 80, world.v2: 20}


async def test_a_failure_at_every_tick_is_logged_when_it_begins_and_ends(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A router that fails at every tick is one warning, not ten a second, and a line when
    it works again; a failure for another reason is said again."""
    await deploy_stable(world)
    why = ["HAProxy's socket is unreachable"]

    async def failing(*args: object) -> None:
        raise RouterError(why[0])

    with caplog.at_level(logging.INFO, logger="canarist.controller"):
        monkeypatch.setattr(world.router, "apply", failing)
        await world.settle(10)
        why[0] = "HAProxy refused a change"
        await world.settle(10)
        monkeypatch.undo()
        await world.settle(2)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "web: router apply: HAProxy's socket is unreachable"),
        ("WARNING", "web: router apply: HAProxy refused a change"),
        ("INFO", "web: router apply: works again"),
    ]


async def test_a_dead_instance_is_replaced_by_a_fresh_one(world: World) -> None:
    """Never restarted in place: a new instance id of the same release takes over."""
    await deploy_stable(world)
    victim = next(iter(world.platform.running))
    world.platform.kill(victim)
    await world.settle(4)
    assert victim not in world.platform.running
    assert len(world.platform.running) == 2
    assert all(i.release == world.v1 for i in world.platform.running.values())


async def test_an_unhealthy_instance_is_replaced(world: World) -> None:
    """Failing health checks several times in a row takes an instance out and replaces it."""
    await deploy_stable(world)
    sick = next(iter(world.platform.running))
    world.platform.unhealthy.add(sick)
    await world.settle(12)
    assert sick not in world.platform.running
    assert len(world.platform.running) == 2


async def test_a_canary_that_cannot_start_is_rolled_back(world: World) -> None:
    """Repeated start failures of the new release end the rollout as rolled back."""
    await deploy_stable(world)
    world.platform.broken.add(world.v2)
    await world.engine.deploy("web", world.v2)
    await world.settle(10)
    history = world.engine.history("web")
    assert history[0]["phase"] == "rolled_back"
    assert "failed to start" in history[0]["reason"]
    assert world.weights() == {world.v1: 100}


async def test_a_restarted_controller_resumes_where_the_rollout_stood(world: World) -> None:
    """A new engine over the same store continues the same rollout at the same step."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(4)
    before = world.status()["step"]
    world.engine = world.new_engine()
    await world.settle(2)
    after = world.status()["step"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert after["index"] >= before["index"]
    assert world.weights() == {world.v1: 80, world.v2: 20}
    assert len(world.platform.running) == 4  # adopted, not restarted
    await world.settle(24)
    assert world.weights() == {world.v1: 50, world.v2: 50}


async def test_a_start_interrupted_by_a_crash_is_discarded(world: World) -> None:
    """An instance recorded as starting when the controller died is discarded, not adopted."""
    from canarist.store.records import InstanceRecord

    await deploy_stable(world)
    world.store.save_instance(
        InstanceRecord(id="web-orphan", service="web", release=world.v1, state="starting")
    )
    world.platform.running["web-orphan"] = next(iter(world.platform.running.values()))
    world.engine = world.new_engine()
    await world.settle(2)
    assert "web-orphan" not in world.platform.running
    assert "web-orphan" not in {i["id"] for i in world.status()["instances"]}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda w: w.engine.deploy("nope", w.v1), UnknownService),
        (lambda w: w.engine.deploy("web", "sha256:" + "0" * 64), UnknownRelease),
        (lambda w: w.engine.promote("web"), BadInput),
        (lambda w: w.engine.abort("web"), BadInput),
        (lambda w: w.engine.rollback("web"), BadInput),
        (lambda w: w.engine.deploy("web", w.v1, "no-such-strategy"), BadInput),
    ],
)
async def test_bad_input_changes_nothing(world: World, call, error) -> None:  # type: ignore[no-untyped-def]
    """Each refused command raises its BadInput type and leaves the store as it was."""
    before = world.engine.status("web")
    with pytest.raises(error):
        await call(world)
    assert world.engine.status("web") == before
    assert world.engine.history("web") == []


async def test_a_second_rollout_while_one_runs_is_refused(world: World) -> None:
    """Only one rollout per service at a time."""
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    v3 = world.catalog.add("v3")
    with pytest.raises(RolloutInProgress):
        await world.engine.deploy("web", v3)
    assert len(world.engine.history("web")) == 2


async def test_deploying_the_stable_release_again_is_refused(world: World) -> None:
    """A no-op rollout is bad input, not a silent success."""
    await deploy_stable(world)
    with pytest.raises(BadInput):
        await world.engine.deploy("web", world.v1)


async def test_rolling_keeps_capacity_and_moves_weight_with_instances(tmp_path: Path) -> None:
    """Rolling with max_surge 1: never more than instances+1 run, traffic follows counts."""
    spec = SPEC.replace("kind: canary", "kind: rolling").replace("instances: 2", "instances: 3")
    world = World(tmp_path, spec)
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    peak = 0
    for _ in range(40):
        await world.settle(1)
        peak = max(peak, len(world.platform.running))
    assert peak <= 4
    assert world.status()["stable"] == world.v2
    assert {i.release for i in world.platform.running.values()} == {world.v2}
    shares = [w.get(world.v2, 0) for _, w in world.router.history]
    assert shares == sorted(shares)  # the new release's share only grows


async def test_blue_green_switches_all_traffic_at_once(tmp_path: Path) -> None:
    """Blue-green: the new release runs at full size with no traffic, then takes 100 %."""
    world = World(tmp_path, SPEC.replace("kind: canary", "kind: blue-green"))
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(8)
    shares = {w.get(world.v2, 0) for _, w in world.router.history}
    assert shares == {0, 100}
    status = world.status()
    assert status["phase"] == "progressing" and status["step"]["kind"] == "pause"  # warm
    releases = [i.release for i in world.platform.running.values()]
    assert releases.count(world.v1) == 2  # the old release is still up, with no traffic
    await world.settle(70)  # past the 30 s warm period
    assert world.status()["stable"] == world.v2
    assert {i.release for i in world.platform.running.values()} == {world.v2}


async def test_rollback_in_the_blue_green_warm_period_is_a_weight_change(tmp_path: Path) -> None:
    """During the warm period a rollback sends traffic back without starting anything."""
    world = World(tmp_path, SPEC.replace("kind: canary", "kind: blue-green"))
    await deploy_stable(world)
    await world.engine.deploy("web", world.v2)
    await world.settle(8)
    started = len(world.platform.started)
    ended = await world.engine.rollback("web")
    assert ended.phase == "rolled_back"
    await world.settle(2)
    assert world.weights() == {world.v1: 100}
    assert len(world.platform.started) == started


async def test_nothing_starts_again_after_shutdown(world: World) -> None:
    """A tick queued behind `shutdown` must not bring HAProxy or instances back."""
    await deploy_stable(world)
    await world.engine.shutdown()
    assert world.router.stopped and not world.platform.running
    world.router.stopped = False
    world.router.routes = []
    await world.settle(3)
    assert not world.platform.running
    assert world.router.routes == []  # ensure() was not called again


def test_audit_log_is_tamper_evident(tmp_path: Path) -> None:
    """Editing an audit entry breaks the hash chain at that entry."""
    store = SQLiteStore(tmp_path / "s.db")
    store.record("web", "a", {"x": 1})
    second = store.record("web", "b", {"x": 2})
    store.record("web", "c", {"x": 3})
    assert store.verify_log() is None
    store._db.execute("UPDATE events SET detail = ? WHERE id = ?", ('{"x": 9}', second.id))
    assert store.verify_log() == second.id
