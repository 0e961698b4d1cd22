"""Jobs on Ray (``RFUAV_EXECUTOR=ray``): the same runner, queue, events and cancel as local jobs.

One Ray cluster for the module (``ray.cluster_utils.Cluster`` on this machine: a head without
CPUs and one worker node of 2 CPUs, so every runner host lands on the worker), and one service
(real supervisor + web) connected to it. The tests run in order; the last one removes the worker
node. A last test starts a service that owns a local Ray instance and checks that stopping it
leaves no process behind.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from ray.cluster_utils import Cluster

from tests.support.datasets import digits
from tests.support.service import Service
from tests.support.supervisor import SupervisorProcess

pytestmark = pytest.mark.timeout(240)

RAY_ENV = {
    "RFUAV_EXECUTOR": "ray",
    "RFUAV_DIAGNOSTIC": "1",
    "RFUAV_JOB_MEMORY_MB": "1024",
    "RFUAV_GRACE_SECONDS": "2",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Any]]:
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    worker = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


@pytest.fixture(scope="module")
def svc(cluster: tuple[Cluster, Any], request: pytest.FixtureRequest) -> Iterator[Service]:
    service = Service(env={**RAY_ENV, "RFUAV_RAY_ADDRESS": cluster[0].address}, start_timeout=120).start()
    yield service
    if request.session.testsfailed:
        print(f"--- supervisor log ---\n{service.supervisor.log_text()[-12000:]}")
    service.close()


def diagnostic(svc: Service, **params: Any) -> str:
    return str(svc.client.start_diagnostic(**params)["task_id"])


def runner_processes(task_id: str) -> list[psutil.Process]:
    """Live processes of a job: its runner (by title) and any process that reported its task id."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(task_id in part for part in proc.info["cmdline"] or []):
            out.append(proc)
    return out


