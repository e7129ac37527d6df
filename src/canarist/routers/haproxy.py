"""HAProxy as the local data plane: its config, its process, and weights set at run time.

Every service gets a frontend and a backend of `ServiceRoute.slots` pre-declared server
slots (`s0`..`sN-1`); members are placed into slots and moved between ready, drain and
maint through the Runtime API, so a weight or member change never reloads HAProxy. The
config file is still rewritten on every change, with slot addresses, weights and states
baked in, so a HAProxy that died comes back with the last desired routing at once. Only a
change of shape (the `ServiceRoute` list) reloads, seamlessly: the new process takes the
listening sockets over the stats socket (`-x`) and lets the old one finish (`-sf`).

A second backend per service, `be_<svc>_canary`, with the same slot layout, holds only
the canary release's members: the canary header routes there while it has a server up.

The state dir holds haproxy.cfg, haproxy.pid, haproxy.log, admin.sock (the Runtime API),
haproxy.shape (the shape the running process was started with) and routes.json (the last
applied table of each service and the slot of each member).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any, Literal

from canarist.errors import ConfigError, RouterError
from canarist.routers.base import Member, ReleaseCounters, RouteTable, ServiceRoute
from canarist.routers.haproxy_runtime import (
    AdminState,
    RuntimeAPI,
    ServerState,
    set_addr,
    set_state,
    set_weight,
)

log = logging.getLogger(__name__)

MAX_WEIGHT = 256
# Where an unassigned slot points: nothing listens on port 1, and the slot is disabled.
PARKED_ADDR = "127.0.0.1"
PARKED_PORT = 1
SHAPE_MARK = "# canarist shape "
_SUN_PATH_MAX = 107
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# '#' would start a comment in HAProxy's config, quotes and backslashes would be parsed.
_HEALTH_PATH = re.compile(r"""^/[^\s#"'\\]*$""")
# `show stat` statuses of a server that takes new, non-sticky requests.
_USABLE = re.compile(r"^(UP|no check)")


@dataclass(frozen=True)
class SlotState:
    """What one server slot of a backend points at and how it takes traffic."""

    addr: str
    port: int
    weight: int
    state: AdminState


@dataclass(frozen=True)
class Layout:
    """The desired slots of a service's two backends; a slot not listed is free (maint)."""

    main: Mapping[int, SlotState] = field(default_factory=dict)
    canary: Mapping[int, SlotState] = field(default_factory=dict)


def backend_name(service: str) -> str:
    """The backend that carries a service's weighted traffic."""
    return f"be_{service}"


def canary_backend_name(service: str) -> str:
    """The backend the canary header routes to."""
    return f"be_{service}_canary"


def pinned_backend_name(service: str) -> str:
    """The backend a sticky service's requests that carry its cookie go to: the same
    servers as the main backend, counted apart, since the client, not the split, chose."""
    return f"be_{service}_pinned"


def slot_name(slot: int) -> str:
    """The server name (and sticky cookie value) of a slot."""
    return f"s{slot}"


def server_weights(members: Sequence[Member], percents: Mapping[str, int]) -> dict[str, int]:
    """Integer HAProxy weights per instance whose per-release shares best match `percents`.

    Only active members of a release with a percent above 0 get traffic; each of them gets
    the same weight, at least 1. Shares are relative: releases with no active member are
    left out and the rest split all of the traffic in the ratio of their percents.
    """
    weights = {m.instance_id: 0 for m in members}
    counts: dict[str, int] = {}
    for m in members:
        if m.state == "active" and percents.get(m.release, 0) > 0:
            counts[m.release] = counts.get(m.release, 0) + 1
    if not counts:
        return weights
    wanted = sum(percents[r] for r in counts)
    per_server = {r: Fraction(percents[r], n) for r, n in counts.items()}
    top = max(per_server.values())
    best: tuple[Fraction, dict[str, int]] | None = None
    # Try every weight for the busiest server and scale the others to it; keep the
    # smallest weights among the best fits, so later changes stay fine-grained.
    for k in range(1, MAX_WEIGHT + 1):
        each = {
            r: min(MAX_WEIGHT, max(1, floor(k * share / top + Fraction(1, 2))))
            for r, share in per_server.items()
        }
        total = sum(each[r] * n for r, n in counts.items())
        error = max(
            abs(Fraction(each[r] * n, total) - Fraction(percents[r], wanted))
            for r, n in counts.items()
        )
        if best is None or error < best[0]:
            best = (error, each)
        if error == 0:
            break
    assert best is not None
    for m in members:
        if m.release in counts and m.state == "active":
            weights[m.instance_id] = best[1][m.release]
    return weights


def shape_hash(services: Sequence[ServiceRoute], *, log_target: str | None = None) -> str:
    """A digest of what a reload is needed for: the services' shape and the logging."""
    shape = {
        "services": [asdict(s) for s in sorted(services, key=lambda s: s.name)],
        "log_target": log_target,
        "log_shares": LOG_SHARES,  # a HAProxy from before the log shares is reloaded once
        "pinned": pinned_backend_name(""),  # and one from before the pinned backends
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def validate_services(services: Sequence[ServiceRoute]) -> None:
    """Raise ConfigError for a service HAProxy's config could not carry safely."""
    names: set[str] = set()
    listeners: set[tuple[str, int]] = set()
    extra = {
        f(s.name): s.name for s in services for f in (canary_backend_name, pinned_backend_name)
    }
    for s in services:
        if not _SERVICE_NAME.match(s.name):
            raise ConfigError(f"service name {s.name!r}: use letters, digits, '-' and '_'")
        if s.name in names:
            raise ConfigError(f"service {s.name!r} is declared twice")
        names.add(s.name)
        if backend_name(s.name) in extra:
            raise ConfigError(
                f"service {s.name!r}: its HAProxy backend would be one of"
                f" {extra[backend_name(s.name)]!r}'s; rename one of them"
            )
        if (s.listen_host, s.listen_port) in listeners:
            raise ConfigError(f"two services listen on {s.listen_host}:{s.listen_port}")
        listeners.add((s.listen_host, s.listen_port))
        if not s.listen_host or any(c.isspace() or c == "#" for c in s.listen_host):
            raise ConfigError(f"service {s.name!r}: bad listen host {s.listen_host!r}")
        if not 0 < s.listen_port < 65536:
            raise ConfigError(f"service {s.name!r}: bad listen port {s.listen_port}")
        if not 1 <= s.slots <= 1000:
            raise ConfigError(f"service {s.name!r}: slots must be within 1..1000, not {s.slots}")
        if not _HEALTH_PATH.match(s.health_path):
            raise ConfigError(f"service {s.name!r}: bad health path {s.health_path!r}")
        if s.canary_header is not None and not _HEADER_NAME.match(s.canary_header):
            raise ConfigError(f"service {s.name!r}: bad canary header {s.canary_header!r}")


def validate_table(route: ServiceRoute, table: RouteTable) -> None:
    """Raise RouterError for a table HAProxy cannot carry."""
    if len(table.members) > route.slots:
        raise RouterError(
            f"service {route.name!r}: {len(table.members)} members but only {route.slots} slots"
        )
    ids: set[str] = set()
    addrs: set[tuple[str, int]] = set()
    for m in table.members:
        if m.instance_id in ids:
            raise RouterError(f"instance {m.instance_id!r} is listed twice")
        ids.add(m.instance_id)
        addr = (_ip(m.host), m.port)
        if addr in addrs:
            raise RouterError(f"two members at {m.host}:{m.port}")
        addrs.add(addr)
        if not 0 < m.port < 65536:
            raise RouterError(f"instance {m.instance_id!r}: bad port {m.port}")
    for release, percent in table.weights.items():
        if not 0 <= percent <= 100:
            raise RouterError(f"release {release!r}: percent {percent} is outside 0..100")


def _ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError as exc:
        raise RouterError(f"HAProxy needs an IP address for a member, not {host!r}") from exc


def assign_slots(
    members: Sequence[Member], live: Mapping[int, ServerState], slots: int
) -> dict[str, int]:
    """Place members into slots: each keeps the slot that already points at it, others
    take free slots, those in maintenance first."""
    holders: dict[tuple[str, int], list[int]] = {}
    # A live slot wins over one in maintenance holding the same address.
    for k in sorted(live, key=lambda k: (live[k].in_maint, k)):
        if k < slots:
            holders.setdefault((_ip(live[k].addr), live[k].port), []).append(k)
    assignment: dict[str, int] = {}
    taken: set[int] = set()
    for m in members:
        for k in holders.get((_ip(m.host), m.port), []):
            if k not in taken:
                assignment[m.instance_id] = k
                taken.add(k)
                break
    # Parked slots first; a slot still routing to a departed member only when none is left.
    free = sorted(
        (k for k in range(slots) if k not in taken),
        key=lambda k: (k in live and not live[k].in_maint, k),
    )
    for m in members:
        if m.instance_id not in assignment:
            if not free:
                raise RouterError(f"no free slot for instance {m.instance_id!r}")
            assignment[m.instance_id] = free.pop(0)
    return assignment


def desired_layout(route: ServiceRoute, table: RouteTable, assignment: Mapping[str, int]) -> Layout:
    """The slot states both backends of a service should have for `table`."""
    weights = server_weights(table.members, table.weights)
    main: dict[int, SlotState] = {}
    canary: dict[int, SlotState] = {}
    for m in table.members:
        k = assignment[m.instance_id]
        host = _ip(m.host)
        if m.state == "draining":
            main[k] = SlotState(host, m.port, 0, "drain")
        else:
            main[k] = SlotState(host, m.port, weights[m.instance_id], "ready")
        if route.canary_header is None:
            continue
        if m.release != table.canary:
            canary[k] = SlotState(host, m.port, 0, "maint")
        elif m.state == "draining":
            canary[k] = SlotState(host, m.port, 0, "drain")
        else:
            # The header forces the canary whatever its share, even at 0 percent.
            canary[k] = SlotState(host, m.port, 1, "ready")
    return Layout(main, canary)


@dataclass
class _Plan:
    raise_: list[str] = field(default_factory=list)
    lower: list[str] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)
    maint: list[str] = field(default_factory=list)


def _plan_backend(
    backend: str, live: Mapping[int, ServerState], desired: Mapping[int, SlotState], plan: _Plan
) -> None:
    for k, now in sorted(live.items()):
        server = slot_name(k)
        want = desired.get(k)
        if want is None or want.state == "maint":
            if now.admin != "maint":
                plan.maint.append(set_state(backend, server, "maint"))
            if want is not None and (_ip(now.addr), now.port) != (want.addr, want.port):
                plan.maint.append(set_addr(backend, server, want.addr, want.port))
            continue
        moved = (_ip(now.addr), now.port) != (want.addr, want.port)
        if now.in_maint or moved:
            # A slot taking a new member: address and weight first, then let traffic in.
            if moved:
                plan.raise_.append(set_addr(backend, server, want.addr, want.port))
            if now.weight != want.weight:
                plan.raise_.append(set_weight(backend, server, want.weight))
            if now.admin != want.state:
                plan.raise_.append(set_state(backend, server, want.state))
            continue
        if want.weight > now.weight:
            plan.raise_.append(set_weight(backend, server, want.weight))
        elif want.weight < now.weight:
            plan.lower.append(set_weight(backend, server, want.weight))
        if now.admin != want.state:
            (plan.raise_ if want.state == "ready" else plan.drain).append(
                set_state(backend, server, want.state)
            )
    missing = sorted(set(desired) - set(live))
    if missing:
        raise RouterError(
            f"{backend} has no slot {slot_name(missing[0])}: HAProxy runs an older shape"
        )


def plan_commands(
    service: str,
    layout: Layout,
    live_main: Mapping[int, ServerState],
    live_canary: Mapping[int, ServerState],
    live_pinned: Mapping[int, ServerState] | None = None,
) -> list[str]:
    """The Runtime API commands that take the live backends to `layout`, only what differs,
    ordered so that traffic always has somewhere to go: everything that adds capacity
    (new servers, higher weights) before anything that takes it away (lower weights,
    drain, maintenance). A sticky service's pinned backend (`live_pinned`) follows the
    main one's layout."""
    plan = _Plan()
    _plan_backend(backend_name(service), live_main, layout.main, plan)
    _plan_backend(canary_backend_name(service), live_canary, layout.canary, plan)
    if live_pinned is not None:
        _plan_backend(pinned_backend_name(service), live_pinned, layout.main, plan)
    return plan.raise_ + plan.lower + plan.drain + plan.maint


def render_config(
    services: Sequence[ServiceRoute],
    layouts: Mapping[str, Layout],
    *,
    socket: str,
    pidfile: str,
    maxconn: int = 4096,
    log_target: str | None = None,
    log_shares: str | None = None,
) -> str:
    """The whole haproxy.cfg for these services, with each slot's current state baked in.

    With `log_target`, every request is logged there. With `log_shares` (a directory)
    too, only a random share of the requests each slot of a service's backend answers:
    the slot's entry in `<log_shares>/<service>.map`, per mille (all while it has none),
    which the Runtime API changes with no reload."""
    lines = [
        f"{SHAPE_MARK}{shape_hash(services, log_target=log_target)}",
        "# Written by canarist on every routing change; edits here are overwritten.",
        "global",
        f"    stats socket {socket} mode 600 level admin expose-fd listeners",
        f"    pidfile {pidfile}",
        f"    maxconn {maxconn}",
        # After a reload, the old process gets this long to finish what it holds.
        "    hard-stop-after 30s",
    ]
    if log_target:
        lines.append(f"    log {log_target} local0")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 30s",
        "    timeout queue 5s",
        "    timeout check 2s",
        "    option http-keep-alive",
        "    retries 3",
        "    option redispatch 1",
        # Retry only when no server produced an answer; a 5xx is an outcome to judge.
        "    retry-on conn-failure empty-response junk-response",
    ]
    if log_target:
        lines += ["    log global", "    option httplog"]
    for s in sorted(services, key=lambda s: s.name):
        layout = layouts.get(s.name, Layout())
        lines += ["", f"frontend fe_{s.name}", f"    bind {s.listen_host}:{s.listen_port}"]
        if s.canary_header:
            canary = canary_backend_name(s.name)
            lines.append(
                f"    use_backend {canary} if {{ req.hdr({s.canary_header}) -m found }}"
                f" {{ nbsrv({canary}) gt 0 }}"
            )
        if s.sticky:
            lines.append(
                f"    use_backend {pinned_backend_name(s.name)}"
                f" if {{ req.cook({_cookie(s.name)}) -m found }}"
            )
        lines.append(f"    default_backend {backend_name(s.name)}")
        rules = []
        if log_target and log_shares:
            rules = [
                f"    http-response set-var(txn.log_share)"
                f" srv_name,map_str_int({log_shares}/{s.name}.map,1000)",
                "    http-response set-log-level silent"
                " if { rand(1000),sub(txn.log_share) -m int ge 0 }",
            ]
        lines += _render_backend(s, backend_name(s.name), layout.main, rules)
        if s.canary_header:
            lines += _render_backend(s, canary_backend_name(s.name), layout.canary)
        if s.sticky:
            # No latency of a pinned request is a sample of its release's (see above):
            # not worth a log line.
            silent = ["    http-response set-log-level silent"] if log_target else []
            lines += _render_backend(s, pinned_backend_name(s.name), layout.main, silent)
    return "\n".join(lines) + "\n"


