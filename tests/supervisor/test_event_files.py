"""Long runs of events in their task's event file (``supervisor.event_files``), short ones in
their row: read back alike, from anywhere inside a run; deleted with their task; what a crash
leaves (runs written, never committed; files of deleted tasks; runs a power loss took) handled
when the store is opened again. A real SQLite file, real files, a real killed process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from protocol import events as ev
from protocol.tasks import COMPLETED, RUNNING, TaskRecord
from supervisor import event_files, event_runs
from supervisor.pipeline import Pipeline
from supervisor.store import Store
from tests.support.pagecache import cached_bytes, drops_clean_pages

REPO = Path(__file__).resolve().parents[2]


def _task(i: int, status: str = RUNNING) -> TaskRecord:
    return TaskRecord(f"t{i}", "diagnostic", "diagnostic", {}, "cpu", 5, None, None, status=status)


def _line(seq: int, size: int = 300) -> bytes:
    return orjson.dumps({"seq": seq, "kind": "log", "level": "INFO", "message": "m" * size})


def _rows(task_id: str, first: int, last: int, size: int = 300) -> list[event_runs.Row]:
    return [(task_id, seq, seq, _line(seq, size)) for seq in range(first, last + 1)]


def _store(path: Path, *tasks: TaskRecord) -> Store:
    s = Store(path)
    if tasks:
        s.insert_tasks(tasks)
    return s


def _seqs(s: Store, task_id: str, after: int = 0, limit: int = 10_000) -> list[int]:
    return [orjson.loads(e)["seq"] for e in s.events_after(task_id, after, limit)]


def _placement(s: Store) -> list[tuple[int, bool]]:
    """``(first seq, in a file)`` of every row, in order."""
    return [
        (key & 0xFFFFFFFF, size is not None) for key, size in s._db.execute("SELECT id, size FROM events ORDER BY id")
    ]


def test_long_runs_go_to_the_task_file_and_read_back_with_the_short_ones(tmp_path: Path) -> None:
    s = _store(tmp_path / "db.sqlite3", _task(1), _task(2))
    # Batches: a1-a8 (2.6 KB: a file run), a9 (a row), a10-a30 with b1-b2 between (a, b rows).
    s.append_events(_rows("t1", 1, 8))
    s.commit()
    s.append_events(_rows("t1", 9, 9))
    s.commit()
    s.append_events(_rows("t1", 10, 20) + _rows("t2", 1, 2) + _rows("t1", 21, 30))
    s.commit()
    assert _placement(s) == [(1, True), (9, False), (10, True), (21, True), (1, False)]  # by task, then seq
    for after in (-1, 0, 1, 7, 8, 9, 10, 15, 20, 29, 30, 31):
        for limit in (1, 2, 9, 100):
            want = list(range(max(0, after) + 1, 31))[:limit]
            assert _seqs(s, "t1", after, limit) == want, (after, limit)
    assert _seqs(s, "t2") == [1, 2]
    # The file is JSON lines: the task's file runs, in order, each line an event.
    lines = (tmp_path / "db.sqlite3-events" / "1.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == [*range(1, 9), *range(10, 21), *range(21, 31)]
    assert not (tmp_path / "db.sqlite3-events" / "2.jsonl").exists()
    s.close()
    s = Store(tmp_path / "db.sqlite3")  # and after the store is opened again
    assert _seqs(s, "t1") == list(range(1, 31)) and _seqs(s, "t2") == [1, 2]
    s.append_events(_rows("t1", 31, 40))
    s.commit()
    assert _seqs(s, "t1", 28) == list(range(29, 41))
    s.close()


def _pipeline(tmp_path: Path) -> tuple[Store, Pipeline, list[tuple[bytes, bytes]]]:
    """A store with task t1 running, its pipeline, and what the pipeline publishes."""
    s = _store(tmp_path / "db.sqlite3")
    published: list[tuple[bytes, bytes]] = []
    task = TaskRecord("t1", "diagnostic", "diagnostic", {}, "cpu", 5, None, None, task_dir=str(tmp_path))
    s.insert_tasks([task])
    task.status = RUNNING
    pipeline = Pipeline(s, published.extend, {"t1": task})
    pipeline.attach(task)
    return s, pipeline, published


def _runner_lines(n: int) -> list[bytes]:
    """``n`` plain log lines of 400 characters, as t1's runner encodes them (``rseq`` 1..n)."""
    line = {"task_id": "t1", "timestamp": "t", "kind": "log", "level": "INFO", "message": "x" * 400}
    return [orjson.dumps({"rseq": i, **line}) for i in range(1, n + 1)]