def running(svc: Service, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    return svc.client.wait_for(task_id, timeout=timeout, predicate=lambda t: t["status"] != "pending")


def _started(svc: Service, task_id: str) -> bool:
    """The runner's pid is recorded (the event that says so is stored with it)."""
    return any(e["message"].startswith("started on ") for e in svc.client.get_logs(task_id))


def test_a_job_runs_on_a_ray_node_with_gap_free_events_and_a_resume(svc: Service) -> None:
    health = svc.client.health()
    assert health["executor"]["executor"] == "ray" and health["executor"]["cluster"]["nodes"] == 2
    # On the control socket: the HTTP schema does not take ``report`` (the process's own view).
    task_id = svc.supervisor.submit("diagnostic", {"events": 3000, "rate": 1500, "size": 64, "report": True})
    seen: list[int] = []
    for event in svc.client.stream_events(task_id, reconnect=False):
        seen.append(event["seq"])
        if len(seen) == 500:
            break  # drop the stream in the middle, then resume from there
    for event in svc.client.stream_events(task_id, last_event_id=seen[-1]):
        seen.append(event["seq"])
    task = svc.client.get_task(task_id)
    assert task["status"] == "completed", task
    assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 3000
    logs = svc.client.get_logs(task_id)
    started = next(e["message"] for e in logs if e["message"].startswith("started on "))
    assert "ray start" in started
    report = next(e["process"] for e in logs if "process" in e)
    assert report["sid"] == report["pid"]  # its own session, as a local job
    assert report["title"].startswith(f"rfuav-runner diagnostic {task_id}")


def test_web_reads_the_executor_and_cluster_in_metrics(svc: Service) -> None:
    text = httpx.get(svc.url("/metrics"), timeout=30).text
    assert 'rfuav_executor_info{executor="ray"} 1.0' in text
    assert 'rfuav_cluster_resources{resource="CPU",state="total"}' in text


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is absent: run `make browser`")
def test_the_dashboard_shows_the_executor_and_the_cluster(svc: Service) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(svc.base_url + "/")
            expect(page.locator("#executor")).to_contain_text("executor: Ray (")
            expect(page.locator("#executor")).to_contain_text("2 nodes · free CPU ")
        finally:
            browser.close()


def test_cooperative_cancel(svc: Service) -> None:
    task_id = diagnostic(svc, sleep=60)
    running(svc, task_id)
    svc.client.cancel_task(task_id)
    done = svc.client.wait_for(task_id, timeout=60)
    assert done["status"] == "cancelled" and done["message"].startswith("cancelled")
    assert not runner_processes(task_id)


def test_uncooperative_cancel_leaves_nothing_not_even_a_setsid_grandchild(svc: Service) -> None:
    task_id = diagnostic(svc, sleep=120, ignore_sigterm=True, grandchild=True, grandchild_setsid=True)
    running(svc, task_id)
    child = svc.client.wait_for(
        task_id, timeout=60, predicate=lambda t: any("grandchild_pid" in e for e in svc.client.get_logs(task_id))
    )
    assert child["status"] == "running"
    grandchild = next(e["grandchild_pid"] for e in svc.client.get_logs(task_id) if "grandchild_pid" in e)
    assert psutil.pid_exists(grandchild)
    svc.client.cancel_task(task_id)
    done = svc.client.wait_for(task_id, timeout=60)
    assert done["status"] == "cancelled"
    messages = [e["message"] for e in svc.client.get_logs(task_id)]
    assert any("did not stop within 2 s: killing it" in m for m in messages), messages
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert not runner_processes(task_id)


def test_a_job_waits_in_our_queue_while_the_cluster_is_full(svc: Service) -> None:
    # The worker node has 2 CPUs and each job asks for one: the third waits, pending, in order.
    first, second, third = (diagnostic(svc, sleep=60) for _ in range(3))
    for task_id in (first, second):
        running(svc, task_id)
    task = svc.client.get_task(third)
    assert task["status"] == "pending"
    svc.client.cancel_task(first)
    assert running(svc, third)["status"] == "running"
    for task_id in (second, third):
        svc.client.cancel_task(task_id)
        assert svc.client.wait_for(task_id, timeout=60)["status"] == "cancelled"


def test_training_on_ray_gives_the_same_metrics_as_local(svc: Service, tmp_path: Path) -> None:
    data = digits(svc.home / "digits", per_class=12)
    body = {
        "model": "resnet18", "num_classes": 10, "train_path": str(data["train"]), "val_path": str(data["val"]),
        "num_epochs": 1, "batch_size": 16, "image_size": 32, "pretrained": False, "seed": 0,
        "deterministic": True, "device": "cpu",
    }  # fmt: skip
    on_ray = svc.client.start_training(**{**body, "save_path": str(svc.home / "models"), "name": "ray"})
    with SupervisorProcess(env={"RFUAV_START_MODE": "cold"}) as local:
        # The local supervisor's data root is its own home: the same files, copied there.
        shutil.copytree(svc.home / "digits", local.home / "digits")
        params = {**body, "train_path": str(local.home / "digits" / "train"),
                  "val_path": str(local.home / "digits" / "val"), "save_path": str(local.home / "models"),
                  "name": "local"}  # fmt: skip
        local_id = local.submit("training", params)
        here = local.wait_final(local_id, timeout=200)
        local_epoch = next(e for e in local.logs(local_id) if e.get("stage") == "epoch_end")
    there = svc.client.wait_for(on_ray["task_id"], timeout=200)
    assert here["status"] == there["status"] == "completed", (here, there)
    ray_epoch = next(e for e in svc.client.get_logs(on_ray["task_id"]) if e.get("stage") == "epoch_end")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert ray_epoch["metrics"][key] == pytest.approx(local_epoch["metrics"][key], abs=1e-6), key


def test_a_supervisor_killed_with_a_job_on_ray_adopts_it_after_a_restart(svc: Service) -> None:
    task_id = diagnostic(svc, events=1500, rate=300, size=32)
    svc.client.wait_for(task_id, timeout=60, predicate=lambda t: _started(svc, task_id))
    svc.stop_supervisor(signal.SIGKILL)
    svc.start_supervisor()
    done = svc.client.wait_for(task_id, timeout=120)
    assert done["status"] == "completed", done
    logs = svc.client.get_logs(task_id)
    assert [e["seq"] for e in logs] == list(range(1, len(logs) + 1))
    assert sum(1 for e in logs if e["message"].startswith("event ")) == 1500
    assert any(e["message"].startswith("adopted after a supervisor restart") for e in logs)


def test_a_lost_node_fails_its_task_with_the_reason(svc: Service, cluster: tuple[Cluster, Any]) -> None:
    c, worker = cluster
    task_id = diagnostic(svc, sleep=120)
    svc.client.wait_for(task_id, timeout=60, predicate=lambda t: _started(svc, task_id))
    runners = svc.client.runners()["runners"]
    assert any(r["task_id"] == task_id and r.get("node") for r in runners), runners
    c.remove_node(worker)
    done = svc.client.wait_for(task_id, timeout=120)
    assert done["status"] == "failed" and done["message"].startswith("node lost"), done


def test_stopping_a_service_that_owns_its_ray_instance_leaves_no_process() -> None:
    with SupervisorProcess(env=RAY_ENV, start_timeout=120) as sup:
        task_id = sup.submit("diagnostic", {"events": 10})
        assert sup.wait_final(task_id, timeout=120)["status"] == "completed"
        family = psutil.Process(sup.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in family)
        assert sup.stop() == 0
    assert not psutil.wait_procs(family, timeout=30)[1]
