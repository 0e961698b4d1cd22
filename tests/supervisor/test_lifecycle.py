"""The lifecycle driven in-process (``tests.supervisor.lifecycle_rig``: real Store, Pipeline
and Scheduler; a fake executor whose jobs end when and how a test says): queue order, limits,
start and reap outcomes, cancel (pending, running, grace then kill), shutdown, recovery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from protocol.tasks import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING
from tests.supervisor.lifecycle_rig import WAIT, FakeHandle, Rig, runner_event

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.fixture()
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# -- queue and limits ---------------------------------------------------------------------------
async def test_queue_starts_by_priority_then_in_order(rig: Rig) -> None:
    rig.scheduler.set_limits({"cpu": {"diagnostic": 0}})
    for task_id, priority in [("t0", 5), ("t1", 9), ("t2", 5), ("t3", 1), ("t4", 9)]:
        rig.submit(task_id, priority=priority)
    assert rig.executor.order == [] and rig.scheduler.queue_length == 5
    assert rig.messages("t0") == ["queued (priority 5, device cpu)"]
    rig.scheduler.set_limits({"cpu": {"diagnostic": 1}})
    rig.lifecycle.schedule()
    for expected in ["t1", "t4", "t0", "t2", "t3"]:
        handle = await rig.started(expected)
        assert rig.scheduler.running_count == 1  # one at a time: the next waits for the slot
        handle.exit(0)
        await rig.final(expected)
    assert rig.executor.order == ["t1", "t4", "t0", "t2", "t3"]
    assert rig.scheduler.running_count == 0 and rig.scheduler.queue_length == 0


async def test_a_finished_task_frees_its_slot_and_a_raised_limit_starts_more(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=2)
    for task_id in ("a", "b", "c", "d"):
        rig.submit(task_id)
    a = await rig.started("a")
    await rig.started("b")
    assert rig.executor.order == ["a", "b"]
    assert rig.tasks["c"].status == PENDING and rig.store.get_task("c").status == PENDING  # type: ignore[union-attr]
    a.exit(0)
    await rig.started("c")
    assert rig.scheduler.running_count == 2 and "a" not in rig.tasks
    rig.scheduler.set_limits({"cpu": {"diagnostic": 3}})
    rig.lifecycle.schedule()
    await rig.started("d")
    assert rig.executor.order == ["a", "b", "c", "d"]
    spec = rig.executor.specs["d"]  # the job spec the executor got
    assert (spec.task_id, spec.host_device, spec.task_dir) == ("d", "cpu", str(rig.settings.tasks_dir / "d"))


async def test_a_task_the_executor_has_no_room_for_waits_in_our_queue(tmp_path: Path) -> None:
    """A cluster executor (Ray) admits a task only when its free resources cover it: the others
    stay pending, in order, and start as room appears."""
    rig = Rig(tmp_path, limit=8)
    rig.executor.room = 1
    for task_id in ("a", "b", "c"):
        rig.submit(task_id)
    a = await rig.started("a")
    assert [rig.tasks[t].status for t in ("b", "c")] == [PENDING, PENDING] and rig.scheduler.queued() == ["b", "c"]
    rig.executor.room = 1  # a's resources are free again (it ends)
    a.exit(0)
    await rig.final("a")
    await rig.started("b")
    assert rig.tasks["c"].status == PENDING and rig.executor.order == ["a", "b"]


async def test_a_start_that_fails_fails_the_task_and_frees_the_slot(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=1)
    rig.executor.fail_next = RuntimeError("no cgroup for you")
    rig.submit("a")
    rig.submit("b")
    task = await rig.final("a")
    assert (task.status, task.message, task.pid) == (
        FAILED,
        "could not start the runner: RuntimeError: no cgroup for you",
        None,
    )
    assert rig.events("a")[-1]["status"] == FAILED
    await rig.started("b")  # the slot went to the next task


# -- start and reap -------------------------------------------------------------------------------
async def test_a_start_is_recorded_on_the_task(rig: Rig) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    task = rig.store.get_task("a")
    assert task is not None
    assert (task.status, task.device, task.pid, task.pid_started) == (RUNNING, "cpu", handle.pid, handle.create_time)
    assert task.cgroup is not None and orjson.loads(task.cgroup) == handle.cgroup and task.limits_enforced is True
    assert f"started on cpu (pid {handle.pid}, fake start)" in rig.messages("a")
    assert rig.lifecycle.processes() == [(rig.tasks["a"], handle)]


@pytest.mark.parametrize(
    "code, oom, status, message",
    [
        (0, False, FAILED, "runner exited without reporting"),
        (7, False, FAILED, "exited with code 7"),
        (-9, False, FAILED, "killed by signal SIGKILL"),
        (-9, True, FAILED, "out of memory (limit 100 MiB)"),
        (-15, False, CANCELLED, "cancelled: the runner was terminated by SIGTERM"),
        (
            None,
            False,
            FAILED,
            "runner ended without reporting (exit status unknown: adopted after a supervisor restart)",
        ),
    ],
)
async def test_reap_outcomes(rig: Rig, code: int | None, oom: bool, status: str, message: str) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    handle.left = [handle.pid + 1]  # a process the job left behind
    handle.exit(code, oom=oom, memory_limit_mb=100)
    task = await rig.final("a")
    assert (task.status, task.message, task.exit_code) == (status, message, code)
    final = rig.events("a")[-1]
    assert (final["kind"], final["status"], final["source"], final["message"]) == (
        "status",
        status,
        "supervisor",
        message,
    )
    assert final["level"] == ("WARNING" if status == CANCELLED else "ERROR")
    assert handle.signals == ["KILL"] and handle.cleaned  # nothing of the job outlives it
    assert rig.scheduler.running_count == 0 and rig.lifecycle.running == {}


async def test_the_runners_own_final_status_wins_and_goes_out_last(rig: Rig) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    rig.pipeline.ingest(
        [
            [
                b"a",
                runner_event("a", 1, kind="status", status=RUNNING),
                runner_event("a", 2, kind="status", status=COMPLETED, message="done"),
            ]
        ]
    )
    assert rig.tasks["a"].status == RUNNING  # held back until the process is reaped
    handle.exit(0)
    task = await rig.final("a")
    assert (task.status, task.message, task.exit_code) == (COMPLETED, "done", 0)
    events = rig.events("a")
    assert (events[-1]["status"], events[-1]["rseq"], "source" in events[-1]) == (COMPLETED, 2, False)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(1 for e in events if e.get("status") in (COMPLETED, FAILED, CANCELLED)) == 1


async def test_a_runner_whose_exit_cannot_be_read_fails_as_lost(rig: Rig) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    handle.lose(OSError("pidfd gone"))
    task = await rig.final("a")
    assert (task.status, task.message) == (FAILED, "runner lost: OSError: pidfd gone")
    assert handle.cleaned


# -- cancel ---------------------------------------------------------------------------------------
async def test_cancel_pending_ends_it_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=0)
    rig.submit("a")
    rig.lifecycle.cancel("a", "cancelled on request")
    task = rig.store.get_task("a")
    assert task is not None and (task.status, task.message) == (CANCELLED, "cancelled on request")
    assert rig.events("a")[-1]["status"] == CANCELLED and rig.events("a")[-1]["level"] == "WARNING"
    assert rig.scheduler.queue_length == 0 and "a" not in rig.tasks
    rig.scheduler.set_limits({"cpu": {"diagnostic": 1}})
    rig.lifecycle.schedule()
    assert rig.executor.order == []  # never started


async def test_cancel_running_terminates_and_ends_cancelled(rig: Rig) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    rig.lifecycle.cancel("a", "cancelled on request")
    rig.lifecycle.cancel("a", "again")  # a second request changes nothing
    await rig.until(lambda: handle.signals == ["TERM"], "SIGTERM sent")
    assert "cancel requested: cancelled on request" in rig.messages("a")
    handle.exit(0)  # stopped at its safe point
    task = await rig.final("a")
    assert (task.status, task.message, task.exit_code) == (CANCELLED, "cancelled on request", 0)
    assert handle.signals == ["TERM"]  # no kill: it stopped within the grace period


async def test_cancel_escalates_to_kill_after_the_grace_period(tmp_path: Path) -> None:
    rig = Rig(tmp_path, grace=0.05)
    rig.submit("a")
    handle = await rig.started("a")
    rig.lifecycle.cancel("a", "cancelled on request")
    await rig.until(lambda: "KILL" in handle.signals, "killed")  # it ignored the SIGTERM
    assert handle.signals == ["TERM", "KILL"]
    assert "runner did not stop within 0.05 s: killing it" in rig.messages("a")
    handle.exit(-9)
    task = await rig.final("a")
    assert (task.status, task.message, task.exit_code) == (CANCELLED, "cancelled on request", -9)


async def test_cancel_while_starting_stops_it_once_started(rig: Rig) -> None:
    rig.executor.gate = asyncio.Event()
    rig.submit("a")
    rig.lifecycle.cancel("a", "cancelled on request")  # no process yet
    assert rig.tasks["a"].status == RUNNING
    rig.executor.gate.set()
    handle = await rig.started("a")
    await rig.until(lambda: handle.signals == ["TERM"], "SIGTERM sent once started")
    handle.exit(0)
    assert (await rig.final("a")).status == CANCELLED
    assert rig.executor.aborted == ["a"]  # asked; a no-op for this executor (as locally)


async def test_cancel_while_a_start_waits_ends_cancelled_once_the_executor_aborts_it(tmp_path: Path) -> None:
    # As a runner host Ray has not placed yet: the start waits until the cancel aborts it.
    rig = Rig(tmp_path, limit=1)
    rig.executor.gate = asyncio.Event()
    rig.executor.abort_ends_start = True
    rig.submit("a")
    rig.submit("b")  # waits for a's slot
    await rig.until(lambda: "a" in rig.lifecycle.running, "a placed")
    rig.lifecycle.cancel("a", "cancelled on request")
    task = await rig.final("a")
    assert (task.status, task.message) == (CANCELLED, "cancelled on request (aborted before its process existed)")
    assert rig.events("a")[-1]["status"] == CANCELLED and rig.executor.order == []
    assert rig.executor.aborted == ["a"]
    rig.executor.gate.set()  # the slot went to the next task
    handle = await rig.started("b")
    assert rig.executor.order == ["b"]
    handle.exit(0)
    await rig.final("b")


async def test_a_failure_reported_while_cancelling_ends_cancelled_with_it(rig: Rig) -> None:
    rig.submit("a")
    handle = await rig.started("a")
    rig.lifecycle.cancel("a", "cancelled on request")
    rig.pipeline.ingest(
        [[b"a", runner_event("a", 1, kind="status", status=FAILED, level="ERROR", message="torn down")]]
    )
    handle.exit(1)
    task = await rig.final("a")
    assert (task.status, task.message) == (
        CANCELLED,
        "cancelled on request (the runner reported on its way out: torn down)",
    )


# -- shutdown -------------------------------------------------------------------------------------
async def test_shutdown_cancels_running_and_keeps_pending(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=1)
    rig.submit("a")
    rig.submit("b")
    handle = await rig.started("a")
    rig.lifecycle.close()
    stopping = asyncio.ensure_future(rig.lifecycle.stop_jobs("cancelled: the supervisor is shutting down"))
    await rig.until(lambda: handle.signals == ["TERM"], "SIGTERM sent")
    handle.exit(0)
    await asyncio.wait_for(stopping, WAIT)
    a, b = rig.store.get_task("a"), rig.store.get_task("b")
    assert a is not None and (a.status, a.message) == (CANCELLED, "cancelled: the supervisor is shutting down")
    assert b is not None and b.status == PENDING  # for the next start
    assert rig.executor.order == ["a"]  # the freed slot went to nobody


async def test_kill_jobs_kills_every_running_job(rig: Rig) -> None:
    rig.submit("a")
    rig.submit("b")
    handles = [await rig.started("a"), await rig.started("b")]
    rig.lifecycle.kill_jobs()
    assert [h.signals for h in handles] == [["KILL"], ["KILL"]]


# -- recovery -------------------------------------------------------------------------------------
async def test_recover_adopts_live_ends_lost_and_requeues_pending_in_order(rig: Rig) -> None:
    rig.scheduler.set_limits({"cpu": {"diagnostic": 2}})
    for task_id, pid in (("live", 501), ("finished", 502), ("lost", 503)):
        task = rig.record(task_id, status=RUNNING)
        task.pid, task.pid_started, task.device, task.started_at = pid, 1_000.0 + pid, "cpu", time.time()
        rig.store.update_task(task)
    for task_id, priority in (("p1", 5), ("p2", 5), ("p3", 9)):
        rig.record(task_id, priority=priority)
    live = FakeHandle(501, rig.changed.set)
    rig.executor.adoptable[501] = live
    # The finished runner journaled its end while no supervisor ran.
    journal = Path(rig.settings.tasks_dir / "finished" / "events.jsonl")
    journal.parent.mkdir(parents=True)
    journal.write_bytes(
        runner_event("finished", 1)
        + b"\n"
        + runner_event("finished", 2, kind="status", status=COMPLETED, message="completed")
        + b"\n"
    )

    rig.lifecycle.recover()

    assert rig.executor.kept == {"live"}  # only the adopted task's leftovers stay
    assert "adopted after a supervisor restart (pid 501)" in rig.messages("live")
    finished, lost = rig.store.get_task("finished"), rig.store.get_task("lost")
    assert finished is not None and (finished.status, finished.message) == (COMPLETED, "completed")
    assert [e["rseq"] for e in rig.events("finished")] == [1, 2]  # every journaled event, the end last
    assert lost is not None and (lost.status, lost.message) == (FAILED, "runner lost while the supervisor was down")
    # The adopted runner holds a slot: one of the two; pending tasks start in queue order.
    await rig.started("p3")
    assert rig.executor.order == ["p3"] and rig.scheduler.queue_length == 2
    live.exit(None)  # only its parent could read its status
    assert (await rig.final("live")).status == FAILED
    await rig.started("p1")
    rig.executor.handles["p3"].exit(0)
    await rig.started("p2")
    assert rig.executor.order == ["p3", "p1", "p2"]
