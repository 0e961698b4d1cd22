"""The runner's publisher and entry, with real sockets and real runner processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from protocol import events as ev
from protocol.jobs import JobSpec
from runner import publisher as publisher_module
from runner.publisher import Publisher
from tests.support.pagecache import cached_bytes, drops_clean_pages
from tests.support.small_disk import SmallDisk

FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def sub(short_dir: Path) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{short_dir}/ev.sock"
    sock.bind(endpoint)
    sock.subscribe(b"")
    yield sock, endpoint
    sock.close(linger=0)
    ctx.term()


def _collect(sock: zmq.Socket[bytes], until: Any, timeout_ms: int = 30_000) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        assert sock.poll(timeout_ms), f"no event within {timeout_ms} ms after {len(events)} events"
        frames = ev.unpack(sock.recv_multipart())
        for frame in frames[1:]:
            events.append(orjson.loads(frame))
        if until(events):
            return events


def test_waits_for_subscriber_and_delivers_every_event_in_order(
    sub: tuple[zmq.Socket[bytes], str], short_dir: Path
) -> None:
    sock, endpoint = sub
    publisher = Publisher("t1", endpoint, short_dir / "j.jsonl")
    count = 20_000
    subscribed: list[bool] = []

    def produce() -> None:
        subscribed.append(publisher.wait_for_subscriber(10.0))
        for i in range(count):
            publisher.emit("log", f"line {i}", i=i)

    # A bound ZeroMQ socket takes in new peers only while its owner calls into it: the
    # producer runs in a thread so that _collect (polling) lets the subscription through.
    producer = threading.Thread(target=produce)
    producer.start()
    events = _collect(sock, lambda evs: len(evs) >= count)
    producer.join()
    publisher.close()
    assert subscribed == [True]
    assert [e["rseq"] for e in events] == list(range(1, count + 1))
    assert events[0]["task_id"] == "t1" and events[-1]["i"] == count - 1
    journal = [orjson.loads(line) for line in (short_dir / "j.jsonl").read_bytes().splitlines()]
    assert [e["rseq"] for e in journal] == list(range(1, count + 1))


@pytest.mark.parametrize("lone_gap", [0.0, publisher_module.LONE_GAP], ids=["every-event-lone", "default"])
def test_lone_events_and_bursts_from_many_threads_stay_in_order(
    sub: tuple[zmq.Socket[bytes], str], short_dir: Path, monkeypatch: pytest.MonkeyPatch, lone_gap: float
) -> None:
    """An event written by its emitting thread (lone) and events batched by the sender thread
    never overtake each other, on the socket and in the journal; a burst still batches."""
    monkeypatch.setattr(publisher_module, "LONE_GAP", lone_gap)
    sock, endpoint = sub
    publisher = Publisher("t4", endpoint, short_dir / "j.jsonl")
    per_thread, threads = 2_000, 4
    count = per_thread * threads

    def produce() -> None:
        publisher.wait_for_subscriber(10.0)
        emitters = [
            threading.Thread(target=lambda: [publisher.emit("log", "x") for _ in range(per_thread)])
            for _ in range(threads)
        ]
        for emitter in emitters:
            emitter.start()
        for emitter in emitters:
            emitter.join()

    producer = threading.Thread(target=produce)
    producer.start()
    messages = 0
    rseqs: list[int] = []
    while len(rseqs) < count:
        assert sock.poll(30_000), f"no event within 30 s after {len(rseqs)} events"
        frames = sock.recv_multipart()
        messages += 1
        # The topic, every event of the message packed in one frame, and PLAIN: all of them
        # are plain log lines.
        assert len(frames) == 3 and frames[2] == ev.PLAIN
        rseqs += [orjson.loads(event)["rseq"] for event in ev.unpack(frames)[1:]]
    producer.join()
    publisher.close()
    assert rseqs == list(range(1, count + 1))
    journal = [orjson.loads(line)["rseq"] for line in (short_dir / "j.jsonl").read_bytes().splitlines()]
    assert journal == rseqs
    if lone_gap > 0:  # four threads emitting as fast as they can: batched, not one message each
        assert messages < count // 2, messages


def test_plain_log_lines_go_out_as_runs_marked_plain_and_the_rest_as_they_are(
    sub: tuple[zmq.Socket[bytes], str], short_dir: Path
) -> None:
    """A run of plain log lines is one message ending in PLAIN; any event the supervisor reads
    (progress, metrics, a log line with a field it checks or applies) goes in a message
    without it, in order, and the journal holds the same lines."""
    sock, endpoint = sub
    publisher = Publisher("t5", endpoint, short_dir / "j.jsonl")
    emitted = [
        ("log", "INFO", {"i": 1}),
        ("log", "WARNING", {"i": 2}),
        ("progress", "INFO", {"progress": 5}),
        ("log", "INFO", {"progress": 6}),  # a log line that sets progress: read by the supervisor
        ("log", "ERROR", {}),
        ("log", "INFO", {"step": 3}),
        ("log", "DEBUG", {}),  # not a level of the service: the supervisor's check drops it
        ("log", "INFO", {"stage": "training"}),  # a field the supervisor neither checks nor applies
    ]
    plain = [True, True, False, False, True, False, False, True]
    assert [ev.is_plain(kind, level, "m", fields) for kind, level, fields in emitted] == plain
    assert not ev.is_plain("log", "INFO", 3, {})  # a message that is not a string

    def produce() -> None:
        publisher.wait_for_subscriber(10.0)
        with publisher._write_lock:  # every event queued first: one batch for the sender
            for kind, level, fields in emitted:
                publisher.emit(kind, "m", level, **fields)

    producer = threading.Thread(target=produce)
    producer.start()
    messages: list[list[bytes]] = []
    while sum(len(m[1].split(b"\n")) for m in messages) < len(emitted):
        assert sock.poll(30_000), f"no event within 30 s after {len(messages)} messages"
        messages.append(sock.recv_multipart())
    producer.join()
    publisher.close()
    marks = [(len(m[1].split(b"\n")), m[2:] == [ev.PLAIN]) for m in messages]
    assert marks == [(2, True), (2, False), (1, True), (2, False), (1, True)]
    lines = [line for m in messages for line in m[1].split(b"\n")]
    assert [orjson.loads(line)["rseq"] for line in lines] == list(range(1, 9))
    assert (short_dir / "j.jsonl").read_bytes() == b"\n".join(lines) + b"\n"


def test_without_subscriber_the_journal_keeps_every_event(short_dir: Path) -> None:
    publisher = Publisher("t2", f"ipc://{short_dir}/nobody.sock", short_dir / "j.jsonl")
    assert not publisher.wait_for_subscriber(0.05)
    threads = [threading.Thread(target=lambda: [publisher.emit("log", "x") for _ in range(500)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    publisher.close()
    journal = [orjson.loads(line) for line in (short_dir / "j.jsonl").read_bytes().splitlines()]
    assert [e["rseq"] for e in journal] == list(range(1, 2001))


def test_a_journal_the_disk_refuses_stays_whole_lines_and_the_events_go_out_without_it(
    sub: tuple[zmq.Socket[bytes], str], short_dir: Path
) -> None:
    """A full disk (a small file system of its own, filled): the events are sent all the same,
    and the journal keeps only whole lines (a write cut short, where its last page had room for
    part of it, is cut back); once there is room, it is written again."""
    sock, endpoint = sub
    with SmallDisk(short_dir / "disk", mb=1) as disk:
        journal = disk.path / "j.jsonl"
        publisher = Publisher("t3", endpoint, journal)
        ready = threading.Thread(target=publisher.wait_for_subscriber, args=(10.0,))
        ready.start()
        _collect_nothing_until(sock, ready)
        publisher.emit("log", "before")
        disk.fill()
        for i in range(50):
            publisher.emit("log", "x" * 3000, i=i)  # (most of a page each: cut short, then refused)
        publisher.flush()  # (written while the disk is full, not by the sender thread later)
        disk.free()
        publisher.emit("log", "after")
        events = _collect(sock, lambda evs: evs[-1]["message"] == "after")
        publisher.close()
        assert [e["rseq"] for e in events] == list(range(1, 53))
        lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]  # (whole lines only)
        rseqs = [e["rseq"] for e in lines]
        assert rseqs[0] == 1 and rseqs[-1] == 52 and rseqs == sorted(rseqs)
        assert len(lines) < 10  # (what fitted in the pages it had; the rest refused)


def _collect_nothing_until(sock: zmq.Socket[bytes], thread: threading.Thread) -> None:
    """Let a subscription through (a bound socket takes in peers only while called into) until
    ``thread`` is done."""
    while thread.is_alive():
        assert not sock.poll(10), "an event before any was emitted"
        thread.join(0.01)


def test_a_long_journal_leaves_the_page_cache_but_its_end(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``JOURNAL_LET_GO_BYTES`` written, the publisher lets the journal's clean pages go,
    all but its last ``JOURNAL_CACHED`` bytes (dirty ones are written back first: the next
    time finds them clean); the journal keeps every event."""
    if not drops_clean_pages(short_dir):
        pytest.skip(f"the file system of {short_dir} keeps clean pages (tmpfs): nothing to let go")
    monkeypatch.setattr(publisher_module, "JOURNAL_LET_GO_BYTES", 256 << 10)
    monkeypatch.setattr(publisher_module, "JOURNAL_CACHED", 64 << 10)
    path = short_dir / "j.jsonl"
    publisher = Publisher("t4", f"ipc://{short_dir}/nobody.sock", path)
    publisher.wait_for_subscriber(0.0)
    for i in range(2_000):  # ~1 MiB: the first let-goes find dirty pages
        publisher.emit("log", "x" * 500, i=i)
    publisher.flush()
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # now clean, whatever the kernel had written back by itself
    os.close(fd)
    synced = path.stat().st_size
    assert synced > 1 << 20 and cached_bytes(path, synced) > 0
    for i in range(2_000, 2_600):  # past the next let-go
        publisher.emit("log", "x" * 500, i=i)
    publisher.flush()
    assert cached_bytes(path, synced - publisher_module.JOURNAL_CACHED) == 0
    publisher.close()
    journal = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [e["rseq"] for e in journal] == list(range(1, 2601))


