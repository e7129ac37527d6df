"""Drive a real canarist: the CLI in subprocesses, the controller, HAProxy and instances."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def project_up(
    root: Path,
    spec: str,
    apps: Mapping[str, Path],
    *,
    labels: Mapping[str, str] | None = None,
    first: str | None = None,
) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """A project in `root` on a free port (`spec` has a `{port}` to fill): each app built
    (its reference by name, with a label if given), the controller up and the `first`
    app deployed. At the end everything is brought down, the controller killed if it
    would not stop."""
    port = free_port()
    (root / "canarist.yaml").write_text(spec.format(port=port))
    cli = Canarist(root, port)
    refs = {}
    for name, app in apps.items():
        label = ("--label", labels[name]) if labels and name in labels else ()
        refs[name] = cli("build", str(app), *label).stdout.strip().splitlines()[-1]
    cli("up")
    try:
        if first is not None:
            cli("deploy", "web", refs[first], "--wait")
        yield cli, refs
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = cli.controller_pid()
        cli("down", check=False, timeout=90)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class Canarist:
    """Runs `canarist` commands in one project directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if k != "CANARIST_HOME"}
        self.env["COLUMNS"] = "200"

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "canarist", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"canarist {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return result

    def status(self, service: str = "web") -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("status", service, "--json").stdout)
        return data

    def controller_pid(self) -> int:
        return int(json.loads((self.root / ".canarist" / "controller.json").read_text())["pid"])

    def kill_haproxy(self, timeout: float = 15) -> int:
        """SIGKILL the HAProxy canarist runs; the PID of the one the controller starts
        again, once its pidfile names it."""
        pidfile = self.root / ".canarist" / "haproxy" / "haproxy.pid"
        old = int(pidfile.read_text())
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = int(pidfile.read_text())
            except (OSError, ValueError):
                new = old
            if new != old:
                return new
            time.sleep(0.2)
        raise AssertionError("HAProxy was not restarted")

    def wait_for(
        self, predicate: Any, timeout: float = 60, what: str = "condition", service: str = "web"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status(service)
            if predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last status: {status}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


SPEC = """\
services:
  web:
    listen: 127.0.0.1:{port}
    instances: 2
    health:
      interval: 0.5s
      start_timeout: 20s
    strategy:
      kind: canary
      steps:
        - set_weight: 25
        - pause: 1s
        - set_weight: 50
        - pause: manual
      scale_down_delay: 4s
      max_surge: 1
    drain_timeout: 5s
    stop_grace: 5s
"""
