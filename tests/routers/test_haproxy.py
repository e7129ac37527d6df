"""The HAProxy router against a real HAProxy and real backend processes."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from canarist.errors import RouterError
from canarist.routers import haproxy as haproxy_module
from canarist.routers.base import Member, RouteTable, ServiceRoute
from canarist.routers.haproxy import HAProxyRouter, slot_name
from canarist.routers.haproxy_runtime import (
    RuntimeAPI,
    parse_servers_state,
    set_addr,
    set_health,
    set_state,
)
from tests.backends import Backend, backend_processes, short_state_dir

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the haproxy binary"),
]

# A tiny HTTP/1.1 keep-alive server that answers with its own name; /fail answers 500,
# /slow answers after half a second. It binds port 0 and prints the port it got.
BACKEND = r"""
import asyncio, sys
name = sys.argv[1].encode()

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip().lower()
            length = int(headers.get("content-length") or 0)
            if length:
                await reader.readexactly(length)
            if path.startswith("/slow"):
                await asyncio.sleep(0.5)
            status = b"500 Internal Server Error" if path.startswith("/fail") else b"200 OK"
            keep = version == "HTTP/1.1" and headers.get("connection") != "close"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(name)).encode()
                + (b"\r\n" if keep else b"\r\nConnection: close\r\n") + b"\r\n" + name
            )
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
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

CANARY = "X-Canarist-Canary"


StartBackends = Callable[..., list[Backend]]


@pytest.fixture
def backends() -> Iterator[StartBackends]:
    """Starts named backend processes; every one is killed at teardown."""
    with backend_processes(BACKEND) as start:
        yield lambda *names: start(*[(name,) for name in names])


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short, unique state dir (the admin socket path must stay short)."""
    with short_state_dir("cnr-hx-") as path:
        yield path


@pytest.fixture
async def router(state_dir: Path) -> AsyncIterator[HAProxyRouter]:
    """A router on its own state dir; any HAProxy started there is stopped at teardown."""
    r = HAProxyRouter(state_dir)
    yield r
    await r.stop()
    await HAProxyRouter(state_dir).stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service(name: str = "web", *, slots: int = 6, sticky: bool = False) -> ServiceRoute:
    return ServiceRoute(name, "127.0.0.1", free_port(), slots, "/healthz", sticky=sticky)


def url(route: ServiceRoute, path: str = "/") -> str:
    return f"http://{route.listen_host}:{route.listen_port}{path}"


async def hit(
    route: ServiceRoute,
    n: int,
    *,
    path: str = "/",
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    workers: int = 8,
) -> collections.Counter[str]:
    """Send n requests (keep-alive) and count the answering backends by name."""
    seen: collections.Counter[str] = collections.Counter()
    own = session is None
    s = session or aiohttp.ClientSession()
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            async with s.get(url(route, path), headers=headers) as resp:
                seen[await resp.text()] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        if own:
            await s.close()
    return seen


def counting_queries(router: HAProxyRouter, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Runtime API queries the router makes from now on (one a connection, its commands
    joined by ";"), as they are made."""
    queries: list[str] = []
    query = router.runtime.query

    async def counted(*commands: str) -> str:
        queries.append(";".join(commands))  # one connection
        return await query(*commands)

    monkeypatch.setattr(router.runtime, "query", counted)
    return queries


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of the process has exited (its first thread is a zombie while
    the others are still being killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            return
        if all(_exited(task) for task in tasks):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive")


def _exited(task: Path) -> bool:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


async def test_traffic_split_matches_weights(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A 10/90 table over 2+2 servers splits 1000 requests 10/90 and reads back as such."""
    a1, a2, b1, b2 = backends("a1", "a2", "b1", "b2")
    route = service()
    await router.ensure([route])
    members = (a1.member("A"), a2.member("A"), b1.member("B"), b2.member("B"))
    await router.apply(route.name, RouteTable(members, {"A": 10, "B": 90}))

    seen = await hit(route, 1000)

    a_share = (seen["a1"] + seen["a2"]) / 1000
    assert abs(a_share - 0.10) < 0.02, seen
    assert abs(seen["a1"] - seen["a2"]) <= 10 and abs(seen["b1"] - seen["b2"]) <= 20, seen
    assert await router.read_weights(route.name) == {"A": 10.0, "B": 90.0}


async def test_draining_member_gets_no_new_requests(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A draining member takes no new requests while the rest of its release does."""
    a1, a2 = backends("a1", "a2")
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), a2.member("A")), {"A": 100}))
    assert set(await hit(route, 20)) == {"a1", "a2"}

    await router.apply(
        route.name, RouteTable((a1.member("A", "draining"), a2.member("A")), {"A": 100})
    )

    assert await hit(route, 200) == {"a2": 200}
    assert await router.read_weights(route.name) == {"A": 100.0}


