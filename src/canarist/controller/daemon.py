"""The controller process: `canarist up` starts it in the background, `down` stops it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO

from aiohttp import web

from canarist.controller.api import make_app
from canarist.controller.engine import Engine
from canarist.controller.providers import group_drivers
from canarist.domain.spec import DeploymentSpec, parse_spec
from canarist.errors import BadInput, ConfigError, ControllerUnavailable, RouterError
from canarist.home import Home
from canarist.metrics.haproxy import HAProxyMetrics, log_target
from canarist.platforms.local import LocalPlatform
from canarist.releases.store import LocalArtifactStore
from canarist.routers.haproxy import HAProxyRouter
from canarist.store.sqlite import SQLiteStore

log = logging.getLogger("canarist.controller")


class StoreCatalog:
    """The engine's view of the artifact store."""

    def __init__(self, store: LocalArtifactStore) -> None:
        self.store = store

    def resolve(self, text: str) -> str:
        """Full reference for a reference, prefix or label."""
        return self.store.resolve(text)

    def health(self, ref: str) -> str:
        """The release's own health path."""
        return self.store.manifest(ref).health


def load_spec(path: Path) -> DeploymentSpec:
    """Read and validate the spec file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_spec(text, str(path))


def ensure_token(home: Home) -> str:
    """The API token, created once with mode 0600."""
    home.root.mkdir(parents=True, exist_ok=True)
    if not home.token.exists():
        fd = os.open(home.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return home.token.read_text().strip()


async def serve(home: Home) -> None:
    """Run the controller until asked to stop."""
    spec = load_spec(home.config)
    token = ensure_token(home)
    store = SQLiteStore(home.database)
    artifacts = LocalArtifactStore(home.artifacts, venv_root=home.venvs)
    platform = LocalPlatform(home.root, artifacts)
    router = HAProxyRouter(home.haproxy, log_target=log_target(home.haproxy))
    metrics = HAProxyMetrics(router)
    groups = group_drivers(spec)
    engine = Engine(
        spec, store, platform, router, StoreCatalog(artifacts), metrics=metrics, groups=groups
    )
    stop = asyncio.Event()

    def reload() -> None:
        fresh = load_spec(home.config)
        fresh_groups = {n: d for n, d in group_drivers(fresh).items() if n not in engine.groups}
        check_listeners(router, fresh, {*engine.groups, *fresh_groups})
        engine.replace_spec(fresh, fresh_groups)
        log.info("spec reloaded: %s", ", ".join(sorted(fresh.services)))

    app = make_app(engine, token, stop, reload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    _write_json(home.endpoint, {"pid": os.getpid(), "port": port, "config": str(home.config)})
    log.info("controller %d listening on 127.0.0.1:%d", os.getpid(), port)

    loop = asyncio.get_running_loop()
    # SIGTERM stops the controller alone: instances and HAProxy keep serving, and the next
    # `canarist up` adopts them. `canarist down` asks for everything to stop through the API.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sources = [metrics, *(d.metrics for d in groups.values() if d.metrics is not None)]
    for source in sources:
        await source.start()
    try:
        await engine.run(stop)
    finally:
        for source in sources:
            await source.stop()
        with contextlib.suppress(FileNotFoundError):
            home.endpoint.unlink()
        await runner.cleanup()
        store.close()
        log.info("controller %d stopped", os.getpid())


def check_listeners(router: HAProxyRouter, spec: DeploymentSpec, groups: Collection[str]) -> None:
    """Refuse (BadInput) a spec with a local service that could not listen where it says."""
    listens = {n: s.listen_address() for n, s in spec.services.items() if n not in groups}
    try:
        router.check_listeners(listens)
    except RouterError as exc:
        raise BadInput(str(exc)) from exc


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the controller process."""
    parser = argparse.ArgumentParser(prog="canarist-controller")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    home = Home.locate(args.config)
    home.logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    lock = open(home.lock, "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("canarist: another controller is running for this home", file=sys.stderr)
        return 2
    home.pidfile.write_text(str(os.getpid()))
    try:
        asyncio.run(serve(home))
    finally:
        with contextlib.suppress(FileNotFoundError):
            home.pidfile.unlink()
    return 0


# -- used by the CLI ----------------------------------------------------------------------


def running_pid(home: Home) -> int | None:
    """The controller's PID if one runs for this home (it holds the lock)."""
    if not home.lock.exists():
        return None
    with open(home.lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(home.pidfile.read_text().strip())
            except (OSError, ValueError):
                return -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def start_background(home: Home, timeout: float = 15.0) -> int:
    """Start the controller detached, wait until its API answers; returns its PID."""
    # A malformed spec, or an address the services cannot listen on, is bad input:
    # refused now, before anything starts.
    spec = load_spec(home.config)
    groups = group_drivers(spec)
    router = HAProxyRouter(home.haproxy)
    if any(name not in groups for name in spec.services):
        router.check_installed()  # without it nothing would serve them: exit 1
    check_listeners(router, spec, groups)
    home.logs.mkdir(parents=True, exist_ok=True)
    ensure_token(home)
    with contextlib.suppress(FileNotFoundError):
        home.endpoint.unlink()
    log_file: IO[bytes] = open(home.logs / "controller.log", "ab")  # noqa: SIM115
    with log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "canarist.controller.daemon", "--config", str(home.config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            cwd=home.config.parent,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControllerUnavailable(
                f"controller exited at start (status {proc.returncode});"
                f" see {home.logs / 'controller.log'}"
            )
        if home.endpoint.exists():
            return proc.pid
        time.sleep(0.05)
    raise ControllerUnavailable(f"controller did not answer in {timeout:g}s")


def wait_stopped(pid: int, timeout: float) -> bool:
    """True once the process is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
