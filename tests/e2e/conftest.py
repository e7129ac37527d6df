"""A real canarist project for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from canarist.demo.sample import write_app
from tests.e2e.harness import SPEC, Canarist, free_port


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Canarist, dict[str, str]]]:
    """A project with the sample app built in three versions and the controller up."""
    root = tmp_path_factory.mktemp("project")
    port = free_port()
    (root / "canarist.yaml").write_text(SPEC.format(port=port))
    cli = Canarist(root, port)
    refs = {}
    for version in ("1", "2", "3"):
        app = write_app(root / f"app{version}", version=version)
        refs[version] = (
            cli("build", str(app), "--label", f"v{version}").stdout.strip().splitlines()[-1]
        )
    cli("up")
    try:
        yield cli, refs
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = cli.controller_pid()
        cli("down", check=False, timeout=90)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
