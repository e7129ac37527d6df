"""The CLI's verbs that need no controller: init, build, releases, and their bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def canarist(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CANARIST_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "canarist", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_init_writes_a_spec_and_an_app_that_build(tmp_path: Path) -> None:
    """`init` gives a working canarist.yaml and an app that builds to a sha256 reference."""
    result = canarist(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "canarist.yaml").is_file()
    built = canarist(tmp_path, "build", "app", "--label", "first")
    assert built.returncode == 0, built.stderr
    ref = built.stdout.strip().splitlines()[-1]
    assert ref.startswith("sha256:") and len(ref) == 71
    again = canarist(tmp_path, "build", "app")
    assert again.stdout.strip().splitlines()[-1] == ref  # same input, same reference
    listed = json.loads(canarist(tmp_path, "releases", "--json").stdout)
    assert [r["ref"] for r in listed] == [ref]
    assert listed[0]["labels"] == ["first"]
    assert listed[0]["command"] == ["python", "server.py"]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """A second init changes nothing and exits 2."""
    assert canarist(tmp_path, "init").returncode == 0
    before = (tmp_path / "canarist.yaml").read_text()
    result = canarist(tmp_path, "init")
    assert result.returncode == 2
    assert (tmp_path / "canarist.yaml").read_text() == before


@pytest.mark.parametrize(
    ("pyproject", "fragment"),
    [
        (None, "pyproject.toml"),
        ("[project]\nname = 'x'\n", "tool.canarist.app"),
        ("[tool.canarist.app]\ncommand = 'python server.py'\n", "command"),
        ("[tool.canarist.app]\ncommand = ['python']\nhealth = 'healthz'\n", "health"),
        ("[tool.canarist.app\n", "pyproject.toml"),
    ],
)
def test_build_of_a_malformed_app_exits_2(
    tmp_path: Path, pyproject: str | None, fragment: str
) -> None:
    """A malformed app is bad input: one line, exit 2, nothing stored."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "server.py").write_text("print('hi')\n")
    if pyproject is not None:
        (app / "pyproject.toml").write_text(pyproject)
    result = canarist(tmp_path, "build", "app")
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1
    assert fragment in result.stderr
    assert json.loads(canarist(tmp_path, "releases", "--json").stdout) == []


def test_commands_without_a_controller_say_so(tmp_path: Path) -> None:
    """With no controller running, status explains how to start one (exit 1)."""
    assert canarist(tmp_path, "init").returncode == 0
    result = canarist(tmp_path, "status")
    assert result.returncode == 1
    assert "canarist up" in result.stderr


def test_no_spec_is_bad_input(tmp_path: Path) -> None:
    """`up` where there is no canarist.yaml: exit 2 with a hint."""
    result = canarist(tmp_path, "up")
    assert result.returncode == 2
    assert "canarist init" in result.stderr
