"""`canarist demo`: two versions of the sample app, a canary under load, and the tally."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from canarist.cli.client import ControllerClient
from canarist.controller import daemon
from canarist.demo.load import Load, LoadReport
from canarist.demo.sample import write_app
from canarist.home import Home
from canarist.releases.build import build_release
from canarist.releases.store import LocalArtifactStore

DEMO_SPEC = """\
services:
  hello:
    listen: 127.0.0.1:{port}
    instances: 2
    strategy:
      kind: canary
      steps:
        - set_weight: 10
        - analyze: 6s
        - set_weight: 50
        - analyze: 6s
      scale_down_delay: 5s
    analysis:
      judge: sequential      # the default: decides as soon as the evidence is strong
    drain_timeout: 5s
"""


def run_demo(port: int, keep: bool, console: Console) -> int:
    """Run the story; returns the exit code (0 when v2 was promoted with no failed request)."""
    workdir = Path(tempfile.mkdtemp(prefix="canarist-demo-"))
    spec_path = workdir / "canarist.yaml"
    spec_path.write_text(DEMO_SPEC.format(port=port))
    previous_home = os.environ.pop("CANARIST_HOME", None)
    home = Home.locate(spec_path)
    client: ControllerClient | None = None
    load: Load | None = None
    started = time.monotonic()
    try:
        console.rule("canarist demo")
        console.print(f"working in {workdir}")
        store = LocalArtifactStore(home.artifacts, venv_root=home.venvs)
        refs: dict[str, str] = {}
        # v3 is broken: it fails a fifth of its requests.
        for version, error_rate in (("1.0.0", 0.0), ("2.0.0", 0.0), ("3.0.0", 0.2)):
            app_dir = write_app(workdir / f"app-{version}", version=version, error_rate=error_rate)
            t0 = time.monotonic()
            refs[version] = build_release(app_dir, store, label=f"v{version}")
            console.print(
                f"built v{version} → {refs[version][:19]} in {time.monotonic() - t0:.2f}s"
            )
        daemon.start_background(home)
        client = ControllerClient(home)
        console.print("controller, HAProxy: up")

        t0 = time.monotonic()
        first = client.deploy("hello", refs["1.0.0"], None)
        _wait(client, first["id"])
        console.print(f"v1.0.0 serving at http://127.0.0.1:{port}/ in {time.monotonic() - t0:.2f}s")

        load = Load(f"http://127.0.0.1:{port}/", rate=200, connections=8).start()
        time.sleep(2)
        console.print("steady load: 200 requests/s over keep-alive connections")
        rollout = client.deploy("hello", refs["2.0.0"], None)
        console.print(f"canary of v2.0.0: {' → '.join(rollout['steps'])}")
        final = _watch(client, rollout["id"], load, console)
        console.print(f"v2.0.0: {final['phase']} ({final['reason']})")
        time.sleep(1)
        before_v3 = load.snapshot()
        console.rule("v3.0.0 fails 20 % of its requests")
        bad = client.deploy("hello", refs["3.0.0"], None)
        bad_final = _watch(client, bad["id"], load, console)
        console.print(f"v3.0.0: {bad_final['phase']} ({bad_final['reason']})")
        time.sleep(2)
        report = load.stop()
        load = None
        _summary(console, client, final, report)
        bad_failed = report.failed_by_version["3.0.0"]
        console.print(
            f"v3.0.0 was rolled back automatically after"
            f" {bad_final['ended_at'] - bad_final['created_at']:.1f}s, having served"
            f" {report.by_version['3.0.0'] + bad_failed} requests of which {bad_failed} failed"
        )
        failed_elsewhere = report.failed - bad_failed
        ok = (
            final["phase"] == "promoted"
            and bad_final["phase"] == "rolled_back"
            and before_v3.failed == 0
            and failed_elsewhere == 0
        )
        console.print(
            f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s:"
            f" {report.sent} requests; {failed_elsewhere} failed outside the broken v3"
        )
        return 0 if ok else 1
    finally:
        if load is not None:
            load.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                pid = daemon.running_pid(home)
                client.shutdown(everything=True)
                if pid:
                    daemon.wait_stopped(pid, 30)
            client.close()
        if previous_home is not None:
            os.environ["CANARIST_HOME"] = previous_home
        if keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait(client: ControllerClient, rollout_id: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout = client.rollout(rollout_id)
        if rollout["ended_at"] is not None:
            return rollout
        time.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} did not end in {timeout:g}s")


def _watch(
    client: ControllerClient, rollout_id: int, load: Load, console: Console
) -> dict[str, Any]:
    from canarist.cli.main import render_status

    with Live(console=console, refresh_per_second=4) as live:
        while True:
            rollout = client.rollout(rollout_id)
            status = client.status("hello")[0]
            seen = load.snapshot()
            grid = Table.grid()
            grid.add_row(render_status(status))
            grid.add_row(
                f"load: {seen.sent} sent, {seen.failed} failed, by version "
                + ", ".join(f"v{v}: {n}" for v, n in sorted(seen.by_version.items()))
            )
            live.update(grid)
            if rollout["ended_at"] is not None:
                break
            time.sleep(0.25)
    console.print()
    return rollout


def _summary(
    console: Console, client: ControllerClient, final: dict[str, Any], report: LoadReport
) -> None:
    table = Table("version", "requests served", "failed", title="requests through the rollout")
    for version in sorted(set(report.by_version) | set(report.failed_by_version)):
        table.add_row(
            f"v{version}", str(report.by_version[version]), str(report.failed_by_version[version])
        )
    table.add_row("all", str(report.ok), str(report.failed))
    console.print(table)
    history = next(h for h in client.history("hello", limit=5) if h["id"] == final["id"])
    steps = Table("step", "what", "took", title=f"rollout {final['id']}: {final['phase']}")
    marks = [
        (e["at"], e["detail"].get("index", 0))
        for e in history["events"]
        if e["kind"] in ("rollout.started", "rollout.step")
    ]
    end = final["ended_at"]
    for n, (at, index) in enumerate(marks):
        until = marks[n + 1][0] if n + 1 < len(marks) else end
        steps.add_row(str(index + 1), history["steps"][index], f"{until - at:.2f}s")
    console.print(steps)
