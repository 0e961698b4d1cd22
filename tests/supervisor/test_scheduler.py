"""The scheduler's rules, driven directly (pure logic: no sockets, no processes)."""

from __future__ import annotations

import random

import pytest

from supervisor.scheduler import Scheduler

LIMITS = {
    "cpu": {"training": 2, "inference": 4, "preprocessing": 2, "diagnostic": 3},
    "gpu": {"training": 1, "inference": 3, "preprocessing": 2, "diagnostic": 8},
}


def test_priority_then_fifo() -> None:
    s = Scheduler({"cpu": {"diagnostic": 1}})
    for i, prio in enumerate([5, 9, 5, 1, 9, 10]):
        s.push(f"t{i}", "diagnostic", "cpu", prio)
    order = []
    while s.queue_length:
        placed = s.place()
        assert len(placed) == 1
        order.append(placed[0].task_id)
        assert s.place() == []  # the slot is taken
        s.release(placed[0].task_id)
    assert order == ["t5", "t1", "t4", "t0", "t2", "t3"]


def test_limits_per_device_and_type_do_not_block_others() -> None:
    s = Scheduler(LIMITS)
    for i in range(3):
        s.push(f"train{i}", "training", "cpu", 9)
    s.push("inf", "inference", "cpu", 1)
    placed = [p.task_id for p in s.place()]
    # Two trainings fill their limit; the third waits, the inference behind it still starts.
    assert placed == ["train0", "train1", "inf"]
    assert s.queued() == ["train2"]
    assert s.usage()["cpu"] == {"training": 2, "inference": 1, "preprocessing": 0, "diagnostic": 0, "serving": 0}


def test_max_concurrency_never_exceeds_limit_across_changes() -> None:
    rng = random.Random(7)
    s = Scheduler({"cpu": {"diagnostic": 3}})
    running: list[str] = []
    started = 0
    for i in range(200):
        s.push(f"t{i}", "diagnostic", "cpu", rng.randint(1, 10))
    limit = 3
    steps = 0
    while s.queue_length or running:
        steps += 1
        if steps % 17 == 0:
            limit = rng.randint(0, 5) or 1
            s.set_limits({"cpu": {"diagnostic": limit}})
        new = [p.task_id for p in s.place()]
        # Newly started tasks only fill up to the limit in force.
        if new:
            assert len(running) + len(new) <= limit
        running.extend(new)
        started += len(new)
        if running:
            done = running.pop(rng.randrange(len(running)))
            assert s.release(done)
    assert started == 200


def test_lowering_a_limit_starts_nothing_until_under_it() -> None:
    s = Scheduler({"cpu": {"diagnostic": 3}})
    for i in range(6):
        s.push(f"t{i}", "diagnostic", "cpu", 5)
    assert len(s.place()) == 3
    s.set_limits({"cpu": {"diagnostic": 1}})
    s.release("t0")
    assert s.place() == []  # 2 still running > 1
    s.release("t1")
    assert s.place() == []  # 1 running = limit
    s.release("t2")
    assert [p.task_id for p in s.place()] == ["t3"]
    s.set_limits({"cpu": {"diagnostic": 4}})
    assert [p.task_id for p in s.place()] == ["t4", "t5"]


def test_cuda_on_host_without_gpu_falls_back_with_warning() -> None:
    s = Scheduler(LIMITS, gpu_count=0)
    s.push("a", "training", "cuda", 5)
    (p,) = s.place()
    assert p.device == "cpu"
    assert p.warning is not None and "no GPU" in p.warning


def test_cuda_picks_least_loaded_gpu() -> None:
    free = {0: 4 << 30, 1: 8 << 30}
    s = Scheduler(LIMITS, gpu_count=2, free_memory=lambda i: free[i])
    s.push("a", "inference", "cuda", 5)
    s.push("b", "inference", "cuda", 5)
    s.push("c", "inference", "cuda", 5)
    devices = [p.device for p in s.place()]
    # equal load → more free memory first; then the emptier one.
    assert devices == ["cuda:1", "cuda:0", "cuda:1"]


def test_cuda_n_override_and_check_device() -> None:
    s = Scheduler(LIMITS, gpu_count=2)
    assert s.check_device("cuda:1") is None
    assert "does not exist" in (s.check_device("cuda:2") or "")
    assert s.check_device("tpu") is not None
    s.set_limits({"cuda:1": {"training": 2}})
    assert s.limit("cuda:1", "training") == 2
    assert s.limit("cuda:0", "training") == 1
    for i in range(3):
        s.push(f"t{i}", "training", "cuda:1", 5)
    assert len(s.place()) == 2


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"tpu": {"training": 1}}, "unknown device"),
        ({"cpu": {"nap": 1}}, "unknown task type"),
        ({"cpu": {"training": -1}}, ">= 0"),
        ({"cpu": {"training": True}}, ">= 0"),
        ({"cpu": 3}, "must be an object"),
        ({"cuda:0": {"training": 1}}, "does not exist"),
    ],
)
def test_validate_limits(changes: object, fragment: str) -> None:
    s = Scheduler(LIMITS)
    why = s.validate_limits(changes)
    assert why is not None and fragment in why


def test_remove_and_occupy() -> None:
    s = Scheduler({"cpu": {"diagnostic": 1}})
    s.occupy("adopted", "diagnostic", "cpu")
    s.push("a", "diagnostic", "cpu", 5)
    assert s.place() == []  # the adopted runner holds the slot
    assert s.remove("a") and not s.remove("a")
    assert s.release("adopted") and not s.release("adopted")
