"""The SQLite store (WAL, versioned migrations). The controller is its only writer."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from canarist.domain.plan import plan_from_list, plan_to_list
from canarist.domain.rollout import Phase, Rollout
from canarist.errors import CanaristError
from canarist.store.records import (
    LIVE_STATES,
    Checkpoint,
    Event,
    InstanceRecord,
    InstanceState,
    ObservationRow,
    ServiceState,
)

# Each entry moves the schema one version forward; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE services (
        name TEXT PRIMARY KEY,
        stable TEXT, previous TEXT, canary TEXT,
        weights TEXT NOT NULL DEFAULT '{}',
        counts TEXT NOT NULL DEFAULT '{}',
        retire_at TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL, release TEXT NOT NULL, previous TEXT,
        strategy TEXT NOT NULL, plan TEXT NOT NULL,
        step INTEGER NOT NULL, step_started_at REAL NOT NULL,
        phase TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX rollouts_by_service ON rollouts (service, id);
    CREATE TABLE instances (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, release TEXT NOT NULL,
        state TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
        pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, workdir TEXT NOT NULL,
        started_at REAL NOT NULL, drain_started_at REAL NOT NULL, reason TEXT NOT NULL
    );
    CREATE INDEX instances_by_service ON instances (service, state);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL, service TEXT NOT NULL, rollout_id INTEGER,
        kind TEXT NOT NULL, detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    """,
    # 2: the evidence of each rollout's analysis, so a restarted controller replays it.
    """
    CREATE TABLE observations (
        rollout_id INTEGER NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
        canary_requests INTEGER NOT NULL, canary_failures INTEGER NOT NULL,
        baseline_requests INTEGER NOT NULL, baseline_failures INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, seq)
    );
    """,
    # 3: the latencies behind each observation (float32 arrays), so the latency test
    # resumes too, the canary's traffic share the router had then, and the baseline's
    # recent counts when given.
    """
    ALTER TABLE observations ADD COLUMN canary_ms BLOB NOT NULL DEFAULT x'';
    ALTER TABLE observations ADD COLUMN baseline_ms BLOB NOT NULL DEFAULT x'';
    ALTER TABLE observations ADD COLUMN canary_weight REAL;
    ALTER TABLE observations ADD COLUMN recent_requests INTEGER;
    ALTER TABLE observations ADD COLUMN recent_failures INTEGER;
    ALTER TABLE observations ADD COLUMN recent_ms BLOB NOT NULL DEFAULT x''
    """,
    # 4: the judge's state saved every few minutes, so a restart replays only what came
    # after it (the evidence before it, bar the first row, is dropped).
    """
    CREATE TABLE checkpoints (
        rollout_id INTEGER PRIMARY KEY, at REAL NOT NULL, key TEXT NOT NULL,
        state BLOB NOT NULL
    );
    """,
    # 5: the metrics window's counts behind each observation, so a restarted controller
    # that takes the window up again counts on from them.
    """
    ALTER TABLE observations ADD COLUMN window_counts TEXT
    """,
)


def _floats(values: tuple[float, ...]) -> bytes:
    return array("f", values).tobytes()


def _unfloats(blob: bytes) -> tuple[float, ...]:
    values = array("f")
    values.frombytes(blob)
    return tuple(values)


