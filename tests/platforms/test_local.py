"""The local process platform, with real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from canarist.errors import InstanceFailed, UnknownRelease
from canarist.platforms.base import Instance
from canarist.platforms.local import LocalPlatform

if TYPE_CHECKING:
    from conftest import CopyingReleases

pytestmark = pytest.mark.processes

HEALTH = "/healthz"


@pytest.fixture
def good(releases: CopyingReleases) -> str:
    """The healthy release's reference."""
    return releases.ref("good")


async def get_json(instance: Instance, path: str) -> Any:
    """GET a path of an instance and decode its JSON body."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{instance.host}:{instance.port}{path}") as response,
    ):
        assert response.status == 200
        return await response.json()


def processes_of(home: Path, instance_id: str) -> list[int]:
    """Live processes (grandchildren included) of this instance of this platform home."""
    # HOME is the instance's own directory: unique even across concurrent test runs.
    marker = f"HOME={home / 'instances' / instance_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return found


def is_dead(pid: int) -> bool:
    """True when no process has this PID, or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def has_proc_entry(pid: int) -> bool:
    """True while the PID exists at all, zombie included."""
    return Path(f"/proc/{pid}").exists()


async def wait_until(condition: Any, timeout: float = 3.0) -> bool:
    """Poll a condition until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_instance_runs_with_its_environment_and_stops_cleanly(
    platform: LocalPlatform, home: Path, releases: CopyingReleases, good: str
) -> None:
    """An instance starts healthy, sees only its clean env, cannot write its files, stops clean."""
    instance = await platform.start("web", good, "web-1", health_path=HEALTH, timeout=10)

    assert (instance.host, instance.release, instance.service) == ("127.0.0.1", good, "web")
    assert await platform.healthy(instance, health_path=HEALTH, timeout=1)
    assert platform.alive(instance)
    seen = await get_json(instance, "/")
    assert (seen["release"], seen["instance"], seen["service"]) == (good, "web-1", "web")
    assert seen["pid"] == instance.pid
    assert Path(seen["cwd"]) == instance.workdir == home / "instances" / "web-1" / "app"
    env = seen["environ"]
    assert set(env) == {
        "PATH",
        "HOME",
        "LANG",
        "PORT",
        "CANARIST_RELEASE",
        "CANARIST_INSTANCE",
        "CANARIST_SERVICE",
        "VIRTUAL_ENV",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
    }
    assert env["PORT"] == str(instance.port)
    assert env["VIRTUAL_ENV"] == str(releases.venv)
    assert env["PATH"].startswith(f"{releases.venv}/bin:")
    assert seen["executable"] == str(releases.venv / "bin" / "python")

    writes = await get_json(instance, "/write")
    assert writes == {
        "new_file": "PermissionError",
        "existing_file": "PermissionError",
        "home": "written",
    }

    started = time.monotonic()
    await platform.stop(instance, grace=5)
    assert time.monotonic() - started < 2, "a clean SIGTERM exit must not wait out the grace"
    log = (home / "logs" / "instances" / "web-1.log").read_text()
    assert "SIGTERM received" in log
    assert "stopped cleanly" in log
    assert not platform.alive(instance)
    assert not (home / "instances" / "web-1").exists()
    assert not await platform.healthy(instance, health_path=HEALTH, timeout=0.5)
    await platform.stop(instance, grace=5)  # stopping again is not an error


async def test_instance_ignoring_sigterm_is_killed_after_grace(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """An instance that ignores SIGTERM gets SIGKILL once the grace has passed."""
    instance = await platform.start(
        "web", releases.ref("stubborn"), "web-1", health_path=HEALTH, timeout=10
    )

    started = time.monotonic()
    await platform.stop(instance, grace=0.5)
    elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 2.5
    assert "SIGTERM received" in (home / "logs" / "instances" / "web-1.log").read_text()
    assert not platform.alive(instance)
    assert is_dead(instance.pid)
    assert not (home / "instances" / "web-1").exists()


async def test_stop_takes_down_the_whole_process_group(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """What an instance started itself is stopped with it."""
    instance = await platform.start(
        "web", releases.ref("forking"), "web-1", health_path=HEALTH, timeout=10
    )
    grandchild = (await get_json(instance, "/"))["grandchild"]
    assert not is_dead(grandchild)

    await platform.stop(instance, grace=5)

    assert await wait_until(lambda: is_dead(grandchild))
    assert processes_of(home, "web-1") == []


async def test_crash_at_start_raises_with_log_tail_and_leaves_nothing(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """An app that exits at start fails with its exit code and log tail, and leaves no process."""
    with pytest.raises(InstanceFailed) as failure:
        await platform.start("web", releases.ref("crash"), "web-1", health_path=HEALTH, timeout=10)

    reason = str(failure.value)
    assert "\n" not in reason
    assert "exited with code 3" in reason
    assert "boom: DATABASE_URL is not set" in reason
    log = (home / "logs" / "instances" / "web-1.log").read_text()
    grandchild = int(log.split("grandchild ")[1].split()[0])
    assert await wait_until(lambda: is_dead(grandchild))
    assert processes_of(home, "web-1") == []
    assert not (home / "instances" / "web-1").exists()


async def test_never_healthy_instance_times_out_and_is_stopped(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """An app that never answers 2xx fails after the timeout and is stopped."""
    started = time.monotonic()
    with pytest.raises(InstanceFailed, match=r"was not healthy within 1s; log: .*listening on"):
        await platform.start(
            "web", releases.ref("never-healthy"), "web-1", health_path=HEALTH, timeout=1
        )

    assert time.monotonic() - started < 3
    assert processes_of(home, "web-1") == []
    assert not (home / "instances" / "web-1").exists()


async def test_unrunnable_command_and_unknown_release_fail_cleanly(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """A program found nowhere is InstanceFailed; an unknown release is UnknownRelease."""
    missing = releases.add("missing-program", "no-such-program-anywhere", "--serve")

    with pytest.raises(InstanceFailed, match="no-such-program-anywhere"):
        await platform.start("web", missing, "web-1", health_path=HEALTH, timeout=5)
    with pytest.raises(UnknownRelease):
        await platform.start("web", releases.ref("unknown"), "web-2", health_path=HEALTH, timeout=5)

    assert not (home / "instances" / "web-1").exists()
    assert not (home / "instances" / "web-2").exists()


async def test_python3_means_the_release_venv(
    platform: LocalPlatform, releases: CopyingReleases
) -> None:
    """A command naming python3 runs the release's venv interpreter, not the system's."""
    instance = await platform.start(
        "web", releases.ref("good-python3"), "web-1", health_path=HEALTH, timeout=10
    )

    assert (await get_json(instance, "/"))["executable"] == str(releases.venv / "bin" / "python")
    await platform.stop(instance, grace=5)


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, releases: CopyingReleases) -> Path:
    """Work from tmp_path, with the release venv reachable there as the relative path `venv`."""
    (tmp_path / "venv").symlink_to(releases.venv)
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def test_relative_home_and_venv_paths_work(
    in_tmp_path: Path, releases: CopyingReleases, good: str
) -> None:
    """Paths relative to the controller's directory still resolve from the instance's."""
    releases.venv = Path("venv")
    local = LocalPlatform(Path("relative-home"), releases)

    instance = await local.start("web", good, "web-1", health_path=HEALTH, timeout=10)
    try:
        assert instance.workdir == in_tmp_path / "relative-home" / "instances" / "web-1" / "app"
        executable = (await get_json(instance, "/"))["executable"]
        assert executable == str(in_tmp_path / "venv" / "bin" / "python")
    finally:
        await local.stop(instance, grace=5)


async def test_cancelled_start_leaves_nothing(
    platform: LocalPlatform, home: Path, releases: CopyingReleases
) -> None:
    """A start cancelled while it waits for health kills the process and removes its files."""
    never_healthy = releases.ref("never-healthy")
    starting = asyncio.create_task(
        platform.start("web", never_healthy, "web-1", health_path=HEALTH, timeout=10)
    )
    assert await wait_until(lambda: processes_of(home, "web-1") != [])

    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    assert processes_of(home, "web-1") == []
    assert not (home / "instances" / "web-1").exists()


async def test_killed_instance_is_not_alive_and_leaves_no_zombie(
    platform: LocalPlatform, good: str
) -> None:
    """An instance killed behind the platform's back is reported dead and reaped."""
    instance = await platform.start("web", good, "web-1", health_path=HEALTH, timeout=10)

    os.kill(instance.pid, signal.SIGKILL)

    assert await wait_until(lambda: not platform.alive(instance))
    # A killed multi-threaded process shows as a zombie a moment before it can be reaped;
    # the platform reaps it on a later look.
    assert await wait_until(
        lambda: not platform.alive(instance) and not has_proc_entry(instance.pid)
    ), "the dead child must have been reaped"
    await platform.stop(instance, grace=1)
    assert not instance.workdir.exists()


