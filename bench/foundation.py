"""Foundation figures, each beside a baseline measured in the same run.

    .venv/bin/python bench/foundation.py [--quick]

- build: `canarist build` of the sample app (stdlib only) and of an app with one
  dependency, against a plain gzip'd tar of the same files (what any packaging costs);
- instance start: LocalPlatform.start (fresh verified unpack, venv, health) against
  spawning `python server.py` straight from the app dir and probing it the same way;
- data plane: throughput and latency straight to one instance, through a plain
  hand-written HAProxy, and through canarist's HAProxy (slots, checks, canary backend,
  logs) during a canary rollout (one instance of each of two releases at 50 %, held at a
  manual gate) with its controller judging it, and with the controller stopped; the
  controller's CPU and the log lines HAProxy dropped while it read;
- promote → 100 %: from the `promote` API call until HAProxy's live server state gives
  the new release all the weight, through a real controller;
- cutover: failed requests under steady load during a blue-green switch by canarist,
  against a naive in-place restart (stop the old process, start the new one) behind the
  same kind of plain HAProxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from canarist.cli.client import ControllerClient
from canarist.controller import daemon
from canarist.demo.load import Load
from canarist.demo.sample import write_app
from canarist.home import Home
from canarist.platforms.local import LocalPlatform
from canarist.releases.build import build_release
from canarist.releases.store import LocalArtifactStore
from canarist.routers.haproxy import LOG_SHARES
from canarist.routers.haproxy_runtime import RuntimeAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(url)


# -- build -------------------------------------------------------------------------------


def bench_build(work: Path, runs: int) -> None:
    print(f"\n## build (median of {runs}, cold store each time)")
    plain = write_app(work / "plain", "1.0.0")
    dep = write_app(work / "dep", "1.0.0")
    text = (
        (dep / "pyproject.toml")
        .read_text()
        .replace("dependencies = []", 'dependencies = ["six==1.16.0"]')
    )
    (dep / "pyproject.toml").write_text(text)
    print(f"{'app':<22}{'canarist build':>16}{'plain tar.gz':>14}{'ratio':>8}")
    for name, app in (("stdlib only", plain), ("with six==1.16.0", dep)):
        ours, base = [], []
        for i in range(runs):
            store = LocalArtifactStore(work / f"store-{name[:4]}-{i}")
            t0 = time.perf_counter()
            build_release(app, store)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with tarfile.open(work / f"plain-{i}.tar.gz", "w:gz") as tar:
                tar.add(app, arcname="app")
            base.append(time.perf_counter() - t0)
        ratio = statistics.median(ours) / statistics.median(base)
        print(f"{name:<22}{median_ms(ours):>13.1f} ms{median_ms(base):>11.1f} ms{ratio:>7.0f}x")


# -- instance start ----------------------------------------------------------------------


def bench_start(work: Path, runs: int) -> None:
    print(f"\n## instance start to healthy (median of {runs})")
    store = LocalArtifactStore(work / "start-store")
    app = write_app(work / "start-app", "1.0.0")
    ref = build_release(app, store)
    platform = LocalPlatform(work / "start-home", store)

    async def ours() -> list[float]:
        await platform.prepare(ref)
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            inst = await platform.start(
                "bench", ref, f"bench-{i}", health_path="/healthz", timeout=10
            )
            times.append(time.perf_counter() - t0)
            await platform.stop(inst, grace=2)
        return times

    canarist_times = asyncio.run(ours())
    direct = []
    for _ in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=app,
            env={**os.environ, "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"http://127.0.0.1:{port}/healthz")
        direct.append(time.perf_counter() - t0)
        proc.terminate()
        proc.wait()
    ratio = statistics.median(canarist_times) / statistics.median(direct)
    print(
        f"canarist (unpack+verify+health): {median_ms(canarist_times):.0f} ms;"
        f" direct spawn: {median_ms(direct):.0f} ms; ratio {ratio:.2f}x"
    )


# -- data plane --------------------------------------------------------------------------

PLAIN_CFG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
{servers}
"""


