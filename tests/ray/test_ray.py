"""Jobs on Ray (``RFUAV_EXECUTOR=ray``): the same runner, queue, events and cancel as local jobs.

One Ray cluster for the module (``ray.cluster_utils.Cluster`` on this machine: a head without
CPUs and one worker node of 2 CPUs, so every runner host lands on the worker), and one service
(real supervisor + web) connected to it; some tests start a supervisor of their own on the same
cluster (``RFUAV_RAY_ADMISSION=ray``), and this process is a driver of the cluster too
(``ray_view``: what Ray itself knows of actors). A serving test starts a service of its own
with ``RFUAV_RAY_EVENTS=tcp`` (its replica on the worker node, served over TCP with CURVE). The
tests run in order; the lost-node test removes the worker node, then a node that cannot see the service's files joins. A last test
starts a service that owns a local Ray instance: it listens on loopback only, and stopping it
leaves no process behind.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
import zmq
from ray.cluster_utils import Cluster
from zmq.utils.monitor import recv_monitor_message

from protocol import serving as sv
from supervisor.ray.executor import namespace
from tests.support.datasets import digits
from tests.support.models import write_model
from tests.support.service import Service, free_port
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


@pytest.fixture(scope="module")
def ray_view(cluster: tuple[Cluster, Any]) -> Iterator[Any]:
    """This process as a driver of the cluster: Ray's own view of actors, names and nodes."""
    import ray

    ray.init(address=cluster[0].address, namespace="rfuav-tests", log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def actor_states(ray: Any, name: str, ns: str) -> list[str]:
    """The states Ray's actor table has for actors named ``name`` in namespace ``ns``."""
    table = ray._private.state.actors().values()
    return [a["State"] for a in table if a.get("Name") == name and a.get("RayNamespace", ns) == ns]


def named(ray: Any, ns: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns}


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Look at state that sends no event (Ray's tables) until ``predicate`` holds, under a deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        pause.wait(0.05)


def started(sup: SupervisorProcess, task_id: str, timeout: float = 120.0) -> None:
    """Wait until the runner's start is recorded (its "started on" event is stored)."""
    sup.wait_task(
        task_id,
        lambda t: any(e["message"].startswith("started on ") for e in sup.logs(task_id)),
        timeout,
        "runner started",
    )


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


def test_a_task_cancelled_while_waiting_inside_ray_ends_cancelled_with_its_host_removed(
    cluster: tuple[Cluster, Any], ray_view: Any
) -> None:
    """With ``RFUAV_RAY_ADMISSION=ray`` a task goes to Ray as soon as our own limits allow. Two
    jobs take the worker's 2 CPUs; the third's runner host waits inside Ray (``PENDING_CREATION``:
    no node can place it). Cancelled there, it ends ``cancelled`` at once (not when Ray places it,
    not ``failed``), its host actor dead and its name free, no runner of it anywhere; the others
    are untouched."""
    env = {**RAY_ENV, "RFUAV_RAY_ADDRESS": cluster[0].address, "RFUAV_RAY_ADMISSION": "ray"}
    with SupervisorProcess(env=env, start_timeout=120) as sup:
        ns = namespace(sup.settings)
        first, second, third = (sup.submit("diagnostic", {"sleep": 120}) for _ in range(3))
        for task_id in (first, second):
            started(sup, task_id)
        until(lambda: actor_states(ray_view, third, ns) == ["PENDING_CREATION"], 60, "third host pending in Ray")
        waiting = sup.get(third)
        assert waiting["status"] == "running" and waiting["message"] == "starting on cpu", waiting
        assert not any(e["message"].startswith("started on ") for e in sup.logs(third))

        sup.call("cancel", task_id=third)
        done = sup.wait_final(third, timeout=30)
        assert done["status"] == "cancelled", done
        assert done["message"] == "cancelled on request (before Ray placed its runner host; host removed)"
        assert third not in named(ray_view, ns)
        assert actor_states(ray_view, third, ns) == ["DEAD"]
        assert not runner_processes(third)
        for task_id in (first, second):
            assert sup.get(task_id)["status"] == "running"
            sup.call("cancel", task_id=task_id)
            assert sup.wait_final(task_id, timeout=60)["status"] == "cancelled"
        assert not named(ray_view, ns) & {first, second, third}


def _intruder(ctx: zmq.Context[Any], endpoint: str, keys: tuple[bytes, bytes, bytes] | None) -> tuple[Any, str]:
    """An XPUB that connects to ``endpoint`` as a runner does (CURVE client with ``keys``:
    server public, own public, own secret; none: no security mechanism); the handshake's outcome
    as its monitor reports it."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    outcome = "no handshake within 30 s"
    while monitor.poll(30_000):
        event = zmq.Event(recv_monitor_message(monitor)["event"])
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or event.name.startswith("HANDSHAKE_FAILED"):
            outcome = event.name
            break
    sock.disable_monitor()
    monitor.close(linger=0)
    return sock, outcome


def _forge(task_id: str, message: str) -> list[bytes]:
    event = {"rseq": 1_000_000, "task_id": task_id, "ts": "2030-01-01T00:00:00.000+00:00", "kind": "log",
             "level": "INFO", "message": message}  # fmt: skip
    return [task_id.encode(), orjson.dumps(event)]


def test_events_over_tcp_with_curve_are_gap_free_and_only_a_live_jobs_key_gets_in(cluster: tuple[Cluster, Any]) -> None:
    """``RFUAV_RAY_EVENTS=tcp``: the runner on the Ray node connects to the supervisor's
    ``RFUAV_EVENTS_TCP`` port with CURVE keys of its own. Its events arrive gap-free (live and
    stored; the executor's counters show they came that way, not through the relay). On that
    port, a connection without CURVE, with a key of no live job or with another server key
    never completes its handshake, and what it sends is never stored; a live job's own key gets
    in but cannot speak for another task; once the job ended, its key no longer gets in."""
    env = {**RAY_ENV, "RFUAV_RAY_ADDRESS": cluster[0].address, "RFUAV_RAY_EVENTS": "tcp",
           "RFUAV_EVENTS_TCP": "127.0.0.1:0"}  # fmt: skip
    with SupervisorProcess(env=env, start_timeout=120) as sup:
        tcp = sup.call("health")["executor"]["events_tcp"]
        endpoint = tcp["endpoint"]
        assert endpoint.startswith("tcp://127.0.0.1:"), tcp
        key_file = sup.settings.runtime_dir / "events-curve.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        server_public = key_file.read_bytes().split()[0]

        sub = sup.subscribe()
        task_id = sup.submit("diagnostic", {"events": 3000, "rate": 1500, "size": 64})
        live = sub.until_final(task_id, timeout=120)
        assert live[-1]["status"] == "completed", live[-1]
        stored = sup.logs(task_id)
        assert [e["seq"] for e in live] == [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
        assert sum(1 for e in stored if e["message"].startswith("event ")) == 3000
        tcp = sup.call("health")["executor"]["events_tcp"]
        assert tcp["events"] >= 3000 and tcp["jobs"] == 0 and tcp["refused"] == tcp["foreign"] == 0, tcp

        running = sup.submit("diagnostic", {"sleep": 120})
        started(sup, running)
        spec = orjson.loads((Path(sup.get(running)["task_dir"]) / "spec.json").read_bytes())
        stolen = (spec["events_server_key"].encode(), spec["events_public_key"].encode(),
                  spec["events_secret_key"].encode())  # fmt: skip
        assert stolen[0] == server_public
        ctx: zmq.Context[Any] = zmq.Context()
        sockets = []
        try:
            # Which failure an intruder's monitor names depends on timing (the server's error
            # command, or its disconnect first): any failed handshake. Only a CURVE client with
            # the right server key reaches the key check, which the supervisor counts.
            for keys, refused in (
                (None, 0),  # plain: no CURVE
                ((zmq.curve_keypair()[0], *zmq.curve_keypair()), 0),  # another server's key
                ((server_public, *zmq.curve_keypair()), 1),  # a key of no live job
            ):
                sock, outcome = _intruder(ctx, endpoint, keys)
                assert outcome.startswith("HANDSHAKE_FAILED"), outcome
                assert not sock.poll(0)  # no subscription: what it would send goes nowhere
                sock.send_multipart(_forge(running, "forged"))
                sock.close(linger=0)
                assert (sup.call("health")["executor"]["events_tcp"]["refused"] >= 1) == bool(refused)

            # The running job's own key: let in, but only for its own task.
            sock, outcome = _intruder(ctx, endpoint, stolen)
            sockets.append(sock)
            assert outcome == "HANDSHAKE_SUCCEEDED"
            assert sock.poll(30_000)  # the supervisor's subscription
            sock.recv()
            sock.send_multipart(_forge(task_id, "forged for another task"))
            until(lambda: sup.call("health")["executor"]["events_tcp"]["foreign"] == 1, 30, "foreign message dropped")
            assert sup.logs(task_id) == stored

            sup.call("cancel", task_id=running)
            assert sup.wait_final(running, timeout=60)["status"] == "cancelled"
            assert not any("forged" in e["message"] for e in sup.logs(running))
            assert sup.call("health")["executor"]["events_tcp"]["jobs"] == 0
            before = sup.call("health")["executor"]["events_tcp"]["refused"]
            sock, outcome = _intruder(ctx, endpoint, stolen)  # the job ended: its key is dead
            sockets.append(sock)
            assert outcome.startswith("HANDSHAKE_FAILED"), outcome
            assert sup.call("health")["executor"]["events_tcp"]["refused"] > before
        finally:
            for sock in sockets:
                sock.close(linger=0)
            ctx.term()


def test_a_supervisor_killed_with_a_job_on_tcp_events_lets_its_runner_back_in_after_a_restart(
    cluster: tuple[Cluster, Any],
) -> None:
    """``tcp`` with a fixed port: the supervisor is SIGKILLed while a job publishes; the restarted
    one keeps its keypair (``events-curve.key``), lets the adopted job's key in again (from its
    spec) and the runner's XPUB reconnects by itself: its remaining events arrive over TCP, and
    every event is stored, gap-free."""
    env = {**RAY_ENV, "RFUAV_RAY_ADDRESS": cluster[0].address, "RFUAV_RAY_EVENTS": "tcp",
           "RFUAV_EVENTS_TCP": f"127.0.0.1:{free_port()}"}  # fmt: skip
    with SupervisorProcess(env=env, start_timeout=120) as sup:
        key = (sup.settings.runtime_dir / "events-curve.key").read_bytes()
        task_id = sup.submit("diagnostic", {"events": 1500, "rate": 150, "size": 32})
        started(sup, task_id)
        sup.kill(signal.SIGKILL)
        sup.start()
        assert (sup.settings.runtime_dir / "events-curve.key").read_bytes() == key
        done = sup.wait_final(task_id, timeout=120)
        assert done["status"] == "completed", done
        logs = sup.logs(task_id)
        assert [e["seq"] for e in logs] == list(range(1, len(logs) + 1))
        assert sum(1 for e in logs if e["message"].startswith("event ")) == 1500
        assert any(e["message"].startswith("adopted after a supervisor restart") for e in logs)
        tcp = sup.call("health")["executor"]["events_tcp"]
        assert tcp["events"] > 0 and tcp["jobs"] == 0, tcp  # it came back in, and is out again


def test_a_replica_on_a_ray_node_serves_web_over_tcp_with_curve_and_lets_no_other_client_in(
    cluster: tuple[Cluster, Any], ray_view: Any
) -> None:
    """``RFUAV_RAY_EVENTS=tcp``: a deployment's replica, placed by Ray on the worker node, binds
    TCP on its node's address (an ephemeral port) as a CURVE server. The route web gets says
    ``tcp://`` and carries the keys; ``/predict`` through web answers what the same weights give
    in a plain forward. On that port a plain DEALER (no CURVE) and a CURVE client with a key of
    its own (the replica's public key known) never complete their handshake and get no answer."""
    import torch

    from runner import models

    env = {**RAY_ENV, "RFUAV_RAY_ADDRESS": cluster[0].address, "RFUAV_RAY_EVENTS": "tcp",
           "RFUAV_EVENTS_TCP": "127.0.0.1:0"}  # fmt: skip
    with Service(env=env, start_timeout=120) as service:
        cfg, weights = write_model(service.home / "model", image_size=32, class_names=("a", "b", "c"))
        body = {"name": "remote", "cfg_path": str(cfg), "weight_path": str(weights), "device": "cpu",
                "replicas": 1, "threads": 1, "cache_size": 0}  # fmt: skip
        r = httpx.post(service.url("/api/v2/serving/deploy"), json=body, timeout=30)
        assert r.status_code == 200, r.text
        task_id = r.json()["data"]["task_id"]

        def ready() -> bool:
            dep = httpx.get(service.url("/api/v2/serving/remote"), timeout=30).json()["data"]
            assert dep["status"] != "failed", dep
            return bool(dep["status"] == "ready")

        until(ready, 90, "deployment ready")
        [route] = service.supervisor.call("routes")["routes"]["remote"]["replicas"]
        address, curve = route["address"], route["curve"]
        assert address.startswith("tcp://") and not address.startswith("ipc://"), route
        replica_dir = Path(service.supervisor.get(task_id)["task_dir"]) / "replicas" / route["id"]
        assert (replica_dir / sv.ENDPOINT_FILE).read_text().strip() == address
        assert stat.S_IMODE((replica_dir / "spec.json").stat().st_mode) == 0o600
        spec = orjson.loads((replica_dir / "spec.json").read_bytes())
        assert spec["params"]["address"] == address.rsplit(":", 1)[0] + ":*"
        assert spec["params"]["curve_client_key"] == curve["public"]
        # The replica's runner host is on the worker node (the head has no CPU).
        hosts = [a for a in ray_view._private.state.actors().values()
                 if a.get("Name") == route["id"] and a["State"] == "ALIVE"]  # fmt: skip
        assert [h["Address"]["NodeID"] for h in hosts] == [cluster[1].node_id], hosts

        x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
        answer = httpx.post(service.url("/api/v2/serving/remote/predict"), json={"input": x.tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        model = models.build("resnet18", 3)
        models.load_state(model, models.state_of(torch.load(weights, weights_only=True)), what="best.pth")
        with torch.inference_mode():
            want = torch.softmax(model.eval()(x.unsqueeze(0)), 1)[0].tolist()
        got = answer.json()["data"]["prediction"]
        assert got == pytest.approx(want, abs=1e-5), (got, want)

        ctx: zmq.Context[Any] = zmq.Context()
        sockets: list[zmq.Socket[bytes]] = []

        def dealer(keys: tuple[str, str, str] | None) -> zmq.Socket[bytes]:
            """A DEALER on the replica's address (a CURVE client of ``keys``, or plain) that has
            sent a ``status`` request (queued until a connection takes it)."""
            sock = ctx.socket(zmq.DEALER)
            sockets.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in keys)
            sock.connect(address)
            sock.send_multipart([b"1", sv.OP_STATUS, b"", b""], zmq.NOBLOCK)
            return sock

        try:
            strangers = [dealer(None), dealer((curve["server"], *(k.decode() for k in zmq.curve_keypair())))]
            # The route's keys get in: answered (by then the others had their handshakes too).
            friend = dealer((curve["server"], curve["public"], curve["secret"]))
            assert friend.poll(30_000)
            assert friend.recv_multipart()[:2] == [b"1", b"200"]
            # A plain DEALER (no CURVE) and a CURVE client with a key of its own: no answer.
            for sock in strangers:
                assert not sock.poll(1000)
        finally:
            for sock in sockets:
                sock.close(linger=0)
            ctx.term()

        r = httpx.delete(service.url("/api/v2/serving/remote"), timeout=30)
        assert r.status_code == 200, r.text
        assert service.client.wait_for(task_id, timeout=60)["status"] == "completed"


def test_a_lost_node_fails_its_task_and_leaves_neither_its_runner_nor_its_cgroup(
    svc: Service, cluster: tuple[Cluster, Any]
) -> None:
    """The node's Ray processes die, the machine lives on (here: the worker node of this
    machine's cluster removed). The task fails with the reason; its runner, whose host is gone,
    stops by itself (``JobSpec.host_pid``); the job cgroup and the relay folder its host leaves
    are removed by the next runner host that starts on this machine."""
    c, worker = cluster
    task_id = diagnostic(svc, sleep=600)
    svc.client.wait_for(task_id, timeout=60, predicate=lambda t: _started(svc, task_id))
    runner = next(r for r in svc.client.runners()["runners"] if r["task_id"] == task_id)
    assert runner.get("node"), runner
    family = runner_processes(task_id)
    assert family
    c.remove_node(worker)
    done = svc.client.wait_for(task_id, timeout=120)
    assert done["status"] == "failed" and done["message"].startswith("node lost"), done
    gone, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, alive
    left = [d for d in runner["cgroup"].values() if Path(d).is_dir()]
    assert left or not runner["cgroup"]
    relay = list(Path(tempfile.gettempdir()).glob(f"rfuav-host-*-{task_id}-*"))  # (its events' relay)
    assert len(relay) == 1, relay
    left.append(str(relay[0]))
    node = c.add_node(num_cpus=2)
    try:
        other = diagnostic(svc, events=10)
        assert svc.client.wait_for(other, timeout=120)["status"] == "completed"
        assert not [d for d in left if Path(d).is_dir()]
    finally:
        c.remove_node(node)


def test_a_node_that_cannot_see_the_task_directory_fails_the_task_with_that_reason(
    svc: Service, cluster: tuple[Cluster, Any], ray_view: Any, tmp_path: Path
) -> None:
    """A real node off the supervisor's filesystem: a Ray node started (``ray start``) in a mount
    namespace of its own where the service's home (``RFUAV_HOME``: the task directories) is
    covered by an empty tmpfs. It is the only node with CPUs now (the worker was removed), so the
    job's runner host lands there; the host refuses before starting anything, and the task fails
    with that reason (the directory, the node), not a traceback; the host is removed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], check=False).returncode != 0:
        pytest.skip("no mount namespaces here (unshare -m): cannot start a node that does not share the files")
    script = 'mount -t tmpfs -o size=1m,mode=0700 rfuav-blind "$1" && exec "$2" start --address="$3" ' + (
        "--num-cpus=2 --block --disable-usage-stats"
    )
    ray_cli = Path(sys.executable).with_name("ray")
    with open(tmp_path / "blind-node.log", "wb") as out:  # (outside the home the node cannot see)
        node = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(svc.home), str(ray_cli),
             cluster[0].address],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    family: list[psutil.Process] = []
    try:
        until(lambda: any(n["Alive"] and n["Resources"].get("CPU") for n in ray_view.nodes()), 60, "blind node up")
        family = psutil.Process(node.pid).children(recursive=True)
        task_id = diagnostic(svc, events=10)
        done = svc.client.wait_for(task_id, timeout=120)
        message = done["message"]
        assert done["status"] == "failed", done
        assert f"the task directory {svc.home}/tasks/{task_id} does not exist on node " in message, message
        assert message.endswith("job paths must be on a filesystem shared with the supervisor"), message
        assert "Traceback" not in message and "\n" not in message
        assert not any(e["message"].startswith("started on ") for e in svc.client.get_logs(task_id))
        assert task_id not in named(ray_view, namespace(svc.settings))
    finally:
        os.killpg(node.pid, signal.SIGTERM)  # ray start --block drains the node and stops its processes
        node.wait(60)
    assert not psutil.wait_procs(family, timeout=30)[1]


def _listening(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, name, address, port) of every listening TCP socket of ``procs``."""
    out = []
    for proc in procs:
        try:
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out.extend((proc.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 (a dual-stack socket bound to 127.0.0.1)
    return addr.is_loopback


def test_a_service_that_owns_its_ray_instance_listens_on_loopback_only_and_leaves_no_process() -> None:
    """The owned instance (``RFUAV_RAY_ADDRESS`` empty), with a job running: every TCP socket
    that the supervisor (Ray's driver is in it) and every process it started listen on — GCS,
    raylet (node manager, object manager), the autoscaler monitor, the runtime-env agent, the
    dashboard agent and API server (Ray starts them even with ``include_dashboard=False``, in
    their minimal mode), the idle workers and the job's runner host — is bound to loopback
    (127.0.0.1, ::1, or ::ffff:127.0.0.1 on a dual-stack socket). (Ray turns a loopback
    ``_node_ip_address`` into the host's outward address unless told it runs on one machine:
    without that, all of these listened on :: / 0.0.0.0 or the host's address.) Then stopping
    the service leaves no process behind."""
    with SupervisorProcess(env=RAY_ENV, start_timeout=120) as sup:
        task_id = sup.submit("diagnostic", {"sleep": 120})
        started(sup, task_id)
        family = [psutil.Process(sup.pid), *psutil.Process(sup.pid).children(recursive=True)]
        commands = [" ".join(p.cmdline()) for p in family if p.is_running()]
        assert any("raylet" in c for c in commands) and any("gcs_server" in c for c in commands)
        listening = _listening(family)
        assert len({pid for pid, *_ in listening}) >= 4, listening  # driver, GCS, raylet, workers at least
        assert [entry for entry in listening if not _loopback(entry[2])] == []
        sup.call("cancel", task_id=task_id)
        assert sup.wait_final(task_id, timeout=60)["status"] == "cancelled"
        quick = sup.submit("diagnostic", {"events": 10})
        assert sup.wait_final(quick, timeout=120)["status"] == "completed"
        family = psutil.Process(sup.pid).children(recursive=True)
        assert sup.stop() == 0
    assert not psutil.wait_procs(family, timeout=30)[1]
