"""Automatic rollback under real traffic: the default judge reads HAProxy's own counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from canarist.controller.engine import AFTERMATH_SECONDS
from canarist.demo.load import Load
from canarist.demo.sample import write_app
from tests.e2e.harness import Canarist, project_up

pytestmark = [pytest.mark.e2e, pytest.mark.haproxy, pytest.mark.processes]

SPEC = """\
services:
  web:
    listen: 127.0.0.1:{port}
    instances: 2
    health:
      interval: 0.5s
    strategy:
      kind: canary
      steps:
        - set_weight: 10
        - analyze: 15s
        - set_weight: 50
        - analyze: 15s
      scale_down_delay: 6s
    drain_timeout: 5s
"""
RATE = 300.0
WEIGHT = 0.10
BAD_ERROR = 0.20
LATE = 4.0  # seconds after its start that v6 turns slower: inside the 6 s warm period


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """v1 and a healthy v3 with 0.5 % errors, a bad v2 with 20 %, a v4 40 ms slower, a
    v6 40 ms slower from 4 s after it starts; v1 serving."""
    root: Path = tmp_path_factory.mktemp("analysis")
    apps = {
        name: write_app(
            root / name, version=version, error_rate=error, delay_ms=delay, delay_from_s=late
        )
        for name, version, error, delay, late in (
            ("v1", "1", 0.005, 0.0, 0.0),
            ("bad", "2", BAD_ERROR, 0.0, 0.0),
            ("good", "3", 0.005, 0.0, 0.0),
            ("slow", "4", 0.005, 40.0, 0.0),
            ("late", "6", 0.005, 40.0, LATE),
        )
    }
    with project_up(root, SPEC, apps, first="v1") as up:
        yield up


def deploy_under_load(
    cli: Canarist, ref: str, *options: str, warmup: float = 1.0, linger: float = 0.5
) -> tuple[int, float, Load]:
    load = Load(cli.url, rate=RATE, connections=12).start()
    time.sleep(warmup)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "canarist", "deploy", "web", ref, "--wait", *options],
        cwd=cli.root,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    took = time.monotonic() - started
    time.sleep(linger)
    load.stop()
    # The last lines say how it ended and on what figures.
    assert re.search(
        r"(pass|fail|continue|no_data): canary \d+ requests", proc.stdout.splitlines()[-1]
    )
    return proc.returncode, took, load


def test_a_bad_release_is_rolled_back_on_little_damage(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """20 % errors against 0.5 %: rolled back on its own (exit 3), after few failures."""
    cli, refs = project
    code, took, load = deploy_under_load(cli, refs["bad"])
    report = load.report
    served_bad = report.by_version["2"] + report.failed_by_version["2"]
    failed_bad = report.failed_by_version["2"]
    # What a 60-second interval check would let through at this traffic and weight.
    interval_damage = 60 * RATE * WEIGHT * BAD_ERROR
    print(
        f"bad release: rolled back after {took:.1f}s; it served {served_bad} requests,"
        f" {failed_bad} failed (a 60 s interval check: ~{interval_damage:.0f})"
    )
    assert code == 3
    assert failed_bad <= interval_damage / 6
    history = cli("history", "web", "--json")
    assert "sequential judge" in history.stdout
    # All traffic back on the stable release within 1 s of the fail verdict: no request
    # sent later than that reached the bad release.
    rollout = json.loads(history.stdout)[0]
    decided = next(
        e["at"]
        for e in rollout["events"]
        if e["kind"] == "analysis.verdict" and e["detail"]["verdict"] == "fail"
    )
    last_bad = report.last_sent["2"]
    print(f"last request to the bad release sent {last_bad - decided:+.3f}s after the verdict")
    assert last_bad <= decided + 1.0
    status = cli.wait_for(lambda s: s["canary"] is None, what="rollback")
    assert status["stable"] == refs["v1"] and status["weights"] == {refs["v1"]: 100}
    assert status["analysis"]["verdict"] == "fail"
    assert status["analysis"]["figures"]
    # People read the same evidence: the reason and the figures behind the fail verdict.
    shown = cli("history", "web").stdout.split("#")[1]
    assert "rolled_back" in shown and "canary fails more than baseline" in shown
    assert re.search(r"fail: canary \d+ requests, \d+ failed \(\d+\.\d\d%\)", shown)


def test_a_healthy_release_with_the_same_noise_is_promoted(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """0.5 % errors on both sides: no false rollback, promoted (exit 0)."""
    cli, refs = project
    code, took, load = deploy_under_load(cli, refs["good"])
    print(
        f"good release: promoted in {took:.1f}s, {load.report.sent} requests,"
        f" failures by version {dict(load.report.failed_by_version)}"
    )
    assert code == 0
    assert cli.status()["stable"] == refs["good"]


def test_a_bad_blue_green_release_is_rolled_back_in_its_warm_period(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """Blue-green puts all traffic on the new release, none beside it: judged against the
    old release's recent rate (HAProxy's counts of the last minutes), rolled back to the
    warm old release within its warm period."""
    cli, refs = project
    stable = cli.status()["stable"]
    code, took, load = deploy_under_load(
        cli, refs["bad"], "--strategy", "blue-green", warmup=3.0, linger=AFTERMATH_SECONDS + 1
    )
    report = load.report
    failed_bad = report.failed_by_version["2"]
    served_bad = report.by_version["2"] + failed_bad
    print(
        f"bad blue-green: rolled back after {took:.1f}s; {served_bad} served, {failed_bad} failed"
    )
    assert code == 3
    history = json.loads(cli("history", "web", "--json").stdout)[0]
    assert "before it took all traffic" in history["reason"]
    assert failed_bad <= 60  # a 60 s check at 100 % would let ~3,600 through
    assert cli.status()["stable"] == stable
    # The old release, serving again, failed far less often: the fault was the release's.
    shown = cli("history", "web").stdout.split("#")[1]
    assert "far less often than the new one" in shown and "the fault was the new release's" in shown


def test_a_healthy_blue_green_release_is_promoted_after_its_warm_period(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """The same 0.5 % noise after the switch as before it: promoted (exit 0)."""
    cli, refs = project
    target = refs["good"] if cli.status()["stable"] != refs["good"] else refs["v1"]
    code, took, load = deploy_under_load(cli, target, "--strategy", "blue-green", warmup=3.0)
    print(f"healthy blue-green: promoted in {took:.1f}s, {dict(load.report.failed_by_version)}")
    assert code == 0
    assert cli.status()["stable"] == target


def switched_back_for_latency(cli: Canarist, ref: str, version: str) -> tuple[dict[str, Any], int]:
    """Deploy blue-green under load; assert it was switched back to the old release for
    latency. Its rollout as history gives it, and the requests it served."""
    stable = cli.status()["stable"]
    code, took, load = deploy_under_load(cli, ref, "--strategy", "blue-green", warmup=3.0)
    served = load.report.by_version[version] + load.report.failed_by_version[version]
    print(f"v{version} blue-green: rolled back after {took:.1f}s, having served {served} requests")
    assert code == 3
    history: dict[str, Any] = json.loads(cli("history", "web", "--json").stdout)[0]
    assert "slower than baseline before it took all traffic" in history["reason"]
    assert cli.status()["stable"] == stable
    return history, served


def test_a_slower_blue_green_release_is_rolled_back_in_its_warm_period(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """40 ms slower than the old release was before the switch, the same errors: rolled
    back for latency (HAProxy's logged latencies of the old release are the reference)."""
    cli, refs = project
    switched_back_for_latency(cli, refs["slow"], "4")


def test_a_blue_green_release_that_turns_slower_later_is_switched_back(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """Fast at first, 40 ms slower from 4 s after it starts, a few seconds into its warm
    period: the watch does not stop after the first comparisons, and a regression that
    begins after a good stretch is not first outweighed by it. Switched back."""
    cli, refs = project
    history, served = switched_back_for_latency(cli, refs["late"], "6")
    # It served as fast as the old release for seconds first, and was judged the same.
    verdicts = [e for e in history["events"] if e["kind"] == "analysis.verdict"]
    assert verdicts[-1]["detail"]["verdict"] == "fail"
    assert float(verdicts[-1]["detail"]["figures"]["elapsed_s"]) > LATE
    assert served > 300


def test_crashes_of_haproxy_and_the_controller_do_not_fool_the_judge(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """HAProxy killed mid-canary (its counters start again from zero), then the controller
    killed and started again: a healthy canary is judged on through both, and promoted."""
    cli, _ = project
    app = write_app(cli.root / "good-again", version="5", error_rate=0.005, delay_ms=0.0)
    ref = cli("build", str(app)).stdout.strip().splitlines()[-1]

    def canary_requests(status: dict[str, Any]) -> int:
        figures = (status.get("analysis") or {}).get("figures") or {}
        return int(figures.get("canary_requests", 0))

    with Load(cli.url, rate=RATE, connections=12) as load:
        time.sleep(1.0)
        rollout_id = json.loads(cli("deploy", "web", ref, "--json").stdout)["id"]
        before = cli.wait_for(
            lambda s: s["canary"] == ref and canary_requests(s) >= 60, what="canary traffic"
        )
        cli.kill_haproxy()
        time.sleep(1.0)  # counted by the new HAProxy from zero
        controller = cli.controller_pid()
        os.kill(controller, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{controller}").exists(), "controller gone")
        cli("up")
        rollout = wait_until(lambda: _ended(cli, rollout_id), "rollout ended", timeout=120)
    print(
        f"crashes mid-canary: {rollout['phase']}; canary requests judged: {canary_requests(before)}"
        f" before, {_last_figures(rollout).get('canary_requests')} at the end;"
        f" failures by version {dict(load.report.failed_by_version)}"
    )
    assert rollout["phase"] == "promoted", rollout["reason"]
    assert cli.status()["stable"] == ref


def test_what_the_canary_served_while_the_controller_was_down_is_judged(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """The controller SIGKILLed mid-canary while HAProxy serves on, and started again
    seconds later: it adopts the same HAProxy, takes up the metrics window, and the
    analysis counts the canary's requests of those seconds, not only those after."""
    cli, _ = project
    app = write_app(cli.root / "good-too", version="7", error_rate=0.005, delay_ms=0.0)
    ref = cli("build", str(app)).stdout.strip().splitlines()[-1]
    with Load(cli.url, rate=RATE, connections=12):
        time.sleep(1.0)
        rollout_id = json.loads(cli("deploy", "web", ref, "--json").stdout)["id"]
        before = cli.wait_for(
            lambda s: s["canary"] == ref and _judged_requests(s) >= 60, what="canary traffic"
        )
        controller = cli.controller_pid()
        os.kill(controller, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: not Path(f"/proc/{controller}").exists(), "controller gone")
        time.sleep(4.0)
        cli("up")
        up = time.monotonic()
        after = cli.wait_for(
            lambda s: _judged_requests(s) > _judged_requests(before), what="judging again"
        )
        seen = time.monotonic()
        rollout = wait_until(lambda: _ended(cli, rollout_id), "rollout ended", timeout=120)
    jump = _judged_requests(after) - _judged_requests(before)
    canary_rate = RATE * WEIGHT
    print(
        f"controller down {up - killed:.1f}s: canary requests judged {_judged_requests(before)}"
        f" before, {_judged_requests(after)} {seen - up:.1f}s after it came back"
    )
    assert jump >= 0.5 * canary_rate * (up - killed)  # the seconds without a controller
    assert jump > 2 * canary_rate * (seen - up) + 10  # far more than came after
    assert rollout["phase"] == "promoted", rollout["reason"]


def test_a_blue_green_right_after_a_controller_restart_is_held_to_the_minutes_before(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """The controller SIGKILLed and started again, then at once a failing release deployed
    blue-green: it is judged against the old release's counts of the minutes before,
    the ones before the restart included (saved by the metrics provider and taken up by
    the next), not only the few seconds since."""
    cli, refs = project
    saved = cli.root / ".canarist" / "haproxy" / "metrics-history.json"
    with Load(cli.url, rate=RATE, connections=12):
        time.sleep(4.0)
        since = time.time()
        wait_until(  # the provider saves its history every 15 s
            lambda: saved.exists() and saved.stat().st_mtime > since, "history saved"
        )
        controller = cli.controller_pid()
        os.kill(controller, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{controller}").exists(), "controller gone")
        cli("up")
        up = time.monotonic()
        deploy = cli("deploy", "web", refs["bad"], "--strategy", "blue-green", "--json")
        rollout_id = json.loads(deploy.stdout)["id"]
        rollout = wait_until(lambda: _ended(cli, rollout_id), "rollout ended", timeout=60)
        ended = time.monotonic()
    reference = _last_figures(rollout)["reference_requests"]
    print(
        f"blue-green right after a restart: {rollout['phase']} {ended - up:.1f}s after it;"
        f" judged against {reference} requests of the old release"
    )
    assert rollout["phase"] == "rolled_back"
    # More than it served since the restart: the 4 s or more before it came along.
    assert reference > RATE * (ended - up) + 0.8 * RATE * 4


def _judged_requests(status: dict[str, Any]) -> int:
    return int((status.get("analysis") or {}).get("canary_requests") or 0)


def test_a_controller_killed_right_after_a_blue_green_rollback_still_says_whose_fault(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """The controller SIGKILLed right after it switched a failing blue-green release back,
    then started again: it watches the old release for what is left of the seconds after
    the switch back, and `history` says whose fault it was; `status` still shows the
    analysis of the rolled-back rollout."""
    cli, refs = project
    with Load(cli.url, rate=RATE, connections=12):
        time.sleep(3.0)
        deploy = cli("deploy", "web", refs["bad"], "--strategy", "blue-green", "--json")
        rollout_id = json.loads(deploy.stdout)["id"]
        rollout = wait_until(lambda: _ended(cli, rollout_id), "rollout ended", timeout=60)
        controller = cli.controller_pid()
        os.kill(controller, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{controller}").exists(), "controller gone")
        cli("up")
        restarted = time.time()
        aftermath = wait_until(
            lambda: _aftermath(cli, rollout_id), "aftermath", timeout=AFTERMATH_SECONDS + 10
        )
    print(
        f"controller restarted {restarted - rollout['ended_at']:.1f}s after the switch back;"
        f" aftermath: {aftermath['summary']}"
    )
    assert rollout["phase"] == "rolled_back"
    assert restarted - rollout["ended_at"] < AFTERMATH_SECONDS
    assert aftermath["shared"] is False and aftermath["requests"] > 100
    assert aftermath["seconds"] < AFTERMATH_SECONDS
    analysis = cli.status()["analysis"]
    assert analysis["finished"] and analysis["verdict"] == "fail"


def _aftermath(cli: Canarist, rollout_id: int) -> dict[str, Any] | None:
    for rollout in json.loads(cli("history", "web", "--json").stdout):
        if rollout["id"] == rollout_id:
            for event in rollout["events"]:
                if event["kind"] == "rollback.aftermath":
                    return dict(event["detail"])
    return None


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ended(cli: Canarist, rollout_id: int) -> dict[str, Any] | None:
    for rollout in json.loads(cli("history", "web", "--json").stdout):
        if rollout["id"] == rollout_id and rollout["ended_at"] is not None:
            return dict(rollout)
    return None


def _last_figures(rollout: dict[str, Any]) -> dict[str, Any]:
    verdicts = [e["detail"] for e in rollout["events"] if e["kind"] == "analysis.verdict"]
    return dict(verdicts[-1].get("figures") or {})