def test_a_plain_run_is_stored_in_the_file_as_published(tmp_path: Path) -> None:
    """The pipeline's fast path: a runner's long plain run, numbered once, goes into the file as
    the very bytes published; readers see every event numbered."""
    s, pipeline, published = _pipeline(tmp_path)
    raws = _runner_lines(20)
    assert pipeline.ingest([[b"t1", ev.pack(raws), ev.PLAIN]]) == 20
    ((at, size),) = s._db.execute("SELECT at, size FROM events").fetchall()
    stored = (tmp_path / "db.sqlite3-events" / "1.jsonl").read_bytes()[at : at + size]
    assert stored == published[0][1] and stored.startswith(b'{"seq":1,"rseq":1,')
    assert [orjson.loads(e)["seq"] for e in s.events_after("t1", 0, 100)] == list(range(1, 21))
    s.close()


def test_a_task_file_goes_once_the_deletion_is_committed(tmp_path: Path) -> None:
    s = _store(tmp_path / "db.sqlite3", _task(1), _task(2, COMPLETED))
    s.append_events(_rows("t1", 1, 10) + _rows("t2", 1, 10))
    s.commit()
    files = tmp_path / "db.sqlite3-events"
    assert sorted(p.name for p in files.iterdir()) == ["1.jsonl", "2.jsonl"]
    s.delete_task("t1")  # running: kept, file and all
    with s.batch():
        s.delete_task("t2")
        assert (files / "2.jsonl").exists()  # not committed yet
    assert sorted(p.name for p in files.iterdir()) == ["1.jsonl"]
    assert _seqs(s, "t2") == [] and _seqs(s, "t1") == list(range(1, 11))
    s.close()


def test_files_of_tasks_gone_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    s = _store(tmp_path / "db.sqlite3", _task(1))
    s.append_events(_rows("t1", 1, 10))
    s.close()
    files = tmp_path / "db.sqlite3-events"
    (files / "7.jsonl").write_bytes(_line(1) + b"\n")  # a crash between a deletion and the unlink
    (files / "notes.txt").write_text("not ours")
    s = Store(tmp_path / "db.sqlite3")
    assert sorted(p.name for p in files.iterdir()) == ["1.jsonl", "notes.txt"]
    assert _seqs(s, "t1") == list(range(1, 11))
    s.close()


