"""The queue's wait limit (``RFUAV_QUEUE_TIMEOUT``): a task that waited for resources longer
than the limit fails with that reason, and the queue moves on. One loop timer on the deadline of
the task queued first does it (no polling): driven in-process with the lifecycle rig, then in a
real supervisor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.tasks import CANCELLED, FAILED, PENDING, RUNNING
from tests.supervisor.lifecycle_rig import Rig
from tests.support.supervisor import SupervisorProcess

pytestmark = [pytest.mark.timeout(60)]

WAITED = re.compile(r"waited (\d+\.\d) s for resources \(RFUAV_QUEUE_TIMEOUT=0\.3\)")


def _deadline(rig: Rig) -> float | None:
    """When the lifecycle's one queue timer fires (None: none is armed)."""
    timer = rig.lifecycle._deadline.timer
    return None if timer is None else timer.when()


@pytest.mark.asyncio
async def test_a_task_that_waits_past_the_limit_fails_and_the_queue_moves_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=1, queue_timeout=0.3)
    a = rig.submit("a")
    running = await rig.started("a")
    loop = asyncio.get_running_loop()
    queued_at = loop.time()
    rig.submit("b")
    rig.submit("c", priority=9)  # priority does not matter: each waits from its own submission
    assert rig.scheduler.queued() == ["c", "b"]
    b = await rig.final("b")
    waited = loop.time() - queued_at
    assert b.status == FAILED and b.pid is None
    match = WAITED.fullmatch(b.message)
    assert match is not None, b.message
    assert float(match.group(1)) >= 0.3 and waited >= 0.3
    final = rig.events("b")[-1]
    assert (final["kind"], final["status"], final["level"], final["message"]) == ("status", FAILED, "ERROR", b.message)
    assert (await rig.final("c")).status == FAILED
    # The running task is not the queue's business; nothing waits, so no timer is left.
    assert rig.tasks["a"].status == RUNNING and a.task_id in rig.lifecycle.running
    assert rig.scheduler.queue_length == 0 and _deadline(rig) is None
    running.exit(0)
    assert "waited" not in (await rig.final("a")).message  # its end is its runner's
    # A later task gets the full wait from its own submission.
    rig.scheduler.set_limits({"cpu": {"diagnostic": 0}})
    rig.submit("d")
    assert (await rig.final("d")).status == FAILED


@pytest.mark.asyncio
async def test_one_timer_follows_the_oldest_queued_task(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=1, queue_timeout=30.0)
    running = await rig.started(rig.submit("a").task_id)
    rig.submit("b")
    rig.submit("c")
    oldest = rig.scheduler.oldest()
    assert oldest is not None and oldest[0] == "b"
    assert _deadline(rig) == oldest[1] + 30.0
    # A cancel of the oldest moves the timer to the next one.
    rig.lifecycle.cancel("b", "not needed")
    assert (await rig.final("b")).status == CANCELLED
    oldest = rig.scheduler.oldest()
    assert oldest is not None and oldest[0] == "c" and _deadline(rig) == oldest[1] + 30.0
    # A task that gets its slot in time is not failed, and the empty queue has no timer.
    running.exit(0)
    await rig.started("c")
    assert rig.tasks["c"].status == RUNNING and _deadline(rig) is None
    # Shutdown: pending tasks stay pending for the next start, and no timer fires.
    rig.submit("d")
    assert _deadline(rig) is not None
    rig.lifecycle.close()
    assert _deadline(rig) is None and rig.tasks["d"].status == PENDING


@pytest.mark.asyncio
async def test_without_a_limit_no_timer_is_armed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=0)
    rig.submit("a")
    assert rig.scheduler.queue_length == 1 and _deadline(rig) is None
    assert rig.tasks["a"].status == PENDING


@pytest.mark.timeout(120)
def test_a_real_supervisor_fails_a_task_that_waited_too_long(
    make_supervisor: Callable[..., SupervisorProcess],
) -> None:
    sup = make_supervisor(RFUAV_QUEUE_TIMEOUT="1", RFUAV_LIMIT_CPU_DIAGNOSTIC="1")
    busy = sup.submit(params={"sleep": 60})
    sup.wait_task(busy, lambda t: t["status"] == RUNNING, 60, "running")
    waiting = sup.submit(params={"events": 1})
    task = sup.wait_final(waiting, 30)
    assert task["status"] == FAILED, task
    assert re.fullmatch(r"waited 1\.\d s for resources \(RFUAV_QUEUE_TIMEOUT=1\)", task["message"]), task["message"]
    events = sup.logs(waiting)
    assert events[0]["message"].startswith("queued")
    assert (events[-1]["status"], events[-1]["level"]) == (FAILED, "ERROR")
    assert not any(e["message"].startswith("started") for e in events)
    assert sup.get(busy)["status"] == RUNNING
    assert "waited 1." in sup.log_text()
    sup.call("cancel", task_id=busy)
    assert sup.wait_final(busy)["status"] == CANCELLED