def _window_counts(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    counts = tuple(int(v) for v in json.loads(text))
    if len(counts) not in (6, 8):
        raise ValueError(f"window counts: {len(counts)} of them")
    return counts


class StoreError(CanaristError):
    """The state database cannot be read or written."""


class SQLiteStore:
    """Durable controller state in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- schema -------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version in force."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def changes(self) -> int:
        """Rows written through this store so far: what was read before is still what the
        store holds while this stays the same (this store being the only writer)."""
        return self._db.total_changes

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes so that they land together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- services -----------------------------------------------------------------------

    def service(self, name: str) -> ServiceState:
        """The service's desired state (empty when never deployed)."""
        row = self._db.execute("SELECT * FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            return ServiceState(name=name)
        return ServiceState(
            name=row["name"],
            stable=row["stable"],
            previous=row["previous"],
            canary=row["canary"],
            weights={k: int(v) for k, v in json.loads(row["weights"]).items()},
            counts={k: int(v) for k, v in json.loads(row["counts"]).items()},
            retire_at={k: float(v) for k, v in json.loads(row["retire_at"]).items()},
        )

    def save_service(self, state: ServiceState) -> None:
        """Write the service's desired state."""
        self._db.execute(
            "INSERT INTO services (name, stable, previous, canary, weights, counts, retire_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
            " stable=excluded.stable, previous=excluded.previous, canary=excluded.canary,"
            " weights=excluded.weights, counts=excluded.counts, retire_at=excluded.retire_at",
            (
                state.name,
                state.stable,
                state.previous,
                state.canary,
                json.dumps(state.weights, sort_keys=True),
                json.dumps(state.counts, sort_keys=True),
                json.dumps(state.retire_at, sort_keys=True),
            ),
        )

    # -- rollouts -----------------------------------------------------------------------

    def create_rollout(self, rollout: Rollout) -> Rollout:
        """Insert a new rollout; returns it with its id."""
        cursor = self._db.execute(
            "INSERT INTO rollouts (service, release, previous, strategy, plan, step,"
            " step_started_at, phase, created_at, ended_at, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rollout.service,
                rollout.release,
                rollout.previous,
                rollout.strategy,
                json.dumps(plan_to_list(rollout.plan)),
                rollout.step,
                rollout.step_started_at,
                rollout.phase,
                rollout.created_at,
                rollout.ended_at,
                rollout.reason,
            ),
        )
        assert cursor.lastrowid is not None
        return replace(rollout, id=cursor.lastrowid)

    def save_rollout(self, rollout: Rollout) -> None:
        """Write a rollout's progress."""
        self._db.execute(
            "UPDATE rollouts SET step=?, step_started_at=?, phase=?, ended_at=?, reason=?"
            " WHERE id=?",
            (
                rollout.step,
                rollout.step_started_at,
                rollout.phase,
                rollout.ended_at,
                rollout.reason,
                rollout.id,
            ),
        )

    def active_rollout(self, service: str) -> Rollout | None:
        """The service's running rollout, if any."""
        row = self._db.execute(
            "SELECT * FROM rollouts WHERE service = ? AND ended_at IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (service,),
        ).fetchone()
        return None if row is None else _rollout(row)

    def rollout(self, rollout_id: int) -> Rollout | None:
        """One rollout by id."""
        row = self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else _rollout(row)

    def rollouts(self, service: str, limit: int = 50) -> list[Rollout]:
        """The service's rollouts, newest first."""
        rows = self._db.execute(
            "SELECT * FROM rollouts WHERE service = ? ORDER BY id DESC LIMIT ?", (service, limit)
        ).fetchall()
        return [_rollout(row) for row in rows]

    # -- instances ----------------------------------------------------------------------

    def save_instance(self, record: InstanceRecord) -> None:
        """Insert or update an instance record."""
        fields = asdict(record)
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{name}=excluded.{name}" for name in fields if name != "id")
        self._db.execute(
            f"INSERT INTO instances ({columns}) VALUES ({marks})"
            f" ON CONFLICT(id) DO UPDATE SET {updates}",
            tuple(fields.values()),
        )

    def instances(
        self, service: str | None = None, states: tuple[InstanceState, ...] = LIVE_STATES
    ) -> list[InstanceRecord]:
        """Instance records in the given states, oldest first."""
        marks = ", ".join("?" for _ in states)
        query = f"SELECT * FROM instances WHERE state IN ({marks})"
        params: list[Any] = list(states)
        if service is not None:
            query += " AND service = ?"
            params.append(service)
        rows = self._db.execute(query + " ORDER BY started_at, id", params).fetchall()
        return [InstanceRecord(**dict(row)) for row in rows]

    def forget_instances(self, before: float) -> None:
        """Drop records of instances that ended before `before`."""
        self._db.execute(
            "DELETE FROM instances WHERE state IN ('stopped', 'failed') AND started_at < ?",
            (before,),
        )

    # -- analysis evidence --------------------------------------------------------------

    def add_observation(self, rollout_id: int, observation: ObservationRow) -> None:
        """Append one point of a rollout's analysis (cumulative counts at `at`)."""
        o = observation
        self._db.execute(
            "INSERT INTO observations (rollout_id, seq, at, canary_requests, canary_failures,"
            " baseline_requests, baseline_failures, canary_ms, baseline_ms, canary_weight,"
            " recent_requests, recent_failures, recent_ms, window_counts)"
            " VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM observations"
            " WHERE rollout_id = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rollout_id,
                rollout_id,
                o.at,
                *o.counts,
                _floats(o.canary_ms),
                _floats(o.baseline_ms),
                o.canary_weight,
                *(o.baseline_recent or (None, None)),
                _floats(o.baseline_recent_ms),
                None if o.window is None else json.dumps(o.window),
            ),
        )

    def observations(self, rollout_id: int) -> list[ObservationRow]:
        """A rollout's analysis points, in order."""
        rows = self._db.execute(
            "SELECT at, canary_requests, canary_failures, baseline_requests, baseline_failures,"
            " canary_ms, baseline_ms, canary_weight, recent_requests, recent_failures, recent_ms,"
            " window_counts FROM observations WHERE rollout_id = ?"
            " ORDER BY seq",
            (rollout_id,),
        ).fetchall()
        return [
            ObservationRow(
                row["at"],
                row["canary_requests"],
                row["canary_failures"],
                row["baseline_requests"],
                row["baseline_failures"],
                _unfloats(row["canary_ms"]),
                _unfloats(row["baseline_ms"]),
                row["canary_weight"],
                None
                if row["recent_requests"] is None
                else (row["recent_requests"], row["recent_failures"]),
                _unfloats(row["recent_ms"]),
                _window_counts(row["window_counts"]),
            )
            for row in rows
        ]

    def save_checkpoint(self, rollout_id: int, checkpoint: Checkpoint) -> None:
        """Keep the rollout's analysis as of `checkpoint.at` (in place of any earlier one)
        and drop the evidence it holds: every row before it but the first, which says when
        the analysis began. Saved first, dropped after: a crash between the two leaves
        rows that a restart skips."""
        c = checkpoint
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (rollout_id, at, key, state) VALUES (?, ?, ?, ?)",
            (rollout_id, c.at, c.key, c.state),
        )
        self._db.execute(
            "DELETE FROM observations WHERE rollout_id = ? AND at < ?"
            " AND seq > (SELECT MIN(seq) FROM observations WHERE rollout_id = ?)",
            (rollout_id, c.at, rollout_id),
        )

    def checkpoint(self, rollout_id: int) -> Checkpoint | None:
        """The rollout's latest saved analysis, if any."""
        row = self._db.execute(
            "SELECT at, key, state FROM checkpoints WHERE rollout_id = ?", (rollout_id,)
        ).fetchone()
        return None if row is None else Checkpoint(row["at"], row["key"], bytes(row["state"]))

    def forget_observations(self, before: float) -> None:
        """Drop the evidence (and saved analyses) of rollouts that ended before `before`
        (their verdicts, with the figures behind them, stay in the audit log)."""
        ended = "(SELECT id FROM rollouts WHERE ended_at IS NOT NULL AND ended_at < ?)"
        self._db.execute(f"DELETE FROM observations WHERE rollout_id IN {ended}", (before,))
        self._db.execute(f"DELETE FROM checkpoints WHERE rollout_id IN {ended}", (before,))

    # -- audit log ----------------------------------------------------------------------

    def record(
        self, service: str, kind: str, detail: dict[str, object], rollout_id: int | None = None
    ) -> Event:
        """Append to the audit log; each entry's hash covers the one before it."""
        at = time.time()
        row = self._db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        prev = row["hash"] if row else ""
        body = json.dumps(detail, sort_keys=True, default=str)
        digest = _chain_hash(prev, at, service, rollout_id, kind, body)
        cursor = self._db.execute(
            "INSERT INTO events (at, service, rollout_id, kind, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, service, rollout_id, kind, body, prev, digest),
        )
        assert cursor.lastrowid is not None
        return Event(cursor.lastrowid, at, service, rollout_id, kind, json.loads(body), digest)

    def events(self, service: str | None = None, rollout_id: int | None = None) -> list[Event]:
        """Audit entries, oldest first."""
        query, params = "SELECT * FROM events WHERE 1=1", []
        if service is not None:
            query += " AND service = ?"
            params.append(service)
        if rollout_id is not None:
            query += " AND rollout_id = ?"
            params.append(str(rollout_id))
        rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [
            Event(
                r["id"],
                r["at"],
                r["service"],
                r["rollout_id"],
                r["kind"],
                json.loads(r["detail"]),
                r["hash"],
            )
            for r in rows
        ]

    def verify_log(self) -> int | None:
        """The id of the first audit entry whose hash chain is broken, or None if intact."""
        prev = ""
        for r in self._db.execute("SELECT * FROM events ORDER BY id"):
            expected = _chain_hash(
                prev, r["at"], r["service"], r["rollout_id"], r["kind"], r["detail"]
            )
            if r["prev_hash"] != prev or r["hash"] != expected:
                return int(r["id"])
            prev = r["hash"]
        return None


def _chain_hash(
    prev: str, at: float, service: str, rollout_id: int | None, kind: str, body: str
) -> str:
    text = json.dumps([prev, repr(at), service, rollout_id, kind, body])
    return hashlib.sha256(text.encode()).hexdigest()


def _rollout(row: sqlite3.Row) -> Rollout:
    phase: Phase = row["phase"]
    return Rollout(
        id=row["id"],
        service=row["service"],
        release=row["release"],
        previous=row["previous"],
        strategy=row["strategy"],
        plan=plan_from_list(json.loads(row["plan"])),
        step=row["step"],
        step_started_at=row["step_started_at"],
        phase=phase,
        created_at=row["created_at"],
        ended_at=row["ended_at"],
        reason=row["reason"],
    )