_CRASH = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.supervisor.test_event_files import _rows, _task
from supervisor.store import Store
s = Store(__import__("pathlib").Path({path!r}))
s.insert_tasks([_task(1)])
s.append_events(_rows("t1", 1, 10))
s.commit()
s.append_events(_rows("t1", 11, 20))  # written, never committed
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_runs_written_but_never_committed_are_cut_off_at_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    script = textwrap.dedent(_CRASH.format(repo=str(REPO), path=str(path)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    file = tmp_path / "db.sqlite3-events" / "1.jsonl"
    committed = sum(len(_line(i)) + 1 for i in range(1, 11))
    assert file.stat().st_size > committed  # the uncommitted run is there, pointed at by nothing
    s = Store(path)
    assert _seqs(s, "t1") == list(range(1, 11))
    s.append_events(_rows("t1", 11, 30))  # what the runner's journal gives again
    s.commit()
    assert _seqs(s, "t1") == list(range(1, 31))
    assert [orjson.loads(line)["seq"] for line in file.read_bytes().splitlines()] == list(range(1, 31))
    s.close()


def test_a_run_a_power_loss_took_is_left_out_and_the_rest_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _store(tmp_path / "db.sqlite3", _task(1), _task(2))
    for first in (1, 11, 21):
        s.append_events(_rows("t1", first, first + 9))
        s.commit()
    s.append_events(_rows("t2", 1, 10))
    s.commit()
    s.close()
    file = tmp_path / "db.sqlite3-events" / "1.jsonl"
    data = file.read_bytes()
    second, third = data.index(_line(11)), data.index(_line(21))
    # The second run never reached the disk (zeros where it was), nor most of the third.
    file.write_bytes(data[:second] + b"\0" * (third - second) + data[third : third + 10])
    (file.parent / "2.jsonl").unlink()
    s = Store(tmp_path / "db.sqlite3")

    def lost() -> int:
        n = sum("lost" in r.getMessage() for r in caplog.records)
        caplog.clear()
        return n

    with caplog.at_level(logging.WARNING, logger=event_files.__name__):
        assert _seqs(s, "t1") == list(range(1, 11)) and lost() == 2
        assert _seqs(s, "t1", after=12) == [] and lost() == 2
        assert _seqs(s, "t2") == [] and lost() == 1
        # Events go on: the file is first extended to where the lost run's row says it ends,
        # so the new run is not read in its place.
        s.append_events(_rows("t1", 31, 40))
        s.append_events(_rows("t2", 11, 20))
        s.commit()
        assert _seqs(s, "t1") == [*range(1, 11), *range(31, 41)] and lost() == 2
        assert _seqs(s, "t1", after=20) == list(range(31, 41)) and lost() == 1
        assert _seqs(s, "t2") == list(range(11, 21)) and lost() == 1
    assert file.stat().st_size == len(data) + sum(len(_line(i)) + 1 for i in range(31, 41))
    s.close()


def test_a_long_batch_over_more_tasks_than_files_kept_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file closed to stay under ``OPEN_FILES`` and opened again within one batch (its rows not
    inserted yet) goes on where it ended."""
    monkeypatch.setattr(event_files, "OPEN_FILES", 1)
    s = _store(tmp_path / "db.sqlite3", _task(1), _task(2))
    s.append_events(_rows("t1", 1, 8) + _rows("t2", 1, 8) + _rows("t1", 9, 16) + _rows("t2", 9, 16))
    s.commit()
    assert _seqs(s, "t1") == list(range(1, 17)) and _seqs(s, "t2") == list(range(1, 17))
    s.close()


def _synced(monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> list[int]:
    """The inodes ``os.fdatasync`` syncs from now on (really: it is called through); those in
    ``fail`` once fail instead, as a disk's I/O error would."""
    inodes: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        ino = os.fstat(fd).st_ino
        if ino in fail:
            fail.discard(ino)
            raise OSError(5, "Input/output error")
        real(fd)
        inodes.append(ino)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return inodes


def test_every_file_written_is_synced_before_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Files closed to stay under ``OPEN_FILES`` are reopened where they end and synced too; a
    file whose sync fails does not stop the checkpoint and is synced at the next one."""
    monkeypatch.setattr(event_files, "OPEN_FILES", 2)
    s = _store(tmp_path / "db.sqlite3", *(_task(i) for i in range(1, 6)))
    for first in (1, 11, 21):
        for i in range(1, 6):
            s.append_events(_rows(f"t{i}", first, first + 9))
        s.commit()
    inode = {i: s._files.path(i).stat().st_ino for i in range(1, 6)}
    synced = _synced(monkeypatch, fail={inode[3]})
    with caplog.at_level(logging.WARNING, logger="supervisor.wal"):
        s.checkpoint()
    assert sorted(synced) == sorted(inode[i] for i in (1, 2, 4, 5))
    assert any("not synced" in r.getMessage() for r in caplog.records)
    synced.clear()
    s.checkpoint()
    assert synced == [inode[3]]  # the one that failed, and nothing written since
    for i in range(1, 6):
        assert _seqs(s, f"t{i}") == list(range(1, 31))
    s.close()


def test_a_synced_file_leaves_the_page_cache_but_its_end_and_still_reads(tmp_path: Path) -> None:
    """The checkpoint's sync lets the page cache go of each file it synced, all but its last
    ``KEEP_CACHED`` bytes; every event still reads back (from the disk)."""
    if not drops_clean_pages(tmp_path):
        pytest.skip(f"the file system of {tmp_path} keeps clean pages (tmpfs): nothing to let go")
    s = _store(tmp_path / "db.sqlite3", _task(1), _task(2))
    for first in range(1, 4001, 1000):
        s.append_events(_rows("t1", first, first + 999, size=1000) + _rows("t2", first, first + 99))
        s.commit()
    big, small = s._files.path(1), s._files.path(2)
    size = big.stat().st_size
    assert size > 3 * event_files.KEEP_CACHED and small.stat().st_size < event_files.KEEP_CACHED
    assert cached_bytes(big) >= size - 4096  # just written
    small_cached = cached_bytes(small)
    s.checkpoint()
    assert event_files.KEEP_CACHED - 8192 <= cached_bytes(big) <= event_files.KEEP_CACHED + 8192
    assert cached_bytes(small) == small_cached  # all of it is its end
    assert _seqs(s, "t1") == list(range(1, 4001)) and _seqs(s, "t2", after=3000) == list(range(3001, 3101))
    s.close()


def test_a_file_that_cannot_be_removed_does_not_fail_the_deletion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _store(tmp_path / "db.sqlite3", _task(1, COMPLETED), _task(2, COMPLETED))
    s.append_events(_rows("t1", 1, 10) + _rows("t2", 1, 10))
    s.commit()
    published: list[str] = []
    file = s._files.path(1)
    file.unlink()
    (file / "in-the-way").mkdir(parents=True)  # unlink() of a directory fails
    with caplog.at_level(logging.WARNING, logger=event_files.__name__), s.batch():
        s.delete_task("t1")
        s.delete_task("t2")
        s.commit(after=lambda: published.append("after"))
    assert published == ["after"] and s.get_task("t1") is None and s.get_task("t2") is None
    assert not s._files.path(2).exists()
    assert any("not removed" in r.getMessage() for r in caplog.records)
    s.close()


_FULL = """
import errno, resource, signal, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.supervisor.test_event_files import _rows, _seqs, _task
from supervisor.store import Store
s = Store(Path({path!r}))
s.insert_tasks([_task(1)])
s.append_events(_rows("t1", 1, 10))
s.commit()
file = Path({path!r} + "-events") / "1.jsonl"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (file.stat().st_size + 1000, resource.RLIM_INFINITY))
try:
    s.append_events(_rows("t1", 11, 20))  # a disk full halfway through the run
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
else:
    raise AssertionError("no error")
s.commit()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
s.append_events(_rows("t1", 11, 20))  # again, once there is room
s.commit()
assert _seqs(s, "t1") == list(range(1, 21)), _seqs(s, "t1")
s.close()
"""


def test_a_full_disk_fails_the_append_and_the_next_one_lands_where_it_says(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite3")
    script = textwrap.dedent(_FULL.format(repo=str(REPO), path=path))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_store_of_rows_only_is_given_file_columns_when_opened(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "db.sqlite3"
    s = _store(path, _task(1))
    s.close()
    old = sqlite3.connect(str(path))  # the events table as the version before event files made it
    old.executescript("DROP TABLE events; CREATE TABLE events (id INTEGER PRIMARY KEY, json BLOB NOT NULL);")
    old.execute(
        "INSERT INTO events VALUES (?, ?)", (event_runs.event_key(1, 1), ev.pack([_line(i) for i in range(1, 11)]))
    )
    old.commit()
    old.close()
    s = Store(path)
    assert [r[1] for r in s._db.execute("PRAGMA table_info(events)")] == ["id", "json", "at", "size", "last"]
    s.append_events(_rows("t1", 11, 20))
    s.commit()
    assert _placement(s) == [(1, False), (11, True)]
    assert _seqs(s, "t1", after=5) == list(range(6, 21))
    s.close()
    assert os.path.exists(path.with_name(path.name + "-events") / "1.jsonl")


def test_runs_of_one_batch_stay_rows_of_their_own(tmp_path: Path) -> None:
    """Two runner runs taken in one batch: two rows (not copied into one), published as two
    messages, each the bytes of its row."""
    s, pipeline, published = _pipeline(tmp_path)
    raws = _runner_lines(40)
    assert pipeline.ingest([[b"t1", ev.pack(raws[:20]), ev.PLAIN], [b"t1", ev.pack(raws[20:]), ev.PLAIN]]) == 40
    rows = s._db.execute("SELECT id, at, size FROM events ORDER BY id").fetchall()
    assert [key & 0xFFFFFFFF for key, _, _ in rows] == [1, 21]
    file = (tmp_path / "db.sqlite3-events" / "1.jsonl").read_bytes()
    assert [data for _, data in published] == [file[at : at + size] for _, at, size in rows]
    assert [orjson.loads(e)["seq"] for e in s.events_after("t1", 0, 100)] == list(range(1, 41))
    s.close()
