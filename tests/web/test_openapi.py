"""Schemathesis over /openapi.json against the real server, for a fixed time: every phase
(the schema's examples, boundary values, generated data, and stateful sequences that follow the
document's links from a start endpoint's task id to that task's routes). No request ever gets a
5xx, invalid requests are refused with a 4xx, and every JSON answer is the ``{code, msg, data}``
envelope with ``code`` equal to the HTTP status (``tests/web/fuzz_hooks.py``).

Every task limit is 0 in this service, so accepted submissions stay pending and nothing heavy
runs. ``POST /api/v2/resources/config`` is left out: random limits would start the queued tasks.
A failure prints schemathesis's report: each failing request with a ``curl`` line to reproduce it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.service import Service
from tests.web.conftest import PENDING_ENV

#: The time budget of the whole schemathesis run (every phase), in seconds.
FUZZ_SECONDS = 30
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
CHECKS = "not_a_server_error,negative_data_rejection,envelope"


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_fuzz_every_operation_no_5xx_bad_input_refused_always_the_envelope(make_service: Any, tmp_path: Path) -> None:
    svc: Service = make_service(**PENDING_ENV, RFUAV_LIMIT_CPU_DIAGNOSTIC="0")
    # What the documented examples name, so that they (and the fuzzer's starts) get real task ids.
    for folder in ("data/train/a", "data/val/a", "data/raw/a", "models/run1"):
        (svc.home / folder).mkdir(parents=True, exist_ok=True)
    for image in ("data/train/a/0.png", "data/val/a/0.png", "data/raw/a/0.png"):
        (svc.home / image).write_bytes(b"\x89PNG\r\n\x1a\n")
    (svc.home / "models/run1/config.yaml").write_text("model: resnet18\nnum_classes: 2\n")
    (svc.home / "models/run1/best.pth").write_bytes(b"weights")
    spec = httpx.get(svc.url("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            example = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
            if example is None or path == "/api/v2/resources/config":
                continue
            if "{name}" in path:  # a deployment's routes: there is none here
                path = path.replace("{name}", "uav")
            r = httpx.request(method, svc.url(path), json=example, timeout=30)
            if path.startswith("/api/v2/serving"):
                # Deploy: models/run1/config.yaml here is no training's (no image_size); the
                # others: no deployment "uav". Refused with a message, never a 5xx.
                assert r.status_code == (400 if path.endswith("/deploy") else 404), (path, example, r.text)
                assert r.json()["msg"], r.text
            else:
                assert r.status_code == 200, (path, example, r.text)
    links = {name for ops in spec["paths"].values() for op in ops.values()
             for name in op["responses"].get("200", {}).get("links", {})}  # fmt: skip
    assert "/api/v2/resources/config" in spec["paths"]  # the one left out is still there
    assert {"get_task", "cancel_task_post", "delete_task_delete", "task_logs", "task_events", "stop_training_post",
            "training_logs", "preprocessing_logs"} <= links, links  # fmt: skip
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "--no-color", "run", svc.url("/openapi.json"),
        "--phases", "examples,coverage,fuzzing,stateful", "--checks", CHECKS, "--mode", "all",
        "--max-time", str(FUZZ_SECONDS), "--request-timeout", "30", "--generation-database", "none",
        "--exclude-path", "/api/v2/resources/config", "--suppress-health-check", "all",
    ]  # fmt: skip
    env = {**svc.env, "SCHEMATHESIS_HOOKS": str(HOOKS), "RFUAV_FUZZ_BASE_URL": svc.base_url}
    # In a directory of its own: schemathesis keeps a cache (.schemathesis/) where it runs.
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=FUZZ_SECONDS + 90, check=False,
                         cwd=tmp_path)  # fmt: skip
    report = f"--- schemathesis (exit {run.returncode}) ---\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    assert run.returncode == 0, report
    # It really ran: every operation but the excluded one, in every phase.
    counts = re.search(r"^ *Selected: (\d+)/(\d+)\n *Tested: (\d+)", run.stdout, re.MULTILINE)
    assert counts is not None, report
    selected, total, tested = map(int, counts.groups())
    assert total >= 25 and selected == tested == total - 1, report
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in run.stdout, report
    assert svc.supervisor.proc is not None and svc.supervisor.proc.poll() is None
    assert svc.web is not None and svc.web.poll() is None
