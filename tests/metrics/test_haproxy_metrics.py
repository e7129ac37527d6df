"""The HAProxy metrics provider: its bookkeeping over a scripted router, then against a real
HAProxy run by the router, with real backends, one of them slow and failing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from canarist.errors import DriverError, RouterError
from canarist.metrics import haproxy as haproxy_metrics
from canarist.metrics.base import ReleaseWindow
from canarist.metrics.haproxy import (
    HAProxyMetrics,
    Reservoir,
    Tally,
    failure_tally,
    log_shares,
    log_target,
)
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.haproxy import HAProxyRouter, slot_name
from tests.backends import Backend, backend_processes, short_state_dir

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")

# A keep-alive HTTP server answering with its name. Past its health path, it waits
# DELAY seconds and answers 500 to every FAIL_EVERY-th request.
BACKEND = r"""
import asyncio, sys
name, delay, fail_every = sys.argv[1].encode(), float(sys.argv[2]), int(sys.argv[3])
served = 0

async def handle(reader, writer):
    global served
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status = b"200 OK"
            if not head.split(b" ", 2)[1].startswith(b"/healthz"):
                served += 1
                failing = fail_every and served % fail_every == 0
                if delay:
                    await asyncio.sleep(delay)
                if failing:
                    status = b"500 Internal Server Error"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(name)).encode()
                + b"\r\n\r\n" + name
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


# -- bookkeeping, on a scripted router -----------------------------------------------


class ScriptedRouter(HAProxyRouter):
    """A router that never starts HAProxy: its counters and slots are what a test says."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.figures: dict[str, dict[str, ReleaseCounters]] = {}
        self.slots: dict[str, dict[int, str]] = {"web": {0: "A", 1: "B"}}
        self.down = False
        self.runtime = self  # type: ignore[assignment]

    async def info(self) -> dict[str, str]:
        if self.down:
            raise RouterError("HAProxy's socket is unreachable")
        return {"Pid": "100", "DroppedLogs": "0"}

    async def routed_counters(self) -> dict[str, dict[str, ReleaseCounters]]:
        return {s: dict(r) for s, r in self.figures.items()}

    def slot_releases(self, service: str | None = None) -> dict[str, dict[int, str]]:
        return {s: dict(m) for s, m in self.slots.items() if service in (None, s)}

    def count(self, release: str, requests: int, failures: int = 0) -> None:
        self.figures.setdefault("web", {})[release] = ReleaseCounters(requests, failures)


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[tuple[HAProxyMetrics, ScriptedRouter]]:
    """A started provider over a scripted router."""
    router = ScriptedRouter(tmp_path)
    metrics = HAProxyMetrics(router, interval=3600)
    await metrics.start()
    yield metrics, router
    await metrics.stop()


def counts(windows: dict[str, ReleaseWindow]) -> dict[str, tuple[int, int]]:
    return {r: (w.requests, w.failures) for r, w in windows.items()}


async def test_counts_follow_the_routers_figures(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """Requests and failures are the router's, releases without traffic show zeros, and
    a service the router does not route gives nothing."""
    metrics, router = scripted
    router.count("A", 10, 1)
    await metrics.poll()
    assert counts(await metrics.snapshot("web")) == {"A": (10, 1), "B": (0, 0)}
    assert await metrics.snapshot("elsewhere") == {}


async def test_figures_that_fall_are_never_subtracted(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """When the router's figures fall, totals stay and grow again from the new figures."""
    metrics, router = scripted
    router.count("A", 20, 4)
    await metrics.poll()
    router.count("A", 3, 0)
    await metrics.poll()
    assert counts(await metrics.snapshot("web"))["A"] == (20, 4)
    router.count("A", 5, 1)
    await metrics.poll()
    assert counts(await metrics.snapshot("web"))["A"] == (22, 5)