def _cookie(service: str) -> str:
    """The name of a sticky service's cookie."""
    return f"canarist_{service}"


def _render_backend(
    route: ServiceRoute, name: str, slots: Mapping[int, SlotState], rules: Sequence[str] = ()
) -> list[str]:
    lines = ["", f"backend {name}", "    balance roundrobin", *rules]
    if route.sticky:
        lines.append(f"    cookie {_cookie(route.name)} insert indirect nocache")
    lines += [
        f"    option httpchk GET {route.health_path}",
        # A dead instance stops getting traffic on its own within about two seconds.
        "    default-server inter 1s fall 2 rise 1",
    ]
    for k in range(route.slots):
        slot = slots.get(k)
        if slot is None:
            slot = SlotState(PARKED_ADDR, PARKED_PORT, 0, "maint")
        # The config has no drain keyword; weight 0 takes no new non-sticky traffic alike.
        weight = slot.weight if slot.state == "ready" else 0
        server = f"    server {slot_name(k)} {slot.addr}:{slot.port} weight {weight}"
        if route.sticky:
            server += f" cookie {slot_name(k)}"
        server += " check"
        if slot.state == "maint":
            server += " disabled"
        lines.append(server)
    return lines


@dataclass(frozen=True)
class _Count:
    requests: int = 0
    errors_5xx: int = 0
    connection_errors: int = 0
    responses: int = 0
    retries: int = 0
    # Of the above, what went through the canary-header backend: chosen by clients.
    requested: int = 0
    requested_5xx: int = 0
    requested_connection_errors: int = 0
    # Of the above, what went through the pinned backend: the sticky cookie chose.
    pinned: int = 0
    pinned_5xx: int = 0
    pinned_connection_errors: int = 0

    def __add__(self, other: _Count) -> _Count:
        return _Count(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))

    def __sub__(self, other: _Count) -> _Count:
        return _Count(*(a - b for a, b in zip(_fields(self), _fields(other), strict=True)))

    def below(self, other: _Count) -> bool:
        return any(a < b for a, b in zip(_fields(self), _fields(other), strict=True))


