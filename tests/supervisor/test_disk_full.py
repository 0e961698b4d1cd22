"""A full disk never stops the supervisor's bookkeeping, and loses none of what it records.

The store lives on a small file system of its own, filled for real (``tests.support.small_disk``):
every write SQLite makes then fails (``SQLITE_FULL``). What the supervisor records of what it
did (a start, a cancel, a task's end) waits in memory (``supervisor.backlog``) while the
lifecycle goes on: the slot is freed, the next task starts, the job is signalled. Once there is
room it is stored, in order, each task's ``seq`` gap-free. In-process with the lifecycle rig (a
real Store, Pipeline and Scheduler), then the real daemon and a real job.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.replies import CommandError
from protocol.tasks import CANCELLED, COMPLETED, FAILED, RUNNING
from tests.supervisor.lifecycle_rig import Rig, runner_event
from tests.support.small_disk import SmallDisk
from tests.support.supervisor import SupervisorProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with SmallDisk(tmp_path / "disk") as small:
        yield small


@pytest.fixture()
def rig(disk: SmallDisk) -> Iterator[Rig]:
    """The lifecycle rig, its store on the small disk (closed before the disk goes)."""
    made = Rig(disk.path, limit=1)
    yield made
    disk.free()
    made.store.close()


def _stored(rig: Rig, task_id: str) -> tuple[str, list[str], list[int]]:
    """The task's stored status, its stored events' messages and their ``seq``."""
    task = rig.store.get_task(task_id)
    assert task is not None
    events = rig.events(task_id)
    return task.status, [e["message"] for e in events], [e["seq"] for e in events]


@pytest.mark.asyncio
async def test_a_job_that_ends_on_a_full_disk_frees_its_slot_and_its_end_is_stored_once_there_is_room(
    rig: Rig, disk: SmallDisk
) -> None:
    rig.submit("a")
    rig.submit("b")  # waits for a's slot
    a = await rig.started("a")
    disk.fill()
    a.exit(0)
    await rig.started("b")  # a's end could not be stored: its slot is freed all the same
    assert "a" not in rig.tasks and rig.scheduler.running_count == 1
    status, messages, _ = _stored(rig, "a")
    assert status == RUNNING and len(messages) == 2
    assert len(rig.pipeline.backlog) >= 2  # a's end; b's start and its record
    assert not rig.pipeline.store_backlog()  # still full: they wait on

    disk.free()
    assert rig.pipeline.store_backlog()
    status, messages, seqs = _stored(rig, "a")
    assert status == FAILED and messages[-1] == "runner exited without reporting"
    assert messages[:2] == ["queued (priority 5, device cpu)", "started on cpu (pid 101, fake start)"]
    assert seqs == list(range(1, len(seqs) + 1))
    status, messages, seqs = _stored(rig, "b")
    assert status == RUNNING and messages[-1].startswith("started on cpu (pid 102")
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.asyncio
async def test_a_cancel_on_a_full_disk_stops_the_job_and_its_events_keep_their_order(rig: Rig, disk: SmallDisk) -> None:
    """The cancel request's commit fails (its client is told), the job is stopped all the same;
    once there is room, its runner's next event is stored after what waited, never before."""
    rig.submit("a")
    a = await rig.started("a")
    disk.fill()
    with pytest.raises(sqlite3.OperationalError):  # (a control group's batch: every request is answered the error)
        with rig.store.batch():
            rig.lifecycle.cancel("a", "asked")
    await rig.until(lambda: a.signals == ["TERM"], "the job terminated")
    assert len(rig.pipeline.backlog) == 1
    disk.free()
    rig.pipeline.ingest([[b"a", runner_event("a", 1, message="stopping")]])  # what waited goes first
    assert not rig.pipeline.backlog
    a.exit(-15)
    await rig.final("a")
    status, messages, seqs = _stored(rig, "a")
    assert status == CANCELLED and seqs == list(range(1, len(seqs) + 1))
    assert messages[2:] == ["cancel requested: asked", "stopping", "asked"]