async def test_reset_starts_a_window_from_a_fresh_read(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """reset reads the counters itself, so nothing before it leaks into the window."""
    metrics, router = scripted
    router.count("A", 10)
    await metrics.poll()
    first = (await metrics.snapshot("web"))["A"]
    router.count("A", 14)  # not read yet when reset is called
    await metrics.reset("web")
    router.count("A", 17)
    await metrics.poll()
    second = (await metrics.snapshot("web"))["A"]
    assert (first.requests, second.requests) == (10, 3)
    assert second.at > first.at


async def test_recent_counts_outlive_windows(
    scripted: tuple[HAProxyMetrics, ScriptedRouter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recent` counts a release over the last seconds, whatever the windows; what the
    router had counted before the provider's first read is not in it."""
    metrics, router = scripted
    monkeypatch.setattr(haproxy_metrics, "HISTORY_STEP", 0.0)  # remember every read
    assert await metrics.recent("web", "A", 60) is None  # never seen
    router.count("A", 10, 1)  # from before the provider's first read
    await metrics.poll()
    await asyncio.sleep(0.05)
    router.count("A", 40, 3)
    await metrics.poll()
    await metrics.reset("web")  # a window starts: recent counts go on regardless
    await asyncio.sleep(0.05)
    router.count("A", 60, 4)
    await metrics.poll()
    assert await metrics.recent("web", "A", 60) == (50, 3)
    assert await metrics.recent("web", "A", 0.02) == (0, 0)  # only the last read is that recent
    assert counts(await metrics.snapshot("web"))["A"] == (20, 1)  # the window, since reset


async def test_unreadable_counters_leave_the_last_read(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """With HAProxy down, a read raises, snapshots keep the last counts and their time."""
    metrics, router = scripted
    router.count("A", 10)
    await metrics.poll()
    before = (await metrics.snapshot("web"))["A"]
    router.down = True
    with pytest.raises(RouterError):
        await metrics.poll()
    await metrics.reset("web")  # starts the window at the last read
    after = (await metrics.snapshot("web"))["A"]
    assert (after.requests, after.at) == (0, before.at)


def log_line(backend: str, server: str, status: int, ta: int, term: str = "----") -> bytes:
    return (
        f"127.0.0.1:34170 [27/Nov/2026:13:51:22.002] fe_web {backend}/{server} 0/0/0/{ta}/{ta}"
        f' {status} 51 - - {term} 1/1/0/0/0 0/0 "GET / HTTP/1.1"\n'
    ).encode()


async def test_logged_latencies_are_handed_out_once_per_release(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """Latencies of successful requests reach the slot's release, in the next snapshot
    only; a freed slot keeps crediting the release it served last."""
    metrics, router = scripted
    lines = [
        log_line("be_web", "s0", 200, 5),
        log_line("be_web", "s1", 200, 40),
        log_line("be_web_canary", "s1", 200, 99),  # asked for by the canary header: no sample
        log_line("be_web", "s1", 500, 1),  # a failure: no latency
        log_line("be_web", "s1", 200, 0, term="SD--"),  # cut short: no latency
        log_line("be_other", "s0", 200, 3),  # not a routed service
        b"Server be_web/s0 is UP/READY (leaving forced maintenance).\n",
        b"127.0.0.1:34170 [27/Nov/2026:13:51:22.002] fe_web be_web/s0 garbage\n",
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for line in lines:
            sender.sendto(line, str(metrics.socket_path))
        await until(lambda: metrics.stats.lines == len(lines))
        windows = await metrics.snapshot("web")
        assert (windows["A"].latencies_ms, windows["B"].latencies_ms) == ((5.0,), (40.0,))
        assert (await metrics.snapshot("web"))["A"].latency_count == 0
        router.slots = {"web": {0: "A"}}  # B left slot 1
        sender.sendto(log_line("be_web", "s1", 200, 7), str(metrics.socket_path))
        await until(lambda: metrics.stats.lines == len(lines) + 1)
    assert (await metrics.snapshot("web"))["B"].latencies_ms == (7.0,)
    assert (metrics.stats.malformed, metrics.stats.unattributed) == (1, 1)


async def test_recent_latencies_outlive_snapshots(
    scripted: tuple[HAProxyMetrics, ScriptedRouter],
) -> None:
    """A release's latest latencies stay for `recent_latencies` after snapshots and resets
    have handed them out, the latest `latest_kept` of them, oldest first, and only those
    of the span asked for (at low traffic the latest can be hours old)."""
    metrics, _ = scripted
    metrics.latest_kept = 3
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for ta in (5, 6, 7, 8):
            sender.sendto(log_line("be_web", "s0", 200, ta), str(metrics.socket_path))
        sender.sendto(log_line("be_web", "s0", 503, 1), str(metrics.socket_path))
        await until(lambda: metrics.stats.lines == 5)
        await metrics.snapshot("web")
        await metrics.reset("web")
        assert await metrics.recent_latencies("web", "A", 600.0) == (6.0, 7.0, 8.0)
        assert await metrics.recent_latencies("web", "B", 600.0) == ()
        assert await metrics.recent_latencies("elsewhere", "A", 600.0) == ()
        await asyncio.sleep(0.3)
        assert await metrics.recent_latencies("web", "A", 0.2) == ()
        sender.sendto(log_line("be_web", "s0", 200, 9), str(metrics.socket_path))
        await until(lambda: metrics.stats.lines == 6)
        assert await metrics.recent_latencies("web", "A", 0.2) == (9.0,)
        assert await metrics.recent_latencies("web", "A", 600.0) == (7.0, 8.0, 9.0)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_log_shares_keep_lines_near_the_target_and_a_small_release_fed() -> None:
    """Every request is logged up to 1,000 a second; above, about 1,000 lines a second in
    all, the same share of every release, but a release keeps up to 100 lines a second."""
    assert log_shares({"A": 900.0, "B": 100.0}) == {"A": 1000, "B": 1000}
    assert log_shares({"A": 7200.0, "B": 800.0}) == {"A": 125, "B": 125}  # 1,000 of 8,000
    assert log_shares({"A": 7920.0, "B": 80.0}) == {"A": 125, "B": 1000}  # all of B's 80
    assert log_shares({"A": 7800.0, "B": 200.0}) == {"A": 125, "B": 500}  # 100 of B's
    assert log_shares({"A": 2_000_000.0, "B": 0.0}) == {"A": 1, "B": 1000}  # never none
    assert log_shares({}) == {}


def test_failures_never_exceed_attempts() -> None:
    """HAProxy counts a junk answer it retried in eresp and twice in wretr: capped."""
    assert failure_tally(requests=4, errors_5xx=0, connection_errors=10) == Tally(4, 4)
    assert failure_tally(requests=6, errors_5xx=1, connection_errors=4) == Tally(6, 5)


def test_reservoir_is_bounded_and_uniform() -> None:
    """At most `size` values are kept, each value of the stream equally likely."""
    rng = random.Random(7)
    kept_early = kept_late = 0
    for _ in range(400):
        sample = Reservoir(10, rng)
        for v in range(100):
            sample.add(float(v))
        assert len(sample.values()) == 10 and sample.seen == 100
        kept_early += sum(v < 50 for v in sample.values())
        kept_late += sum(v >= 50 for v in sample.values())
    assert abs(kept_early - kept_late) < 0.1 * (kept_early + kept_late)


async def test_the_log_socket_is_owned_and_removed(tmp_path: Path) -> None:
    """start binds a socket only its owner can write to, a second reader is refused, and
    stop removes it."""
    metrics = HAProxyMetrics(HAProxyRouter(tmp_path))
    await metrics.start()
    try:
        assert (metrics.socket_path.stat().st_mode & 0o777) == 0o600
        with pytest.raises(DriverError):
            await HAProxyMetrics(HAProxyRouter(tmp_path)).start()
    finally:
        await metrics.stop()
    assert not metrics.socket_path.exists()

    assert log_target(tmp_path).endswith("/logs.sock format raw")
    assert log_target(tmp_path / ("x" * 120), sample=10) == "unix@logs.sock format raw sample 1:10"


# -- against a real HAProxy ------------------------------------------------------------


StartBackend = Callable[..., Backend]


@pytest.fixture
def backend() -> Iterator[StartBackend]:
    """Starts backend processes; every one is killed at teardown."""
    with backend_processes(BACKEND) as start:

        def one(name: str, *, delay: float = 0.0, fail_every: int = 0) -> Backend:
            return start((name, str(delay), str(fail_every)))[0]

        yield one


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with short_state_dir("cnr-mx-") as path:
        yield path


@pytest.fixture
async def router(state_dir: Path) -> AsyncIterator[HAProxyRouter]:
    """A router whose HAProxy logs to the metrics socket; stopped at teardown."""
    r = HAProxyRouter(state_dir, log_target=log_target(state_dir))
    yield r
    await r.stop()


@pytest.fixture
async def metrics(router: HAProxyRouter) -> AsyncIterator[HAProxyMetrics]:
    """The provider, started before HAProxy is; stopped at teardown."""
    m = HAProxyMetrics(router, seed=1)
    await m.start()
    yield m
    await m.stop()
    assert not m.socket_path.exists()


@contextlib.asynccontextmanager
async def next_controller(
    state_dir: Path, route: ServiceRoute, *, seed: int
) -> AsyncIterator[HAProxyMetrics]:
    """What a controller after the running one reads: a new router on the same state dir,
    which adopts the HAProxy serving there, and a provider on it, started; stopped at
    the end."""
    router = HAProxyRouter(state_dir, log_target=log_target(state_dir))
    await router.ensure([route])
    metrics = HAProxyMetrics(router, seed=seed)
    await metrics.start()
    try:
        yield metrics
    finally:
        await metrics.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service(name: str = "web", slots: int = 4) -> ServiceRoute:
    return ServiceRoute(name, "127.0.0.1", free_port(), slots, "/healthz")


Seen = collections.Counter[tuple[str, int]]


async def send(
    route: ServiceRoute, n: int, *, workers: int = 8, headers: dict[str, str] | None = None
) -> Seen:
    """Send n requests; count the answers by (answering backend, status)."""
    seen: Seen = collections.Counter()
    queue = iter(range(n))
    url = f"http://{route.listen_host}:{route.listen_port}/"

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in queue:
            async with session.get(url, headers=headers) as resp:
                body = await resp.text()
                seen[(body if resp.status < 502 else "haproxy", resp.status)] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return seen


def answered(seen: Seen, name: str) -> int:
    return sum(n for (who, _), n in seen.items() if who == name)


async def latencies(
    metrics: HAProxyMetrics, service: str, want: dict[str, int]
) -> tuple[dict[str, list[float]], collections.Counter[str]]:
    """Each release's latencies and latency counts over snapshots, until `want` came in;
    the test is skipped if HAProxy could not send every log line (a full socket queue)."""
    got: dict[str, list[float]] = collections.defaultdict(list)
    counted: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + 3
    while any(counted[r] < n for r, n in want.items()):
        if metrics.stats.dropped_logs:
            pytest.skip(f"HAProxy dropped {metrics.stats.dropped_logs} log lines")
        assert time.monotonic() < deadline, (
            f"{dict(counted)} latencies, not {want}: {metrics.stats}"
        )
        await asyncio.sleep(0.02)
        for release, window in (await metrics.snapshot(service)).items():
            got[release] += window.latencies_ms
            counted[release] += window.latency_count
    return got, counted


@needs_haproxy
@pytest.mark.haproxy
async def test_outcomes_and_latencies_per_release(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """Requests and failures match what clients saw, per release; the slow release's
    latencies show its delay."""
    fast = backend("a1")
    slow = backend("b1", delay=0.06, fail_every=4)
    route = service()
    await router.ensure([route])
    await router.apply(
        route.name, RouteTable((fast.member("A"), slow.member("B")), {"A": 50, "B": 50})
    )

    seen = await send(route, 160)
    got, counted = await latencies(
        metrics, route.name, {"A": seen[("a1", 200)], "B": seen[("b1", 200)]}
    )
    await metrics.poll()
    windows = await metrics.snapshot(route.name)

    assert seen[("b1", 500)] == answered(seen, "b1") // 4 > 0
    assert (windows["A"].requests, windows["A"].failures) == (answered(seen, "a1"), 0)
    assert (windows["B"].requests, windows["B"].failures) == (
        answered(seen, "b1"),
        seen[("b1", 500)],
    )
    assert counted == {"A": seen[("a1", 200)], "B": seen[("b1", 200)]}
    assert statistics.median(got["B"]) >= 60
    assert statistics.median(got["A"]) < 30
    assert metrics.stats.malformed == 0 and metrics.stats.unattributed == 0


@needs_haproxy
@pytest.mark.haproxy
async def test_requests_that_ask_for_the_canary_are_told_apart(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """What clients send to the canary with the canary header is counted in its figures,
    and as requested; it is not part of its latency sample (no random sample of traffic)."""
    stable = backend("a1")
    canary = backend("b1", fail_every=4)
    route = service()
    await router.ensure([route])
    await router.apply(
        route.name,
        RouteTable((stable.member("A"), canary.member("B")), {"A": 50, "B": 50}, canary="B"),
    )

    split = await send(route, 80)
    asked = await send(route, 40, headers={route.canary_header: "1"})
    _, counted = await latencies(metrics, route.name, {"B": split[("b1", 200)]})
    await asyncio.sleep(0.3)  # the header's log lines too
    await metrics.poll()
    windows = await metrics.snapshot(route.name)

    assert answered(asked, "b1") == 40 and asked[("b1", 500)] > 0
    b = windows["B"]
    assert (b.requests, b.failures) == (
        answered(split, "b1") + 40,
        split[("b1", 500)] + asked[("b1", 500)],
    )
    assert (b.requested, b.requested_failures) == (40, asked[("b1", 500)])
    assert metrics.stats.unattributed == 0
    assert counted["B"] + b.latency_count == split[("b1", 200)]  # the split's alone


@needs_haproxy
@pytest.mark.haproxy
async def test_snapshots_lag_requests_by_less_than_a_poll(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """A request shows in a snapshot well within 0.3 s of its answer; polling is cheap."""
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((backend("a1").member("A"),), {"A": 100}))
    lags = []
    async with aiohttp.ClientSession() as session:
        for _ in range(15):
            # Land at every phase of the poll cycle.
            await asyncio.sleep(random.uniform(0, metrics.interval))
            before = (await metrics.snapshot(route.name))["A"].requests
            async with session.get(f"http://127.0.0.1:{route.listen_port}/") as resp:
                await resp.read()
            done = time.monotonic()
            while (await metrics.snapshot(route.name))["A"].requests == before:  # noqa: ASYNC110 (the wait is what is measured)
                await asyncio.sleep(0.002)
            lags.append(time.monotonic() - done)
    cpu = time.process_time()
    await asyncio.sleep(1.0)
    idle_cpu = time.process_time() - cpu
    print(
        f"\nsnapshot lag: median {statistics.median(lags) * 1000:.0f} ms,"
        f" max {max(lags) * 1000:.0f} ms; poll: {metrics.stats.mean_poll_s * 1000:.2f} ms"
        f" each, {idle_cpu * 100:.1f} % of a core at {1 / metrics.interval:.0f} polls/s"
    )
    assert max(lags) < 0.3
    assert metrics.stats.mean_poll_s < 0.02


@needs_haproxy
@pytest.mark.haproxy
async def test_a_dead_backend_counts_as_failures(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """Every attempt at a release whose instance died is its failure, even when HAProxy
    retried it on the other release; the other release stays clean."""
    a1, b1 = backend("a1"), backend("b1")
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    await send(route, 10)
    b1.proc.kill()
    b1.proc.wait()
    await metrics.reset(route.name)

    seen = await send(route, 40, workers=1)
    _, counted = await latencies(metrics, route.name, {"A": answered(seen, "a1")})
    await metrics.poll()
    windows = await metrics.snapshot(route.name)

    assert answered(seen, "b1") == 0
    assert windows["B"].requests == windows["B"].failures > 0
    assert windows["B"].failures >= seen[("haproxy", 503)]
    assert (windows["A"].requests, windows["A"].failures) == (answered(seen, "a1"), 0)
    assert counted["B"] == 0


@needs_haproxy
@pytest.mark.haproxy
async def test_counts_survive_haproxy_restart_and_reload(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """A crashed HAProxy brought back, then a reload: totals add up, never going back."""
    a1, b1 = backend("a1"), backend("b1", fail_every=4)
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    backwards: list[str] = []
    watching = True

    async def watch() -> None:
        last: dict[str, tuple[int, int]] = {}
        while watching:
            for release, now in counts(await metrics.snapshot(route.name)).items():
                old = last.get(release, (0, 0))
                if now[0] < old[0] or now[1] < old[1]:
                    backwards.append(f"{release}: {old} -> {now}")
                last[release] = now
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        seen = await send(route, 40)
        await asyncio.sleep(2.5 * metrics.interval)  # a poll after the last request
        pid = router.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        errors = metrics.stats.poll_errors
        await until(lambda: metrics.stats.poll_errors > errors)
        await router.ensure([route])
        assert router.pid != pid
        seen += await send(route, 40)
        other = service("api")
        await router.ensure([route, other])  # a new service: a reload, a new process
        seen += await send(route, 20)
        await metrics.poll()
    finally:
        watching = False
        await watcher
    windows = await metrics.snapshot(route.name)
    assert counts(windows) == {
        "A": (answered(seen, "a1"), 0),
        "B": (answered(seen, "b1"), seen[("b1", 500)]),
    }
    assert sum(seen.values()) == 100 and not backwards


@needs_haproxy
@pytest.mark.haproxy
async def test_a_restarted_controller_takes_up_the_window_with_what_came_meanwhile(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend, state_dir: Path
) -> None:
    """The controller stops (its router and provider with it) while HAProxy serves on; the
    next one adopts the same HAProxy and takes up the window: its counts are those since
    the window began, the requests served with no controller running included. When the
    router cannot count on (its books are gone), the window starts afresh and says so."""
    a1, b1 = backend("a1"), backend("b1", fail_every=4)
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    await send(route, 20)  # before the window
    await metrics.reset(route.name)
    seen = await send(route, 40)
    await metrics.stop()  # the controller is gone; HAProxy serves on
    seen += await send(route, 40)

    async with next_controller(state_dir, route, seed=2) as taken_up:
        assert await taken_up.resume(route.name)
        seen += await send(route, 20)
        await taken_up.poll()
        assert counts(await taken_up.snapshot(route.name)) == {
            "A": (answered(seen, "a1"), 0),
            "B": (answered(seen, "b1"), seen[("b1", 500)]),
        }
        assert sum(seen.values()) == 100

    (state_dir / "counts.json").unlink()
    async with next_controller(state_dir, route, seed=3) as fresh:
        assert not await fresh.resume(route.name)
        later = await send(route, 10)
        await fresh.poll()
        windows = counts(await fresh.snapshot(route.name))
        assert windows["A"][0] + windows["B"][0] == sum(later.values()) == 10


@needs_haproxy
@pytest.mark.haproxy
async def test_a_restarted_controller_still_knows_the_minutes_before(
    router: HAProxyRouter, backend: StartBackend, state_dir: Path
) -> None:
    """The history behind `recent` and `recent_latencies` (what a canary that takes all
    the traffic is held to) is saved as it goes; a provider after a controller restart
    that adopts the same HAProxy takes it up, so it reaches back past the restart. With
    the router's books gone (another HAProxy process), it starts afresh."""
    a1, b1 = backend("a1"), backend("b1", fail_every=4)
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    first = HAProxyMetrics(router, seed=1, history_save_every=0.0, latencies_save_every=0.0)
    await first.start()
    try:
        await first.poll()  # its history begins before the first request
        seen = await send(route, 60, workers=1)
        await latencies(first, route.name, {"A": answered(seen, "a1")})
        await first.poll()
        before = await first.recent(route.name, "B", 600)
        logged = await first.recent_latencies(route.name, "A", 600)
    finally:
        await first.stop()
    assert before == (answered(seen, "b1"), seen[("b1", 500)])
    assert len(logged) == answered(seen, "a1")

    async with next_controller(state_dir, route, seed=2) as second:
        seen += await send(route, 20, workers=1)
        await second.poll()
        assert await second.recent(route.name, "B", 600) == (
            answered(seen, "b1"),
            seen[("b1", 500)],
        )
        assert (await second.recent_latencies(route.name, "A", 600))[: len(logged)] == (
            pytest.approx(logged, abs=1e-3)
        )

    (state_dir / "counts.json").unlink()
    async with next_controller(state_dir, route, seed=3) as third:
        await third.poll()
        assert await third.recent(route.name, "B", 600) == (0, 0)
        assert await third.recent_latencies(route.name, "A", 600) == ()


@needs_haproxy
@pytest.mark.haproxy
async def test_a_controller_stopped_saves_what_its_history_gained_since_the_last_save(
    router: HAProxyRouter, backend: StartBackend, state_dir: Path
) -> None:
    """The history is saved every 15 s (counts) and 60 s (latencies); a controller that is
    stopped (SIGTERM, to be upgraded or restarted) saves the rest as it stops, so the
    next one, adopting the same HAProxy, knows every request up to then."""
    a1 = backend("a1")
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
    first = HAProxyMetrics(router, seed=1)
    await first.start()
    try:
        await first.poll()  # saved at once, before any request; not again for 15 s
        seen = await send(route, 40, workers=1)
        await latencies(first, route.name, {"A": answered(seen, "a1")})
        logged = await first.recent_latencies(route.name, "A", 600)
    finally:
        await first.stop()

    async with next_controller(state_dir, route, seed=2) as second:
        await second.poll()
        assert await second.recent(route.name, "A", 600) == (40, 0)
        assert len(await second.recent_latencies(route.name, "A", 600)) == len(logged) == 40


@needs_haproxy
@pytest.mark.haproxy
async def test_under_heavy_traffic_haproxy_logs_a_share_and_counts_stay_exact(
    router: HAProxyRouter, backend: StartBackend
) -> None:
    """Above its log budget (here 100 lines a second in all, 40 a release), the provider
    has HAProxy log only a share of each release's requests, through the Runtime API, no
    reload: the larger release a smaller share. The counts stay exact, each release's
    latency sample keeps coming; back under the budget, every request is logged again."""
    metrics = HAProxyMetrics(router, seed=1, log_lines=100, log_lines_per_release=40)
    await metrics.start()
    try:
        a1, b1 = backend("a1"), backend("b1")
        route = service()
        await router.ensure([route])
        pid = router.pid
        await router.apply(
            route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 80, "B": 20})
        )
        slots = {release: k for k, release in router.slot_releases()[route.name].items()}
        seen: Seen = collections.Counter()
        started = time.monotonic()
        while router.log_shares(route.name)[slots["A"]] == 1000:
            assert time.monotonic() - started < 10, "the log shares never came down"
            seen += await send(route, 200)  # several hundred requests a second
        await metrics.snapshot(route.name)  # latencies so far handed out
        shares = router.log_shares(route.name)
        more = await send(route, 2000)
        seen += more
        await asyncio.sleep(0.3)
        await metrics.poll()
        windows = await metrics.snapshot(route.name)
        sampled = {r: w.latency_count for r, w in windows.items()}
        print(f"log shares by slot {shares}: of {more}, latencies logged {sampled}")
        assert router.pid == pid and shares[slots["A"]] < shares[slots["B"]]
        for release, name in (("A", "a1"), ("B", "b1")):
            n, now = answered(more, name), router.log_shares(route.name)[slots[release]]
            low, high = sorted((n * shares[slots[release]] / 1000, n * now / 1000))
            logged = windows[release].latency_count
            assert low - 4 * low**0.5 - 5 <= logged <= high + 4 * high**0.5 + 5, release
        assert windows["A"].requests + windows["B"].requests == sum(seen.values())
        assert (
            f"{slot_name(slots['A'])} {shares[slots['A']]}"
            in (router.log_shares_dir / "web.map").read_text()
        )  # kept for a restart
        started = time.monotonic()
        while set(router.log_shares(route.name).values()) != {1000}:  # idle now
            assert time.monotonic() - started < 10, "the log shares never went back up"
            await asyncio.sleep(0.2)
    finally:
        await metrics.stop()


@needs_haproxy
@pytest.mark.haproxy
async def test_a_service_no_analysis_reads_is_logged_thinly_until_it_is_attended(
    router: HAProxyRouter, backend: StartBackend
) -> None:
    """Told that no analysis reads a busy service, the provider has HAProxy log a tenth of
    the lines it would for a judged one (here 40 a second against 400), once it holds the
    latest latencies a later rollout is held to (here 1,000); told that it is judged now,
    it raises the share at the next poll. The counts stay exact throughout."""
    metrics = HAProxyMetrics(
        router,
        seed=1,
        log_lines=400,
        log_lines_per_release=100,
        idle_log_lines=40,
        latest_kept=1000,
    )
    await metrics.start()
    try:
        a1 = backend("a1")
        route = service()
        await router.ensure([route])
        await router.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
        (slot,) = router.slot_releases()[route.name]
        metrics.attend([])
        sent = 0
        started = time.monotonic()
        while len(await metrics.recent_latencies(route.name, "A", 60.0)) < 1000:
            # A couple of hundred a second, each logged as for a judged service until the
            # 1,000 are had (a few seconds; at 40 lines a second, half a minute).
            assert time.monotonic() - started < 12, "the latest latencies took too long"
            sent += sum((await send(route, 30)).values())
            await asyncio.sleep(0.1)
        while True:
            begun = time.monotonic()
            sent += sum((await send(route, 30)).values())
            await asyncio.sleep(0.1)
            await metrics.poll()
            rate = (await metrics.recent(route.name, "A", 2.0) or (0, 0))[0] / 2.0
            idle = router.log_shares(route.name)[slot]
            # About 40 lines a second of `rate`: at most a quarter off (the change threshold).
            if idle <= 1.25 * 1000 * 40 / min(rate, 400) + 1:
                break
            assert time.monotonic() - started < 20, ("the log share never came down", idle)

        metrics.attend([route.name])
        while router.log_shares(route.name)[slot] < 5 * idle:
            assert time.monotonic() - begun < 10, "the log share never went up"
            sent += sum((await send(route, 100)).values())
            await metrics.poll()
        await metrics.poll()
        assert (await metrics.snapshot(route.name))["A"].requests == sent
    finally:
        await metrics.stop()


@needs_haproxy
@pytest.mark.haproxy
async def test_a_reused_slot_credits_each_release_its_own(
    router: HAProxyRouter, metrics: HAProxyMetrics, backend: StartBackend
) -> None:
    """A slot freed by one release and taken by another: the newcomer starts at zero."""
    a1, b1, c1 = backend("a1"), backend("b1"), backend("c1")
    route = service(slots=2)
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    first = await send(route, 20)
    await router.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
    await router.apply(route.name, RouteTable((a1.member("A"), c1.member("C")), {"A": 50, "C": 50}))
    assert router.slot_releases()[route.name] == {0: "A", 1: "C"}
    second = await send(route, 20)
    await metrics.poll()
    windows = await metrics.snapshot(route.name)
    assert windows["B"].requests == answered(first, "b1") > 0
    assert windows["C"].requests == answered(second, "c1") > 0
    assert windows["A"].requests == answered(first + second, "a1")


@needs_haproxy
@pytest.mark.haproxy
async def test_a_window_keeps_a_bounded_sample(
    router: HAProxyRouter, backend: StartBackend
) -> None:
    """After reset, the sample holds at most `reservoir_size` of the window's latencies."""
    metrics = HAProxyMetrics(router, reservoir_size=20, seed=3)
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((backend("a1").member("A"),), {"A": 100}))
    await metrics.start()
    try:
        await latencies(metrics, route.name, {"A": sum((await send(route, 30)).values())})
        await metrics.reset(route.name)
        lines = metrics.stats.lines
        await send(route, 50)
        await until(lambda: metrics.stats.lines >= lines + 50 or metrics.stats.dropped_logs > 0)
        if metrics.stats.dropped_logs:
            pytest.skip(f"HAProxy dropped {metrics.stats.dropped_logs} log lines")
        await metrics.poll()
        window = (await metrics.snapshot(route.name))["A"]
        assert (window.requests, window.latency_count, len(window.latencies_ms)) == (50, 50, 20)
    finally:
        await metrics.stop()


@needs_haproxy
@pytest.mark.haproxy
async def test_a_state_dir_too_deep_for_a_socket_address(
    state_dir: Path, backend: StartBackend
) -> None:
    """Past the kernel's socket path limit, HAProxy still reaches the log socket."""
    deep = state_dir / ("d" * 60) / ("e" * 60)
    router = HAProxyRouter(deep, log_target=log_target(deep))
    metrics = HAProxyMetrics(router)
    await metrics.start()
    try:
        route = service()
        await router.ensure([route])
        await router.apply(route.name, RouteTable((backend("a1").member("A"),), {"A": 100}))
        await send(route, 5)
        _, counted = await latencies(metrics, route.name, {"A": 5})
        assert counted["A"] == 5
    finally:
        await metrics.stop()
        await router.stop()