def _fields(count: _Count) -> tuple[int, ...]:
    return (
        count.requests,
        count.errors_5xx,
        count.connection_errors,
        count.responses,
        count.retries,
        count.requested,
        count.requested_5xx,
        count.requested_connection_errors,
        count.pinned,
        count.pinned_5xx,
        count.pinned_connection_errors,
    )


def _num(row: Mapping[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.isdigit() else 0


def _count_of(row: Mapping[str, str], part: str | None = None) -> _Count:
    """A server's counters: attempts routed to it, and how many failed at connection level;
    credited to `part` too: "requested" for a server of the canary-header backend, whose
    requests clients chose, "pinned" for one of the pinned backend, whose requests the
    sticky cookie routed.

    A failed attempt that HAProxy retried or redispatched (wretr, wredis) cost the client
    nothing, but still counts against the server's release: otherwise a canary refusing
    connections would look clean while its traffic silently went to the stable release.
    """
    responses = sum(_num(row, f"hrsp_{k}") for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
    retried = _num(row, "wretr") + _num(row, "wredis")
    count = _Count(
        requests=_num(row, "stot"),
        errors_5xx=_num(row, "hrsp_5xx"),
        connection_errors=_num(row, "econ") + _num(row, "eresp") + retried,
        responses=responses,
        retries=retried,
    )
    if part is None:
        return count
    return replace(
        count,
        **{
            part: count.requests,
            f"{part}_5xx": count.errors_5xx,
            f"{part}_connection_errors": count.connection_errors,
        },
    )


@dataclass
class _Occupant:
    """Who holds a slot, for attributing its counters to a release."""

    instance_id: str
    release: str
    baseline: _Count  # the slot's counters (both backends) when this member got it
    last_seen: _Count  # the slot's counters at the last read


@dataclass
class _Routing:
    table: RouteTable
    assignment: dict[str, int]


# Beside the config: per service, the share of the requests each slot answers that are
# logged, per mille, in a map HAProxy reads and the Runtime API changes.
LOG_SHARES = "log-shares"
# How long a service's routing, once HAProxy was found to match it, is taken as applied
# when asked again for the same: the controller asks at every tick, and reading HAProxy's
# live state for every service ten times a second cost more than all else it does.
VERIFY_EVERY = 1.0


class HAProxyRouter:
    """Routes services through one HAProxy child process, changed at run time, never reloaded
    for a weight or member change."""

    def __init__(
        self,
        state_dir: Path,
        haproxy_bin: str = "haproxy",
        *,
        log_target: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        # Resolved, so every controller names the config alike in HAProxy's command line,
        # which is how a running HAProxy is recognised as ours.
        self.state_dir = state_dir.resolve()
        self.config_path = self.state_dir / "haproxy.cfg"
        self.pid_path = self.state_dir / "haproxy.pid"
        self.log_path = self.state_dir / "haproxy.log"
        self.socket_path = self.state_dir / "admin.sock"
        self._shape_path = self.state_dir / "haproxy.shape"
        self.log_shares_dir = self.state_dir / LOG_SHARES
        # service -> slot -> per mille of the requests it answers that are logged
        self._log_shares: dict[str, dict[int, int]] = self._load_log_shares()
        self._routes_path = self.state_dir / "routes.json"
        # The books of `counters`, for the HAProxy process they were kept for: a restarted
        # controller that adopts the same process counts on from them.
        self._counts_path = self.state_dir / "counts.json"
        self._haproxy_bin = haproxy_bin
        self._log_target = log_target
        self._start_timeout = start_timeout
        self.runtime = RuntimeAPI(self.socket_path)
        self._lock = asyncio.Lock()
        self._services: dict[str, ServiceRoute] = {}
        self._routing: dict[str, _Routing] = self._load_routes()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._retired: list[subprocess.Popen[bytes]] = []
        self._occupants: dict[str, dict[int, _Occupant]] = {}
        self._carry: dict[str, dict[str, _Count]] = {}
        # service -> (table, HAProxy PID, time.monotonic()) of the last apply that left
        # HAProxy as the table asks
        self._verified: dict[str, tuple[RouteTable, int | None, float]] = {}
        # The services last ensured, on which HAProxy, and when.
        self._ensured: tuple[tuple[ServiceRoute, ...], int | None, float] = ((), None, 0.0)
        # Whether `counters` goes on from the figures of the controller before this one
        # (it adopted the HAProxy process whose books that controller left).
        self.counts_continued = False

    @property
    def pid(self) -> int | None:
        """The PID of the HAProxy this router runs or adopted."""
        return self._pid

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Run HAProxy for these services: adopt a running one, start one that is not
        running, reload only when the shape changed."""
        async with self._lock:
            ensured = (tuple(services), self._pid)
            now = time.monotonic()
            if (
                ensured == self._ensured[:2]
                and now - self._ensured[2] < VERIFY_EVERY
                and self._pid is not None
                and self._is_ours(self._pid)
            ):
                return  # the same services, on a HAProxy that runs and answered moments ago
            await self._ensure(services)
            self._ensured = (tuple(services), self._pid, now)

    async def _ensure(self, services: Sequence[ServiceRoute]) -> None:
        """`ensure`, in full, under the lock."""
        validate_services(services)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._services = {s.name: s for s in services}
        for name in list(self._routing):
            if name not in self._services:
                del self._routing[name]
                self._verified.pop(name, None)
        self._reap()
        text = self._render()
        shape = shape_hash(services, log_target=self._log_target)
        running = await self._find_running()
        if running is None:
            await self._write_validated(text)
            self._fold_counts()
            await self._start(previous=None)
            self._shape_path.write_text(shape + "\n")
            self._save_counts()
            return
        adopted = running != self._pid
        if adopted:
            self._pid = running
            await self._adopt_counts()
        if self._running_shape() != shape:
            previous = self.config_path.read_text() if self.config_path.exists() else None
            _check_new_listeners(previous or "", text)
            await self._write_validated(text)
            await self._snapshot_counts()
            try:
                await self._start(previous=running)
            except RouterError:
                if previous is not None:
                    write_atomic(self.config_path, previous)
                raise
            self._fold_counts()
            self._shape_path.write_text(shape + "\n")
            self._save_counts()  # a new process: its books
        else:
            if not self.config_path.exists() or self.config_path.read_text() != text:
                await self._write_validated(text)
            if adopted:
                await self._push_log_shares()
                self._save_counts()

    def check_installed(self) -> str:
        """The path of the HAProxy binary; RouterError, saying how to install it, if none."""
        binary = shutil.which(self._haproxy_bin)
        if binary is None:
            raise RouterError(
                f"HAProxy is not installed: no {self._haproxy_bin!r} on PATH"
                " (on Debian: apt-get install haproxy)"
            )
        return binary

    def check_listeners(self, listens: Mapping[str, tuple[str, int]]) -> None:
        """Raise RouterError naming a service (name -> (host, port) it listens on) that
        could not listen: each address must be free, or held already by this router's
        HAProxy, running. Asked before a spec is taken, so that an address another
        process holds is refused at once rather than failing every tick."""
        held: set[str] = set()
        pid = self._pid if self._pid is not None else _read_pid(self.pid_path)
        if pid is not None and self._is_ours(pid) and self.config_path.exists():
            held = set(_BIND.findall(self.config_path.read_text()))
        for name, (host, port) in sorted(listens.items()):
            address = f"{host}:{port}"
            if address not in held:
                try:
                    _check_free(address)
                except RouterError as exc:
                    raise RouterError(f"service {name!r}: {exc}") from exc

    async def apply(self, service: str, table: RouteTable) -> None:
        """Converge one service's slots to `table` through the Runtime API, no reload."""
        async with self._lock:
            route = self._services.get(service)
            if route is None:
                raise RouterError(f"service {service!r} is not routed; call ensure first")
            validate_table(route, table)
            now = time.monotonic()
            verified = self._verified.get(service)
            if verified and verified[:2] == (table, self._pid) and now - verified[2] < VERIFY_EVERY:
                return  # applied as asked, and HAProxy found so, moments ago
            live_main, live_canary, live_pinned = await self._live_slots(route)
            assignment = assign_slots(table.members, live_main, route.slots)
            layout = desired_layout(route, table, assignment)
            commands = plan_commands(service, layout, live_main, live_canary, live_pinned)
            routing = _Routing(table, assignment)
            if self._routing.get(service) != routing:
                # Persist the desired state first: a HAProxy that dies from here on
                # restarts in it.
                self._routing[service] = routing
                self._save_routes()
                write_atomic(self.config_path, self._render())
            moved = await self._reassign_counts(service, table, assignment)
            # A new release's first requests are logged in full, before any weight is set.
            commands = self._reset_log_shares(service, moved) + commands
            if commands:
                log.info("haproxy %s: %s", service, "; ".join(commands))
                await self.runtime.run(commands)
            self._verified[service] = (table, self._pid, now)

    async def set_log_shares(self, service: str, shares: Mapping[int, int]) -> None:
        """Log only the given per mille (1 to 1000) of the requests each of these slots of
        the service answers, drawn at random, from now on and after a restart. Nothing to
        do without a log target or the service."""
        async with self._lock:
            route = self._services.get(service)
            if self._log_target is None or route is None:
                return
            wanted = {k: max(1, min(1000, v)) for k, v in shares.items() if 0 <= k < route.slots}
            await self.runtime.run(self._take_log_shares(service, wanted))

    def log_shares(self, service: str) -> dict[int, int]:
        """Per slot of the service, the per mille of the requests it answers that are
        logged (1000 until told otherwise)."""
        route = self._services.get(service)
        slots = route.slots if route is not None else 0
        told = self._log_shares.get(service, {})
        return {k: told.get(k, 1000) for k in range(slots)}

    async def read_weights(self, service: str) -> dict[str, float]:
        """Each release's share of new requests (percent), from the servers HAProxy has up."""
        routing = self._routing.get(service)
        if routing is None:
            return {}
        releases = {m.instance_id: m.release for m in routing.table.members}
        by_slot = {k: releases[i] for i, k in routing.assignment.items()}
        totals = dict.fromkeys([*routing.table.weights, *releases.values()], 0)
        backend = backend_name(service)
        for row in await self.runtime.stat():
            k = _slot_of(row, backend)
            if k in by_slot and _USABLE.match(row.get("status", "")):
                totals[by_slot[k]] += _num(row, "weight")
        total = sum(totals.values())
        return {r: (100.0 * w / total if total else 0.0) for r, w in totals.items()}

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """Requests in flight or queued on that member, over all of its backends."""
        routing = self._routing.get(service)
        if routing is None or instance_id not in routing.assignment:
            return 0
        k = routing.assignment[instance_id]
        backends = _slot_backends(service)
        return sum(
            _num(row, "scur") + _num(row, "qcur")
            for row in await self.runtime.stat()
            if row.get("pxname") in backends and row.get("svname") == slot_name(k)
        )

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Request outcomes per release since this router started routing to it, or the
        controller before it, if this one adopted the same HAProxy process
        (`counts_continued`).

        `requests` counts attempts routed to the release's servers (both backends);
        `connection_errors` includes attempts HAProxy retried or redispatched elsewhere
        (also in `extra["retries"]`); `extra["responses"]` counts HTTP responses;
        `extra["requested"]`, `extra["requested_5xx"]` and
        `extra["requested_connection_errors"]` are the part of those figures that went
        through the canary-header backend: requests clients chose to send to the release;
        `extra["pinned"]`, `extra["pinned_5xx"]` and `extra["pinned_connection_errors"]`
        the part that went through a sticky service's pinned backend: requests its cookie
        kept on the release its client's first request went to.
        """
        if service not in self._routing:
            return {}
        rows = await self.runtime.stat(self._occupied([service]))
        return self._counters(service, _slot_counts(rows, service))

    def _counters(self, service: str, live: Mapping[int, _Count]) -> dict[str, ReleaseCounters]:
        """`counters`, from the slots' counters as just read."""
        routing = self._routing[service]
        totals: dict[str, _Count] = {r: _Count() for r in routing.table.weights}
        for release, count in self._carry.get(service, {}).items():
            totals[release] = totals.get(release, _Count()) + count
        for k, occupant in self._occupants.get(service, {}).items():
            now = live.get(k, _Count())
            if now.below(occupant.baseline):
                # The counters restarted under us (a HAProxy we did not see die).
                occupant.baseline = _Count()
            occupant.last_seen = now
            totals[occupant.release] = totals.get(occupant.release, _Count()) + (
                now - occupant.baseline
            )
        return {
            r: ReleaseCounters(
                requests=c.requests,
                errors_5xx=c.errors_5xx,
                connection_errors=c.connection_errors,
                extra={
                    "responses": c.responses,
                    "retries": c.retries,
                    "requested": c.requested,
                    "requested_5xx": c.requested_5xx,
                    "requested_connection_errors": c.requested_connection_errors,
                    "pinned": c.pinned,
                    "pinned_5xx": c.pinned_5xx,
                    "pinned_connection_errors": c.pinned_connection_errors,
                },
            )
            for r, c in totals.items()
        }

    async def routed_counters(self) -> dict[str, dict[str, ReleaseCounters]]:
        """`counters` of every routed service, read between routing changes, never during
        one: a read in the middle of a slot changing hands, or of a reload, could credit
        one release with another's requests."""
        async with self._lock:
            if not self._routing:
                return {}
            by_backend: dict[str, list[dict[str, str]]] = {}
            # Once for all: its answer grows with them.
            for row in await self.runtime.stat(self._occupied(self._routing)):
                by_backend.setdefault(row.get("pxname", ""), []).append(row)
            return {
                name: self._counters(
                    name,
                    _slot_counts(
                        [row for b in _slot_backends(name) for row in by_backend.get(b, ())], name
                    ),
                )
                for name in self._routing
            }

    def _occupied(self, services: Iterable[str]) -> set[tuple[str, str]]:
        """The (backend, server) pairs whose counters make the services' `counters`: the
        slots with a member, in each of their backends."""
        return {
            (backend, slot_name(k))
            for name in services
            for k in self._occupants.get(name, {})
            for backend in _slot_backends(name)
        }

    def slot_releases(self, service: str | None = None) -> dict[str, dict[int, str]]:
        """Per routed service (or that one alone), the release each occupied slot serves (in
        all of its backends), as last applied; a free slot is left out."""
        result: dict[str, dict[int, str]] = {}
        for name, routing in self._routing.items():
            if service is not None and name != service:
                continue
            releases = {m.instance_id: m.release for m in routing.table.members}
            result[name] = {k: releases[i] for i, k in routing.assignment.items()}
        return result

    async def stop(self) -> None:
        """Stop HAProxy (and any process a reload left finishing): SIGTERM, then SIGKILL.

        The last applied tables stay on disk: the next `ensure` routes as before.
        """
        async with self._lock:
            held = [p for p in (*self._retired, self._proc) if p is not None]
            targets: dict[int, subprocess.Popen[bytes] | None] = {
                p.pid: p for p in held if p.poll() is None
            }
            for pid in (self._pid, _read_pid(self.pid_path)):
                # Only a process still running our config: a PID may have been recycled.
                if pid is not None and pid not in targets and self._is_ours(pid):
                    targets[pid] = None
            for pid, proc in targets.items():
                await _terminate(pid, proc)
            self._proc = None
            self._pid = None
            self._retired.clear()
            for path in (self.pid_path, self._shape_path):
                path.unlink(missing_ok=True)

    # -- process -------------------------------------------------------------------------

    async def _find_running(self) -> int | None:
        """The PID of our HAProxy if one runs and answers; stop one that runs but is deaf."""
        try:
            answered: int | None = int((await self.runtime.info())["Pid"])
        except (RouterError, ValueError):
            answered = None
        if answered is not None and self._is_ours(answered):
            return answered
        recorded = self._pid if self._pid is not None else _read_pid(self.pid_path)
        if recorded is not None and self._is_ours(recorded):
            # It would share the listening port with a new one (SO_REUSEPORT): stop it.
            log.warning("HAProxy %d runs but does not answer on its socket; stopping it", recorded)
            await _terminate(recorded, self._proc if self._proc_is(recorded) else None)
        return None

    def _is_ours(self, pid: int) -> bool:
        if self._proc_is(pid):
            return self._proc is not None and self._proc.poll() is None
        if not _process_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(self.config_path) in cmdline

    def _proc_is(self, pid: int) -> bool:
        return self._proc is not None and self._proc.pid == pid

    async def _start(self, previous: int | None) -> None:
        """Start HAProxy from the config; with `previous`, take its sockets and retire it."""
        args = [self.check_installed(), "-db", "-f", str(self.config_path)]
        if previous is not None:
            args += ["-x", self._socket_arg(), "-sf", str(previous)]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        proc = _spawn(args, self.state_dir, self.log_path)
        self.pid_path.write_text(f"{proc.pid}\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._restore_pid_file(previous)
                raise RouterError(
                    f"HAProxy exited at start (status {code}): {self._log_since(offset)}"
                )
            try:
                if int((await self.runtime.info())["Pid"]) == proc.pid:
                    break
            except (RouterError, ValueError):
                pass
            if loop.time() > deadline:
                await _terminate(proc.pid, proc)
                self._restore_pid_file(previous)
                raise RouterError(
                    f"HAProxy did not answer within {self._start_timeout}s: "
                    f"{self._log_since(offset)}"
                )
            await asyncio.sleep(0.02)
        if self._proc is not None and self._proc is not proc:
            self._retired.append(self._proc)
        self._proc = proc
        self._pid = proc.pid
        log.info("HAProxy %d running (%s)", proc.pid, "reloaded" if previous else "started")

    def _restore_pid_file(self, previous: int | None) -> None:
        # A failed reload leaves the previous process serving: keep pointing at it.
        if previous is None:
            self.pid_path.unlink(missing_ok=True)
        else:
            self.pid_path.write_text(f"{previous}\n")

    def _reap(self) -> None:
        self._retired = [p for p in self._retired if p.poll() is None]

    def _socket_arg(self, *, for_config: bool = False) -> str:
        # sun_path is short; past it, HAProxy (run from the state dir) takes a relative path,
        # which its config only reads as a unix socket with the unix@ prefix.
        if len(os.fsencode(self.socket_path)) <= _SUN_PATH_MAX:
            return str(self.socket_path)
        return f"unix@{self.socket_path.name}" if for_config else self.socket_path.name

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        alerts = [line.strip() for line in text.splitlines() if "[ALERT]" in line]
        return " | ".join(alerts[-5:]) or text.strip()[-500:] or "(no output)"

    async def _write_validated(self, text: str) -> None:
        """Write the config only if `haproxy -c` accepts it; else raise its alerts."""
        binary = self.check_installed()
        # The log share maps it names, as HAProxy will read them when it next starts.
        for name in self._services:
            self._write_log_shares(name)
        candidate = self.config_path.with_name(self.config_path.name + ".new")
        candidate.write_text(text)
        try:
            check = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                "-f",
                str(candidate),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
            )
            output, _ = await check.communicate()
        except OSError as exc:
            candidate.unlink(missing_ok=True)
            raise RouterError(f"cannot run {binary} -c: {exc}") from exc
        if check.returncode != 0:
            candidate.unlink(missing_ok=True)
            alerts = [
                line.strip()
                for line in output.decode(errors="replace").splitlines()
                if "[ALERT]" in line
            ]
            raise RouterError("HAProxy rejected the config: " + " | ".join(alerts[:5]))
        os.replace(candidate, self.config_path)

    def _running_shape(self) -> str | None:
        try:
            return self._shape_path.read_text().strip()
        except OSError:
            return None

    def _render(self) -> str:
        layouts = {
            name: desired_layout(self._services[name], r.table, r.assignment)
            for name, r in self._routing.items()
            if name in self._services
        }
        return render_config(
            list(self._services.values()),
            layouts,
            socket=self._socket_arg(for_config=True),
            pidfile=str(self.pid_path),
            log_target=self._log_target,
            log_shares=str(self.log_shares_dir),
        )

    def _take_log_shares(self, service: str, shares: Mapping[int, int]) -> list[str]:
        """Hold these slots' log shares, on disk too; the commands that give them to HAProxy."""
        self._log_shares.setdefault(service, {}).update(shares)
        self._write_log_shares(service)
        return self._log_share_commands(service, shares)

    def _log_share_commands(self, service: str, shares: Mapping[int, int]) -> list[str]:
        path = self._log_share_map(service)
        return [f"set map {path} {slot_name(k)} {v}" for k, v in sorted(shares.items())]

    def _log_share_map(self, service: str) -> Path:
        return self.log_shares_dir / f"{service}.map"

    def _write_log_shares(self, service: str) -> None:
        """The map HAProxy reads the service's log shares from when it starts."""
        shares = self.log_shares(service)
        text = "".join(f"{slot_name(k)} {shares[k]}\n" for k in sorted(shares))
        self.log_shares_dir.mkdir(exist_ok=True)
        write_atomic(self._log_share_map(service), text)

    # -- live state ----------------------------------------------------------------------

    async def _live_slots(
        self, route: ServiceRoute
    ) -> tuple[dict[int, ServerState], dict[int, ServerState], dict[int, ServerState] | None]:
        """The live slots of the service's main, canary-header and pinned backends (None:
        a service that is not sticky has no pinned backend)."""
        main: dict[int, ServerState] = {}
        canary: dict[int, ServerState] = {}
        pinned: dict[int, ServerState] | None = {} if route.sticky else None
        main_name = backend_name(route.name)
        slots_of = {main_name: main}
        if route.canary_header:
            slots_of[canary_backend_name(route.name)] = canary
        if pinned is not None:
            slots_of[pinned_backend_name(route.name)] = pinned
        for state in await self.runtime.servers_state(*slots_of):
            k = _slot_index(state.name)
            if k is not None and state.backend in slots_of:
                slots_of[state.backend][k] = state
        if not main:
            raise RouterError(f"HAProxy has no backend {main_name}: call ensure first")
        return main, canary, pinned

    async def _reassign_counts(
        self, service: str, table: RouteTable, assignment: Mapping[str, int]
    ) -> list[int]:
        """Close the books of slots changing hands; open them for their new members.
        Returns the slots that now serve another release."""
        occupants = self._occupants.setdefault(service, {})
        members = {m.instance_id: m for m in table.members}
        wanted = {k: members[i] for i, k in assignment.items()}
        changing = [
            k
            for k in set(occupants) | set(wanted)
            if k not in occupants
            or k not in wanted
            or occupants[k].instance_id != wanted[k].instance_id
        ]
        if not changing:
            return []
        live = _slot_counts(await self.runtime.stat(), service)
        carry = self._carry.setdefault(service, {})
        moved = []
        for k in changing:
            now = live.get(k, _Count())
            old = occupants.pop(k, None)
            if old is not None and not now.below(old.baseline):
                carry[old.release] = carry.get(old.release, _Count()) + (now - old.baseline)
            if k in wanted:
                occupants[k] = _Occupant(wanted[k].instance_id, wanted[k].release, now, now)
                if old is None or old.release != wanted[k].release:
                    moved.append(k)
        self._save_counts()
        return moved

    def _reset_log_shares(self, service: str, slots: Sequence[int]) -> list[str]:
        """Commands that have slots given to another release log all its requests until
        told otherwise: the share they had was for their last release's traffic."""
        told = self._log_shares.get(service, {})
        reset = {k: 1000 for k in slots if told.get(k, 1000) != 1000}
        if self._log_target is None or not reset:
            return []
        return self._take_log_shares(service, reset)

    async def _adopt_counts(self) -> None:
        """Count on from the books a controller before this one left for the same HAProxy
        process; for one whose earlier counters no book covers, count from now on."""
        self._occupants.clear()
        self._carry.clear()
        books = self._load_counts()
        self.counts_continued = books is not None
        carry, kept = books or ({}, {})
        for service, routing in self._routing.items():
            live = _slot_counts(await self.runtime.stat(), service)
            releases = {m.instance_id: m.release for m in routing.table.members}
            occupants: dict[int, _Occupant] = {}
            for i, k in routing.assignment.items():
                now = live.get(k, _Count())
                old = kept.get(service, {}).get(k)
                same = old is not None and (old.instance_id, old.release) == (i, releases[i])
                if old is not None and same and not now.below(old.baseline):
                    occupants[k] = replace(old, last_seen=now)
                    continue
                self.counts_continued = False  # a slot whose book does not hold
                occupants[k] = _Occupant(i, releases[i], now, now)
            self._occupants[service] = occupants
            if service in carry:
                self._carry[service] = carry[service]

    async def _snapshot_counts(self) -> None:
        for service in self._routing:
            with contextlib.suppress(RouterError):
                await self.counters(service)

    def _fold_counts(self) -> None:
        """Bank what each slot counted so far: a new HAProxy process counts from zero."""
        for service, routing in self._routing.items():
            carry = self._carry.setdefault(service, {})
            occupants = self._occupants.setdefault(service, {})
            for occupant in occupants.values():
                delta = occupant.last_seen - occupant.baseline
                if not delta.below(_Count()):
                    carry[occupant.release] = carry.get(occupant.release, _Count()) + delta
                occupant.baseline = occupant.last_seen = _Count()
            releases = {m.instance_id: m.release for m in routing.table.members}
            for i, k in routing.assignment.items():
                if k not in occupants:
                    occupants[k] = _Occupant(i, releases[i], _Count(), _Count())

    # -- persistence ---------------------------------------------------------------------

    def _save_counts(self) -> None:
        data = {
            "pid": self._pid,
            "services": {
                name: {
                    "carry": {r: _fields(c) for r, c in self._carry.get(name, {}).items()},
                    "occupants": [
                        [k, o.instance_id, o.release, _fields(o.baseline)]
                        for k, o in occupants.items()
                    ],
                }
                for name, occupants in self._occupants.items()
            },
        }
        write_atomic(self._counts_path, json.dumps(data) + "\n")

    def _load_counts(
        self,
    ) -> tuple[dict[str, dict[str, _Count]], dict[str, dict[int, _Occupant]]] | None:
        """The books saved for the HAProxy process now adopted: (carry, occupants) per
        service; None when there are none, or they were kept for another process."""
        data = read_json(self._counts_path)
        if data.get("pid") != self._pid:
            return None
        carry: dict[str, dict[str, _Count]] = {}
        occupants: dict[str, dict[int, _Occupant]] = {}
        try:
            for name, books in data["services"].items():
                carry[name] = {r: _Count(*c) for r, c in books["carry"].items()}
                occupants[name] = {
                    int(k): _Occupant(str(i), str(r), _Count(*c), _Count(*c))
                    for k, i, r, c in books["occupants"]
                }
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed %s: %s", self._counts_path, exc)
            return None
        return carry, occupants

    def _save_routes(self) -> None:
        data = {
            name: {
                "weights": dict(r.table.weights),
                "canary": r.table.canary,
                "members": [
                    {**asdict(m), "slot": r.assignment[m.instance_id]} for m in r.table.members
                ],
            }
            for name, r in self._routing.items()
        }
        write_atomic(self._routes_path, json.dumps({"services": data}, indent=1) + "\n")

    def _load_log_shares(self) -> dict[str, dict[int, int]]:
        """The log shares last set, from their map files (another controller's too)."""
        shares: dict[str, dict[int, int]] = {}
        for path in sorted(self.log_shares_dir.glob("*.map")):
            try:
                text = path.read_text()
            except OSError as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)
                continue
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                k = _slot_index(name)
                if k is not None and value.isdigit():
                    shares.setdefault(path.stem, {})[k] = max(1, min(1000, int(value)))
        return shares

    async def _push_log_shares(self) -> None:
        """Give an adopted HAProxy's maps the shares this router holds: the files it read
        when it started may have changed since."""
        commands = [
            command
            for name in sorted(self._services)
            for command in self._log_share_commands(name, self.log_shares(name))
        ]
        if self._log_target is not None and commands:
            await self.runtime.run(commands)

    def _load_routes(self) -> dict[str, _Routing]:
        data = read_json(self._routes_path)
        if not data:
            return {}
        routing: dict[str, _Routing] = {}
        try:
            for name, entry in data["services"].items():
                members = tuple(
                    Member(
                        instance_id=m["instance_id"],
                        release=m["release"],
                        host=m["host"],
                        port=int(m["port"]),
                        state=_member_state(m["state"]),
                    )
                    for m in entry["members"]
                )
                table = RouteTable(members, dict(entry["weights"]), entry["canary"])
                assignment = {m["instance_id"]: int(m["slot"]) for m in entry["members"]}
                routing[name] = _Routing(table, assignment)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed %s: %s", self._routes_path, exc)
            return {}
        return routing


def _member_state(value: object) -> Literal["active", "draining"]:
    if value == "active":
        return "active"
    if value == "draining":
        return "draining"
    raise ValueError(f"unknown member state {value!r}")


def _slot_index(server: str) -> int | None:
    if server.startswith("s") and server[1:].isdigit():
        return int(server[1:])
    return None


def _slot_of(row: Mapping[str, str], backend: str) -> int | None:
    if row.get("pxname") != backend:
        return None
    return _slot_index(row.get("svname", ""))


_BIND = re.compile(r"^    bind (\S+)$", re.MULTILINE)


def _check_new_listeners(running: str, wanted: str) -> None:
    """Raise RouterError if an address the reload adds is taken.

    A reloading HAProxy that cannot bind pauses the running one's listeners while it
    retries, for about two seconds, before giving up: better not to try.
    """
    for address in sorted(set(_BIND.findall(wanted)) - set(_BIND.findall(running))):
        _check_free(address)


def _check_free(address: str) -> None:
    """Raise RouterError if nothing could listen on HOST:PORT now."""
    host, _, port = address.rpartition(":")
    # HAProxy reads "*" or an empty host as every address.
    host = "" if host in ("", "*") else host.strip("[]")
    try:
        with socket.create_server((host, int(port))):
            pass
    except OSError as exc:
        # Its strerror names the address again: the errno's own words are enough.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RouterError(f"cannot listen on {address}: {reason}") from exc


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file at `path`; {} when there is none, or it cannot be read
    (said in the log)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _slot_backends(service: str) -> dict[str, str | None]:
    """The backends a service's slot serves in, each with the part of the counts its
    requests are credited to (see `_count_of`)."""
    return {
        backend_name(service): None,
        canary_backend_name(service): "requested",
        pinned_backend_name(service): "pinned",
    }


def _slot_counts(rows: Sequence[Mapping[str, str]], service: str) -> dict[int, _Count]:
    """Each slot's counters over the service's backends, from `show stat` rows."""
    backends = _slot_backends(service)
    counts: dict[int, _Count] = {}
    for row in rows:
        pxname = row.get("pxname", "")
        if pxname in backends:
            k = _slot_index(row.get("svname", ""))
            if k is not None:
                counts[k] = counts.get(k, _Count()) + _count_of(row, backends[pxname])
    return counts


def write_atomic(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` at once (written beside it, renamed over it):
    a reader, or a crash, never meets half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _process_alive(pid: int) -> bool:
    """True while the PID runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _spawn(args: Sequence[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start HAProxy in its own session, so it outlives a controller that crashes.

    A plain Popen rather than an asyncio subprocess: the latter belongs to one event loop
    and kills its child when that loop's transport is closed.
    """
    with log_path.open("ab") as log_file:
        try:
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise RouterError(f"cannot start HAProxy: {exc}") from exc


async def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, *, grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; a gone process is not an error."""

    def gone() -> bool:
        return proc.poll() is not None if proc is not None else not _process_alive(pid)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if gone():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(int(wait / 0.02)):
            if gone():
                return
            await asyncio.sleep(0.02)
    if not gone():
        raise RouterError(f"HAProxy {pid} did not stop")
