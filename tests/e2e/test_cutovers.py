"""Zero failed requests through every kind of cutover, under steady keep-alive load.

One project for the whole module: the controller, HAProxy and the instances stay up from
test to test, the way a user's would, and each test starts from where the last left off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from canarist.demo.load import Load, LoadReport
from tests.e2e.harness import Canarist

pytestmark = [pytest.mark.e2e, pytest.mark.haproxy, pytest.mark.processes]

RATE = 300.0


@contextmanager
def steady_load(cli: Canarist, reports: list[LoadReport]) -> Iterator[Load]:
    load = Load(cli.url, rate=RATE, connections=12).start()
    time.sleep(0.5)
    try:
        yield load
    finally:
        time.sleep(0.5)
        reports.append(load.stop())


def assert_no_failures(report: LoadReport, what: str) -> None:
    print(
        f"{what}: {report.sent} requests in {report.seconds:.1f}s ({report.rate:.0f}/s),"
        f" {report.failed} failed, by version {dict(report.by_version)}"
    )
    assert report.failed == 0, f"{what}: {report.failed} failed requests {dict(report.failures)}"
    assert report.rate >= 200, f"{what}: load only reached {report.rate:.0f} requests/s"


def background(cli: Canarist, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "canarist", *args],
        cwd=cli.root,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def version_split(
    cli: Canarist, n: int = 200, headers: dict[str, str] | None = None
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        request = urllib.request.Request(cli.url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=5) as response:
            seen[response.headers["X-App-Version"]] += 1
    return seen


def no_rollout(status: dict[str, object]) -> bool:
    return status["phase"] in ("stable",) and status["canary"] is None


def test_first_deploy_serves_v1(project: tuple[Canarist, dict[str, str]]) -> None:
    """The first release is started and takes all traffic."""
    cli, refs = project
    result = cli("deploy", "web", refs["1"], "--wait")
    assert result.code == 0
    assert "[progressing] step 1/" in result.stdout  # the live lines say where it stands
    assert "rollout 1 promoted" in result.stdout
    status = cli.wait_for(no_rollout, what="v1 stable")
    assert "web  [stable]  http://127.0.0.1:" in cli("status", "web").stdout
    assert status["stable"] == refs["1"]
    assert status["weights"] == {refs["1"]: 100}
    assert set(status) >= {
        "service",
        "phase",
        "stable",
        "canary",
        "weights",
        "step",
        "analysis",
        "endpoint",
    }
    assert version_split(cli, 20) == Counter({"1": 20})


def test_blue_green_switch(project: tuple[Canarist, dict[str, str]]) -> None:
    """Blue-green to v2: full-size v2 beside v1, one switch, no failed request."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        result = cli("deploy", "web", refs["2"], "--strategy", "blue-green", "--wait")
    assert result.code == 0
    assert_no_failures(reports[0], "blue-green")
    assert reports[0].by_version["1"] > 0 and reports[0].by_version["2"] > 0
    assert cli.status()["stable"] == refs["2"]


