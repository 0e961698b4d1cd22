"""The event pipeline against a real SQLite store and a real journal file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol import events as ev
from protocol.tasks import RUNNING, TaskRecord, now_iso
from supervisor.pipeline import Pipeline
from supervisor.store import Store


def _event(rseq: int, kind: str = "log", **fields: Any) -> dict[str, Any]:
    return {
        "rseq": rseq,
        "task_id": "t1",
        "timestamp": now_iso(),
        "kind": kind,
        "level": "INFO",
        "message": f"e{rseq}",
        **fields,
    }


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "db.sqlite3")
        self.published: list[tuple[bytes, bytes]] = []
        self.tasks: dict[str, TaskRecord] = {}
        self.pipeline = Pipeline(self.store, self.published.extend, self.tasks)
        task = TaskRecord("t1", "training", "training", {"token": "x"}, "cpu", 5, None, None, task_dir=str(tmp))
        self.store.insert_tasks([task])
        task.status = RUNNING
        self.tasks["t1"] = task
        self.task = task
        self.pipeline.attach(task)
        self.journal = tmp / "events.jsonl"

    def journal_write(self, *events: dict[str, Any]) -> list[bytes]:
        raws = [orjson.dumps(e) for e in events]
        with open(self.journal, "ab") as fh:
            fh.writelines(raw + b"\n" for raw in raws)
        return raws

    def send(self, *raws: bytes) -> int:
        return self.pipeline.ingest([[b"t1", raw] for raw in raws])

    def send_plain(self, *raws: bytes) -> int:
        """``raws`` as a runner sends a run of plain log lines: packed, marked ``PLAIN``."""
        return self.pipeline.ingest([[b"t1", ev.pack(list(raws)), ev.PLAIN]])

    def out(self) -> list[dict[str, Any]]:
        """Every published event, in order (a published item holds one event or a run, packed)."""
        return [orjson.loads(e) for topic, data in self.published for e in ev.unpack([topic, data])[1:]]

    def stored(self) -> list[dict[str, Any]]:
        return [orjson.loads(r) for r in self.store.events_after("t1", 0, 10_000)]


@pytest.fixture()
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_gap_is_filled_from_journal_and_duplicates_dropped(rig: Rig) -> None:
    raws = rig.journal_write(*(_event(i) for i in range(1, 11)))
    assert rig.send(raws[0], raws[1]) == 2
    # Events 3..6 never came through the socket: 7 reveals the gap.
    assert rig.send(raws[6]) == 5
    assert rig.send(raws[5], raws[7]) == 1  # 6 is a duplicate by now
    # The reaper reads the tail: 9 and 10.
    assert rig.pipeline.catch_up(rig.task) == 2
    stored = rig.stored()
    assert [e["seq"] for e in stored] == list(range(1, 11))
    assert [e["rseq"] for e in stored] == list(range(1, 11))
    assert [e["seq"] for e in rig.out()] == list(range(1, 11))
    assert rig.store.get_task("t1").last_seq == 10  # type: ignore[union-attr]


def _numbered(raw: bytes, seq: int) -> dict[str, Any]:
    return {"seq": seq, **orjson.loads(raw)}


def test_plain_runs_are_stored_as_sent_and_read_numbered(rig: Rig) -> None:
    """A runner's next run of plain log lines is one row, stored and published as it came with
    its first line numbered; every reader sees each event numbered, as the event-by-event path
    stores them, supervisor events and read events around it alike."""
    raws = rig.journal_write(*(_event(i, i=i) for i in range(1, 9)))
    rig.pipeline.emit(rig.task, "log", "queued")  # seq 1
    assert rig.send_plain(*raws[:3]) == 3  # seq 2-4
    assert rig.send(raws[3]) == 1  # seq 5, one event a frame
    assert rig.send_plain(*raws[4:5]) == 1  # seq 6, a run of one
    assert rig.send_plain(*raws[5:]) == 3  # seq 7-9
    stored, rows = rig.stored(), rig.store._db.execute("SELECT json FROM events ORDER BY id").fetchall()
    assert stored[0]["source"] == "supervisor"
    assert stored[1:] == [_numbered(raw, i + 2) for i, raw in enumerate(raws)]
    assert rig.out() == stored
    # The runs as they came: only their first line was given a seq (and the row is what was published).
    assert [bytes(r[0]).count(b'"seq"') for r in rows] == [1, 1, 1, 1, 1]
    assert bytes(rows[1][0]) == b'{"seq":2,' + ev.pack(raws[:3])[1:] == rig.published[1][1]
    # Read from the middle of a run, and with a limit inside one.
    assert [orjson.loads(e)["seq"] for e in rig.store.events_after("t1", 2, 10)] == list(range(3, 10))
    assert [orjson.loads(e)["seq"] for e in rig.store.events_after("t1", 7, 1)] == [8]
    # The row was written with the supervisor's event; the plain lines since are counted from
    # what is stored past it (``Store.note_events``).
    assert rig.store.stored_counters("t1") == (9, 8)


def test_a_plain_run_that_is_not_the_next_goes_event_by_event(rig: Rig) -> None:
    """A run repeating events stored already (through the journal) or leaving a gap is read
    event by event: the repeats are dropped, the gap is filled from the journal."""
    raws = rig.journal_write(*(_event(i) for i in range(1, 11)))
    assert rig.send_plain(*raws[:2]) == 2
    assert rig.pipeline.catch_up(rig.task, limit=3) == 3  # the reaper read 3..5
    assert rig.send_plain(*raws[2:6]) == 1  # 3..5 repeated, 6 new
    assert rig.send_plain(*raws[8:9]) == 3  # 7 and 8 from the journal, then 9
    # A run that does not start as a runner's encoding: read event by event (and checked).
    spread = orjson.dumps(_event(10), option=orjson.OPT_INDENT_2).replace(b"\n", b"")
    assert not spread.startswith(ev.RUNNER_PREFIX)
    assert rig.send_plain(spread, b"not json") == 1
    assert [e["seq"] for e in rig.stored()] == list(range(1, 11))
    assert [e["rseq"] for e in rig.out()] == list(range(1, 11))
    assert rig.pipeline.received == 2 + 4 + 1 + 2 and rig.pipeline.dropped == 1


def test_a_re_encoded_event_before_a_plain_run_in_one_batch_is_numbered_first(rig: Rig) -> None:
    """An event the supervisor re-encodes (here a runner's log line claiming ``source``) starts
    with its ``seq`` like every line it writes: stored and published in one run with the plain
    lines after it, each of those is numbered by its place."""
    forged = orjson.dumps({**_event(1), "source": "supervisor"})
    raws = [orjson.dumps(_event(i)) for i in (2, 3, 4)]
    rig.pipeline.ingest([[b"t1", forged], [b"t1", ev.pack(raws), ev.PLAIN]])
    assert len(rig.published) == 1 and rig.published[0][1].startswith(b'{"seq":1,')
    assert [e["seq"] for e in rig.out()] == [e["seq"] for e in rig.stored()] == [1, 2, 3, 4]
    assert "source" not in rig.out()[0]


def test_a_failure_reported_while_cancelling_then_a_plain_run(rig: Rig) -> None:
    """The ``failed`` a runner reports once its cancel was requested is stored as a log line
    (re-encoded, ``seq`` first); the plain run after it in the same batch is numbered on."""
    rig.pipeline.cancelling("t1")
    raws = rig.journal_write(_event(1, "status", status="failed"), *(_event(i) for i in (2, 3, 4)))
    rig.pipeline.ingest([[b"t1", raws[0]], [b"t1", ev.pack(raws[1:]), ev.PLAIN]])
    out = rig.out()
    assert [e["seq"] for e in out] == [1, 2, 3, 4] and out[0]["kind"] == "log" and "status" not in out[0]
    assert rig.pipeline.exit_report("t1") == "e1"


def test_a_stored_line_with_its_seq_last_keeps_it(rig: Rig) -> None:
    """A version before plain runs wrote a re-encoded event with ``seq`` as its last key: read
    back from a run, it is not given a second one."""
    first = b'{"seq":1,"rseq":1,"task_id":"t1","timestamp":"ts","kind":"log","level":"INFO","message":"a"}'
    last = b'{"rseq":2,"task_id":"t1","timestamp":"ts","kind":"log","level":"INFO","message":"b","seq":2}'
    rig.store.append_events([("t1", 1, 2, ev.pack([first, last]))])
    rig.store.commit()
    assert rig.store.events_after("t1", 0, 10) == [first, last]
    assert ev.unpack([b"t1", ev.pack([first, last[:-8] + b"}"])])[2].startswith(b'{"seq":2,"rseq":2,')


def test_a_plain_run_of_a_task_not_running_counts_its_events(rig: Rig) -> None:
    raws = [orjson.dumps(_event(i)) for i in (1, 2, 3)]
    rig.task.status = "completed"
    assert rig.send_plain(*raws) == 0
    assert (rig.pipeline.received, rig.pipeline.dropped) == (3, 3)


def test_malformed_events_dropped_and_counted(rig: Rig) -> None:
    bad = [
        b"not json",
        b"[1]",
        orjson.dumps({"rseq": 1, "kind": "nope"}),
        orjson.dumps({**_event(1), "task_id": "other"}),
    ]
    assert rig.send(*bad) == 0
    assert rig.pipeline.dropped == 4
    assert rig.pipeline.ingest([[b"t1"], [b"unknown-task", orjson.dumps(_event(1))]]) == 0
    assert rig.send(orjson.dumps(_event(1))) == 1


def test_task_updates_from_events(rig: Rig) -> None:
    metrics = {"epoch": 2, "total_epochs": 5, "val_acc": 91.5}
    raws = rig.journal_write(
        _event(1, "progress", progress=40),
        _event(2, "metrics", stage="epoch_end", metrics=metrics, epoch=2, total_epochs=5),
        _event(3, "metrics", stage="training", metrics={"train_loss": 0.1}, step=7),
        _event(4, "status", status="completed"),
    )
    rig.send(*raws)
    task = rig.store.get_task("t1")
    assert task is not None
    assert (task.progress, task.current_epoch, task.total_epochs, task.latest_metrics) == (40, 2, 5, metrics)
    # The final status is kept for the reaper, not applied while the process lives.
    assert task.status == RUNNING
    assert rig.pipeline.final_status("t1") == ("completed", "e4")


def test_supervisor_events_share_the_sequence(rig: Rig) -> None:
    rig.pipeline.emit(rig.task, "log", "queued")
    rig.send(orjson.dumps(_event(1)))
    rig.pipeline.emit(rig.task, "status", "killed by signal SIGKILL", "ERROR", status="failed")
    stored = rig.stored()
    assert [e["seq"] for e in stored] == [1, 2, 3]
    assert stored[0]["source"] == "supervisor" and "source" not in stored[1]
    assert stored[2]["status"] == "failed"


def test_runner_cannot_forge_seq_or_source(rig: Rig) -> None:
    rig.send(orjson.dumps({**_event(1), "seq": 999, "source": "supervisor"}))
    (event,) = rig.stored()
    assert event["seq"] == 1 and "source" not in event


def test_journal_tail_found_by_bisection(tmp_path: Path) -> None:
    from supervisor.journal import Journal

    path = tmp_path / "events.jsonl"
    with open(path, "wb") as fh:
        fh.writelines(orjson.dumps(_event(i, pad="x" * (i % 97))) + b"\n" for i in range(1, 20_001))
        fh.write(b'{"rseq": 20001, "kind": "lo')  # being written: not read yet
    journal = Journal(path)
    tail = journal.read(19_990)
    assert [e["rseq"] for e, _ in tail] == list(range(19_991, 20_001))
    assert journal.read(20_000) == []
    # A gap in the middle, then everything after the start.
    assert [e["rseq"] for e, _ in Journal(path).read(5_000, 5_004)] == [5_001, 5_002, 5_003]
    assert len(Journal(path).read(0)) == 20_000
    with open(path, "ab") as fh:
        fh.write(b'ng"}\n')
    ((event, _),) = journal.read(20_000)
    assert event["rseq"] == 20_001


def test_failure_after_cancel_request_is_a_log_line(rig: Rig) -> None:
    rig.send(orjson.dumps(_event(1, "status", status="running")))
    rig.pipeline.cancelling("t1")
    rig.send(
        orjson.dumps({**_event(2, "status", status="failed"), "level": "ERROR", "message": "RuntimeError: worker died"})
    )
    stored = rig.stored()
    assert stored[-1]["kind"] == "log" and "status" not in stored[-1] and stored[-1]["level"] == "ERROR"
    assert stored[-1]["rseq"] == 2 and stored[-1]["seq"] == 2
    assert rig.pipeline.final_status("t1") is None
    assert rig.pipeline.exit_report("t1") == "RuntimeError: worker died"


def test_final_before_cancel_request_stays_final(rig: Rig) -> None:
    rig.send(orjson.dumps(_event(1, "status", status="failed")))
    rig.pipeline.cancelling("t1")
    assert rig.pipeline.final_status("t1") == ("failed", "e1")
    # Held back until the daemon has made the task final, then stored and published with it.
    assert rig.stored() == [] and rig.published == []
    rig.task.status = "failed"
    assert rig.pipeline.release_final(rig.task)
    assert rig.stored()[-1]["status"] == "failed"
    assert rig.out()[-1]["status"] == "failed"
    assert rig.store.get_task("t1").status == "failed"  # type: ignore[union-attr]
    assert not rig.pipeline.release_final(rig.task)


def test_log_lines_are_checked_on_the_fast_path_too(rig: Rig) -> None:
    """A plain log line is numbered without re-encoding only when it is well-formed: a bad one
    is dropped exactly as ``check_event`` would drop it."""
    bad = [
        {**_event(1), "level": "DEBUG"},
        {**_event(1), "message": 7},
        {**_event(1), "timestamp": None},
        {**_event(1), "rseq": True},
        {**_event(1), "metrics": "not an object"},
        {**_event(1), "step": "7"},
    ]
    assert rig.send(*(orjson.dumps(e) for e in bad)) == 0
    assert rig.pipeline.dropped == len(bad)
    raw = orjson.dumps(_event(1, i=1))
    assert rig.send(raw) == 1
    (stored,) = rig.store.events_after("t1", 0, 10)
    assert stored == b'{"seq":1,' + raw[1:]  # the runner's bytes, seq prepended


def test_events_update_the_stored_task_without_touching_its_status(rig: Rig) -> None:
    rig.store.update_task(rig.task)  # stored as running, as the lifecycle stores it
    rig.send(orjson.dumps(_event(1)), orjson.dumps(_event(2, "progress", progress=30)))
    stored = rig.store.get_task("t1")
    assert stored is not None
    assert (stored.status, stored.last_seq, stored.last_rseq, stored.progress) == (RUNNING, 2, 2, 30)
    assert rig.store.counts() == {"training": {RUNNING: 1}}


def test_events_not_stored_are_taken_again_from_the_journal(rig: Rig) -> None:
    """A run whose event file cannot be written (here its path is a directory; a full disk in
    life) is not stored, published or numbered: the next run shows the gap, which the journal
    fills, and no ``seq`` is skipped."""
    raws = rig.journal_write(*(_event(i, note="x" * 300) for i in range(1, 21)))
    file = rig.store._files.path(rig.store.ord_of("t1"))
    (file / "in-the-way").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        rig.send_plain(*raws[:10])
    assert (rig.task.last_seq, rig.task.last_rseq) == (0, 0)
    assert rig.published == [] and rig.stored() == []
    (file / "in-the-way").rmdir()
    file.rmdir()
    assert rig.send_plain(*raws[10:]) == 20
    stored = rig.stored()
    assert [e["seq"] for e in stored] == list(range(1, 21)) and [e["rseq"] for e in stored] == list(range(1, 21))
    assert rig.out() == stored


def test_plain_lines_leave_the_row_and_a_store_opened_again_catches_it_up(rig: Rig, tmp_path: Path) -> None:
    """A task's plain log lines change nothing of it but its counters: their commit does not
    rewrite its row (``Store.note_events``), which lags until the task's next other change.
    What is stored of it is the row's counters plus the events past them; a store opened again
    (the daemon restarted, or killed: the lagging row is never written here) writes them into
    the row before anything reads it, and numbering goes on from there."""
    rig.store.update_task(rig.task)  # stored as running, as the lifecycle stores it
    raws = rig.journal_write(*(_event(i, note="x" * 300) for i in range(1, 15)))
    assert rig.send(*raws[:2]) == 2  # lone lines: rows of their own
    assert rig.send_plain(*raws[2:10]) == 8  # a run: in the event file
    stored = rig.store.get_task("t1")
    assert stored is not None and (stored.last_seq, stored.last_rseq) == (0, 0)
    assert rig.store.stored_counters("t1") == (10, 10)
    assert rig.store.events_total() == 10
    again = Store(tmp_path / "db.sqlite3")
    task = again.get_task("t1")
    assert task is not None and (task.status, task.last_seq, task.last_rseq) == (RUNNING, 10, 10)
    published: list[tuple[bytes, bytes]] = []
    pipeline = Pipeline(again, published.extend, {"t1": task})
    pipeline.attach(task)
    assert pipeline.ingest([[b"t1", ev.pack(raws[10:]), ev.PLAIN]]) == 4
    events = [orjson.loads(e) for e in again.events_after("t1", 0, 100)]
    assert [e["seq"] for e in events] == list(range(1, 15)) and [e["rseq"] for e in events] == list(range(1, 15))
    again.close()  # a store closed in order leaves no row lagging (read here without a Store)
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
        assert db.execute("SELECT last_seq, last_rseq FROM tasks").fetchone() == (14, 14)


def test_a_run_not_stored_after_plain_lines_goes_back_to_what_is_stored(rig: Rig) -> None:
    """A run that cannot be stored (its event file's path is a directory; a full disk in life)
    after plain lines that left the row lagging: the task's numbering goes back to what is
    stored, the row's counters plus the events past them, not to the row's alone (which would
    number events 1.. again), and the journal fills the gap."""
    rig.store.update_task(rig.task)
    small = rig.journal_write(*(_event(i) for i in range(1, 11)))
    big = rig.journal_write(*(_event(i, note="x" * 300) for i in range(11, 31)))
    assert rig.send_plain(*small) == 10  # one inline row; the task's row stays at 0
    file = rig.store._files.path(rig.store.ord_of("t1"))
    (file / "in-the-way").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        rig.send_plain(*big[:10])
    assert (rig.task.last_seq, rig.task.last_rseq) == (10, 10)
    (file / "in-the-way").rmdir()
    file.rmdir()
    assert rig.send_plain(*big[10:]) == 20
    stored = rig.stored()
    assert [e["seq"] for e in stored] == list(range(1, 31)) and [e["rseq"] for e in stored] == list(range(1, 31))


def test_a_store_the_disk_refuses_rolls_back_whole_and_goes_on_once_there_is_room(rig: Rig) -> None:
    """SQLite refuses a write (``SQLITE_FULL``: here its page limit, a full disk in life) and rolls
    the whole transaction back by itself. Nothing of it is published or numbered; once there is
    room, the next events are stored and published in a transaction of their own, the journal
    fills the gap, and no ``seq`` is skipped or given twice."""
    rig.store.update_task(rig.task)
    raws = rig.journal_write(*(_event(i, progress=i // 4) for i in range(1, 401)))
    assert rig.send(*raws[:10]) == 10
    pages = rig.store._db.execute("PRAGMA page_count").fetchone()[0]
    rig.store._db.execute(f"PRAGMA max_page_count = {pages}")
    sent = 10
    with pytest.raises(sqlite3.OperationalError, match="full"):
        while sent < 400:  # rows of a few events each, in SQLite itself, until it is full
            rig.send(*raws[sent : sent + 5])
            sent += 5
    stored = rig.task.last_seq
    assert 10 <= stored == sent == rig.task.last_rseq == len(rig.out()) < 400
    rig.store._db.execute("PRAGMA max_page_count = 1073741823")
    assert rig.send(*raws[sent + 5 :]) == 400 - stored
    stored = rig.stored()
    assert [e["seq"] for e in stored] == list(range(1, 401)) and [e["rseq"] for e in stored] == list(range(1, 401))
    assert rig.out() == stored
    task = rig.store.get_task("t1")
    assert task is not None and (task.last_seq, task.progress) == (400, 100)
