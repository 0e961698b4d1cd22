"""Bad commands get an error reply and the daemon stays up; submit validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.codec import MAX_MESSAGE_BYTES
from protocol.replies import CommandError
from supervisor.gpu import Gpus
from tests.support.supervisor import SupervisorProcess


def _error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


def test_bad_commands_get_errors_and_daemon_stays_up(supervisor: SupervisorProcess) -> None:
    cases = [
        (b"{not json", "bad_request", "malformed JSON"),
        (b"[1, 2]", "bad_request", "expected a JSON object"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "fly"}), "bad_request", "unknown command kind 'fly'"),
        (orjson.dumps({"v": 9, "id": "a", "kind": "health"}), "bad_version", "not supported"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "get", "task_id": 5}), "bad_request", "field 'task_id' must be str"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "get"}), "bad_request", "field 'task_id' is required"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "get", "task_id": "nope"}), "not_found", "task 'nope' not found"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "logs", "task_id": "nope"}), "not_found", "not found"),
        (orjson.dumps({"v": 1, "id": "a", "kind": "health", "extra": 1}), "bad_request", "unknown field"),
        (
            b'{"v": 1, "id": "a", "kind": "list", "pad": "' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}',
            "too_large",
            "exceeds",
        ),
    ]
    for payload, code, fragment in cases:
        got_code, message = _error(supervisor.request(payload))
        assert got_code == code and fragment in message, (payload[:80], got_code, message)
    reply = supervisor.request(orjson.dumps({"v": 1, "id": "x1", "kind": "get", "task_id": "nope"}))
    assert reply["id"] == "x1"
    assert supervisor.call("health")["running"] == 0


@pytest.mark.parametrize(
    "spec, code, fragment",
    [
        ({"task_type": "training", "job": "diagnostic"}, "bad_request", "is not of task type"),
        ({"task_type": "diagnostic", "job": "diagnostic", "priority": 11}, "bad_request", "between 1 and 10"),
        ({"task_type": "diagnostic", "job": "diagnostic", "priority": "high"}, "bad_request", "'priority' must be int"),
        ({"task_type": "diagnostic", "job": "diagnostic", "device": "cuda:99"}, "bad_request", "does not exist"),
        ({"task_type": "diagnostic", "job": "diagnostic", "device": "gpu"}, "bad_request", "device must be"),
        ({"task_type": "diagnostic", "job": "diagnostic", "task_id": "../x"}, "bad_request", "task_id must be"),
        ({"task_type": "nap", "job": "diagnostic"}, "bad_request", "task_type"),
        ({"task_type": "diagnostic", "job": "diagnostic", "params": []}, "bad_request", "'params' must be"),
    ],
)
def test_submit_validation(supervisor: SupervisorProcess, spec: dict[str, Any], code: str, fragment: str) -> None:
    with pytest.raises(CommandError) as err:
        supervisor.call("submit", tasks=[spec])
    assert err.value.code == code and fragment in err.value.message
    assert supervisor.call("list")["tasks"] == []  # nothing was stored


def test_custom_id_conflict_all_or_none(supervisor: SupervisorProcess) -> None:
    spec = {"task_type": "diagnostic", "job": "diagnostic", "task_id": "mine-1"}
    supervisor.call("submit", tasks=[spec])
    with pytest.raises(CommandError) as err:
        supervisor.call("submit", tasks=[{**spec, "task_id": "mine-2"}, spec])
    assert err.value.code == "conflict"
    assert [t["task_id"] for t in supervisor.call("list")["tasks"]] == ["mine-1"]


def test_training_task_shape_and_secret(supervisor: SupervisorProcess) -> None:
    spec = {
        "task_type": "training",
        "job": "training",
        "params": {"num_epochs": 7, "token": "s3cret"},
        "device": "cuda",
        "priority": 1,
        "description": "d",
        "strategy_type": "s",
    }
    # Nothing may run it: training limit 0, so it stays pending and shows its fields.
    supervisor.call("set_limits", limits={"cpu": {"training": 0}})
    task = supervisor.call("submit", tasks=[spec])["tasks"][0]
    assert task["total_epochs"] == 7 and task["current_epoch"] == 0 and task["res"] is None
    assert (task["status"], task["priority"], task["strategy_type"]) == ("pending", 1, "s")
    assert "s3cret" not in orjson.dumps(supervisor.call("get", task_id=task["task_id"])).decode()
    assert "s3cret" not in supervisor.log_text()
    listed = supervisor.call("list", task_type="training", status="pending")["tasks"]
    assert [t["task_id"] for t in listed] == [task["task_id"]]
    with pytest.raises(CommandError) as err:
        supervisor.call("get", task_id=task["task_id"], task_type="inference")
    assert err.value.code == "not_found"
    health = supervisor.call("health")
    assert health["queued"] == 1 and health["tasks"] == {"training": {"pending": 1}}


def test_ps_and_resources_while_running(supervisor: SupervisorProcess) -> None:
    task_id = supervisor.submit(params={"sleep": 60, "grandchild": True})
    task = supervisor.wait_task(
        task_id, lambda t: any("grandchild_pid" in e for e in supervisor.logs(t["task_id"])), 60, "grandchild up"
    )
    (runner,) = supervisor.call("ps")["runners"]
    assert (runner["task_id"], runner["pid"], runner["device"]) == (task_id, task["pid"], "cpu")
    pids = [p["pid"] for p in runner["processes"]]
    assert pids[0] == task["pid"] and len(pids) == 2
    resources = supervisor.call("resources")
    assert resources["active_tasks"]["cpu"] == [{"id": task_id, "type": "diagnostic"}]
    assert resources["device_usage"]["cpu"]["diagnostic"] == 1 and resources["running"] == 1
    supervisor.call("cancel", task_id=task_id)
    assert supervisor.wait_final(task_id)["status"] == "cancelled"
    assert supervisor.call("ps")["runners"] == []


def test_cuda_runs_on_a_gpu_or_on_the_cpu_saying_so(supervisor: SupervisorProcess) -> None:
    # What NVML says here decides it (tests/supervisor/test_gpu.py fakes a host with GPUs).
    gpus = Gpus()
    count = gpus.count
    gpus.close()
    assert supervisor.call("health")["gpu_count"] == count
    task_id = supervisor.submit(params={"report": True}, device="cuda")
    task = supervisor.wait_final(task_id)
    events = supervisor.logs(task_id)
    # (a host without cgroups also warns that the job's limits are not enforced: not this test's)
    warnings = [
        e for e in events if e["level"] == "WARNING" and not e["message"].startswith("cgroup limits not enforced")
    ]
    (report,) = [e["process"] for e in events if "process" in e]
    assert task["status"] == "completed"
    if count:
        assert task["device"] in [f"cuda:{i}" for i in range(count)] and warnings == []
        assert report["cuda_visible_devices"] == task["device"].removeprefix("cuda:")
    else:
        assert task["device"] == "cpu" and report["cuda_visible_devices"] == ""
        assert [e["message"] for e in warnings] == [
            "device 'cuda' requested but this host has no GPU: running on the CPU"
        ]
        assert warnings[0]["source"] == "supervisor"