def test_canary_promote(project: tuple[Canarist, dict[str, str]]) -> None:
    """Canary of v3: weights step up, the header reaches the canary, promote finishes it."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        waiter = background(cli, "deploy", "web", refs["3"], "--wait")
        status = cli.wait_for(lambda s: s["phase"] == "paused", what="manual gate")
        assert status["weights"] == {refs["3"]: 50, refs["2"]: 50}
        assert status["canary"] == refs["3"]
        forced = version_split(cli, 20, {"X-Canarist-Canary": "1"})
        assert forced == Counter({"3": 20})
        # Counted apart: the judge leaves what testers chose out of the comparison.
        counted = cli.wait_for(
            lambda s: s["counters"].get(refs["3"], {}).get("requested") == 20,
            what="the header's requests counted apart",
        )["counters"]
        assert counted[refs["3"]]["requests"] > 20 and counted[refs["2"]]["requested"] == 0
        split = version_split(cli, 200)
        assert 60 <= split["3"] <= 140, split
        started = time.monotonic()
        cli("promote", "web")
        cli.wait_for(lambda s: s["weights"].get(refs["3"]) == 100, what="100% on v3")
        promote_seconds = time.monotonic() - started
        assert waiter.wait(60) == 0, waiter.communicate()
    print(f"promote to 100% of traffic: {promote_seconds:.2f}s")
    assert_no_failures(reports[0], "canary promote")
    assert cli.status()["stable"] == refs["3"]


def test_abort(project: tuple[Canarist, dict[str, str]]) -> None:
    """Abort mid-canary: all traffic back on stable, `deploy --wait` exits 4."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        waiter = background(cli, "deploy", "web", refs["1"], "--wait")
        cli.wait_for(lambda s: s["phase"] == "paused", what="manual gate")
        cli("abort", "web")
        assert waiter.wait(60) == 4, waiter.communicate()
        status = cli.wait_for(
            lambda s: not [i for i in s["instances"] if i["release"] == refs["1"]],
            what="canary retired",
        )
    assert_no_failures(reports[0], "abort")
    assert status["stable"] == refs["3"] and status["weights"] == {refs["3"]: 100}
    assert cli("history", "web", "--json").code == 0


def test_rollback(project: tuple[Canarist, dict[str, str]]) -> None:
    """Rollback returns to the previous release (v2) with no failed request."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        cli("rollback", "web")
        cli.wait_for(lambda s: no_rollout(s) and s["stable"] == refs["2"], what="back on v2")
    assert_no_failures(reports[0], "rollback")
    assert version_split(cli, 20) == Counter({"2": 20})


def test_rolling_update(project: tuple[Canarist, dict[str, str]]) -> None:
    """Rolling to v3 in batches of one surge instance: no failed request."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        result = cli("deploy", "web", refs["3"], "--strategy", "rolling", "--wait")
    assert result.code == 0
    assert_no_failures(reports[0], "rolling")
    status = cli.wait_for(lambda s: len(s["instances"]) == 2, what="old instances gone")
    assert {i["release"] for i in status["instances"]} == {refs["3"]}


def test_controller_killed_mid_canary_resumes(project: tuple[Canarist, dict[str, str]]) -> None:
    """SIGKILL the controller mid-canary: traffic flows on, `up` resumes the same rollout."""
    cli, refs = project
    reports: list[LoadReport] = []
    with steady_load(cli, reports):
        cli("deploy", "web", refs["1"])
        before = cli.wait_for(lambda s: s["phase"] == "paused", what="manual gate")
        pid = cli.controller_pid()
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.5)  # the data plane serves on its own meanwhile
        cli("up")
        after = cli.status()
        assert after["rollout"]["id"] == before["rollout"]["id"]
        assert after["phase"] == "paused" and after["weights"] == before["weights"]
        assert {i["id"] for i in after["instances"]} == {i["id"] for i in before["instances"]}
        cli("promote", "web")
        cli.wait_for(lambda s: no_rollout(s) and s["stable"] == refs["1"], what="v1 promoted")
    assert_no_failures(reports[0], "controller SIGKILL mid-canary")


def test_haproxy_restarted_with_desired_weights(project: tuple[Canarist, dict[str, str]]) -> None:
    """HAProxy killed mid-canary comes back with the weights the store wants."""
    cli, refs = project
    cli("deploy", "web", refs["2"])
    cli.wait_for(lambda s: s["phase"] == "paused", what="manual gate")
    cli.kill_haproxy()
    version_split(cli, 1)
    split = version_split(cli, 200)
    assert 60 <= split["2"] <= 140 and split["2"] + split["1"] == 200, split
    cli("abort", "web")
    cli.wait_for(lambda s: no_rollout(s) and s["stable"] == refs["1"], what="aborted")