def start_plain_haproxy(
    work: Path, port: int, backends: list[int], name: str
) -> subprocess.Popen[bytes]:
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{p} check inter 1s" for i, p in enumerate(backends)
    )
    cfg = work / f"{name}.cfg"
    cfg.write_text(PLAIN_CFG.format(port=port, servers=servers))
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def wrk(url: str, seconds: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from wrk with 8 keep-alive connections."""
    out = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(
        next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec"))
    )

    def pct(label: str) -> float:
        line = next(line for line in out.splitlines() if line.strip().startswith(label))
        value = line.split()[1]
        if value.endswith("us"):
            return float(value[:-2]) / 1000
        if value.endswith("ms"):
            return float(value[:-2])
        return float(value[:-1]) * 1000

    return rate, pct("50%"), pct("99%")


ROUNDS = 3  # of the data plane's interleaved runs


def bench_data_plane(work: Path, seconds: int) -> None:
    print(
        f"\n## data plane (wrk, 2 threads, 8 keep-alive connections; median of {ROUNDS}"
        f" interleaved runs of {seconds // ROUNDS}s each)"
    )
    if shutil.which("wrk") is None:
        print("wrk not installed (apt-get install wrk): skipped")
        return
    app = write_app(work / "dp-app", "1.0.0")
    procs = []
    ports = [free_port(), free_port()]
    for p in ports:
        procs.append(
            subprocess.Popen(
                [sys.executable, "server.py"],
                cwd=app,
                env={**os.environ, "PORT": str(p)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for p in ports:
        wait_http(f"http://127.0.0.1:{p}/healthz")
    plain_port = free_port()
    plain = start_plain_haproxy(work, plain_port, ports, "plain")
    home_dir = work / "dp-project"
    home_dir.mkdir()
    ours_port = free_port()
    # One instance of each of two releases, at 50 % each, held at a manual gate: two
    # instances, as behind the plain HAProxy, and a rollout being judged all along.
    (home_dir / "canarist.yaml").write_text(GATED_SPEC.format(port=ours_port, instances=1))
    home = Home.locate(home_dir / "canarist.yaml")
    store = LocalArtifactStore(home.artifacts, venv_root=home.venvs)
    ref = build_release(app, store)
    canary = build_release(write_app(work / "dp-app-2", "2.0.0"), store)
    daemon.start_background(home)
    client = ControllerClient(home)
    try:
        rollout = client.deploy("web", ref, None)
        while client.rollout(rollout["id"])["ended_at"] is None:
            time.sleep(0.1)
        client.deploy("web", canary, None)
        while client.status("web")[0]["phase"] != "paused":
            time.sleep(0.1)
        controller = int(home.pidfile.read_text().split()[0])
        idle = cpu_seconds(controller, 2.0) / 2.0
        runtime = RuntimeAPI(home.haproxy / "admin.sock")
        paths = (
            ("direct (one instance)", ports[0], False),
            ("plain HAProxy (2 instances)", plain_port, False),
            ("canarist HAProxy (2 instances)", ours_port, False),  # 1 + 1, judged
            ("  the same, controller stopped", ours_port, True),
        )
        # Short runs, interleaved, medians: the load of the rest of the machine moves
        # during a run, and must weigh on every path alike.
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in paths}
        busy = requests = dropped = 0.0
        for _ in range(ROUNDS):
            for name, port, stopped in paths:
                if stopped:
                    os.kill(controller, signal.SIGSTOP)
                before, cpu_before = asyncio.run(runtime.info()), process_cpu(controller)
                try:
                    results[name].append(wrk(f"http://127.0.0.1:{port}/", seconds // ROUNDS))
                finally:
                    if stopped:
                        os.kill(controller, signal.SIGCONT)
                if port == ours_port and not stopped:
                    after = asyncio.run(runtime.info())
                    busy += process_cpu(controller) - cpu_before
                    requests += int(after["CumReq"]) - int(before["CumReq"])
                    dropped += int(after["DroppedLogs"]) - int(before["DroppedLogs"])
        rows = [
            (name, *(statistics.median(r[i] for r in results[name]) for i in range(3)))
            for name, *_ in paths
        ]
        seconds_busy = ROUNDS * (seconds // ROUNDS)
        base = rows[1]
        print(f"{'path':<32}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s vs plain':>16}")
        for name, rate, p50, p99 in rows:
            print(f"{name:<32}{rate:>9.0f}{p50:>9.2f}{p99:>9.2f}{rate / base[1]:>15.2f}x")
        print(
            f"the controller reading the request data for the judges (counters every 0.2 s,"
            f" a share of the log lines): {100 * busy / seconds_busy:.0f} % of a core under"
            f" {requests / seconds_busy:.0f} req/s ({100 * idle:.1f} % idle),"
            f" {1e6 * (busy - idle * seconds_busy) / max(requests, 1):.0f} µs a request;"
            f" log lines dropped (a full socket queue; counts stay exact): {dropped:.0f} of"
            f" {requests:.0f} ({100 * dropped / max(requests, 1):.1f} %); share of requests"
            f" logged at the end: {share_logged(home)}; the canary's analysis at the end:"
            f" {client.status('web')[0]['analysis']['verdict']}"
        )
    finally:
        client.shutdown(everything=True)
        client.close()
        plain.terminate()
        plain.wait()
        for proc in procs:
            proc.terminate()
            proc.wait()


def share_logged(home: Home) -> str:
    """The per mille of the requests each used slot answers that HAProxy logs."""
    shares = []
    for path in sorted((home.haproxy / LOG_SHARES).glob("*.map")):
        used = [line for line in path.read_text().splitlines() if not line.endswith(" 1000")]
        shares.append(f"{path.stem}: {', '.join(used) or 'all'}")
    return "; ".join(shares) + " (per mille, by slot)"


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, seconds: float) -> float:
    """CPU seconds a process uses over the next `seconds`."""
    start = process_cpu(pid)
    time.sleep(seconds)
    return process_cpu(pid) - start


# -- promote and cutover -----------------------------------------------------------------

GATED_SPEC = """\
services:
  web:
    listen: 127.0.0.1:{port}
    instances: {instances}
    strategy:
      kind: canary
      steps: [{{set_weight: 50}}, {{pause: manual}}]
      scale_down_delay: 1s
"""


def bench_promote_and_cutover(work: Path, rounds: int, load_seconds: float) -> None:
    print(f"\n## promote → 100 % and cutover failures ({rounds} rounds)")
    project = work / "promote"
    project.mkdir()
    port = free_port()
    (project / "canarist.yaml").write_text(GATED_SPEC.format(port=port, instances=2))
    home = Home.locate(project / "canarist.yaml")
    store = LocalArtifactStore(home.artifacts, venv_root=home.venvs)
    refs = [build_release(write_app(project / f"app{v}", str(v)), store) for v in (1, 2)]
    daemon.start_background(home)
    client = ControllerClient(home)
    runtime = RuntimeAPI(home.haproxy / "admin.sock")

    def wait_done(rollout_id: int) -> dict[str, object]:
        while True:
            r = client.rollout(rollout_id)
            if r["ended_at"] is not None:
                return r
            time.sleep(0.05)

    async def share_of(release: str) -> float:
        status = client.status("web")[0]
        ports = {i["port"]: i["release"] for i in status["instances"]}
        total = mine = 0
        for s in await runtime.servers_state("be_web"):
            if s.in_maint or s.draining:
                continue
            total += s.weight
            if ports.get(s.port) == release:
                mine += s.weight
        return mine / total if total else 0.0

    try:
        wait_done(client.deploy("web", refs[0], None)["id"])
        current = 0
        promote_times = []
        for _ in range(rounds):
            nxt = 1 - current
            r = client.deploy("web", refs[nxt], None)
            while client.status("web")[0]["phase"] != "paused":
                time.sleep(0.05)
            t0 = time.perf_counter()
            client.command("promote", "web")
            while asyncio.run(share_of(refs[nxt])) < 1.0:
                time.sleep(0.002)
            promote_times.append(time.perf_counter() - t0)
            wait_done(r["id"])
            current = nxt
            time.sleep(1.5)
        print(
            f"promote → 100 %: median {median_ms(promote_times):.0f} ms,"
            f" max {max(promote_times) * 1000:.0f} ms (controller tick 100 ms)"
        )

        # canarist blue-green under load
        load = Load(f"http://127.0.0.1:{port}/", rate=300, connections=12).start()
        time.sleep(1)
        r = client.deploy("web", refs[1 - current], "blue-green")
        wait_done(r["id"])
        time.sleep(1)
        ours = load.stop()
    finally:
        client.shutdown(everything=True)
        client.close()

    # The same in-place restart (stop the old process, start the new one on its port),
    # once behind a plain HAProxy and once with the load sent straight to the process.
    app_dir = project / "app1"
    rows = [("canarist blue-green", ours)]
    for behind_haproxy in (True, False):
        bport = free_port()

        def spawn(port: int = bport) -> subprocess.Popen[bytes]:
            p = subprocess.Popen(
                [sys.executable, "server.py"],
                cwd=app_dir,
                env={**os.environ, "PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_http(f"http://127.0.0.1:{port}/healthz")
            return p

        proc = spawn()
        plain = None
        target = bport
        if behind_haproxy:
            target = free_port()
            plain = start_plain_haproxy(work, target, [bport], "naive")
        load = Load(f"http://127.0.0.1:{target}/", rate=300, connections=12).start()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        proc = spawn()
        time.sleep(max(1.0, load_seconds - 1))
        name = "in-place restart, plain HAProxy" if behind_haproxy else "in-place restart, direct"
        rows.append((name, load.stop()))
        proc.terminate()
        proc.wait()
        if plain is not None:
            plain.terminate()
            plain.wait()
    print(f"{'cutover under ~300 req/s':<36}{'requests':>9}{'failed':>8}{'p99 ms':>8}{'max ms':>8}")
    for name, report in rows:
        print(
            f"{name:<36}{report.sent:>9}{report.failed:>8}"
            f"{report.latency(0.99):>8.1f}{report.latency(1.0):>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter loads")
    args = parser.parse_args()
    runs = 3 if args.quick else 9
    work = Path(tempfile.mkdtemp(prefix="canarist-bench-"))
    print(f"# canarist foundation benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)")
    try:
        bench_build(work, runs)
        bench_start(work, runs)
        bench_data_plane(work, 3 if args.quick else 15)
        bench_promote_and_cutover(work, 3 if args.quick else 7, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