async def test_forged_start_time_is_never_alive_nor_signalled(
    platform: LocalPlatform, good: str
) -> None:
    """A record with the right PID but another start time is not our instance."""
    instance = await platform.start("web", good, "web-1", health_path=HEALTH, timeout=10)
    forged = dataclasses.replace(instance, id="forged", pid_start=instance.pid_start + 1)

    assert not platform.alive(forged)
    assert not platform.adopt(forged)
    await platform.stop(forged, grace=0.1)

    assert platform.alive(instance)
    assert await platform.healthy(instance, health_path=HEALTH, timeout=1)
    await platform.stop(instance, grace=5)


async def test_discard_kills_a_spawned_but_unrecorded_instance(
    home: Path, releases: CopyingReleases, good: str
) -> None:
    """A controller that died mid-start never recorded the PID: discard still finds it."""
    first = LocalPlatform(home, releases)
    instance = await first.start("web", good, "web-1", health_path=HEALTH, timeout=10)
    restarted = LocalPlatform(home, releases)  # knows only the instance id

    await restarted.discard("web-1")

    assert await wait_until(lambda: is_dead(instance.pid))
    assert not (home / "instances" / "web-1").exists()
    await restarted.discard("web-1")  # nothing left: not an error
    await restarted.discard("never-started")


