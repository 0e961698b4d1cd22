"""Hostile input and heavy load at the control socket: the daemon keeps answering, refuses
what it must (anchored ids and devices, the diagnostic job's switch and bounds, bad pages) and
fails closed where a job's cgroup limits cannot be applied."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.codec import PROTOCOL_VERSION
from protocol.replies import CommandError
from supervisor.cgroups import UNIFIED, CgroupError, Cgroups, Hierarchy, JobLimits
from tests.support.cgroups import why_no_cgroups
from tests.support.control_load import control_under_load
from tests.support.supervisor import SupervisorProcess

PENDING = {"RFUAV_LIMIT_CPU_TRAINING": "0"}


def _refused(sup: SupervisorProcess, spec: dict[str, Any]) -> CommandError:
    before = sup.call("list")["totals"]
    with pytest.raises(CommandError) as err:
        sup.call("submit", tasks=[{"task_type": "diagnostic", "job": "diagnostic", **spec}])
    assert sup.call("list")["totals"] == before  # nothing was stored
    return err.value


@pytest.mark.parametrize(
    "field, value",
    [
        ("task_id", "abc\n"),
        ("task_id", "\nabc"),
        ("task_id", "abc\r"),
        ("task_id", "a b"),
        ("task_id", "a/b"),
        ("task_id", "é"),
        ("task_id", "a" * 129),
        ("device", "cpu\n"),
        ("device", "cuda\n"),
        ("device", "cuda:\u0661"),  # an Arabic-Indic digit: str.isdigit() and \d take it
    ],
)
def test_ids_and_devices_are_matched_whole(supervisor: SupervisorProcess, field: str, value: str) -> None:
    err = _refused(supervisor, {field: value})
    assert err.code == "bad_request" and field in err.message


def test_diagnostic_job_is_off_unless_enabled(make_supervisor: Callable[..., SupervisorProcess]) -> None:
    sup = make_supervisor(RFUAV_DIAGNOSTIC="0")
    err = _refused(sup, {"params": {}})
    assert err.code == "not_found" and "RFUAV_DIAGNOSTIC=1" in err.message


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"memory_mb": 257}, "memory_mb must be an integer between 0 and the job's memory limit (256 MiB)"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"events": 1_000_001}, "events must be"),
        ({"size": 65_537}, "size must be"),
        ({"events": 1_000_000, "size": 65_536}, "events x size"),
        ({"sleep": 3601}, "sleep must be"),
        ({"rate": "fast"}, "rate must be"),
    ],
)
def test_diagnostic_parameters_are_bounded(
    make_supervisor: Callable[..., SupervisorProcess], params: dict[str, Any], fragment: str
) -> None:
    sup = make_supervisor(RFUAV_JOB_MEMORY_MB="256")
    err = _refused(sup, {"params": params})
    assert err.code == "bad_request" and fragment in err.message, err.message


def test_job_whose_limits_cannot_be_applied_does_not_start(make_supervisor: Callable[..., SupervisorProcess]) -> None:
    """Fail closed: a CPU quota the kernel refuses (below its 1 ms minimum) is a cgroup that
    cannot be limited, so the job fails with the reason instead of running unlimited."""
    why = why_no_cgroups()
    if why is not None:
        pytest.skip(f"this host offers no cgroups, so jobs run unlimited by design: {why}")
    sup = make_supervisor(RFUAV_JOB_CPUS="0.001")
    task_id = sup.submit(params={"events": 1})
    task = sup.wait_final(task_id)
    assert task["status"] == "failed"
    assert "cgroup limits could not be applied" in task["message"] and "cpu" in task["message"], task["message"]
    assert task["pid"] is None  # no runner was ever started
    assert not [e for e in sup.logs(task_id) if e.get("stage") == "started" or "started on" in e["message"]]
    # Nothing of it is left in any hierarchy. (``os.walk``, not ``Path.rglob``: it goes past the
    # cgroups that tests running beside this one remove while it looks.)
    leftovers = [f"{root}/{d}" for root, dirs, _ in os.walk("/sys/fs/cgroup") for d in dirs if d.endswith(task_id)]
    assert leftovers == []


@pytest.mark.timeout(300)
def test_control_answers_while_jobs_flood_events_hit_memory_limits_and_submissions_burst(
    make_supervisor: Callable[..., SupervisorProcess],
) -> None:
    """The load that once kept the daemon from answering for seconds (benchmarks.control has
    the real figures; the bound here is generous: tests never assert timings)."""
    sup = make_supervisor(RFUAV_JOB_MEMORY_MB="256", **PENDING)
    result = control_under_load(sup, events=30_000, size=512, burst=150, memory_mb=256)
    assert result["errors"] == []
    assert result["flood"]["status"] == "completed"
    assert result["events_stored"] >= 30_000  # nothing lost on the way
    if why_no_cgroups() is None:
        assert result["oom"]["message"] == "out of memory (limit 256 MiB)"
    assert result["answers"] > 50
    assert result["max_s"] < 5.0, result
    assert isinstance(result["loop_lag_max_s"], float) and result["loop_lag_max_s"] >= 0


def test_task_list_pages_with_totals_of_every_match(make_supervisor: Callable[..., SupervisorProcess]) -> None:
    sup = make_supervisor(**PENDING)
    ids = [sup.submit(job="training", params={}) for _ in range(23)]
    done = sup.submit(params={})
    sup.wait_final(done)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = sup.call("list", limit=5, cursor=cursor)
        pages += 1
        assert page["totals"]["training"] == 23 and page["totals"]["diagnostic"] == 1
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == [done, *reversed(ids)]  # newest first, each exactly once
    only = sup.call("list", task_type="training", status="pending", limit=1000)
    assert [t["task_id"] for t in only["tasks"]] == list(reversed(ids)) and only["next_cursor"] is None
    assert only["totals"] == {"training": 23, "inference": 0, "preprocessing": 0, "diagnostic": 0, "serving": 0}
    for bad in ({"limit": 0}, {"limit": 1001}, {"cursor": -1}, {"limit": "5"}):
        with pytest.raises(CommandError) as err:
            sup.call("list", **bad)
        assert err.value.code == "bad_request" and next(iter(bad)) in err.value.message


# -- fail closed, against a fake delegated cgroup v2 tree ------------------------------------------
def _memory_only_host(tmp_path: Path) -> tuple[Cgroups, Path]:
    """A delegated v2 cgroup that offers the memory controller alone (as on some GPU hosts)."""
    own = tmp_path / "rfuav.service"
    own.mkdir()
    (own / "cgroup.controllers").write_text("memory\n")
    (own / "cgroup.subtree_control").write_text("memory\n")
    (own / "cgroup.procs").write_text("")
    cgroups = Cgroups("tst000f0", hierarchies={UNIFIED: Hierarchy(UNIFIED, 2, own, frozenset({"memory"}))})
    cgroups.prepare()
    job = own / "jobs" / "rfuav-tst000f0-t1"
    job.mkdir(parents=True)
    for name in ("cgroup.procs", "memory.max", "memory.swap.max"):
        (job / name).write_text("max")
    return cgroups, job


def test_a_controller_the_host_lacks_is_reported_not_refused(tmp_path: Path) -> None:
    cgroups, job_dir = _memory_only_host(tmp_path)
    assert cgroups.missing == {"cpu", "pids"}
    job = cgroups.create("t1", JobLimits(memory_mb=300, cpus=1.5, pids=40, cpu_weight=20))
    assert (job_dir / "memory.max").read_text() == str(300 << 20)
    assert job.enforced is False and job.warning is not None
    assert "cpu: this host offers no cpu controller" in job.warning and "pids:" in job.warning


def test_a_limit_that_cannot_be_written_refuses_the_job(tmp_path: Path) -> None:
    cgroups, job_dir = _memory_only_host(tmp_path)
    (job_dir / "memory.max").unlink()
    (job_dir / "memory.max").mkdir()  # the write fails, as a refused write would
    with pytest.raises(CgroupError, match="cgroup limits could not be applied: memory: cannot write"):
        cgroups.create("t1", JobLimits(memory_mb=300, cpus=0, pids=0))


@pytest.mark.parametrize(
    "field, value", [("after", 2**63), ("after", 2**64), ("after", -1), ("limit", 2**63), ("limit", 0)]
)
def test_logs_bounds_are_bad_requests_not_internal_errors(
    supervisor: SupervisorProcess, field: str, value: int
) -> None:
    task_id = supervisor.submit(params={})
    # Written by hand: orjson itself refuses integers beyond 64 bits.
    raw = f'{{"v": {PROTOCOL_VERSION}, "id": "x", "kind": "logs", "task_id": "{task_id}", "{field}": {value}}}'
    reply = supervisor.request(raw.encode())
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
    assert field in reply["error"]["message"]
    with pytest.raises(CommandError) as err:
        supervisor.call("list", cursor=2**63)
    assert err.value.code == "bad_request" and "cursor" in err.value.message


def test_an_internal_error_never_logs_the_request_token(caplog: pytest.LogCaptureFixture) -> None:
    """The log line that quotes a request which failed inside the daemon redacts its token."""
    import orjson

    from supervisor.control import Control

    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"{name} is unavailable")

    secret = "s3cr3t-upload-token"
    spec = {"task_type": "training", "job": "training", "params": {"model": "resnet18", "token": secret}}
    request = orjson.dumps({"v": PROTOCOL_VERSION, "id": "r1", "kind": "submit", "tasks": [spec]})
    with caplog.at_level("ERROR", logger="supervisor.control"):
        reply = orjson.loads(Control(Broken()).handle(request))  # type: ignore[arg-type]
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    assert "command failed" in caplog.text and '"token":"***"' in caplog.text
    assert secret not in caplog.text and secret not in reply["error"]["message"]
