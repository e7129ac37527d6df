"""In-memory drivers and a fake clock, for tests of the controller's logic.

They honour the driver protocols' contracts (idempotence included) without processes,
sockets or HAProxy. The real drivers have their own tests against the real things.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from canarist.errors import InstanceFailed, UnknownRelease
from canarist.metrics.base import RECENT_LATENCIES, ReleaseWindow
from canarist.platforms.base import Instance
from canarist.routers.base import ReleaseCounters, RouteTable, ServiceRoute


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class FakeCatalog:
    """Releases known by reference, with their health paths."""

    releases: dict[str, str] = field(default_factory=dict)  # ref -> health path

    def add(self, name: str, health: str = "/healthz") -> str:
        """Register a release named by a short word; returns its reference."""
        ref = "sha256:" + name.encode().hex().ljust(64, "0")[:64]
        self.releases[ref] = health
        return ref

    def resolve(self, text: str) -> str:
        """A full reference that is known."""
        if text in self.releases:
            return text
        raise UnknownRelease(f"unknown release {text!r}")

    def health(self, ref: str) -> str:
        """The release's health path."""
        return self.releases[ref]


class FakePlatform:
    """Instances that exist only in memory; releases listed in `broken` never start."""

    def __init__(self, catalog: FakeCatalog) -> None:
        self.catalog = catalog
        self.running: dict[str, Instance] = {}
        self.broken: set[str] = set()
        self.unhealthy: set[str] = set()  # instance ids whose probes fail
        self.started: list[str] = []
        self.stopped: list[str] = []
        self._next_pid = 1000

    async def prepare(self, release: str) -> None:
        """Known releases only."""
        self.catalog.resolve(release)

    async def start(
        self, service: str, release: str, instance_id: str, *, health_path: str, timeout: float
    ) -> Instance:
        """A new in-memory instance, or InstanceFailed for a broken release."""
        if release in self.broken:
            raise InstanceFailed(f"{instance_id} exited with status 1")
        self._next_pid += 1
        instance = Instance(
            id=instance_id,
            service=service,
            release=release,
            host="127.0.0.1",
            port=20000 + self._next_pid,
            pid=self._next_pid,
            pid_start=1,
            workdir=Path("/nonexistent") / instance_id,
            started_at=0.0,
        )
        self.running[instance_id] = instance
        self.started.append(instance_id)
        return instance

    async def healthy(self, instance: Instance, *, health_path: str, timeout: float) -> bool:
        """False for ids in `unhealthy`."""
        return instance.id in self.running and instance.id not in self.unhealthy

    def alive(self, instance: Instance) -> bool:
        """True while not killed or stopped."""
        return instance.id in self.running

    async def discard(self, instance_id: str) -> None:
        """Forget an instance whose start was interrupted."""
        self.running.pop(instance_id, None)

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """Forget the instance."""
        if self.running.pop(instance.id, None) is not None:
            self.stopped.append(instance.id)

    def kill(self, instance_id: str) -> None:
        """The instance dies on its own."""
        self.running.pop(instance_id, None)


class FakeRouter:
    """Keeps the last table per service and reports effective weights from it."""

    def __init__(self) -> None:
        self.tables: dict[str, RouteTable] = {}
        self.routes: list[ServiceRoute] = []
        self.sessions: dict[str, int] = {}
        self.history: list[tuple[str, dict[str, int]]] = []
        self.stopped = False

    async def ensure(self, services: Sequence[ServiceRoute]) -> None:
        """Remember the routes."""
        self.routes = list(services)

    async def apply(self, service: str, table: RouteTable) -> None:
        """Remember the table; record each change of effective weights."""
        self.tables[service] = table
        weights = _effective(table)
        if not self.history or self.history[-1] != (service, weights):
            self.history.append((service, weights))

    async def read_weights(self, service: str) -> dict[str, float]:
        """Effective weights of the last table."""
        table = self.tables.get(service)
        return {k: float(v) for k, v in (_effective(table) if table else {}).items()}

    async def active_sessions(self, service: str, instance_id: str) -> int:
        """Whatever the test set."""
        return self.sessions.get(instance_id, 0)

    async def counters(self, service: str) -> dict[str, ReleaseCounters]:
        """Nothing is counted here."""
        return {}

    async def stop(self) -> None:
        """Mark stopped."""
        self.stopped = True


