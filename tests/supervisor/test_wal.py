"""The store's WAL under a steady writer: checkpoints in a worker thread never let SQLite start
the WAL over while commits keep coming, so it grew without bound; ``finish_checkpoint`` on the
writer's connection lets it start over. A real SQLite file and a real thread; no timings."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from protocol.tasks import RUNNING, TaskRecord
from supervisor import wal
from supervisor.store import Store


def _frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint on a connection of its own reports them)."""
    db = sqlite3.connect(str(path))
    try:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        db.close()


def test_a_wal_kept_growing_by_a_steady_writer_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "WAL_RESTART_BYTES", 1 << 20)
    monkeypatch.setattr(wal, "SHORT_PASS_SECONDS", 3600.0)  # any pass is short: no timing here
    store = Store(tmp_path / "db.sqlite3")
    task = TaskRecord("t1", "diagnostic", "diagnostic", {}, "cpu", 5, None, None, status=RUNNING)
    store.insert_tasks([task])
    seq = 0

    def commit_one() -> None:  # one lone event, as the pipeline stores it
        nonlocal seq
        seq += 1
        task.last_seq = seq
        store.append_events([("t1", seq, seq, b"x" * 1024)])
        store.update_progress(task)
        store.commit()

    for _ in range(100):
        commit_one()
    due: list[bool] = []
    worker = threading.Thread(target=lambda: due.append(store.checkpoint()))
    worker.start()
    while worker.is_alive():  # the writer keeps committing while the pass runs
        commit_one()
    worker.join()
    assert due == [True]  # over the limit
    store.finish_checkpoint()
    commit_one()
    assert _frames(store.path) < 10  # started over: only the last commit's pages
    assert len(store.events_after("t1", 0, 10_000)) == seq
    store.close()
