"""The sample app that `canarist init` writes and `canarist demo` deploys."""

from __future__ import annotations

from pathlib import Path

SERVER = '''\
"""A tiny HTTP service: answers / with its version, /healthz when ready."""

import json
import os
import random
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "{version}"
ERROR_RATE = {error_rate}  # share of requests answered 500, to show automatic rollback
DELAY = {delay_ms} / 1000  # seconds added to every answer, to show a latency rollback
DELAY_FROM = {delay_from_s}  # ... once the process has run this many seconds
STARTED = time.monotonic()
RELEASE = os.environ.get("CANARIST_RELEASE", "dev")
INSTANCE = os.environ.get("CANARIST_INSTANCE", "dev")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service behind a proxy

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and
        # delayed ACKs hold every keep-alive response back by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, b"ok\\n", "text/plain")
            return
        if self.path == "/broken":  # broken in every release: its callers fail anywhere
            self.reply(500, b'{{"error": "broken everywhere"}}\\n', "application/json")
            return
        if DELAY and time.monotonic() - STARTED >= DELAY_FROM:
            time.sleep(DELAY)
        if ERROR_RATE and random.random() < ERROR_RATE:
            self.reply(500, b'{{"error": "injected"}}\\n', "application/json")
            return
        body = json.dumps({{"version": VERSION, "release": RELEASE, "instance": INSTANCE}})
        self.reply(200, body.encode() + b"\\n", "application/json")

    def reply(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler)
    server.daemon_threads = True

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
'''

PYPROJECT = """\
[project]
name = "hello-canarist"
version = "{version}"
requires-python = ">=3.11"
dependencies = []

[tool.canarist.app]
command = ["python", "server.py"]
health = "/healthz"
"""

SPEC = """\
# canarist.yaml: the services canarist runs on this machine.
services:
  hello:
    listen: 127.0.0.1:{port}     # the public endpoint (HAProxy)
    instances: 2
    health:
      interval: 1s
      start_timeout: 30s
    strategy:
      kind: canary
      steps:
        - set_weight: 10
        - pause: 10s
        - set_weight: 50
        - pause: 10s
      scale_down_delay: 30s
    sticky: false
    canary_header: X-Canarist-Canary
    drain_timeout: 10s
"""


def write_app(
    directory: Path,
    version: str = "1.0.0",
    error_rate: float = 0.0,
    delay_ms: float = 0.0,
    delay_from_s: float = 0.0,
) -> Path:
    """Write the sample app into `directory` (created if needed): it fails `error_rate`
    of its requests and, once it has run `delay_from_s` seconds, answers `delay_ms`
    later than it could."""
    directory.mkdir(parents=True, exist_ok=True)
    server = SERVER.format(
        version=version, error_rate=error_rate, delay_ms=delay_ms, delay_from_s=delay_from_s
    )
    (directory / "server.py").write_text(server)
    (directory / "pyproject.toml").write_text(PYPROJECT.format(version=version))
    return directory


def write_spec(path: Path, port: int = 8080) -> Path:
    """Write a working canarist.yaml for the sample app."""
    path.write_text(SPEC.format(port=port))
    return path