async def test_prepare_is_cached(
    platform: LocalPlatform, releases: CopyingReleases, good: str
) -> None:
    """A release is prepared once however many instances start from it."""
    await platform.prepare(good)
    first = await platform.start("web", good, "web-1", health_path=HEALTH, timeout=10)
    await platform.stop(first, grace=5)

    assert releases.prepared == [good]


async def test_left_over_instance_dir_is_replaced(
    platform: LocalPlatform, home: Path, good: str
) -> None:
    """Files left by an earlier attempt at the same instance are never started from."""
    stale = home / "instances" / "web-1" / "app"
    stale.mkdir(parents=True)
    (stale / "stale.txt").write_text("from a crashed attempt")
    stale.chmod(0o555)

    instance = await platform.start("web", good, "web-1", health_path=HEALTH, timeout=10)

    assert not (instance.workdir / "stale.txt").exists()
    assert (instance.workdir / "server.py").exists()
    await platform.stop(instance, grace=5)


async def test_two_instances_of_one_release_run_side_by_side(
    platform: LocalPlatform, home: Path, good: str
) -> None:
    """Two instances of the same release get their own ports and directories."""
    first, second = await asyncio.gather(
        platform.start("web", good, "web-1", health_path=HEALTH, timeout=10),
        platform.start("web", good, "web-2", health_path=HEALTH, timeout=10),
    )

    assert first.port != second.port
    assert first.workdir != second.workdir
    assert (await get_json(first, "/"))["instance"] == "web-1"
    assert (await get_json(second, "/"))["instance"] == "web-2"
    await asyncio.gather(platform.stop(first, grace=5), platform.stop(second, grace=5))
    assert processes_of(home, "web-1") == processes_of(home, "web-2") == []


CONTROLLER = """
import asyncio, dataclasses, json, shutil, sys
from pathlib import Path
from canarist.platforms.local import LocalPlatform
from canarist.releases.base import RunnableRelease

args = json.loads(sys.argv[1])

class Releases:
    def prepare(self, ref):
        return RunnableRelease(ref, tuple(args["command"]), "/healthz", Path(args["venv"]))
    def unpack(self, ref, dest):
        shutil.copytree(args["app"], dest)

async def main():
    platform = LocalPlatform(Path(args["home"]), Releases())
    instance = await platform.start(
        "web", args["ref"], "web-1", health_path="/healthz", timeout=10
    )
    print(json.dumps(dataclasses.asdict(instance), default=str), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def start_controller(args: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A controller process that starts one instance, prints its record and waits."""
    return subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, json.dumps(args)],
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own group, as a terminal's foreground job would be
    )


@pytest.mark.parametrize("ending", ["ctrl-c", "sigkill"])
async def test_instance_outlives_its_controller_and_is_adopted_by_the_next(
    home: Path, releases: CopyingReleases, good: str, ending: str
) -> None:
    """A controller's Ctrl-C or SIGKILL leaves the instance running; a new controller adopts it."""
    args = {
        "home": str(home),
        "app": str(releases.app),
        "venv": str(releases.venv),
        "command": ["python", "server.py"],
        "ref": good,
    }
    controller = start_controller(args)
    try:
        assert controller.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(controller.stdout.readline), 15)
        record = json.loads(line)
        record["workdir"] = Path(record["workdir"])
        instance = Instance(**record)
        if ending == "ctrl-c":
            os.killpg(controller.pid, signal.SIGINT)  # a terminal sends it to the whole job
        else:
            controller.kill()
        await asyncio.to_thread(controller.wait, 5)
    finally:
        controller.kill()
        await asyncio.to_thread(controller.wait)

    restarted = LocalPlatform(home, releases)
    try:
        assert restarted.adopt(instance)
        assert restarted.alive(instance)
        assert await restarted.healthy(instance, health_path=HEALTH, timeout=1)
    finally:
        await restarted.stop(instance, grace=5)
    assert not restarted.alive(instance)
    assert await wait_until(lambda: processes_of(home, "web-1") == [])
    assert not instance.workdir.exists()


async def test_instance_start_time(
    platform: LocalPlatform, capsys: pytest.CaptureFixture[str], good: str
) -> None:
    """Time from start() to healthy for the stdlib app, printed as a median of five."""
    timings = []
    for n in range(5):
        started = time.perf_counter()
        instance = await platform.start("web", good, f"web-{n}", health_path=HEALTH, timeout=10)
        timings.append(time.perf_counter() - started)
        await platform.stop(instance, grace=5)

    median = statistics.median(timings)
    with capsys.disabled():
        print(
            f"\ninstance start to healthy: median {median * 1000:.0f} ms "
            f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f})"
        )
    assert median < 5
