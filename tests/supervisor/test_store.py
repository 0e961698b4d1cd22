"""The store in process: the task list's pages, counts kept in memory, an index behind every
listing (so a page costs the same with ten tasks or a million); events keyed by task and number,
and a store of the older ``(task_id, seq)`` layout migrated when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from protocol.tasks import COMPLETED, FAILED, PENDING, RUNNING, TaskRecord
from supervisor.store import Store, TransactionLost


def _task(i: int, task_type: str, status: str) -> TaskRecord:
    return TaskRecord(
        task_id=f"t{i:05d}",
        task_type=task_type,
        job=task_type,
        params={},
        requested_device="cpu",
        priority=5,
        description=None,
        strategy_type=None,
        status=status,
    )


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db.sqlite3")
    types, statuses = ("training", "inference", "preprocessing"), (PENDING, RUNNING, COMPLETED, FAILED)
    s.insert_tasks(_task(i, types[i % 3], statuses[i % 4]) for i in range(3000))
    return s


def _scan_counts(s: Store) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in s._db.execute("SELECT task_type, status, COUNT(*) FROM tasks GROUP BY 1, 2"):
        out.setdefault(row[0], {})[row[1]] = row[2]
    return out


def test_counts_follow_inserts_updates_and_deletes(store: Store, tmp_path: Path) -> None:
    assert store.counts() == _scan_counts(store)
    task = store.get_task("t00000")
    assert task is not None and task.status == PENDING
    task.status = COMPLETED
    store.update_task(task)
    store.update_task(task)  # the same status again: counted once
    store.delete_task("t00002")  # a completed preprocessing task
    assert store.get_task("t00002") is None
    assert store.counts() == _scan_counts(store)
    running = store.get_task("t00001")
    assert running is not None and running.status == RUNNING
    running.status = FAILED
    store.update_task(running, commit=False)  # batched with events, as the pipeline does
    store.commit()
    assert store.counts() == _scan_counts(store)
    store.close()
    # Reopened, the counts (and what is still open) come from the store itself.
    again = Store(tmp_path / "db.sqlite3")
    assert again.counts() == _scan_counts(again)
    task = again.get_task("t00005")
    assert task is not None and task.status == RUNNING
    task.status = COMPLETED
    again.update_task(task)
    assert again.counts() == _scan_counts(again)


def test_pages_walk_every_match_once_newest_first(store: Store) -> None:
    for task_type, status in ((None, None), ("inference", None), (None, FAILED), ("training", PENDING)):
        expected = [
            t.task_id
            for t in (store.get_task(f"t{i:05d}") for i in reversed(range(3000)))
            if t is not None and task_type in (None, t.task_type) and status in (None, t.status)
        ]
        seen: list[str] = []
        before = None
        while True:
            page = store.list_tasks(task_type, status, 256, before)
            if not page:
                break
            seen += [t.task_id for _, t in page]
            before = page[-1][0]
        assert seen == expected


@pytest.mark.parametrize(
    "task_type, status", [(None, None), ("training", None), (None, PENDING), ("training", PENDING)]
)
def test_every_listing_is_served_by_an_index(store: Store, task_type: str | None, status: str | None) -> None:
    where = [c for c, v in (("task_type = ?", task_type), ("status = ?", status), ("ord < ?", 100)) if v is not None]
    args = [v for v in (task_type, status, 100) if v is not None]
    sql = f"EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE {' AND '.join(where)} ORDER BY ord DESC LIMIT ?"
    plan = " | ".join(row[3] for row in store._db.execute(sql, [*args, 10]))
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan


def test_each_commit_reports_its_changes_once_they_are_stored(tmp_path: Path) -> None:
    """``on_commit`` (what ``supervisor.records`` publishes) runs after the commit: another
    connection already reads every change it reports; counts and order are current."""
    import sqlite3

    store = Store(tmp_path / "fresh.sqlite3")
    seen: list[tuple[list[tuple[str, str | None, int]], dict[str, dict[str, int]], list[str]]] = []
    reader = sqlite3.connect(str(store.path))

    def on_commit(changes: list[tuple[str, TaskRecord | None, int]]) -> None:
        stored = [row[0] for row in reader.execute("SELECT task_id FROM tasks ORDER BY ord")]
        seen.append(([(i, t.status if t else None, o) for i, t, o in changes], store.counts(), stored))

    store.on_commit = on_commit
    a, b = _task(1, "training", PENDING), _task(2, "inference", PENDING)
    store.insert_tasks([a, b])
    a.status = RUNNING
    store.update_task(a, commit=False)
    b.status = FAILED
    store.update_task(b, commit=False)
    assert len(seen) == 1  # nothing reported before the commit
    store.commit()
    store.delete_task(b.task_id)
    store.commit()  # nothing left to report: no call
    assert seen == [
        ([("t00001", PENDING, 1), ("t00002", PENDING, 2)], {"training": {"pending": 1}, "inference": {"pending": 1}},
         ["t00001", "t00002"]),
        ([("t00001", RUNNING, 1), ("t00002", FAILED, 2)], {"training": {"running": 1}, "inference": {"failed": 1}},
         ["t00001", "t00002"]),
        ([("t00002", None, 0)], {"training": {"running": 1}}, ["t00001"]),
    ]  # fmt: skip
    reader.close()


def _events(s: Store, task_id: str, after: int = 0) -> list[bytes]:
    return s.events_after(task_id, after, 10_000)


def test_events_are_read_per_task_in_order_and_deleted_with_their_task(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite3")
    a, b, c = _task(1, "training", RUNNING), _task(2, "training", RUNNING), _task(3, "training", RUNNING)
    s.insert_tasks([a, b, c])
    # Interleaved, b's out of order within a batch: each task reads back its own, by seq.
    s.append_events(
        [("t00001", 1, 1, b"a1"), ("t00002", 2, 2, b"b2"), ("t00002", 1, 1, b"b1"), ("t00003", 1, 1, b"c1")]
    )
    s.append_events([("t00001", 2, 2, b"a2")])
    s.commit()
    assert _events(s, "t00001") == [b"a1", b"a2"]
    assert _events(s, "t00002") == [b"b1", b"b2"]
    assert _events(s, "t00002", after=1) == [b"b2"]
    assert s.events_after("t00001", 0, 1) == [b"a1"]
    assert _events(s, "t00003") == [b"c1"]
    assert _events(s, "nope") == []
    assert s.events_after("t00001", 2**63 - 1, 10) == [] and s.events_after("t00001", 2**32 - 1, 10) == []
    s.append_events([("nope", 1, 1, b"x"), ("t00003", 2, 2, b"c2")])  # a task not stored: its events neither
    assert _events(s, "t00003") == [b"c1", b"c2"] and _events(s, "nope") == []
    s.delete_task("t00002")  # running: kept, events and all
    assert _events(s, "t00002") == [b"b1", b"b2"]
    b.status = COMPLETED
    s.update_task(b)
    s.delete_task("t00002")
    assert _events(s, "t00002") == []
    assert _events(s, "t00001") == [b"a1", b"a2"] and _events(s, "t00003") == [b"c1", b"c2"]
    s.close()


def test_a_run_of_events_is_one_row_read_from_anywhere_inside(tmp_path: Path) -> None:
    s = Store(tmp_path / "db.sqlite3")
    s.insert_tasks([_task(1, "training", RUNNING), _task(2, "training", RUNNING)])
    a = [f"a{i}".encode() for i in range(1, 11)]
    # One batch: a1-a4, b1, a5-a7 (a run per task and stretch), then a8-a10 in a batch of its own.
    rows = [("t00001", i, i, a[i - 1]) for i in (1, 2, 3, 4)] + [("t00002", 1, 1, b"b1")]
    s.append_events(rows + [("t00001", i, i, a[i - 1]) for i in (5, 6, 7)])
    s.commit()
    s.append_events([("t00001", i, i, a[i - 1]) for i in (8, 9, 10)])
    s.commit()
    assert s._db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 4
    for after in range(-1, 12):
        for limit in (1, 2, 3, 5, 100):
            assert s.events_after("t00001", after, limit) == a[max(0, after) :][:limit], (after, limit)
    assert _events(s, "t00002") == [b"b1"]
    s.close()


def test_a_store_of_the_task_id_seq_layout_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = Store(path)
    s.insert_tasks([_task(1, "training", RUNNING), _task(2, "inference", COMPLETED)])
    s.close()
    old = sqlite3.connect(str(path))  # the events table as earlier versions made it
    old.executescript(
        """DROP TABLE events;
        CREATE TABLE events (task_id TEXT NOT NULL, seq INTEGER NOT NULL, json BLOB NOT NULL,
                             PRIMARY KEY (task_id, seq));"""
    )
    rows = [(f"t0000{1 + i % 2}", 1 + i // 2, f"e{i}".encode()) for i in range(10)]
    rows[9] = ("t00002", 5, b'{"seq": 5,\n "message": "spread"}')  # valid JSON over two lines
    rows.append(("t00009", 1, b"of no task"))
    old.executemany("INSERT INTO events VALUES (?, ?, ?)", rows[::-1])
    old.commit()
    old.close()

    s = Store(path)
    assert [r[1] for r in s._db.execute("PRAGMA table_info(events)")] == ["id", "json", "at", "size", "last"]
    assert _events(s, "t00001") == [b"e0", b"e2", b"e4", b"e6", b"e8"]
    assert _events(s, "t00002") == [b"e1", b"e3", b"e5", b"e7", b'{"seq":5,"message":"spread"}']
    assert s._db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10  # the orphan is gone
    s.append_events([("t00001", 6, 6, b"e10")])  # numbering goes on after the migrated ones
    s.commit()
    assert _events(s, "t00001", after=4) == [b"e8", b"e10"]
    s.close()
    s = Store(path)  # migrated once: opened again as it is
    assert _events(s, "t00001")[-1] == b"e10" and len(_events(s, "t00002")) == 5
    s.close()


def test_a_write_the_disk_refuses_fails_its_whole_batch_and_the_store_goes_on(tmp_path: Path) -> None:
    """SQLite refuses a write (``SQLITE_FULL``: its page limit here, a full disk in life) and
    rolls back the whole transaction by itself, while other requests of a group commit had
    written in it. The request that failed is answered alone (its error caught), but the batch
    cannot end well: its commit raises ``TransactionLost``, nothing of it is stored, nothing that
    was to follow its commit runs, the counts are as stored; once there is room again the store
    takes writes as before (not in autocommit mode, not failing every commit after)."""
    s = Store(tmp_path / "db.sqlite3")
    s.insert_tasks([_task(0, "training", RUNNING)])
    counts = s.counts()
    after: list[str] = []
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(TransactionLost), s.batch():
        s.insert_tasks([_task(1, "inference", PENDING)])  # another request: it went well
        s.commit(after=lambda: after.append("published"))
        with pytest.raises(sqlite3.OperationalError, match="full"):  # (answered alone)
            for seq in range(1, 10_000):
                s.append_events([("t00000", seq, seq, b"x" * 2000)])
        s.update_task(_task(2, "training", COMPLETED), commit=False)  # a write after the loss
    assert after == [] and not s.exists("t00001") and s.events_after("t00000", 0, 10) == []
    assert s.counts() == counts == _scan_counts(s)
    s._db.execute("PRAGMA max_page_count = 1073741823")
    s.insert_tasks([_task(3, "inference", PENDING)])
    s.append_events([("t00000", 1, 1, b"x" * 2000)])
    s.commit(after=lambda: after.append("published"))
    assert after == ["published"] and s.exists("t00003") and s.events_after("t00000", 0, 10) == [b"x" * 2000]
    assert s.counts() == _scan_counts(s)
    s.close()
    again = Store(tmp_path / "db.sqlite3")
    assert again.exists("t00003") and not again.exists("t00001")
    assert again.events_after("t00000", 0, 10) == [b"x" * 2000]
