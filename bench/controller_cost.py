"""What the controller costs as the services it runs grow in number, beside HAProxy's own cost.

    .venv/bin/python -m bench.controller_cost [--services 1,4,16] [--seconds 10] [--warm 20]
                                              [--quick]

For each count N, a real controller runs N services of one instance each (the sample
app), HAProxy in front, no rollout in progress: the steady state of a machine between
releases. Then its CPU time is measured over `--seconds`, idle and under load (`wrk`,
one thread and two keep-alive connections per service, all at once), beside the CPU
time of the HAProxy process serving the same requests: the ratio says what the control
plane costs against the data plane it steers. The loaded stretch begins `--warm` seconds
into the load: a service no rollout judges has HAProxy log its requests in full (up to
1,000 lines a second) until each release's latest latencies are had (16,384: 16 s at
that rate), and only then 100 lines a second, the steady state measured. Also printed:
what each service beyond the first adds to the controller, idle.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.foundation import free_port, process_cpu

from canarist.cli.client import ControllerClient
from canarist.controller import daemon
from canarist.demo.sample import write_app
from canarist.home import Home
from canarist.releases.build import build_release
from canarist.releases.store import LocalArtifactStore


@dataclass(frozen=True)
class Cost:
    """CPU per second of wall time (1.0: a whole core) over one measured stretch."""

    controller: float
    haproxy: float
    requests: float  # requests a second through HAProxy (0 when idle)


def measure(work: Path, services: int, seconds: float, warm: float) -> tuple[Cost, Cost | None]:
    """Idle and loaded costs of a controller running `services` services."""
    project = work / f"n{services}"
    project.mkdir()
    app = write_app(project / "app", "1.0.0")
    ports = [free_port() for _ in range(services)]
    (project / "canarist.yaml").write_text(
        "services:\n"
        + "".join(
            f"  s{i}:\n    listen: 127.0.0.1:{p}\n    instances: 1\n" for i, p in enumerate(ports)
        )
    )
    home = Home.locate(project / "canarist.yaml")
    ref = build_release(app, LocalArtifactStore(home.artifacts, venv_root=home.venvs))
    daemon.start_background(home)
    client = ControllerClient(home)
    try:
        rollouts = [client.deploy(f"s{i}", ref, None)["id"] for i in range(services)]
        for rollout in rollouts:
            while client.rollout(rollout)["ended_at"] is None:
                time.sleep(0.1)
        controller = int(home.pidfile.read_text().split()[0])
        haproxy = int((home.haproxy / "haproxy.pid").read_text().strip())
        time.sleep(2.0)  # past the start: health checks settled, first polls done
        idle = stretch(controller, haproxy, seconds)
        loaded = None
        if shutil.which("wrk") is not None:
            loads = [
                subprocess.Popen(
                    [
                        "wrk",
                        "-t1",
                        "-c2",
                        f"-d{seconds + warm + 1.5:.0f}s",
                        f"http://127.0.0.1:{p}/",
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for p in ports
            ]
            time.sleep(warm)
            measured = stretch(controller, haproxy, seconds)
            rate = 0.0
            for load in loads:
                out = load.communicate()[0]
                found = re.search(r"Requests/sec:\s+([\d.]+)", out)
                rate += float(found[1]) if found else 0.0
            loaded = Cost(measured.controller, measured.haproxy, rate)
        return idle, loaded
    finally:
        client.shutdown(everything=True)
        client.close()


def stretch(controller: int, haproxy: int, seconds: float) -> Cost:
    """CPU of both processes over the next `seconds`."""
    c0, h0, t0 = process_cpu(controller), process_cpu(haproxy), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return Cost((process_cpu(controller) - c0) / wall, (process_cpu(haproxy) - h0) / wall, 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", default="1,4,16", help="service counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each stretch")
    parser.add_argument(
        "--warm", type=float, default=20.0, help="seconds of load before the loaded stretch"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 and 2 services, 1 s stretches, 1 s warm"
    )
    args = parser.parse_args(argv)
    counts = [1, 2] if args.quick else [int(n) for n in args.services.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    warm = 1.0 if args.quick else args.warm
    work = Path(tempfile.mkdtemp(prefix="canarist-bench-"))
    print(f"# controller cost by number of services ({time.strftime('%Y-%m-%d')})")
    print(
        f"{'services':>8}  {'idle: controller':>16}  {'haproxy':>8}"
        f"  {'loaded: req/s':>13}  {'controller':>10}  {'haproxy':>8}  {'ratio':>6}"
    )
    idles: list[tuple[int, float]] = []
    try:
        for n in counts:
            idle, loaded = measure(work, n, seconds, warm)
            idles.append((n, idle.controller))
            row = f"{n:>8}  {100 * idle.controller:>15.1f}%  {100 * idle.haproxy:>7.1f}%"
            if loaded is not None:
                row += (
                    f"  {loaded.requests:>13.0f}  {100 * loaded.controller:>9.1f}%"
                    f"  {100 * loaded.haproxy:>7.1f}%"
                    f"  {loaded.controller / max(loaded.haproxy, 1e-9):>5.2f}x"
                )
            print(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("(% of one core; ratio: controller CPU / HAProxy CPU under the same load)")
    (first, low), (last, high) = idles[0], idles[-1]
    if last > first:
        print(
            f"each service beyond the first, idle: {100 * (high - low) / (last - first):.2f} %"
            f" of a core"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