def test_a_killed_instance_is_replaced(project: tuple[Canarist, dict[str, str]]) -> None:
    """An instance killed with SIGKILL is replaced by a fresh one of the same release."""
    cli, refs = project
    before = cli.wait_for(lambda s: len(s["instances"]) == 2, what="two instances")
    victim = before["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    after = cli.wait_for(
        lambda s: (
            victim["id"] not in {i["id"] for i in s["instances"]}
            and sum(1 for i in s["instances"] if i["state"] == "running") == 2
        ),
        what="replacement",
    )
    assert {i["release"] for i in after["instances"]} == {refs["1"]}
    assert version_split(cli, 10) == Counter({"1": 10})


@pytest.mark.parametrize(
    "args",
    [
        ("deploy", "nope", "v2"),
        ("deploy", "web", "sha256:" + "0" * 64),
        ("deploy", "web", "not-a-release"),
        ("deploy", "web", "v2", "--strategy", "yolo"),
        ("promote", "web"),
        ("abort", "web"),
        ("status", "nope"),
        ("history", "nope"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    project: tuple[Canarist, dict[str, str]], args: tuple[str, ...]
) -> None:
    """Each bad command: exit 2, one line on stderr, state unchanged."""
    cli, _ = project
    before = cli.status()
    result = cli(*args, check=False)
    assert result.code == 2, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    after = cli.status()
    assert (after["stable"], after["canary"], after["weights"]) == (
        before["stable"],
        before["canary"],
        before["weights"],
    )


def test_second_rollout_while_one_runs_is_refused(project: tuple[Canarist, dict[str, str]]) -> None:
    """A second deploy while a rollout runs: exit 2, the first goes on untouched."""
    cli, refs = project
    cli("deploy", "web", refs["2"])
    first = cli.wait_for(lambda s: s["phase"] == "paused", what="manual gate")
    result = cli("deploy", "web", refs["3"], check=False)
    assert result.code == 2 and "already running" in result.stderr
    assert cli.status()["rollout"]["id"] == first["rollout"]["id"]
    cli("abort", "web")
    cli.wait_for(no_rollout, what="aborted")


def test_tampered_release_is_refused(project: tuple[Canarist, dict[str, str]]) -> None:
    """A release whose stored bytes changed is refused before anything starts."""
    cli, _ = project
    app = cli.root / "app4"
    from canarist.demo.sample import write_app

    write_app(app, version="4")
    ref = cli("build", str(app)).stdout.strip().splitlines()[-1]
    archive = next(
        (cli.root / ".canarist" / "releases" / ref.removeprefix("sha256:")).glob("*.tar*")
    )
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.chmod(0o644)
    archive.write_bytes(bytes(data))
    before = cli.wait_for(
        lambda s: all(i["state"] == "running" for i in s["instances"]), what="settled"
    )
    result = cli("deploy", "web", ref, check=False)
    assert result.code == 2, result
    assert "does not match" in result.stderr or "tamper" in result.stderr.lower(), result.stderr
    assert cli.status()["instances"] == before["instances"]


def test_the_api_wants_the_token(project: tuple[Canarist, dict[str, str]]) -> None:
    """The controller listens on loopback only and refuses requests without its token."""
    import json
    import urllib.error

    cli, _ = project
    home = cli.root / ".canarist"
    assert (home / "token").stat().st_mode & 0o777 == 0o600
    port = json.loads((home / "controller.json").read_text())["port"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/status", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 401


def test_malformed_spec_is_refused_by_up(tmp_path: Path) -> None:
    """`up` with a malformed spec: exit 2, one line, nothing started."""
    (tmp_path / "canarist.yaml").write_text("services:\n  web:\n    instances: zero\n")
    cli = Canarist(tmp_path, 0)
    result = cli("up", check=False)
    assert result.code == 2
    assert "services.web.instances" in result.stderr
    assert not (tmp_path / ".canarist" / "controller.json").exists()


def test_up_again_reloads_the_spec(project: tuple[Canarist, dict[str, str]]) -> None:
    """`up` while running re-reads canarist.yaml: a new service appears, the old runs on."""
    from tests.e2e.harness import free_port

    cli, refs = project
    spec = cli.root / "canarist.yaml"
    spec.write_text(spec.read_text() + f"  api:\n    listen: 127.0.0.1:{free_port()}\n")
    assert "reloaded" in cli("up").stdout
    assert cli.status("api")["phase"] == "empty"
    assert cli.status()["stable"] == refs["1"]
    assert version_split(cli, 10) == Counter({"1": 10})


def test_an_address_another_process_holds_is_refused_by_up(tmp_path: Path) -> None:
    """`up` with a service whose address another process listens on: exit 2, one line
    naming the service and the address, nothing started (before: the controller started
    and its HAProxy failed to start at every tick, ten warnings a second)."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        (tmp_path / "canarist.yaml").write_text(
            f"services:\n  web:\n    listen: 127.0.0.1:{port}\n"
        )
        result = Canarist(tmp_path, port)("up", check=False)
    assert result.code == 2
    assert result.stderr == (
        f"canarist: error: service 'web': cannot listen on 127.0.0.1:{port}:"
        " Address already in use\n"
    )
    assert not (tmp_path / ".canarist" / "controller.json").exists()


def test_up_without_haproxy_says_so(tmp_path: Path) -> None:
    """`up` on a machine without HAProxy: exit 1, one line saying how to install it,
    nothing started (before: the controller started, and nothing ever served)."""
    (tmp_path / "canarist.yaml").write_text("services:\n  web:\n    listen: 127.0.0.1:1\n")
    cli = Canarist(tmp_path, 0)
    cli.env["PATH"] = str(tmp_path)  # the CLI is started by absolute path
    result = cli("up", check=False)
    assert result.code == 1
    assert result.stderr == (
        "canarist: error: HAProxy is not installed: no 'haproxy' on PATH"
        " (on Debian: apt-get install haproxy)\n"
    )
    assert not (tmp_path / ".canarist" / "controller.json").exists()


def test_up_again_refuses_a_new_address_another_process_holds(
    project: tuple[Canarist, dict[str, str]],
) -> None:
    """`up` while running, with a service added whose address another process listens
    on: exit 2, the running spec unchanged; once the address is free, taken."""
    cli, _ = project
    spec = cli.root / "canarist.yaml"
    before = spec.read_text()
    try:
        with socket.create_server(("127.0.0.1", 0)) as held:
            port = held.getsockname()[1]
            spec.write_text(before + f"  held:\n    listen: 127.0.0.1:{port}\n")
            result = cli("up", check=False)
            assert result.code == 2
            assert f"service 'held': cannot listen on 127.0.0.1:{port}" in result.stderr
            assert cli("status", "held", check=False).code == 2  # unknown service
            assert version_split(cli, 10) == Counter({"1": 10})
        assert "reloaded" in cli("up").stdout
        assert cli.status("held")["phase"] == "empty"
    finally:
        spec.write_text(before)
        cli("up")


def test_the_audit_log_is_tamper_evident(project: tuple[Canarist, dict[str, str]]) -> None:
    """`history --verify` passes on the real log and fails once an entry is edited."""
    import sqlite3

    cli, _ = project
    result = cli("history", "web", "--verify")
    assert "audit log intact" in result.stderr
    assert "#1 initial" in result.stdout and "aborted after" in result.stdout
    db = sqlite3.connect(cli.root / ".canarist" / "state.db")
    with db:
        db.execute("UPDATE events SET detail = '{}' WHERE id = 3")
    db.close()
    broken = cli("history", "web", "--verify", check=False)
    assert broken.code == 1
    assert "entry 3" in broken.stderr


def processes_under(root: Path) -> list[str]:
    """Command lines of live processes that run from this project's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if str(root) in cmdline and ") Z" not in stat:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_down_stops_everything(project: tuple[Canarist, dict[str, str]]) -> None:
    """`down` stops the controller, HAProxy and every instance: nothing of ours runs on."""
    cli, _ = project
    assert processes_under(cli.root)  # HAProxy and instances are running now
    cli("down")
    deadline = time.monotonic() + 10
    while processes_under(cli.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(cli.root) == []