@pytest.mark.asyncio
async def test_what_a_rolled_back_submit_emitted_is_never_stored(rig: Rig, disk: SmallDisk) -> None:
    """A submit the disk refuses is rolled back whole: its "queued" event waits for nothing."""
    disk.fill()
    with pytest.raises(sqlite3.OperationalError):
        with rig.store.batch():
            rig.submit("a")
    assert rig.store.get_task("a") is None and "a" not in rig.tasks
    disk.free()
    assert rig.pipeline.store_backlog() and not rig.pipeline.backlog
    assert rig.store.get_task("a") is None and rig.store.events_total() == 0


def _health_until(sup: SupervisorProcess, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """``health`` once ``predicate`` holds of it (asked again after each bounded wait for an event)."""
    deadline = time.monotonic() + 30
    while not predicate(health := sup.call("health")):
        assert time.monotonic() < deadline, f"{what}: not within 30 s; last {health}"
        sup.wait_event(0.05)
    return health


def test_the_daemon_stores_what_the_disk_refused_once_there_is_room(disk: SmallDisk) -> None:
    """The real daemon, its home on the small disk, a real job that sleeps: the disk fills; the
    job is cancelled (the request's commit fails, and its client is told) and ends, its slot
    freed; ``health`` says writes wait, and why. Once there is room the daemon's own retry
    stores them: the task ends cancelled, its events gap-free, its last the final status."""
    with SupervisorProcess(home=disk.path, env={"RFUAV_START_MODE": "cold", "RFUAV_GRACE_SECONDS": "2"}) as sup:
        task_id = sup.submit(params={"sleep": 120})
        sup.wait_task(task_id, lambda t: t["status"] == RUNNING and t["pid"] is not None, what="started")
        disk.fill()
        with pytest.raises(CommandError, match="full"):
            sup.call("cancel", task_id=task_id)
        health = _health_until(sup, lambda h: h["running"] == 0 and h["writes_waiting"] >= 2, "the job ended")
        assert "full" in health["writes_refused"], health
        disk.free()
        _health_until(sup, lambda h: h["writes_waiting"] == 0 and h["writes_refused"] is None, "stored")
        assert sup.get(task_id)["status"] == CANCELLED
        events = sup.logs(task_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert any(e["message"] == "cancel requested: cancelled on request" for e in events), events
        assert events[-1]["kind"] == "status" and events[-1]["status"] == CANCELLED, events[-1]


def test_a_daemon_that_starts_on_a_full_disk_ends_a_lost_runners_task_once_its_journal_is_stored(
    disk: SmallDisk,
) -> None:
    """The daemon is killed while a job runs; the job ends meanwhile, its end only in its
    journal; the disk fills; the daemon starts again all the same (it used to fail to start:
    reading the journal into the store raised). Once there is room, the task ends as its runner
    said, with every event of its journal."""
    env = {"RFUAV_START_MODE": "cold", "RFUAV_GRACE_SECONDS": "2"}
    with SupervisorProcess(home=disk.path, env=env) as sup:
        task_id = sup.submit(params={"events": 3, "sleep": 2})
        pid = sup.wait_task(task_id, lambda t: t["pid"] is not None, what="started")["pid"]
        runner = psutil.Process(pid)
        sup.kill()
        runner.wait(30)  # (the job ends while no supervisor runs: its end is in its journal)
        disk.fill()
        sup.start()
        health = _health_until(sup, lambda h: h["writes_refused"] is not None, "the journal refused")
        assert health["running"] == 0
        disk.free()
        task = sup.wait_final(task_id, timeout=30)
        assert task["status"] == COMPLETED, task
        events = sup.logs(task_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["i"] for e in events if "i" in e] == [1, 2, 3]
        assert events[-1]["kind"] == "status" and events[-1]["status"] == COMPLETED, events[-1]