def test_encoding_puts_rseq_first_for_the_supervisor(short_dir: Path) -> None:
    """The supervisor numbers a runner's event without re-encoding it (``protocol.events.number``)
    only when ``rseq`` is its first key."""
    publisher = Publisher("t3", f"ipc://{short_dir}/nobody.sock", short_dir / "j.jsonl")
    publisher.wait_for_subscriber(0.0)
    publisher.emit("progress", "half", progress=50, stage=None)
    publisher.close()
    (line,) = (short_dir / "j.jsonl").read_bytes().splitlines()
    numbered = ev.number(line, 9)
    assert line.startswith(ev.RUNNER_PREFIX) and numbered is not None
    assert orjson.loads(numbered) == {**orjson.loads(line), "seq": 9} and "stage" not in orjson.loads(line)


def _start(
    short_dir: Path, endpoint: str, params: dict[str, Any], task_id: str = "diag", new_session: bool = True
) -> subprocess.Popen[bytes]:
    task_dir = short_dir / task_id
    task_dir.mkdir()
    spec = JobSpec(task_id, "diagnostic", "diagnostic", params, "cpu", "cpu", str(task_dir), endpoint)
    (task_dir / "spec.json").write_bytes(spec.dump())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "runner", str(task_dir / "spec.json")], env=env, start_new_session=new_session
    )


