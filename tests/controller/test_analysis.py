"""Rollouts watched by a judge: automatic rollback, early passes, and too little data."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from canarist.controller import watch as watch_module
from canarist.controller.engine import _Aftermath, _aftermath_detail
from canarist.domain.spec import parse_spec
from tests.controller.test_engine import World

SPEC = """
services:
  web:
    listen: 127.0.0.1:18080
    instances: 2
    strategy:
      kind: canary
      steps:
        - set_weight: 20
        - analyze: 20s
        - set_weight: 50
        - analyze: 20s
    analysis:
      judge: {judge}
      no_data: {no_data}
      settings: {settings}
"""


def world_with(
    tmp: Path,
    judge: str = "sequential",
    no_data: str = "wait",
    settings: str = "{}",
    extra: str = "",
) -> World:
    spec = SPEC.format(judge=judge, no_data=no_data, settings=settings) + extra
    return World(tmp, spec)


async def live(
    world: World,
    rng: random.Random,
    canary_error: float,
    ticks: int,
    rate: int = 400,
    base_error: float = 0.005,
) -> None:
    """Tick with traffic: `rate` requests per second split by the current weights."""
    for _ in range(ticks):
        weights = world.status()["weights"]
        for release, percent in weights.items():
            n = round(rate * 0.25 * percent / 100)
            p = canary_error if release == world.v2 else base_error
            failures = sum(1 for _ in range(n) if rng.random() < p)
            world.metrics.add("web", release, n, failures)
        await world.settle(1, step=0.25)
        if world.status()["phase"] not in ("progressing", "paused"):
            return


async def start_canary(world: World) -> None:
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    await world.settle(3, step=0.25)


async def test_a_failing_canary_is_rolled_back_with_its_evidence(tmp_path: Path) -> None:
    """20 % errors against 0.5 %: the sequential judge fails it and traffic returns."""
    world = world_with(tmp_path)
    await start_canary(world)
    await live(world, random.Random(1), canary_error=0.2, ticks=200)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history
    assert "sequential judge" in history["reason"]
    assert world.weights() == {world.v1: 100}
    verdicts = [e for e in history["events"] if e["kind"] == "analysis.verdict"]
    assert verdicts[-1]["detail"]["verdict"] == "fail"
    assert verdicts[-1]["detail"]["figures"]  # the numbers behind the decision are kept
    ended = next(e for e in history["events"] if e["kind"] == "rollout.rolled_back")
    assert ended["detail"]["analysis"]["canary_failures"] > 0
    status = world.status()
    assert status["analysis"]["verdict"] == "fail"


async def test_a_healthy_canary_is_promoted(tmp_path: Path) -> None:
    """Same 0.5 % noise on both sides: never rolled back, promoted."""
    world = world_with(tmp_path)
    await start_canary(world)
    await live(world, random.Random(2), canary_error=0.005, ticks=400)
    history = world.engine.history("web")[0]
    assert history["phase"] == "promoted", history
    assert world.status()["stable"] == world.v2


async def test_only_the_services_being_judged_are_read_in_full(tmp_path: Path) -> None:
    """The engine tells the metrics provider which services are judged now, so that it may
    read the others' requests more thinly: a service while its rollout is analyzed, and
    while its old release is watched after a rollback of a canary alone; not before
    (a first release has nothing to be compared with) nor after."""
    world = world_with(tmp_path)
    await world.engine.deploy("web", world.v1)
    await world.settle()
    assert world.metrics.attended == frozenset()
    await world.engine.deploy("web", world.v2)
    await world.settle(3, step=0.25)
    assert world.metrics.attended == {"web"}
    await live(world, random.Random(1), canary_error=0.2, ticks=200)
    assert world.engine.history("web")[0]["phase"] == "rolled_back"
    await world.settle(1, step=0.25)
    assert world.metrics.attended == frozenset()

    blue_green = World(tmp_path / "bg", BLUE_GREEN)
    rng = random.Random(1)
    await blue_green_switch(blue_green, rng)
    assert blue_green.metrics.attended == {"web"}
    await live(blue_green, rng, canary_error=0.2, ticks=240)
    assert blue_green.engine.history("web")[0]["phase"] == "rolled_back"
    await blue_green.settle(1, step=0.25)
    assert blue_green.metrics.attended == {"web"}  # the aftermath: the old release watched
    await blue_green.settle(11, step=1.0)  # AFTERMATH_SECONDS later
    assert blue_green.metrics.attended == frozenset()


@pytest.mark.parametrize(
    ("canary_error", "pinned", "ends"),
    [
        (0.005, "leave_out", "promoted"),
        (0.2, "leave_out", "rolled_back"),
        (0.005, "judge", "rolled_back"),
    ],
)
async def test_requests_a_sticky_cookie_pins_are_left_out_on_both_sides(
    tmp_path: Path, canary_error: float, pinned: str, ends: str
) -> None:
    """With sticky sessions a client's requests follow its first. A client that fails on
    every release (here 4 requests a second, all failing), pinned to a healthy canary,
    must not get it rolled back: the requests its cookie routed are left out of the
    comparison, the baseline's pinned ones too. A canary that does fail more is still
    rolled back on the requests the split sent it. With `pinned: judge` the pinned
    requests are judged as the split's, and that client has the canary rolled back."""
    world = world_with(tmp_path, extra=f"      pinned: {pinned}\n    sticky: true\n")
    await start_canary(world)
    rng = random.Random(3)
    for _ in range(400):
        weights = world.status()["weights"]
        for release, percent in weights.items():
            n = round(400 * 0.25 * percent / 100)
            p = canary_error if release == world.v2 else 0.005
            failures = sum(1 for _ in range(n) if rng.random() < p)
            world.metrics.add("web", release, n // 2, failures // 2)
            world.metrics.add("web", release, n - n // 2, failures - failures // 2, pinned=True)
        if world.v2 in weights:
            world.metrics.add("web", world.v2, 1, 1, pinned=True)  # the client failing anywhere
        await world.settle(1, step=0.25)
        if world.status()["phase"] not in ("progressing", "paused"):
            break
    history = world.engine.history("web")[0]
    assert history["phase"] == ends, history
    if ends == "rolled_back":
        assert "sequential judge" in history["reason"]
    counters = world.status()["counters"]
    assert counters[world.v1]["pinned"] > 0  # shown apart in status --json


async def test_too_little_traffic_never_passes_by_default(tmp_path: Path) -> None:
    """With no traffic, the analyze step waits past its time: not enough data is no pass."""
    world = world_with(tmp_path)
    await start_canary(world)
    await world.settle(200, step=0.25)  # 50 s, far past the 20 s analyze step
    status = world.status()
    assert status["phase"] == "progressing"
    assert status["step"]["kind"] == "analyze"
    assert status["analysis"]["verdict"] == "no_data"
    assert status["step"]["remaining"] == 0.0
    assert status["step"]["description"].endswith("past it: waiting for the judge's verdict")


async def test_too_little_traffic_can_fail_the_rollout(tmp_path: Path) -> None:
    """no_data: fail rolls back when an analyze step ends without enough data."""
    world = world_with(tmp_path, no_data="fail")
    await start_canary(world)
    await world.settle(100, step=0.25)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back"
    assert "not enough data" in history["reason"]


async def test_too_little_traffic_can_pause_for_a_person(tmp_path: Path) -> None:
    """no_data: pause parks the rollout; promote moves it on."""
    world = world_with(tmp_path, no_data="pause")
    await start_canary(world)
    await world.settle(100, step=0.25)
    assert world.status()["phase"] == "paused"
    assert world.status()["step"]["description"] == "analyze up to 20s"  # waits for promote
    await world.engine.promote("web")
    await world.settle(4, step=0.25)
    assert world.status()["weights"] == {world.v1: 50, world.v2: 50}


async def test_failed_request_budget_rolls_back(tmp_path: Path) -> None:
    """A budget of failed canary requests rolls back even without a judge."""
    world = world_with(tmp_path, judge="none", extra="      max_failed_requests: 5\n")
    await start_canary(world)
    world.metrics.add("web", world.v2, 100, 4)
    await world.settle(2, step=0.25)
    assert world.status()["phase"] == "progressing"
    world.metrics.add("web", world.v2, 10, 1)
    await world.settle(2, step=0.25)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back"
    assert "budget 5" in history["reason"]


async def test_canary_instances_that_keep_dying_roll_back(tmp_path: Path) -> None:
    """Canary instances lost three times (killed or unhealthy): rolled back."""
    world = world_with(tmp_path)
    await start_canary(world)
    for _ in range(3):
        victim = next(i for i in world.platform.running.values() if i.release == world.v2)
        world.platform.kill(victim.id)
        await world.settle(3, step=0.25)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history
    assert "instances failed 3 times" in history["reason"]


@pytest.mark.parametrize("judge", ["threshold", "mann-whitney"])
async def test_other_judges_are_wired_too(tmp_path: Path, judge: str) -> None:
    """Each judge named in the spec runs in the rollout (100 % canary errors: rolled back)."""
    world = world_with(tmp_path, judge=judge, settings="{interval: 5s}")
    await start_canary(world)
    await live(world, random.Random(3), canary_error=1.0, ticks=400)
    assert world.engine.history("web")[0]["phase"] == "rolled_back"


STRATEGIES = {
    "linear": "{kind: linear, step_percent: 10, step_interval: 1m}",
    "rolling": "{kind: rolling, max_surge: 1}",
    "preset": "Canary10Percent5Minutes",
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_every_strategy_that_shares_traffic_is_watched_in_the_background(
    tmp_path: Path, strategy: str
) -> None:
    """Linear steps, rolling batches and CodeDeploy's presets have no analyze step: the
    judge watches them in the background, and a failing release goes back to stable
    long before its steps are through (linear: 10 minutes, the preset: 5)."""
    spec = SPEC.format(judge="sequential", no_data="wait", settings="{}")
    spec = spec.replace("instances: 2", "instances: 4")
    head, _, tail = spec.partition("    strategy:\n")
    spec = head + f"    strategy: {STRATEGIES[strategy]}\n" + tail[tail.index("    analysis:") :]
    world = World(tmp_path, spec)
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    await world.settle(3, step=0.25)
    started = world.clock.now
    await live(world, random.Random(11), canary_error=0.2, ticks=400)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history
    assert "sequential judge" in history["reason"]
    assert world.clock.now - started < 60  # within the first minute, at the first weight
    await world.settle(20)
    assert world.weights() == {world.v1: 100}
    releases = [i.release for i in world.platform.running.values()]
    assert releases == [world.v1] * 4  # stable back at full size, the new release gone


async def test_a_restarted_controller_keeps_the_evidence(tmp_path: Path) -> None:
    """The judge's evidence survives a controller restart: replayed, then counted on."""
    world = world_with(tmp_path)
    await start_canary(world)
    rng = random.Random(5)
    await live(world, rng, canary_error=0.005, ticks=40)  # 10 s of healthy traffic
    before = world.status()["analysis"]
    assert before["canary_requests"] > 0
    rollout_id = world.engine.history("web")[0]["id"]
    evidence = world.store.observations(rollout_id)
    assert len(evidence) >= 5
    assert evidence[-1].canary_weight == pytest.approx(0.2)  # the split the router had
    world.engine = world.new_engine()  # the controller restarts
    await live(world, rng, canary_error=0.005, ticks=4)
    after = world.status()["analysis"]
    assert after["canary_requests"] > before["canary_requests"]  # counted on, not from zero
    assert after["elapsed"] > before["elapsed"]
    verdicts = [
        e for e in world.engine.history("web")[0]["events"] if e["kind"] == "analysis.started"
    ]
    assert len(verdicts) == 1  # resumed, not begun again


async def test_a_restarted_controller_keeps_the_latency_evidence(tmp_path: Path) -> None:
    """Latency samples are stored with the counts: the latency test resumes, not restarts."""
    world = world_with(tmp_path)
    await start_canary(world)
    rng = random.Random(8)

    async def tick() -> None:
        for release, percent in world.status()["weights"].items():
            n = round(400 * 0.25 * percent / 100)
            slow = 1.3 if release == world.v2 else 1.0  # slower, not yet proven so
            latencies = tuple(slow * rng.lognormvariate(4.1, 0.5) for _ in range(n))
            world.metrics.add("web", release, n, 0, latencies)
        await world.settle(1, step=0.25)

    for _ in range(8):
        await tick()
    before = world.status()["analysis"]["figures"]
    assert world.status()["phase"] == "progressing"
    assert before["latency_pairs"] > 0
    world.engine = world.new_engine()  # the controller restarts (a fresh metrics window)
    for _ in range(3):
        await tick()
    after = world.status()["analysis"]["figures"]
    assert after["latency_pairs"] > before["latency_pairs"]
    assert after["canary_latency_samples"] > before["canary_latency_samples"]
    assert after["latency_evidence"] != 1.0  # the test goes on from where it stood


async def test_evidence_from_before_a_restart_counts_toward_a_rollback(tmp_path: Path) -> None:
    """Counts seen before the restart and after it add up in the one decision."""
    world = world_with(tmp_path)
    await start_canary(world)
    rng = random.Random(6)
    await live(world, rng, canary_error=0.05, ticks=2)
    assert world.status()["phase"] == "progressing"
    before = world.status()["analysis"]["canary_requests"]
    assert before > 0
    world.engine = world.new_engine()
    await live(world, rng, canary_error=0.2, ticks=200)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back"
    ended = next(e for e in history["events"] if e["kind"] == "rollout.rolled_back")
    since_restart = world.metrics.counts["web"][world.v2][0]
    assert ended["detail"]["analysis"]["canary_requests"] == before + since_restart


@pytest.mark.parametrize("outlives", [True, False])
async def test_what_a_canary_served_while_no_controller_ran_is_counted(
    tmp_path: Path, outlives: bool
) -> None:
    """The controller is down while the canary fails 5 of 100 requests; the next one
    takes the metrics window up (the data plane counted on) and counts them, so the
    budget of 5 failed requests rolls it back at once. Where the window cannot be taken
    up, those requests are lost to the analysis, as before."""
    world = world_with(tmp_path, judge="none", extra="      max_failed_requests: 5\n")
    world.metrics.windows_outlive_restarts = outlives
    await start_canary(world)
    world.metrics.add("web", world.v2, 100, 2)
    world.metrics.add("web", world.v1, 400, 2)
    await world.settle(2, step=0.25)
    before = world.status()["analysis"]
    assert (before["canary_requests"], before["canary_failures"]) == (100, 2)
    world.metrics.add("web", world.v2, 100, 3)  # while no controller runs
    world.metrics.add("web", world.v1, 400, 2)
    world.engine = world.new_engine()
    await world.settle(2, step=0.25)
    history = world.engine.history("web")[0]
    if outlives:
        assert history["phase"] == "rolled_back", history
        assert "served 5 failed requests (budget 5) of 200" in history["reason"]
    else:
        assert history["phase"] == "progressing"
        assert world.status()["analysis"]["canary_requests"] == 100


async def test_a_taken_up_window_counts_on_across_restarts_and_left_out_requests(
    tmp_path: Path,
) -> None:
    """Two restarts, each taking the window up, with testers' requests (the canary
    header, left out of the comparison while the split is random) before and between:
    the judged counts are all the split's requests, each counted once."""
    world = world_with(tmp_path)
    world.metrics.windows_outlive_restarts = True
    await start_canary(world)
    for _ in range(3):
        world.metrics.add("web", world.v2, 40, 0)
        world.metrics.add("web", world.v2, 7, 1, requested=True)
        world.metrics.add("web", world.v1, 160, 1)
        await world.settle(2, step=0.25)
        world.metrics.add("web", world.v2, 20, 0)  # while no controller runs
        world.metrics.add("web", world.v1, 80, 0)
        world.engine = world.new_engine()
        await world.settle(2, step=0.25)
    analysis = world.status()["analysis"]
    assert (analysis["canary_requests"], analysis["canary_failures"]) == (180, 0)
    assert analysis["figures"]["baseline_requests"] == 720


BLUE_GREEN = """
services:
  web:
    listen: 127.0.0.1:18080
    instances: 2
    strategy:
      kind: blue-green
      scale_down_delay: 60s
"""


async def blue_green_switch(world: World, rng: random.Random) -> None:
    """v1 stable under traffic; v2 deployed blue-green, with traffic, until it takes all."""
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    for _ in range(40):
        await live(world, rng, canary_error=0.0, ticks=1)  # v1 only, at its 0.5 %
        if world.weights().get(world.v2) == 100:
            return
    raise AssertionError("the switch did not happen")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_bad_blue_green_release_is_rolled_back_in_its_warm_period(
    tmp_path: Path, seed: int
) -> None:
    """All traffic on the new release, none beside it: judged against the old one's rate
    before the switch, and traffic goes back to the warm old release."""
    world = World(tmp_path, BLUE_GREEN)
    rng = random.Random(seed)
    await blue_green_switch(world, rng)
    await live(world, rng, canary_error=0.2, ticks=240)  # 60 s of the 60 s warm period
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history["reason"]
    assert "before it took all traffic" in history["reason"]
    assert world.weights() == {world.v1: 100}
    served = world.metrics.counts["web"][world.v2]
    print("served by the new release before the rollback:", served)
    assert served[1] <= 40, served  # failed requests of the new release before the rollback
    # The reference is the old release's recent history from the metrics provider, which
    # saw more of it than the analysis did.
    verdict = [e for e in history["events"] if e["kind"] == "analysis.verdict"][-1]
    reference = verdict["detail"]["figures"]["reference_requests"]
    recent = await world.metrics.recent("web", world.v1, 600)
    assert recent is not None and reference == recent[0]
    assert reference > verdict["detail"]["figures"]["baseline_requests"]


async def test_a_controller_restarted_in_the_warm_period_keeps_the_old_releases_reference(
    tmp_path: Path,
) -> None:
    """The controller restarts in the warm period, when the metrics provider's history
    starts afresh and holds nothing of the old release from before the switch: the
    judge, replayed from the stored evidence, still holds the new release to the old
    one's rate and latencies then, and rolls a release that now fails back."""
    world = World(tmp_path, BLUE_GREEN)
    rng = random.Random(4)
    await blue_green_switch(world, rng)
    await live(world, rng, canary_error=0.005, ticks=20)  # 5 healthy seconds alone
    before = world.status()["analysis"]["figures"]
    assert world.status()["phase"] == "progressing"
    world.metrics.added.clear()  # a restarted provider remembers nothing from before
    world.metrics.latency_log.clear()
    world.engine = world.new_engine()
    fault = world.clock.now
    await live(world, rng, canary_error=0.2, ticks=240)
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history["reason"]
    assert "before it took all traffic" in history["reason"]
    assert world.clock.now - fault <= 2.0  # a second of failing traffic, as without a restart
    verdict = [e for e in history["events"] if e["kind"] == "analysis.verdict"][-1]
    assert verdict["detail"]["figures"]["reference_requests"] == before["reference_requests"]
    assert world.weights() == {world.v1: 100}


@pytest.mark.parametrize(
    ("old_error", "shared", "restart"),
    [(0.2, True, False), (0.005, False, False), (0.2, True, True)],
)
async def test_after_a_rollback_alone_the_old_release_tells_a_shared_fault_from_its_own(
    tmp_path: Path, old_error: float, shared: bool, restart: bool
) -> None:
    """A blue-green release failing a fifth of its requests is switched back. If the old
    release then fails about as often, the fault likely lies outside the release, and
    the rollout's history says so; if it fails as before, the fault was the release's.
    A controller restarted two seconds after the switch back still watches (what is
    left of the seconds), and `status` still shows the rolled-back rollout's analysis."""
    world = World(tmp_path, BLUE_GREEN)
    rng = random.Random(1)
    await blue_green_switch(world, rng)
    await live(world, rng, canary_error=0.2, ticks=240)
    assert world.engine.history("web")[0]["phase"] == "rolled_back"
    world.metrics.recent_adds = 36  # the provider's last seconds: after the switch back
    for second in range(44):
        if restart and second == 8:
            world.engine = world.new_engine()
        world.metrics.add("web", world.v1, 100, sum(rng.random() < old_error for _ in range(100)))
        await world.settle(1, step=0.25)
    events = world.engine.history("web")[0]["events"]
    (aftermath,) = [e["detail"] for e in events if e["kind"] == "rollback.aftermath"]
    assert aftermath["shared"] is shared
    assert aftermath["requests"] == 3600
    assert (aftermath["seconds"] < 9) is restart
    analysis = world.status()["analysis"]
    assert analysis["finished"] and analysis["verdict"] == "fail"
    assert analysis["figures"]["judged_on_its_own"] == "alone"
    assert ("lies outside the release" in aftermath["summary"]) is shared
    assert ("the fault was the new release's" in aftermath["summary"]) is not shared


@pytest.mark.parametrize(("old_slowdown", "shared"), [(2.0, True), (1.0, False)])
async def test_after_a_latency_rollback_alone_the_old_releases_speed_tells_whose_fault(
    tmp_path: Path, old_slowdown: float, shared: bool
) -> None:
    """Twice as slow after the switch, switched back: if the old release then answers
    about as slowly, the slowness likely lies outside the release; if as fast as
    before, it was the release's."""
    world = World(tmp_path, BLUE_GREEN)
    rng = random.Random(12)
    history = await switch_to_a_slower_release(world, rng)
    assert history["phase"] == "rolled_back", history["reason"]
    world.metrics.latency_log.clear()  # the provider's last seconds: after the switch back
    for _ in range(44):
        latencies = tuple(old_slowdown * rng.lognormvariate(4.1, 0.5) for _ in range(10))
        world.metrics.add("web", world.v1, 100, 0, latencies)
        await world.settle(1, step=0.25)
    events = world.engine.history("web")[0]["events"]
    (aftermath,) = [e["detail"] for e in events if e["kind"] == "rollback.aftermath"]
    assert aftermath["on"] == "latency" and aftermath["shared"] is shared
    assert 55 < aftermath["before_p50_ms"] < 65 and aftermath["canary_p50_ms"] > 100
    assert ("lies outside the release" in aftermath["summary"]) is shared


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_healthy_blue_green_release_with_the_same_noise_is_promoted(
    tmp_path: Path, seed: int
) -> None:
    """0.5 % errors after the switch as before it: no rollback, promoted after the warm period."""
    world = World(tmp_path, BLUE_GREEN)
    rng = random.Random(seed)
    await blue_green_switch(world, rng)
    await live(world, rng, canary_error=0.005, ticks=300)
    history = world.engine.history("web")[0]
    assert history["phase"] == "promoted", history["reason"]
    assert world.status()["stable"] == world.v2


async def test_a_release_failing_its_testers_in_preview_is_rolled_back_before_the_switch(
    tmp_path: Path,
) -> None:
    """Blue-green with a preview: requests that ask for the new release with the canary
    header fail by a third while it has no weight; it is rolled back and never served
    weighted traffic (Argo Rollouts' pre-promotion analysis)."""
    world = World(tmp_path, BLUE_GREEN.replace("blue-green", "blue-green\n      preview: 60s"))
    rng = random.Random(4)
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    for _ in range(240):  # 60 s: 100 req/s on v1, 2 req/s of testers on v2
        failures = sum(rng.random() < 0.005 for _ in range(25))
        world.metrics.add("web", world.v1, 25, failures)
        if rng.random() < 0.5:
            world.metrics.add("web", world.v2, 1, int(rng.random() < 0.33), requested=True)
        await world.settle(1, step=0.25)
        if world.status()["phase"] != "progressing":
            break
    history = world.engine.history("web")[0]
    assert history["phase"] == "rolled_back", history["reason"]
    assert "asked for it" in history["reason"]
    assert all(weights.get(world.v2, 0) == 0 for _, weights in world.router.history)


@pytest.mark.parametrize("told_apart", [True, False])
async def test_testers_requests_beside_the_split_are_no_evidence(
    tmp_path: Path, told_apart: bool
) -> None:
    """At 20 %, testers also send the canary their own requests with the canary header, and
    a third of those fail (they try what breaks); the traffic the split sends it is as
    healthy as stable's. Told apart by the provider, the testers' requests are left out of
    the comparison and the canary is promoted; lumped in (a provider that cannot tell),
    they would roll it back."""
    world = world_with(tmp_path)
    await start_canary(world)
    rng = random.Random(12)
    for _ in range(400):
        for release, percent in world.status()["weights"].items():
            n = round(400 * 0.25 * percent / 100)
            world.metrics.add("web", release, n, sum(rng.random() < 0.005 for _ in range(n)))
        if world.status()["canary"] == world.v2 and rng.random() < 0.5:
            world.metrics.add("web", world.v2, 1, int(rng.random() < 0.33), requested=told_apart)
        await world.settle(1, step=0.25)
        if world.engine.history("web")[0]["phase"] != "progressing":
            break
    history = world.engine.history("web")[0]
    assert history["phase"] == ("promoted" if told_apart else "rolled_back"), history["reason"]


async def test_a_canary_that_passed_one_stage_is_still_rolled_back_at_the_next(
    tmp_path: Path,
) -> None:
    """2,000 req/s. Healthy at 20 % (its analyze step passes early), failing a fifth of
    requests once it takes 50 %: a bug that shows under load. The pass at 20 % does not
    shield it."""
    world = world_with(tmp_path)
    await start_canary(world)
    rng = random.Random(11)
    verdicts: list[str] = []
    for _ in range(400):
        for release, percent in world.status()["weights"].items():
            n = round(2000 * 0.25 * percent / 100)
            bad = release == world.v2 and percent >= 50
            failures = sum(rng.random() < (0.2 if bad else 0.005) for _ in range(n))
            latencies = tuple(rng.lognormvariate(4.1, 0.5) for _ in range(min(n, 40)))
            world.metrics.add("web", release, n, failures, latencies)
        await world.settle(1, step=0.25)
        verdicts.append(str(world.status()["analysis"]["verdict"]))
        if world.engine.history("web")[0]["phase"] != "progressing":
            break
    history = world.engine.history("web")[0]
    assert "pass" in verdicts  # the 20 % stage passed
    assert history["phase"] == "rolled_back", history["reason"]
    assert "sequential judge" in history["reason"]


async def traffic_tick(world: World, rng: random.Random, slowdown: float) -> None:
    """A quarter second of 400 requests/s split by the weights, 0.5 % failing, latencies
    lognormal (median 60 ms), the new release's `slowdown` times slower."""
    for release, percent in world.status()["weights"].items():
        n = round(400 * 0.25 * percent / 100)
        slow = slowdown if release == world.v2 else 1.0
        latencies = tuple(slow * rng.lognormvariate(4.1, 0.5) for _ in range(min(n, 10)))
        world.metrics.add("web", release, n, sum(rng.random() < 0.005 for _ in range(n)), latencies)
    await world.settle(1, step=0.25)


async def switch_to_a_slower_release(
    world: World, rng: random.Random, restart: bool = False
) -> dict[str, Any]:
    """v1 serving alone for ten seconds, then v2, twice as slow, deployed blue-green (the
    controller restarted right after the switch if `restart`); its rollout once ended."""
    await world.engine.deploy("web", world.v1)
    await world.settle()
    for _ in range(40):  # the old release serving alone for ten seconds before
        await traffic_tick(world, rng, 1.0)
    await world.engine.deploy("web", world.v2)
    for _ in range(400):
        await traffic_tick(world, rng, 2.0)
        figures = world.status()["analysis"]["figures"]
        if restart and figures.get("judged_on_its_own") == "alone":  # right after the switch
            restart = False
            world.engine = world.new_engine()
            world.metrics.latency_log.clear()  # the new provider remembers nothing
        if world.engine.history("web")[0]["phase"] != "progressing":
            break
    history: dict[str, Any] = world.engine.history("web")[0]
    return history


@pytest.mark.parametrize("restart", [False, True])
async def test_a_slower_blue_green_release_is_rolled_back_in_its_warm_period(
    tmp_path: Path, restart: bool
) -> None:
    """Twice as slow after the switch as the old release was before it, same errors:
    judged against the old release's latest latencies from the metrics provider, and
    rolled back within the warm period; also when the controller restarts right after
    the switch, its metrics history lost (those latencies are stored with the
    evidence)."""
    world = World(tmp_path, BLUE_GREEN)
    history = await switch_to_a_slower_release(world, random.Random(12), restart=restart)
    assert history["phase"] == "rolled_back", history["reason"]
    assert "slower than baseline before it took all traffic" in history["reason"]
    assert world.weights() == {world.v1: 100}


def test_an_aftermath_with_too_little_to_go_on_blames_nobody() -> None:
    """The old release's requests after the switch back must tell the two stories apart
    (a likelihood ratio of 20, or a sign test at 5 %); on thin evidence neither is told.
    The canary failed 20 % alone against 1 % before, or answered in 120 ms against 60."""
    errors = _Aftermath(1, "v1", 0.0, "errors", 0.2, 0.01)
    quiet = _aftermath_detail(errors, 0, 0)
    assert quiet["shared"] is None and quiet["summary"].endswith("served no request in 10s")
    # 1 failure in 20 (5 %): between 1 % and 20 %, and too few requests to weigh them
    thin = _aftermath_detail(errors, 20, 1)
    assert thin["shared"] is None and thin["summary"].endswith("too few to tell whose fault it was")
    assert 1 / 20 < thin["likelihood_ratio"] < 20
    assert _aftermath_detail(errors, 100, 20)["shared"] is True
    assert _aftermath_detail(errors, 100, 1)["shared"] is False
    slow = _Aftermath(1, "v1", 0.0, "latency", 120.0, 60.0)
    few = _aftermath_detail(slow, 5, 0, (110.0,) * 5)
    assert few["shared"] is None and few["summary"].endswith("too few to tell whose fault it was")
    # as many above the 90 ms midpoint as below: no story is favoured
    even = _aftermath_detail(slow, 40, 0, (62.0, 118.0) * 20)
    assert even["shared"] is None
    assert _aftermath_detail(slow, 50, 0, (110.0,) * 50)["shared"] is True
    assert _aftermath_detail(slow, 50, 0, (62.0,) * 50)["shared"] is False


HELD = """
services:
  web:
    listen: 127.0.0.1:18080
    instances: 2
    strategy:
      kind: canary
      steps:
        - set_weight: 20
        - pause: manual
    analysis:
      settings: {settings}
"""


async def held_canary(tmp: Path, seconds: float, restart_with: str | None = None) -> World:
    """A canary held at a manual gate, judged in the background for `seconds` of traffic
    (20 % of 400 requests/s, with latencies), the controller restarted halfway with the
    judge's settings `restart_with`, if given (and an idle tick there either way)."""
    world = World(tmp, HELD.format(settings="{}"))
    rng = random.Random(21)
    await world.engine.deploy("web", world.v1)
    await world.settle()
    await world.engine.deploy("web", world.v2)
    await world.settle(3, step=0.25)
    ticks = round(seconds * 4)
    for k in range(ticks):
        if k == ticks // 2:
            if restart_with is not None:
                world.spec = parse_spec(HELD.format(settings=restart_with))
                world.engine = world.new_engine()
            await world.settle(1, step=0.25)  # the window starts again with nothing in it
        await traffic_tick(world, rng, 1.0)
    await world.settle(1, step=0.25)
    return world


async def test_a_long_analysis_is_saved_and_taken_up_not_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CHECKPOINT_EVERY seconds of evidence the judge's state is saved and the rows it
    holds are dropped, so the evidence kept stays small however long the canary is
    held; a restarted controller takes the state up and judges on as if it had never
    stopped."""
    monkeypatch.setattr(watch_module, "CHECKPOINT_EVERY", 5.0)
    restarted = await held_canary(tmp_path / "restarted", 60, restart_with="{}")
    rollout_id = restarted.engine.history("web")[0]["id"]
    rows = restarted.store.observations(rollout_id)
    assert len(rows) <= 2 + 5 * 4  # the first, the last saved, and five seconds after
    checkpoint = restarted.store.checkpoint(rollout_id)
    assert checkpoint is not None and checkpoint.at > rows[0].at + 50
    never = await held_canary(tmp_path / "never", 60)
    assert restarted.status()["phase"] == never.status()["phase"] == "paused"
    after, expected = restarted.status()["analysis"], never.status()["analysis"]
    assert after["verdict"] == expected["verdict"]
    assert after["canary_requests"] == expected["canary_requests"] > 2_000
    for name, value in expected["figures"].items():
        assert after["figures"][name] == (
            pytest.approx(value, rel=1e-3) if isinstance(value, float) else value
        ), name


async def test_a_saved_analysis_for_other_settings_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge's settings changed while the controller was down: the saved state is
    not theirs, so the judge starts from the evidence that is left, and judges on."""
    monkeypatch.setattr(watch_module, "CHECKPOINT_EVERY", 5.0)
    world = await held_canary(tmp_path, 30, restart_with="{alpha: 0.02}")
    analysis = world.status()["analysis"]
    assert analysis["verdict"] in ("continue", "pass")
    assert analysis["canary_requests"] > 2_000  # the counts before the restart too
    assert analysis["figures"]["canary_requests"] == analysis["canary_requests"]
