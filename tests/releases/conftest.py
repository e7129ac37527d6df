"""Sample apps and stores shared by the release tests."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from canarist.releases.build import build_release
from canarist.releases.store import LocalArtifactStore

SERVER = """\
import http.server
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

APP_TABLE = '[tool.canarist.app]\ncommand = ["python", "server.py"]\nhealth = "/healthz"\n'


def write_app(
    root: Path,
    *,
    dependencies: list[str] | None = None,
    app_table: str = APP_TABLE,
) -> Path:
    """Write a small stdlib-only app (plus clutter a release must leave out) into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    project = '[project]\nname = "sample"\nversion = "1.0"\n'
    if dependencies is not None:
        project += "dependencies = [" + ", ".join(f'"{d}"' for d in dependencies) + "]\n"
    (root / "pyproject.toml").write_text(project + "\n" + app_table)
    (root / "server.py").write_text(SERVER)
    (root / "lib").mkdir(exist_ok=True)
    (root / "lib" / "greeting.py").write_text('TEXT = "hello"\n')
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / "start.sh").write_text("#!/bin/sh\nexec python server.py\n")
    (root / "bin" / "start.sh").chmod(0o755)
    # Clutter: version control, bytecode, local environments, canarist state, ignored files.
    for clutter in (".git/HEAD", "__pycache__/server.cpython-311.pyc", ".venv/pyvenv.cfg"):
        (root / clutter).parent.mkdir(parents=True, exist_ok=True)
        (root / clutter).write_text("clutter\n")
    (root / "lib" / "stale.pyc").write_bytes(b"\x00bytecode")
    (root / ".canarist").mkdir(exist_ok=True)
    (root / ".canarist" / "state.db").write_text("state\n")
    (root / ".canaristignore").write_text("# local only\n*.log\nsecrets/\n")
    (root / "debug.log").write_text("noise\n")
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets" / "key.txt").write_text("do not ship\n")
    return root


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A sample stdlib-only app."""
    return write_app(tmp_path / "app")


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[str], LocalArtifactStore]:
    """Stores under tmp_path with a clock that ticks one second per call, so order is certain."""
    ticks = itertools.count(1_700_000_000)

    def make(name: str = "state") -> LocalArtifactStore:
        return LocalArtifactStore(tmp_path / name / "artifacts", clock=lambda: float(next(ticks)))

    return make


@pytest.fixture
def store(make_store: Callable[[str], LocalArtifactStore]) -> LocalArtifactStore:
    """An empty local artifact store."""
    return make_store("state")


@pytest.fixture
def ref(app_dir: Path, store: LocalArtifactStore) -> str:
    """The sample app, built into `store`."""
    return build_release(app_dir, store)


@pytest.fixture(scope="session")
def six_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalArtifactStore, str]:
    """An app depending on six, built once per session (needs the package index)."""
    base = tmp_path_factory.mktemp("six")
    app = write_app(base / "app", dependencies=["six==1.16.0"])
    (app / "server.py").write_text("import six\n\nprint(six.__version__)\n")
    store = LocalArtifactStore(base / "state" / "artifacts")
    return store, build_release(app, store)


@pytest.fixture
def make_app() -> Callable[..., Path]:
    """`write_app` itself, for tests that need several apps or variants."""
    return write_app


@pytest.fixture(scope="session")
def offline() -> list[str]:
    """The argv prefix that runs a command with no network; skips where that is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", "pass"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("this process may not create a network namespace")
    return ["unshare", "-n"]
