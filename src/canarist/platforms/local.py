"""Instances as local processes, each in its own session, run from a fresh read-only unpack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import aiohttp

from canarist.errors import InstanceFailed
from canarist.platforms.base import Instance
from canarist.releases.base import ReleaseSource, RunnableRelease

log = logging.getLogger(__name__)

_PROBE_INTERVAL = 0.05  # between health probes while an instance starts
_PROBE_TIMEOUT = 0.5  # one probe while starting: a slow answer is retried, not waited for
_STOP_POLL = 0.02
_FAILED_START_GRACE = 2.0
_KILL_WAIT = 5.0  # after SIGKILL the kernel only has to tear the process down
_LOG_TAIL_LINES = 5
_LOG_TAIL_BYTES = 8192
# A fixed search path rather than the controller's, so an instance finds the same programs
# wherever it runs and never the controller's own environment.
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Under a root controller, uid 0 would write through the unpack's read-only modes. The
# instance keeps uid 0 (so it can still read the state files root owns) but loses every
# capability, and with it the DAC override, before the app's command is executed.
_DROP_CAPABILITIES = (
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--no-new-privs",
    "--",
)


# Beside the unpack: the PID and start time of the process spawned for the instance.
_SPAWN_RECORD = "spawned"


class LocalPlatform:
    """Runs instances as processes on this machine, under `home`, from `releases`."""

    def __init__(self, home: Path, releases: ReleaseSource, host: str = "127.0.0.1") -> None:
        # Absolute, since instances run with their app directory as working directory.
        self._home = home.absolute()
        self._releases = releases
        self._host = host
        self._prepared: dict[str, RunnableRelease] = {}
        # Children this object started (by PID, with their start times), kept so they are
        # reaped and never linger as zombies.
        self._children: dict[int, tuple[subprocess.Popen[bytes], int]] = {}

    async def prepare(self, release: str) -> None:
        """Verify the release and build its venv; cached for the life of this object."""
        await self._runnable(release)

    async def start(
        self, service: str, release: str, instance_id: str, *, health_path: str, timeout: float
    ) -> Instance:
        """Start an instance from a fresh unpack; return once its health path answers 2xx."""
        runnable = await self._runnable(release)
        instance_dir = self._instance_dir(instance_id)
        app_dir = instance_dir / "app"
        await asyncio.to_thread(self._fresh_unpack, release, instance_dir, app_dir)
        log_path = self._home / "logs" / "instances" / f"{instance_id}.log"
        try:
            argv = _command(runnable)
            port = _free_port(self._host)
            env = _environment(runnable, service, instance_id, port, instance_dir)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            child, pid_start = self._spawn(argv, app_dir, env, log_path)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_tree(instance_dir)
            raise
        instance = Instance(
            id=instance_id,
            service=service,
            release=release,
            host=self._host,
            port=port,
            pid=child.pid,
            pid_start=pid_start,
            workdir=app_dir,
            started_at=time.time(),
        )
        try:
            failure = await self._wait_healthy(instance, child, health_path, timeout)
        except BaseException:
            # Cancelled or broken mid-start: the caller never learns of this instance,
            # so nothing of it may be left running.
            self._discard(instance)
            raise
        if failure is None:
            return instance
        await self.stop(instance, grace=_FAILED_START_GRACE)
        raise InstanceFailed(
            f"instance {instance_id} of {service} ({release}) {failure}; "
            f"log: {_log_tail(log_path, log_offset)}"
        )

    async def healthy(self, instance: Instance, *, health_path: str, timeout: float) -> bool:
        """One health probe: True when GET health_path answers 2xx within timeout."""
        async with _probe_session() as session:
            return await _probe(session, _url(instance, health_path), timeout)

    def alive(self, instance: Instance) -> bool:
        """True while the instance's own process (same PID and start time) runs."""
        running = _running(instance.pid, instance.pid_start)
        # Reaping after the check too: a child seen as a zombie just now is collected now.
        self._reap(instance.pid)
        return running

    def adopt(self, instance: Instance) -> bool:
        """True when an instance recorded before a controller restart is still that process."""
        self._reap()
        fields = _proc_stat(instance.pid)
        # Still the process we started, and still leading its own session, so that stop()
        # signalling the process group reaches it and only what it started.
        return (
            _running(instance.pid, instance.pid_start)
            and fields is not None
            and int(fields[3]) == instance.pid
        )

    async def discard(self, instance_id: str) -> None:
        """Kill a process a crashed controller spawned but never recorded; remove its files."""
        instance_dir = self._instance_dir(instance_id)
        try:
            pid_text, start_text = (instance_dir / _SPAWN_RECORD).read_text().split()
            pid, pid_start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            pid = pid_start = 0
        if pid and _running(pid, pid_start):
            _signal_group(pid, signal.SIGKILL)
            for _ in range(int(_KILL_WAIT / 0.02)):
                if not _running(pid, pid_start):
                    break
                await asyncio.sleep(0.02)
        try:
            await asyncio.to_thread(_remove_tree, instance_dir)
        except OSError as exc:
            raise InstanceFailed(f"cannot remove instance {instance_id}'s files: {exc}") from exc

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """SIGTERM the instance's process group, SIGKILL after `grace`, then remove its files."""
        if self.alive(instance):
            _signal_group(instance.pid, signal.SIGTERM)
            if not await self._gone(instance, grace) and self.alive(instance):
                _signal_group(instance.pid, signal.SIGKILL)
        if not await self._gone(instance, _KILL_WAIT):
            raise InstanceFailed(f"instance {instance.id} (pid {instance.pid}) survived SIGKILL")
        try:
            await asyncio.to_thread(_remove_tree, self._instance_dir(instance.id))
        except OSError as exc:
            raise InstanceFailed(f"cannot remove instance {instance.id}'s files: {exc}") from exc

    async def _runnable(self, release: str) -> RunnableRelease:
        runnable = self._prepared.get(release)
        if runnable is None:
            runnable = await asyncio.to_thread(self._releases.prepare, release)
            # The instance runs elsewhere than the controller: a relative venv would not resolve.
            runnable = dataclasses.replace(runnable, venv=runnable.venv.absolute())
            self._prepared[release] = runnable
        return runnable

    def _instance_dir(self, instance_id: str) -> Path:
        return self._home / "instances" / instance_id

    def _fresh_unpack(self, release: str, instance_dir: Path, app_dir: Path) -> None:
        # A left-over directory is from an attempt that never became an instance: an
        # instance never starts from files another process has had in its hands.
        try:
            _remove_tree(instance_dir)
            instance_dir.mkdir(parents=True)
            self._releases.unpack(release, app_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove_tree(instance_dir)
            raise InstanceFailed(f"cannot unpack {release} into {app_dir}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_tree(instance_dir)
            raise

    def _spawn(
        self, argv: list[str], app_dir: Path, env: dict[str, str], log_path: Path
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Start the instance's process; return it with its start time."""
        # Plain Popen rather than asyncio's subprocesses: the instance must not be tied to
        # this event loop (no pipes, no child watcher), since it outlives the controller.
        # Its own session keeps a terminal's Ctrl-C and the controller's death away from it.
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv", path=_SYSTEM_PATH)
            if setpriv is None:
                log.warning("setpriv not found: instances run as root with full capabilities")
            else:
                argv = [setpriv, *_DROP_CAPABILITIES, *argv]
        try:
            with log_path.open("ab") as log_file:
                child = subprocess.Popen(
                    argv,
                    cwd=app_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise InstanceFailed(f"cannot execute {argv[0]}: {exc}") from exc
        pid_start = _start_time(child.pid)
        if pid_start is None:  # an unreaped child keeps its /proc entry: /proc is unusable
            _signal_group(child.pid, signal.SIGKILL)
            child.wait()
            raise InstanceFailed(f"cannot read /proc/{child.pid}/stat")
        self._children[child.pid] = (child, pid_start)
        # Written before the controller learns of the process, so that a controller killed
        # in between can still find and remove it (see `discard`).
        (app_dir.parent / _SPAWN_RECORD).write_text(f"{child.pid} {pid_start}\n")
        return child, pid_start

    async def _wait_healthy(
        self,
        instance: Instance,
        child: subprocess.Popen[bytes],
        health_path: str,
        timeout: float,
    ) -> str | None:
        """Probe until healthy (None), or say why the instance never got there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        url = _url(instance, health_path)
        async with _probe_session() as session:
            while True:
                exit_reason = _exit_reason(child)
                if exit_reason is not None:
                    return f"{exit_reason} before becoming healthy"
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return f"was not healthy within {timeout:g}s"
                if await _probe(session, url, min(_PROBE_TIMEOUT, remaining)):
                    # The answer must come from this process, not one that took its port.
                    exit_reason = _exit_reason(child)
                    if exit_reason is None:
                        return None
                    return f"{exit_reason} while its port answered"
                await asyncio.sleep(_PROBE_INTERVAL)

    async def _gone(self, instance: Instance, wait: float) -> bool:
        """Wait up to `wait` seconds for the instance's process to end (and be reaped, if ours)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.alive(instance) or self._unreaped(instance):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_STOP_POLL)
        return True

    def _reap(self, only: int | None = None) -> None:
        """Collect children that exited (or that one, if it is a child that exited), first
        killing what they left in their process group."""
        pids = list(self._children) if only is None else [only]
        for pid in pids:
            if pid not in self._children:
                continue  # not a child of ours, or reaped already
            child, _start = self._children[pid]
            if child.returncode is None:
                try:
                    exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    del self._children[pid]  # reaped by someone else; its PID may be reused
                    continue
                if exited is None:
                    continue
                # The unreaped leader still holds its PID, so no other group can have taken
                # that ID: whatever is left in the group was started by this instance.
                _signal_group(pid, signal.SIGKILL)
            child.poll()
            del self._children[pid]

    def _discard(self, instance: Instance) -> None:
        """Kill an instance at once and remove its files, without waiting on the event loop."""
        own = self._children.get(instance.pid)
        if own is not None and self._unreaped(instance):
            # Our unreaped child holds its PID, so the group is certainly the instance's.
            _signal_group(instance.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                own[0].wait(_KILL_WAIT)
        elif _running(instance.pid, instance.pid_start):
            _signal_group(instance.pid, signal.SIGKILL)
        self._reap()
        with contextlib.suppress(OSError):
            _remove_tree(self._instance_dir(instance.id))

    def _unreaped(self, instance: Instance) -> bool:
        """True while the instance is a child of ours that has not been reaped yet."""
        own = self._children.get(instance.pid)
        return own is not None and own[1] == instance.pid_start


def _command(runnable: RunnableRelease) -> list[str]:
    """The release's argv with its program resolved against the release's venv."""
    if not runnable.command:
        raise InstanceFailed(f"release {runnable.ref} declares an empty command")
    program, *args = runnable.command
    bin_dir = runnable.venv / "bin"
    if program in ("python", "python3"):
        return [str(bin_dir / "python"), *args]
    if "/" in program:  # a path, absolute or relative to the app directory
        return [program, *args]
    found = shutil.which(program, path=f"{bin_dir}{os.pathsep}{_SYSTEM_PATH}")
    if found is None:
        raise InstanceFailed(f"release {runnable.ref}: {program!r} is neither in its venv nor PATH")
    return [found, *args]


def _environment(
    runnable: RunnableRelease, service: str, instance_id: str, port: int, instance_dir: Path
) -> dict[str, str]:
    """A clean environment: nothing of the controller's leaks into an instance."""
    return {
        "PATH": f"{runnable.venv / 'bin'}{os.pathsep}{_SYSTEM_PATH}",
        # Scratch space removed with the instance, so nothing written there outlives it.
        "HOME": str(instance_dir),
        "LANG": "C.UTF-8",
        "PORT": str(port),
        "CANARIST_RELEASE": runnable.ref,
        "CANARIST_INSTANCE": instance_id,
        "CANARIST_SERVICE": service,
        "VIRTUAL_ENV": str(runnable.venv),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _free_port(host: str) -> int:
    """A port nobody listens on now; the instance binds it moments later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _url(instance: Instance, path: str) -> str:
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    return f"http://{host}:{instance.port}/{path.lstrip('/')}"


def _probe_session() -> aiohttp.ClientSession:
    # A new connection per probe: a health check must also prove the instance still accepts.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _probe(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (index 0 is the state), or None if there is no PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # read each tick: no pathlib, no decoder
            raw = f.read().decode()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; what follows it may not.
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[19])


def _running(pid: int, pid_start: int) -> bool:
    """True when PID is a live (not zombie) process that started at `pid_start`."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x") and int(fields[19]) == pid_start


def _exit_reason(child: subprocess.Popen[bytes]) -> str | None:
    """How a child ended, read without reaping it; None while it runs."""
    code = child.returncode
    if code is None:
        try:
            exited = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return "exited"
        if exited is None:
            return None
        code = exited.si_status if exited.si_code == os.CLD_EXITED else -exited.si_status
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _signal_group(pid: int, signum: signal.Signals) -> None:
    # The instance leads its own session, so its PID is its process group's ID too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _log_tail(log_path: Path, offset: int) -> str:
    """The last lines this attempt wrote to its log, on one line."""
    try:
        with log_path.open("rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            log_file.seek(max(offset, size - _LOG_TAIL_BYTES))
            text = log_file.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"


def _remove_tree(path: Path) -> None:
    """Remove an instance directory, read-only unpack included."""
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    # Deleting an entry needs write permission on its directory; symlinks are never
    # followed, so a link in a release cannot get a directory outside it chmod-ed.
    for root, dirs, _files in os.walk(path):
        os.chmod(root, stat.S_IRWXU)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    shutil.rmtree(path)