async def test_active_sessions_counts_requests_in_flight(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A slow request shows as an active session on its member until it completes."""
    (a1,) = backends("a1")
    route = service()
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))

    slow = asyncio.create_task(hit(route, 1, path="/slow", workers=1))
    in_flight = 0
    for _ in range(40):
        in_flight = await router.active_sessions(route.name, "a1")
        if in_flight:
            break
        await asyncio.sleep(0.01)
    await slow

    assert in_flight == 1
    assert await router.active_sessions(route.name, "a1") == 0
    assert await router.active_sessions(route.name, "unknown") == 0


async def test_an_address_is_usable_when_free_or_held_by_our_own_haproxy(
    router: HAProxyRouter, state_dir: Path
) -> None:
    """`check_listeners`, asked before a spec is taken: an address the router's HAProxy
    (or the one a router on the same state dir runs) already listens on is usable; one
    another process holds is not, named with its service."""
    route = service()
    address = {"web": (route.listen_host, route.listen_port)}
    HAProxyRouter(state_dir).check_listeners(address)  # free
    await router.ensure([route])
    router.check_listeners(address)
    HAProxyRouter(state_dir).check_listeners(address)  # a controller after this one
    with tempfile.TemporaryDirectory() as elsewhere, pytest.raises(RouterError) as caught:
        HAProxyRouter(Path(elsewhere)).check_listeners(address)
    assert str(caught.value) == (
        f"service 'web': cannot listen on 127.0.0.1:{route.listen_port}: Address already in use"
    )


async def test_haproxy_killed_comes_back_with_last_table(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """After SIGKILL, ensure starts HAProxy again, already routing the last applied table."""
    a1, b1, b2 = backends("a1", "b1", "b2")
    route = service()
    await router.ensure([route])
    members = (a1.member("A"), b1.member("B"), b2.member("B", "draining"))
    await router.apply(route.name, RouteTable(members, {"A": 1, "B": 99}))
    first = router.pid
    assert first is not None

    os.kill(first, signal.SIGKILL)
    wait_dead(first)
    await router.ensure([route])

    assert router.pid not in (None, first)
    assert await router.read_weights(route.name) == {"A": 1.0, "B": 99.0}
    seen = await hit(route, 200)
    assert "b2" not in seen and seen["b1"] > seen["a1"] > 0, seen


async def test_new_router_adopts_running_haproxy(
    router: HAProxyRouter,
    backends: StartBackends,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted controller adopts the running HAProxy (same PID) and re-applying the
    same table changes nothing."""
    a1, b1 = backends("a1", "b1")
    route = service()
    await router.ensure([route])
    table = RouteTable((a1.member("A"), b1.member("B")), {"A": 30, "B": 70}, canary="B")
    await router.apply(route.name, table)
    pid = router.pid

    again = HAProxyRouter(state_dir)
    await again.ensure([route])
    with caplog.at_level(logging.INFO, logger="canarist.routers.haproxy"):
        await again.apply(route.name, table)

    assert again.pid == pid
    assert not [r for r in caplog.records if "set server" in r.getMessage()]
    assert await again.read_weights(route.name) == {"A": 30.0, "B": 70.0}
    await hit(route, 10)
    counts = await again.counters(route.name)
    assert counts["A"].requests + counts["B"].requests == 10


async def test_a_new_router_counts_on_from_the_books_of_the_one_before(
    router: HAProxyRouter, backends: StartBackends, state_dir: Path
) -> None:
    """A restarted controller that adopts the same HAProxy counts on from what the one
    before it counted, the requests served while no controller ran included, also for a
    release whose slot changed hands before; one that finds no books for it (deleted
    here, as for a HAProxy process the books were not kept for) counts from the adoption
    and says so."""
    a1, b1, c1 = backends("a1", "b1", "c1")
    route = service(slots=3)
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    await hit(route, 20)
    await hit(route, 10, path="/fail")
    await router.apply(route.name, RouteTable((a1.member("A"), c1.member("C")), {"A": 50, "C": 50}))
    await hit(route, 10)
    before = await router.counters(route.name)
    await hit(route, 20)  # while no controller runs

    again = HAProxyRouter(state_dir)
    await again.ensure([route])
    after = await again.counters(route.name)
    assert again.counts_continued
    saved = (state_dir / "counts.json").stat().st_mtime_ns
    await again.ensure([route])  # every controller tick: the books are not written again
    assert (state_dir / "counts.json").stat().st_mtime_ns == saved
    assert after["B"] == before["B"]  # its slot was given away: its count is banked
    assert after["A"].requests + after["C"].requests == (
        before["A"].requests + before["C"].requests + 20
    )
    assert after["A"].errors_5xx == before["A"].errors_5xx == 5

    (state_dir / "counts.json").unlink()
    third = HAProxyRouter(state_dir)
    await third.ensure([route])
    assert not third.counts_continued
    assert {r: c.requests for r, c in (await third.counters(route.name)).items()} == {
        "A": 0,
        "C": 0,
    }


async def test_apply_moves_only_what_changed(
    router: HAProxyRouter, backends: StartBackends, caplog: pytest.LogCaptureFixture
) -> None:
    """A weight change issues weight commands only; members keep their slots."""
    a1, b1 = backends("a1", "b1")
    route = service()
    await router.ensure([route])
    members = (a1.member("A"), b1.member("B"))
    await router.apply(route.name, RouteTable(members, {"A": 90, "B": 10}))
    before = {(s.name, s.addr, s.port) for s in await router.runtime.servers_state("be_web")}

    with caplog.at_level(logging.INFO, logger="canarist.routers.haproxy"):
        await router.apply(route.name, RouteTable(tuple(reversed(members)), {"A": 50, "B": 50}))

    issued = " ".join(r.getMessage() for r in caplog.records)
    assert "weight" in issued and "addr" not in issued and "state" not in issued
    after = {(s.name, s.addr, s.port) for s in await router.runtime.servers_state("be_web")}
    assert after == before


async def test_asking_again_for_the_same_routing_costs_nothing_and_meddling_is_undone(
    router: HAProxyRouter, backends: StartBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller asks for every service's HAProxy and routing at every tick. Asked
    again for what it just ensured and applied, the router neither queries HAProxy nor
    rewrites its files; it looks again within VERIFY_EVERY (the service's backends in one
    query), and undoes a change made behind its back."""
    a1, b1 = backends("a1", "b1")
    route = service(sticky=True)  # three backends: main, canary header, pinned
    await router.ensure([route])
    table = RouteTable((a1.member("A"), b1.member("B")), {"A": 90, "B": 10})
    await router.apply(route.name, table)
    applied = {s.name: s.weight for s in await router.runtime.servers_state("be_web")}
    files = [router.config_path, router.state_dir / "routes.json"]
    written = [f.stat().st_mtime_ns for f in files]
    query = router.runtime.query
    queries = counting_queries(router, monkeypatch)
    started = time.monotonic()
    for _ in range(20):
        await router.ensure([replace(route)])
        await router.apply(route.name, RouteTable(table.members, dict(table.weights)))
    assert time.monotonic() - started < haproxy_module.VERIFY_EVERY
    assert queries == []
    assert [f.stat().st_mtime_ns for f in files] == written

    # Behind the router's back: slot 0 loses its weight.
    await query("set server be_web/s0 weight 0")
    await asyncio.sleep(haproxy_module.VERIFY_EVERY)
    await router.apply(route.name, table)
    looked = [q for q in queries if q.startswith("show servers state")]
    assert looked == [
        "show servers state be_web;show servers state be_web_canary;"
        "show servers state be_web_pinned"
    ]
    assert {s.name: s.weight for s in await router.runtime.servers_state("be_web")} == applied
    assert [f.stat().st_mtime_ns for f in files] == written  # the routing itself is the same
    assert await router.read_weights(route.name) == {"A": 90.0, "B": 10.0}


async def test_the_counters_of_every_service_come_from_one_read(
    router: HAProxyRouter, backends: StartBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`routed_counters` reads HAProxy's counters once for all services (its answer grows
    with them) and gives each service exactly what `counters` gives it."""
    a1, b1, c1 = backends("a1", "b1", "c1")
    web, api = service("web", slots=3), service("api", slots=3)
    await router.ensure([web, api])
    await router.apply("web", RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    await router.apply("api", RouteTable((c1.member("C"),), {"C": 100}))
    await hit(web, 20)
    await hit(web, 4, path="/fail")
    await hit(api, 7)
    queries = counting_queries(router, monkeypatch)
    every = await router.routed_counters()
    assert len([q for q in queries if q.startswith("show stat")]) == 1

    assert every == {"web": await router.counters("web"), "api": await router.counters("api")}
    assert every["web"]["A"].requests == every["web"]["B"].requests == 12
    assert every["web"]["A"].errors_5xx == every["web"]["B"].errors_5xx == 2
    assert every["api"]["C"].requests == 7 and every["api"]["C"].errors_5xx == 0
    # Only the rows of occupied slots are parsed; they are the rows of the whole answer.
    pairs = {("be_web", "s0"), ("be_api_canary", "s1")}
    whole = [r for r in await router.runtime.stat() if (r["pxname"], r["svname"]) in pairs]
    assert len(whole) == 2 and await router.runtime.stat(pairs) == whole


async def test_canary_header_forces_the_canary(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """The canary header reaches the canary even at 0 percent, and falls back without one."""
    a1, b1 = backends("a1", "b1")
    route = service()
    await router.ensure([route])
    members = (a1.member("A"), b1.member("B"))
    await router.apply(route.name, RouteTable(members, {"A": 100, "B": 0}, canary="B"))

    assert await hit(route, 20, headers={CANARY: "1"}) == {"b1": 20}
    assert await hit(route, 20) == {"a1": 20}

    await router.apply(route.name, RouteTable(members, {"A": 100, "B": 0}, canary=None))
    assert await hit(route, 20, headers={CANARY: "1"}) == {"a1": 20}


async def test_sticky_cookie_keeps_a_client_on_its_server(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """With stickiness, a client holding the cookie stays on one server; others spread."""
    a1, a2 = backends("a1", "a2")
    route = service(sticky=True)
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), a2.member("A")), {"A": 100}))

    # The default cookie jar ignores cookies from IP addresses.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        pinned = await hit(route, 30, session=client, workers=1)
        assert len(pinned) == 1, pinned
        assert set(await hit(route, 30)) == {"a1", "a2"}

        # A draining server still honours its cookie: sticky clients finish there.
        (name,) = pinned
        members = (
            a1.member("A", "draining" if name == "a1" else "active"),
            a2.member("A", "draining" if name == "a2" else "active"),
        )
        await router.apply(route.name, RouteTable(members, {"A": 100}))
        assert await hit(route, 10, session=client, workers=1) == {name: 10}
        assert await hit(route, 10) == {"a1" if name == "a2" else "a2": 10}


async def test_requests_the_sticky_cookie_routes_are_counted_apart(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A sticky service's requests that carry its cookie went where the client's first
    request went, not where the split sent them: they are counted apart (`pinned`), 5xx
    and all, while a client without the cookie is split by weight as before."""
    a1, b1 = backends("a1", "b1")
    route = service(sticky=True)
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        stuck = await hit(route, 20, session=client, workers=1)
        failed = await hit(route, 5, path="/fail", session=client, workers=1)
    assert len(stuck) == 1 and set(failed) == set(stuck), (stuck, failed)
    spread = await hit(route, 40)  # no cookie jar: each request split afresh
    assert set(spread) == {"a1", "b1"}

    counts = await router.counters(route.name)
    mine = "A" if "a1" in stuck else "B"
    other = "B" if mine == "A" else "A"
    assert counts[mine].requests == 25 + spread[mine.lower() + "1"]
    assert counts[mine].extra["pinned"] == 24  # all but the first
    assert counts[mine].extra["pinned_5xx"] == counts[mine].errors_5xx == 5
    assert counts[other].extra["pinned"] == counts[other].errors_5xx == 0
    assert counts[mine].extra["requested"] == counts[other].extra["requested"] == 0


async def test_counters_follow_releases_across_slot_reuse(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """Requests and 5xx are counted per release, and a reused slot starts a new release at 0."""
    a1, b1, c1 = backends("a1", "b1", "c1")
    route = service(slots=2)
    await router.ensure([route])
    await router.apply(route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50}))
    await hit(route, 20)
    await hit(route, 10, path="/fail")

    counts = await router.counters(route.name)
    assert counts["A"].requests == counts["B"].requests == 15
    assert counts["A"].errors_5xx == counts["B"].errors_5xx == 5

    await router.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
    await router.apply(route.name, RouteTable((a1.member("A"), c1.member("C")), {"A": 50, "C": 50}))
    await hit(route, 10)

    counts = await router.counters(route.name)
    assert counts["B"].requests == 15 and counts["B"].errors_5xx == 5
    assert counts["C"].requests == 5 and counts["C"].errors_5xx == 0
    assert counts["A"].requests == 20


async def test_dead_member_is_routed_around(router: HAProxyRouter, backends: StartBackends) -> None:
    """A member that does not answer costs no request (retries), and checks take it out."""
    (a1,) = backends("a1")
    route = service()
    await router.ensure([route])
    dead = Member("dead", "A", "127.0.0.1", free_port())
    await router.apply(route.name, RouteTable((a1.member("A"), dead), {"A": 100}))

    assert await hit(route, 50) == {"a1": 50}
    status = ""
    for _ in range(60):
        rows = [r for r in await router.runtime.stat() if r["pxname"] == "be_web"]
        status = {r["svname"]: r["status"] for r in rows}["s1"]
        if status.startswith("DOWN"):
            break
        await asyncio.sleep(0.05)
    assert status.startswith("DOWN")
    assert await hit(route, 20) == {"a1": 20}
    counts = await router.counters(route.name)
    # Attempts on the dead member count as its release's connection errors.
    assert counts["A"].requests - counts["A"].connection_errors == 70
    assert counts["A"].extra["responses"] == 70 and counts["A"].errors_5xx == 0


async def test_leaving_maint_is_up_before_any_check(router: HAProxyRouter) -> None:
    """Leaving maintenance, a checked server is UP at once, dead or not, with no
    `health up`; its first failed check takes it DOWN."""
    await router.ensure([service()])
    port = free_port()

    reply = await router.runtime.query(
        set_addr("be_web", "s0", "127.0.0.1", port),
        set_state("be_web", "s0", "ready"),
        "show servers state be_web",
    )
    (s0,) = [s for s in parse_servers_state(reply) if s.name == "s0"]
    assert (s0.op_state, s0.admin) == (2, "ready")

    for _ in range(60):
        (s0,) = [s for s in await router.runtime.servers_state("be_web") if s.name == "s0"]
        if s0.op_state == 0:
            break
        await asyncio.sleep(0.05)
    assert s0.op_state == 0
    await router.runtime.run([set_health("be_web", "s0", "up")])
    (s0,) = [s for s in await router.runtime.servers_state("be_web") if s.name == "s0"]
    assert s0.op_state == 2


async def test_bad_config_raises_router_error(router: HAProxyRouter) -> None:
    """HAProxy's own refusal of the config comes back as a RouterError, nothing started."""
    bad = ServiceRoute("web", "not.an.address", free_port(), 2, "/healthz")

    with pytest.raises(RouterError, match="invalid address"):
        await router.ensure([bad])
    assert router.pid is None


async def test_busy_port_raises_router_error(router: HAProxyRouter) -> None:
    """A listen port already taken fails the start with HAProxy's message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        route = ServiceRoute("web", "127.0.0.1", taken.getsockname()[1], 2, "/healthz")
        with pytest.raises(RouterError, match="exited at start"):
            await router.ensure([route])
    assert router.pid is None


async def test_missing_binary_raises_router_error(state_dir: Path) -> None:
    """A HAProxy binary that does not exist is a RouterError."""
    with pytest.raises(RouterError, match="HAProxy is not installed: no 'no-such-haproxy' on"):
        await HAProxyRouter(state_dir, "no-such-haproxy").ensure([service()])


async def test_runtime_refusals_raise_router_error(router: HAProxyRouter) -> None:
    """A command HAProxy refuses, or a socket nobody listens on, is a RouterError."""
    await router.ensure([service()])

    with pytest.raises(RouterError, match="No such server"):
        await router.runtime.run(["set server be_web/s99 weight 1"])
    with pytest.raises(RouterError, match="unreachable"):
        await RuntimeAPI(router.state_dir / "nobody.sock").info()


async def test_shape_change_reloads_without_refusing_a_connection(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A new service reloads HAProxy seamlessly: new connections never fail meanwhile."""
    a1, b1 = backends("a1", "b1")
    web, api = service("web"), service("api")
    await router.ensure([web])
    await router.apply("web", RouteTable((a1.member("A"),), {"A": 100}))
    old = router.pid
    assert old is not None
    failures: list[str] = []
    done = asyncio.Event()

    async def load() -> int:
        sent = 0
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            while not done.is_set():
                try:
                    async with s.get(url(web)) as resp:
                        if resp.status != 200:
                            failures.append(str(resp.status))
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                sent += 1
        return sent

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(0.2)
    await router.ensure([web, api])
    await router.apply("api", RouteTable((b1.member("B"),), {"B": 100}))
    await asyncio.sleep(0.3)
    done.set()
    sent = sum(await asyncio.gather(*tasks))

    assert router.pid != old
    wait_dead(old)
    assert failures == [] and sent > 50
    assert await hit(web, 5) == {"a1": 5}
    assert await hit(api, 5) == {"b1": 5}
    # The table of the service that was already there survived the reload.
    assert await router.read_weights("web") == {"A": 100.0}


async def test_failed_reload_keeps_the_running_haproxy(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """A reload that cannot start leaves the running HAProxy serving, config unchanged."""
    (a1,) = backends("a1")
    web = service("web")
    await router.ensure([web])
    await router.apply("web", RouteTable((a1.member("A"),), {"A": 100}))
    pid = router.pid

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api = ServiceRoute("api", "127.0.0.1", taken.getsockname()[1], 2, "/healthz")
        with pytest.raises(RouterError, match="cannot listen"):
            await router.ensure([web, api])

    assert router.pid == pid
    assert "be_api" not in router.config_path.read_text()
    assert await hit(web, 5) == {"a1": 5}
    await router.ensure([web, api])
    assert router.pid != pid
    assert await hit(web, 5) == {"a1": 5}


async def test_long_state_dir_path(backends: StartBackends, state_dir: Path) -> None:
    """A state dir too deep for a unix socket path still works."""
    deep = state_dir / ("d" * 60) / ("e" * 60)
    (a1,) = backends("a1")
    route = service()
    r = HAProxyRouter(deep)
    try:
        await r.ensure([route])
        await r.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
        assert await r.read_weights(route.name) == {"A": 100.0}
        assert await hit(route, 5) == {"a1": 5}
    finally:
        await r.stop()


async def test_zero_failed_requests_while_moving_from_a_to_b(
    router: HAProxyRouter, backends: StartBackends
) -> None:
    """Under continuous keep-alive load, moving a service from A to B (bring B up, shift
    0→50→100, drain A, wait for its sessions to end, remove A, kill A) fails no request."""
    a1, a2, b1, b2 = backends("a1", "a2", "b1", "b2")
    route = service()
    await router.ensure([route])
    a = (a1.member("A"), a2.member("A"))
    b = (b1.member("B"), b2.member("B"))
    await router.apply(route.name, RouteTable(a, {"A": 100}))

    failures: list[str] = []
    seen: collections.Counter[str] = collections.Counter()
    after_kill: collections.Counter[str] = collections.Counter()
    killed = asyncio.Event()
    done = asyncio.Event()

    async def load(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            try:
                async with session.get(url(route)) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        failures.append(f"{resp.status} {body}")
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))
                continue
            seen[body] += 1
            if killed.is_set():
                after_kill[body] += 1

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(load(session)) for _ in range(8)]
        await asyncio.sleep(0.3)
        await router.apply(route.name, RouteTable(a + b, {"A": 100, "B": 0}))
        for share in (50, 100):
            await asyncio.sleep(0.3)
            await router.apply(route.name, RouteTable(a + b, {"A": 100 - share, "B": share}))
        await asyncio.sleep(0.3)
        draining = tuple(Member(m.instance_id, "A", m.host, m.port, "draining") for m in a)
        await router.apply(route.name, RouteTable(draining + b, {"A": 0, "B": 100}))
        for m in a:
            for _ in range(100):
                if await router.active_sessions(route.name, m.instance_id) == 0:
                    break
                await asyncio.sleep(0.02)
            assert await router.active_sessions(route.name, m.instance_id) == 0
        await router.apply(route.name, RouteTable(b, {"B": 100}))
        for backend in (a1, a2):
            backend.proc.kill()
            backend.proc.wait()
        killed.set()
        await asyncio.sleep(0.5)
        done.set()
        await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started

    total = sum(seen.values())
    assert failures == []
    assert total / elapsed > 200, f"only {total / elapsed:.0f} req/s"
    assert seen["a1"] and seen["a2"] and seen["b1"] and seen["b2"]
    assert set(after_kill) <= {"b1", "b2"} and sum(after_kill.values()) > 0
    counts = await router.counters(route.name)
    assert counts["A"].requests + counts["B"].requests == total
    assert counts["A"].errors_5xx == counts["B"].errors_5xx == 0


async def test_a_slot_given_to_another_release_logs_all_its_requests_again(
    state_dir: Path, backends: StartBackends
) -> None:
    """Log shares are per slot; when a slot comes to serve another release, the share it
    had for its last release's traffic is reset to all, before the newcomer gets any."""
    router = HAProxyRouter(state_dir, log_target=str(state_dir / "nowhere.sock"))
    try:
        a1, b1, c1 = backends("a1", "b1", "c1")
        route = service(slots=3)
        await router.ensure([route])
        await router.apply(
            route.name, RouteTable((a1.member("A"), b1.member("B")), {"A": 50, "B": 50})
        )
        slots = {release: k for k, release in router.slot_releases()[route.name].items()}
        await router.set_log_shares(route.name, {0: 10, 1: 10, 2: 10})
        await router.apply(
            route.name, RouteTable((a1.member("A"), c1.member("C")), {"A": 50, "C": 50})
        )
        now = {release: k for k, release in router.slot_releases()[route.name].items()}
        shares = router.log_shares(route.name)
        assert shares[now["A"]] == 10 and now["A"] == slots["A"]  # A kept its slot and share
        assert shares[now["C"]] == 1000
        live = await router.runtime.query(f"show map {router.log_shares_dir / 'web.map'}")
        assert f"{slot_name(now['C'])} 1000" in live and f"{slot_name(now['A'])} 10" in live
    finally:
        await router.stop()


async def test_a_new_router_takes_over_the_log_shares(
    state_dir: Path, backends: StartBackends
) -> None:
    """A restarted controller's router reads the log shares last set and gives the adopted
    HAProxy's maps those, whatever they hold."""
    target = str(state_dir / "nowhere.sock")
    first = HAProxyRouter(state_dir, log_target=target)
    route = service(slots=2)
    try:
        (a1,) = backends("a1")
        await first.ensure([route])
        await first.apply(route.name, RouteTable((a1.member("A"),), {"A": 100}))
        await first.set_log_shares(route.name, {0: 10})
        path = first.log_shares_dir / "web.map"
        await first.runtime.run([f"set map {path} s0 500"])  # the live map strays
        again = HAProxyRouter(state_dir, log_target=target)
        assert again.log_shares(route.name) == {}  # no services known before ensure
        await again.ensure([route])
        assert again.pid == first.pid  # adopted, not restarted
        assert again.log_shares(route.name) == {0: 10, 1: 1000}
        live = await again.runtime.query(f"show map {path}")
        assert "s0 10" in live and "s1 1000" in live
    finally:
        await first.stop()