def _final(events: list[dict[str, Any]]) -> bool:
    return any(e["kind"] == "status" and e.get("status") in FINAL for e in events)


def test_runner_completes_and_reports_running_first(sub: tuple[zmq.Socket[bytes], str], short_dir: Path) -> None:
    sock, endpoint = sub
    proc = _start(short_dir, endpoint, {"events": 50, "size": 100})
    events = _collect(sock, _final)
    assert proc.wait(30) == 0
    assert events[0]["status"] == "running"
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100
    assert len([e for e in events if e["message"].startswith("event ")]) == 50
    assert [e["rseq"] for e in events] == list(range(1, len(events) + 1))


def test_runner_failure_reports_error_and_traceback(sub: tuple[zmq.Socket[bytes], str], short_dir: Path) -> None:
    sock, endpoint = sub
    proc = _start(short_dir, endpoint, {"raise": "boom at step 3"})
    events = _collect(sock, _final)
    assert proc.wait(30) == 1
    assert events[-1]["status"] == "failed"
    assert events[-1]["message"] == "RuntimeError: boom at step 3"
    assert any("Traceback" in e["message"] and e["level"] == "ERROR" for e in events)


def test_sigterm_stops_at_safe_point_and_reports_cancelled(sub: tuple[zmq.Socket[bytes], str], short_dir: Path) -> None:
    sock, endpoint = sub
    proc = _start(short_dir, endpoint, {"sleep": 120})
    _collect(sock, lambda evs: any(e["message"].startswith("sleeping") for e in evs))
    os.killpg(proc.pid, signal.SIGTERM)
    events = _collect(sock, _final)
    assert proc.wait(30) == 0
    assert events[-1]["status"] == "cancelled"


def test_runner_process_title_and_own_session(sub: tuple[zmq.Socket[bytes], str], short_dir: Path) -> None:
    import psutil

    sock, endpoint = sub
    # Started in our own session and process group (as a warm runner is: forked by a server
    # in the supervisor's session): the runner must leave them itself, before any work.
    proc = _start(short_dir, endpoint, {"sleep": 120}, task_id="titled", new_session=False)
    try:
        _collect(sock, lambda evs: any(e["message"].startswith("sleeping") for e in evs))
        assert psutil.Process(proc.pid).cmdline()[0].startswith("rfuav-runner diagnostic titled")
        # Born in our session; only its own setsid makes it the leader of a new one.
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
        assert os.getpgid(proc.pid) == proc.pid
        os.killpg(proc.pid, signal.SIGTERM)  # its own group: we are not in it
        assert _collect(sock, _final)[-1]["status"] == "cancelled"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