def _effective(table: RouteTable) -> dict[str, int]:
    active = {m.release for m in table.members if m.state == "active"}
    shares = {r: w for r, w in table.weights.items() if r in active and w > 0}
    total = sum(shares.values())
    return {r: round(100 * w / total) for r, w in shares.items()} if total else {}


class FakeMetrics:
    """Counts a test sets by hand, per release; `reset` starts them again from zero."""

    def __init__(self) -> None:
        # service -> release -> (requests, failures, requested, requested failures,
        # pinned, pinned failures)
        self.counts: dict[str, dict[str, tuple[int, ...]]] = {}
        self.latencies: dict[str, dict[str, list[float]]] = {}
        self.resets: list[str] = []
        # (service, release) -> every (requests, failures) added, for `recent`.
        self.added: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.recent_adds = 0  # how many of the latest adds `recent` covers; 0: all of them
        self.latency_log: dict[tuple[str, str], list[float]] = {}  # every latency added
        # Whether `resume` takes a window up (as HAProxy's provider does for a restarted
        # controller that adopts the same HAProxy) or starts a new one.
        self.windows_outlive_restarts = False
        self.attended: frozenset[str] | None = None  # as last told by `attend`

    def add(
        self,
        service: str,
        release: str,
        requests: int,
        failures: int = 0,
        latencies_ms: tuple[float, ...] = (),
        *,
        requested: bool = False,
        pinned: bool = False,
    ) -> None:
        """More requests (and failures, and fresh latencies) for a release; `requested`:
        sent by clients with the canary header, `pinned`: kept on the release by a sticky
        cookie (neither's latencies are sampled)."""
        n, f, rn, rf, pn, pf = self.counts.setdefault(service, {}).get(release, (0,) * 6)
        if requested:
            rn, rf = rn + requests, rf + failures
        if pinned:
            pn, pf = pn + requests, pf + failures
        self.counts[service][release] = (n + requests, f + failures, rn, rf, pn, pf)
        self.added.setdefault((service, release), []).append((requests, failures))
        if requested or pinned:
            return
        self.latency_log.setdefault((service, release), []).extend(latencies_ms)
        self.latencies.setdefault(service, {}).setdefault(release, []).extend(latencies_ms)

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def snapshot(self, service: str) -> dict[str, ReleaseWindow]:
        """Counts since the last reset; latencies since the last snapshot."""
        fresh = self.latencies.pop(service, {})
        return {
            release: ReleaseWindow(
                n,
                f,
                tuple(fresh.get(release, ())),
                len(fresh.get(release, ())),
                1.0,
                rn,
                rf,
                pn,
                pf,
            )
            for release, (n, f, rn, rf, pn, pf) in self.counts.get(service, {}).items()
        }

    async def recent(self, service: str, release: str, seconds: float) -> tuple[int, int] | None:
        """What was added for the release, whatever the windows (the latest
        `recent_adds` adds only, when set); None when nothing was."""
        added = self.added.get((service, release))
        if not added:
            return None
        counted = added[-self.recent_adds :] if self.recent_adds else added
        return sum(n for n, _ in counted), sum(f for _, f in counted)

    async def recent_latencies(
        self, service: str, release: str, seconds: float
    ) -> tuple[float, ...]:
        """Every latency added for the release (the last RECENT_LATENCIES), oldest first,
        whatever `seconds` says (the fake has no clock)."""
        return tuple(self.latency_log.get((service, release), [])[-RECENT_LATENCIES:])

    def attend(self, services: Collection[str]) -> None:
        """Remember which services are judged now."""
        self.attended = frozenset(services)

    async def reset(self, service: str) -> None:
        """A new window."""
        self.resets.append(service)
        self.counts.pop(service, None)
        self.latencies.pop(service, None)

    async def resume(self, service: str) -> bool:
        """The window goes on, when `windows_outlive_restarts` is set; a new one else."""
        if self.windows_outlive_restarts:
            return True
        await self.reset(service)
        return False
