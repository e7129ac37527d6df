"""Backend processes for the tests that run a real HAProxy: each prints its port, then serves."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from canarist.routers.base import Member


@dataclass
class Backend:
    """A running backend: the name it answers with, its port, its process."""

    name: str
    port: int
    proc: subprocess.Popen[str]

    def member(self, release: str, state: Literal["active", "draining"] = "active") -> Member:
        """This backend as a member of `release` in a route table."""
        return Member(self.name, release, "127.0.0.1", self.port, state)


@contextmanager
def backend_processes(script: str) -> Iterator[Callable[..., list[Backend]]]:
    """`start(run, ...)` runs `script` once per run, a tuple of its arguments (the first
    is the backend's name), and returns them once each has printed its port; every
    process started is killed on exit."""
    started: list[subprocess.Popen[str]] = []

    def start(*runs: tuple[str, ...]) -> list[Backend]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, *run], stdout=subprocess.PIPE, text=True
            )
            for run in runs
        ]
        started.extend(procs)
        backends = []
        for run, proc in zip(runs, procs, strict=True):
            assert proc.stdout is not None
            backends.append(Backend(run[0], int(proc.stdout.readline()), proc))
        return backends

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def short_state_dir(prefix: str) -> Iterator[Path]:
    """A short, unique state dir (HAProxy's admin socket path must stay short)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
