"""Fixtures for the platform tests: a sample app, a venv, and a copying release source."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from canarist.errors import UnknownRelease
from canarist.platforms.base import Instance
from canarist.platforms.local import LocalPlatform
from canarist.releases.base import RunnableRelease

# A stdlib-only app. Its arguments pick a behaviour, so one app directory serves every test:
#   --ignore-term    keeps running on SIGTERM
#   --crash          starts a grandchild, writes to stderr and exits 3 before listening
#   --never-healthy  listens, but /healthz answers 503
#   --spawn          starts a grandchild that sleeps, then serves normally
SERVER_PY = r"""
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FLAGS = set(sys.argv[1:])


def try_write(path):
    try:
        with open(path, "a") as f:
            f.write("x")
    except OSError as exc:
        return type(exc).__name__
    return "written"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 200
        if self.path == "/healthz":
            status = 503 if "--never-healthy" in FLAGS else 200
            body = {"ok": status == 200}
        elif self.path == "/":
            body = {
                "release": os.environ.get("CANARIST_RELEASE"),
                "instance": os.environ.get("CANARIST_INSTANCE"),
                "service": os.environ.get("CANARIST_SERVICE"),
                "environ": dict(os.environ),
                "cwd": os.getcwd(),
                "executable": sys.executable,
                "pid": os.getpid(),
                "grandchild": GRANDCHILD,
            }
        elif self.path == "/write":
            body = {
                "new_file": try_write("new-file.txt"),
                "existing_file": try_write("server.py"),
                "home": try_write(os.path.join(os.environ["HOME"], "scratch.txt")),
            }
        else:
            status, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid


GRANDCHILD = sleeper() if FLAGS & {"--spawn", "--crash"} else None
print(f"grandchild {GRANDCHILD}", flush=True)
if "--crash" in FLAGS:
    print("boom: DATABASE_URL is not set", file=sys.stderr, flush=True)
    sys.exit(3)

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)


def on_term(signum, frame):
    print("SIGTERM received", flush=True)
    if "--ignore-term" not in FLAGS:
        # shutdown() waits for serve_forever(), which this main thread is running.
        threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, on_term)
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever(poll_interval=0.05)  # a prompt exit on SIGTERM
server.server_close()
print("stopped cleanly", flush=True)
"""


def ref_of(name: str) -> str:
    """A release reference for a test release name."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class CopyingReleases:
    """A `ReleaseSource` that unpacks by copying an app directory and making it read-only."""

    def __init__(self, app: Path, venv: Path) -> None:
        self.app = app
        self.venv = venv
        self.commands: dict[str, tuple[str, ...]] = {}
        self.prepared: list[str] = []

    @staticmethod
    def ref(name: str) -> str:
        """The reference of a test release name."""
        return ref_of(name)

    def add(self, name: str, *command: str) -> str:
        """Declare a release running `command` from the sample app; return its reference."""
        ref = ref_of(name)
        self.commands[ref] = command
        return ref

    def prepare(self, ref: str) -> RunnableRelease:
        """Return the runnable release, counting the calls."""
        if ref not in self.commands:
            raise UnknownRelease(ref)
        self.prepared.append(ref)
        return RunnableRelease(
            ref=ref, command=self.commands[ref], health="/healthz", venv=self.venv
        )

    def unpack(self, ref: str, dest: Path) -> None:
        """Copy the app into `dest` (which must not exist) and drop every write bit."""
        shutil.copytree(self.app, dest)
        for root, dirs, files in os.walk(dest, topdown=False):
            for name in files:
                os.chmod(os.path.join(root, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o555)
        os.chmod(dest, 0o555)


@pytest.fixture(scope="session")
def release_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv, created once, standing in for a release's built venv."""
    venv = tmp_path_factory.mktemp("release") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


@pytest.fixture(scope="session")
def sample_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app's directory."""
    app = tmp_path_factory.mktemp("sample-app")
    (app / "server.py").write_text(SERVER_PY)
    return app


@pytest.fixture
def releases(sample_app: Path, release_venv: Path) -> CopyingReleases:
    """A release source with a healthy release, `good`, and the misbehaving ones."""
    source = CopyingReleases(sample_app, release_venv)
    source.add("good", "python", "server.py")
    source.add("good-python3", "python3", "server.py")
    source.add("stubborn", "python", "server.py", "--ignore-term")
    source.add("crash", "python", "server.py", "--crash")
    source.add("never-healthy", "python", "server.py", "--never-healthy")
    source.add("forking", "python", "server.py", "--spawn")
    return source


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The platform's state directory."""
    return tmp_path / "home"


class TrackedPlatform(LocalPlatform):
    """A LocalPlatform that remembers every instance it started."""

    def __init__(self, home: Path, releases: CopyingReleases) -> None:
        super().__init__(home, releases)
        self.started: list[Instance] = []

    async def start(
        self, service: str, release: str, instance_id: str, *, health_path: str, timeout: float
    ) -> Instance:
        """Start as LocalPlatform does, and remember the instance."""
        instance = await super().start(
            service, release, instance_id, health_path=health_path, timeout=timeout
        )
        self.started.append(instance)
        return instance


@pytest.fixture
async def platform(home: Path, releases: CopyingReleases) -> AsyncIterator[LocalPlatform]:
    """A LocalPlatform whose every started instance is stopped when the test ends."""
    local = TrackedPlatform(home, releases)
    yield local
    for instance in local.started:
        await local.stop(instance, grace=0.5)
