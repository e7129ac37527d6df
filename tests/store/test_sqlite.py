"""The SQLite store: migrations, WAL, and round trips of what the controller keeps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from canarist.domain.plan import Pause, Promote, Scale, SetWeight
from canarist.domain.rollout import Rollout
from canarist.store.records import Checkpoint, InstanceRecord, ObservationRow, ServiceState
from canarist.store.sqlite import MIGRATIONS, SQLiteStore


def test_migrations_run_once_and_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    """A new database is at the latest schema; reopening it migrates nothing again."""
    store = SQLiteStore(tmp_path / "state.db")
    assert store.schema_version() == len(MIGRATIONS)
    store.save_service(ServiceState(name="web", stable="sha256:a"))
    store.close()
    again = SQLiteStore(tmp_path / "state.db")
    assert again.schema_version() == len(MIGRATIONS)
    assert again.service("web").stable == "sha256:a"
    mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_rollouts_round_trip_and_only_one_is_active(tmp_path: Path) -> None:
    """A rollout reads back as written; an ended one is no longer active."""
    store = SQLiteStore(tmp_path / "state.db")
    plan = (Scale("canary", 2), SetWeight(10), Pause(None), Promote(30.0))
    made = store.create_rollout(
        Rollout(0, "web", "sha256:b", "sha256:a", "canary", plan, 0, 1.0, "progressing", 1.0)
    )
    assert store.active_rollout("web") == made
    assert store.rollout(made.id) == made
    from dataclasses import replace

    store.save_rollout(replace(made, phase="promoted", ended_at=5.0, reason="ok"))
    assert store.active_rollout("web") is None
    assert store.rollouts("web")[0].phase == "promoted"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    """Writes inside a transaction that raises are all rolled back."""
    store = SQLiteStore(tmp_path / "state.db")
    try:
        with store.transaction():
            store.save_service(ServiceState(name="web", stable="sha256:a"))
            store.save_instance(InstanceRecord("i1", "web", "sha256:a", "starting"))
            raise RuntimeError("crash between two writes")
    except RuntimeError:
        pass
    assert store.service("web").stable is None
    assert store.instances("web") == []


def test_instances_by_state(tmp_path: Path) -> None:
    """Live states are listed by default; ended ones on request."""
    store = SQLiteStore(tmp_path / "state.db")
    store.save_instance(InstanceRecord("i1", "web", "sha256:a", "running", port=1, started_at=1))
    store.save_instance(InstanceRecord("i2", "web", "sha256:a", "failed", started_at=2))
    assert [r.id for r in store.instances("web")] == ["i1"]
    assert [r.id for r in store.instances("web", states=("failed",))] == ["i2"]


def _rollout(store: SQLiteStore) -> Rollout:
    plan = (Scale("canary", 2), SetWeight(10), Promote(30.0))
    return store.create_rollout(
        Rollout(0, "web", "sha256:b", "sha256:a", "canary", plan, 0, 1.0, "progressing", 1.0)
    )


def test_observations_round_trip_with_their_latencies(tmp_path: Path) -> None:
    """Counts, latency samples (float32: ~7 digits), the canary's share, the baseline's
    recent counts and latencies, and the metrics window's counts read back in order."""
    store = SQLiteStore(tmp_path / "state.db")
    rollout = _rollout(store)
    store.add_observation(rollout.id, ObservationRow(1.0, 0, 0, 0, 0))
    store.add_observation(rollout.id, ObservationRow(1.25, 10, 1, 90, 0, (61.5, 70.25), (55.0,)))
    alone = ObservationRow(
        1.5, 30, 1, 90, 0, (), (), 1.0, (60_000, 300), (60.5, 61.25), (37, 2, 90, 0, 7, 1)
    )
    store.add_observation(rollout.id, alone)
    store.close()
    rows = SQLiteStore(tmp_path / "state.db").observations(rollout.id)
    assert rows == [
        ObservationRow(1.0, 0, 0, 0, 0),
        ObservationRow(1.25, 10, 1, 90, 0, (61.5, 70.25), (55.0,)),
        alone,
    ]


def test_evidence_of_rollouts_ended_long_ago_is_forgotten(tmp_path: Path) -> None:
    """Only ended rollouts older than the cut lose their evidence; a running one keeps it."""
    from dataclasses import replace

    store = SQLiteStore(tmp_path / "state.db")
    old = _rollout(store)
    store.add_observation(old.id, ObservationRow(1.0, 5, 0, 50, 0, (60.0,), (61.0,)))
    store.save_rollout(replace(old, phase="promoted", ended_at=10.0))
    running = _rollout(store)
    store.add_observation(running.id, ObservationRow(20.0, 5, 0, 50, 0))
    store.save_checkpoint(old.id, Checkpoint(1.0, "key", b"state"))
    store.save_checkpoint(running.id, Checkpoint(20.0, "key", b"state"))
    store.forget_observations(before=5.0)
    assert len(store.observations(old.id)) == 1  # ended after the cut: kept
    assert store.checkpoint(old.id) is not None
    store.forget_observations(before=100.0)
    assert store.observations(old.id) == []
    assert store.checkpoint(old.id) is None
    assert len(store.observations(running.id)) == 1
    assert store.checkpoint(running.id) is not None


def test_a_saved_analysis_replaces_the_evidence_it_holds(tmp_path: Path) -> None:
    """Saving the judge's state at t drops every row before t but the first (when the
    analysis began); the row at t and those after stay, and the latest state wins."""
    store = SQLiteStore(tmp_path / "state.db")
    rollout = _rollout(store)
    for k in range(10):
        store.add_observation(rollout.id, ObservationRow(float(k), k, 0, 9 * k, 0))
    store.save_checkpoint(rollout.id, Checkpoint(4.0, "key", b"first"))
    assert [row.at for row in store.observations(rollout.id)] == [0.0, 4.0, 5, 6, 7, 8, 9]
    store.save_checkpoint(rollout.id, Checkpoint(8.0, "key", b"second"))
    assert [row.at for row in store.observations(rollout.id)] == [0.0, 8.0, 9.0]
    assert store.checkpoint(rollout.id) == Checkpoint(8.0, "key", b"second")
    store.add_observation(rollout.id, ObservationRow(10.0, 10, 0, 90, 0))
    again = SQLiteStore(tmp_path / "state.db")
    assert [row.at for row in again.observations(rollout.id)] == [0.0, 8.0, 9.0, 10.0]
    assert again.checkpoint(_rollout(again).id) is None


def test_evidence_stored_before_latencies_were_kept_still_reads(tmp_path: Path) -> None:
    """A database at schema 2 (counts only) migrates; its rows read with no latencies."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version = {number}")
    db.execute("INSERT INTO observations VALUES (1, 1, 2.5, 10, 1, 90, 0)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    assert store.schema_version() == len(MIGRATIONS)
    assert store.observations(1) == [ObservationRow(2.5, 10, 1, 90, 0)]
