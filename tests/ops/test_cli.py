"""The ``rfuav`` CLI as a shell user runs it: a real subprocess against a really running service.

The service is started with a token and with CPU limits of 0 for training, inference and
preprocessing, so tasks of those types stay ``pending`` (no torch work here) and can be
cancelled; diagnostic tasks really run (cold start, no torch).
"""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.datasets import digits
from tests.support.service import Service, free_port
from web.cli.render import ProgressBar

from .conftest import REPO

pytestmark = pytest.mark.timeout(180)

TOKEN = "cli-test-token"
ENV = {
    "RFUAV_API_TOKEN": TOKEN,
    "RFUAV_LIMIT_CPU_TRAINING": "0",
    "RFUAV_LIMIT_CPU_INFERENCE": "0",
    "RFUAV_LIMIT_CPU_PREPROCESSING": "0",
    "RFUAV_GRACE_SECONDS": "2",
}


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    service = Service(env=ENV).start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def data(svc: Service) -> dict[str, Path]:
    """A tiny digits dataset inside the service's data root."""
    return digits(svc.home / "digits", per_class=4)


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def cli_env(url: str, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFUAV_")}
    env["RFUAV_URL"] = url
    if token is not None:
        env["RFUAV_API_TOKEN"] = token
    env["PYTHONPATH"] = str(REPO)
    return env


def rfuav(
    svc: Service | None, *args: str, url: str | None = None, token: str | None = TOKEN, timeout: float = 90
) -> Run:
    """Run ``rfuav ARGS`` as a shell user would: a fresh process, its exit code and output."""
    target = url or (svc.base_url if svc else "http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "web.cli", *args],
        check=False, capture_output=True, text=True, timeout=timeout, env=cli_env(target, token), cwd=REPO,
    )  # fmt: skip
    return Run(proc)


def start_diagnostic(svc: Service, **params: Any) -> str:
    task = svc.client.start_diagnostic(**params)
    return str(task["task_id"])


# -- usage ----------------------------------------------------------------------------------

COMMANDS = ["ps", "train", "infer", "split", "augment", "crop", "tasks", "show", "logs", "cancel", "gpu",
            "resources", "limits", "serve"]  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command: str | None) -> None:
    run = rfuav(None, *([command] if command else []), "--help")
    assert run.code == 0, run
    assert "usage: rfuav" in run.out
    assert "--json" in run.out


def test_installed_console_script(tmp_path: Path) -> None:
    # `rfuav` as installed by pip (setup.cfg console_scripts), run from elsewhere.
    script = Path(sys.executable).parent / "rfuav"
    assert script.exists(), "console script missing: pip install -e ."
    proc = subprocess.run([str(script), "gpu", "--help"], check=False, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: rfuav gpu")


def test_usage_errors_exit_2() -> None:
    assert rfuav(None).code == 2
    assert rfuav(None, "frobnicate").code == 2
    missing = rfuav(None, "train", "--model", "resnet18")
    assert missing.code == 2 and "--num-classes" in missing.err
    bad_limit = rfuav(None, "limits", "--set", "cpu-training-2")
    assert bad_limit.code == 2 and "DEVICE.TYPE=N" in bad_limit.err


def test_unreachable_service_exits_3() -> None:
    run = rfuav(None, "tasks", url=f"http://127.0.0.1:{free_port()}")
    assert run.code == 3, run
    assert "unreachable" in run.err


def test_supervisor_down_exits_3(svc: Service) -> None:
    """Web answers, but 503: its supervisor is down. That is "unreachable" too (exit 3), not an
    API error (exit 1); once the supervisor is back, the same command works."""
    task_id = start_diagnostic(svc, events=1)
    svc.client.wait_for(task_id, timeout=60)
    svc.stop_supervisor(signal.SIGTERM)
    try:
        for args in (["tasks"], ["show", task_id], ["resources"]):
            run = rfuav(svc, *args)
            assert run.code == 3, run
            assert "unreachable" in run.err and "supervisor" in run.err, run
    finally:
        svc.start_supervisor()
        svc.wait_healthy(60)
    assert rfuav(svc, "show", task_id).code == 0


def test_missing_or_wrong_token_is_an_api_error(svc: Service) -> None:
    for token in (None, "wrong"):
        run = rfuav(svc, "tasks", token=token)
        assert run.code == 1, run
        assert "401" in run.err
    # --token on the command line wins over the environment.
    assert rfuav(svc, "tasks", "--token", TOKEN, token="wrong").code == 0


# -- tasks, show, logs, cancel ---------------------------------------------------------------


def test_show_tasks_and_logs_of_a_finished_task(svc: Service) -> None:
    task_id = start_diagnostic(svc, events=5)
    svc.client.wait_for(task_id, timeout=60)

    show = rfuav(svc, "show", task_id, "--json")
    assert show.code == 0, show
    assert show.json()["task_id"] == task_id and show.json()["status"] == "completed"
    text = rfuav(svc, "show", task_id)
    assert text.code == 0 and f"task_id:        {task_id}" in text.out and "completed" in text.out

    listed = rfuav(svc, "tasks", "--json")
    assert listed.code == 0, listed
    assert task_id in [t["task_id"] for t in listed.json()]
    table = rfuav(svc, "tasks")
    assert table.out.splitlines()[0].split()[:3] == ["TASK", "TYPE", "STATUS"]
    assert any(line.startswith(task_id) and "completed" in line for line in table.out.splitlines())
    only_failed = rfuav(svc, "tasks", "--status", "failed", "--json")
    assert task_id not in [t["task_id"] for t in only_failed.json()]

    logs = rfuav(svc, "logs", task_id, "--json")
    assert logs.code == 0, logs
    events = [json.loads(line) for line in logs.out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "status" and events[-1]["status"] == "completed"
    plain = rfuav(svc, "logs", task_id)
    assert plain.out.count("\n") == len(events)
    assert events[-1]["message"] in plain.out


def test_unknown_task_is_an_api_error(svc: Service) -> None:
    for args in (["show", "nope-404"], ["logs", "nope-404"], ["cancel", "nope-404"]):
        run = rfuav(svc, *args)
        assert run.code == 1, run
        assert "404" in run.err and "nope-404" in run.err


def test_logs_follow_streams_until_completed(svc: Service) -> None:
    task_id = start_diagnostic(svc, events=30, rate=20)
    run = rfuav(svc, "logs", "-f", task_id, "--json")
    assert run.code == 0, run
    events = [json.loads(line) for line in run.out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["status"] == "completed"
    assert sum(1 for e in events if e["kind"] == "log") >= 30
    assert f"{task_id} completed" in run.err


def test_logs_follow_exits_1_when_the_task_fails(svc: Service) -> None:
    task_id = start_diagnostic(svc, events=2, **{"raise": "boom in the job"})
    run = rfuav(svc, "logs", "--follow", task_id)
    assert run.code == 1, run
    assert f"{task_id} failed" in run.err
    assert "boom in the job" in run.out + run.err


def test_logs_follow_exits_1_when_the_task_is_cancelled(svc: Service) -> None:
    task_id = start_diagnostic(svc, sleep=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "logs", "--follow", task_id, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(svc.base_url), cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())  # blocks until the stream is live
        svc.client.cancel_task(task_id)
        out, err = proc.stdout.read(), proc.stderr.read()  # the test's timeout bounds the wait
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [first] + [json.loads(line) for line in out.splitlines()]
    assert code == 1, err
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "status" and events[-1]["status"] == "cancelled"
    assert f"rfuav: {task_id} cancelled" in err


def test_logs_follow_resumes_after_the_web_server_dies(svc: Service) -> None:
    task_id = start_diagnostic(svc, events=40, rate=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "logs", "-f", task_id, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(svc.base_url), cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # blocks until the stream is live
        assert first["seq"] == 1
        # An abrupt disconnect: the web server dies mid-stream (the task goes on in the
        # supervisor), then comes back on the same port.
        assert svc.web is not None
        svc.web.kill()
        svc.web.wait()
        # The task was still running when its stream broke: the rest must come after the restart.
        assert svc.supervisor.call("get", task_id=task_id)["task"]["status"] == "running"
        svc.start_web()
        # Read through the same buffered pipe as readline() did (communicate() would skip
        # lines already buffered); the test's timeout bounds the wait.
        out = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [first] + [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    # Nothing lost, nothing repeated across the restart.
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), err
    assert events[-1]["status"] == "completed"
    assert sum(1 for e in events if e["kind"] == "log") >= 40


def test_cancel_running_then_conflict(svc: Service) -> None:
    task_id = start_diagnostic(svc, sleep=60)
    svc.client.wait_for(task_id, timeout=60, predicate=lambda t: t["status"] == "running")
    run = rfuav(svc, "cancel", task_id, "--json")
    assert run.code == 0, run
    assert run.json()["task_id"] == task_id and run.json()["status"] == "success"
    assert svc.client.wait_for(task_id, timeout=60)["status"] == "cancelled"
    again = rfuav(svc, "cancel", task_id)
    assert again.code == 1, again
    assert "409" in again.err


def test_ps_shows_the_live_runner(svc: Service) -> None:
    task_id = start_diagnostic(svc, sleep=60)
    try:
        svc.client.wait_for(task_id, timeout=60, predicate=lambda t: t["status"] == "running")
        run = rfuav(svc, "ps", "--json")
        assert run.code == 0, run
        mine = [r for r in run.json()["runners"] if r["task_id"] == task_id]
        assert len(mine) == 1 and mine[0]["pid"] == svc.client.get_task(task_id)["pid"]
        table = rfuav(svc, "ps")
        assert table.out.splitlines()[0].split()[:4] == ["PID", "TASK", "TYPE", "DEVICE"]
        row = next(line.split() for line in table.out.splitlines() if task_id in line)
        assert row[0] == str(mine[0]["pid"]) and row[2] == "diagnostic" and row[3] == "cpu"
    finally:
        svc.client.cancel_task(task_id)
        svc.client.wait_for(task_id, timeout=60)


# -- starting tasks ----------------------------------------------------------------------------


def _started(run: Run, task_type: str) -> str:
    assert run.code == 0, run
    task = run.json()
    assert task["task_type"] == task_type and task["status"] == "pending"
    return str(task["task_id"])


def test_start_every_task_type(svc: Service, data: dict[str, Path]) -> None:
    out = svc.home / "out"
    started = [
        _started(rfuav(svc, "train", "--model", "resnet18", "--num-classes", "10", "--train-path", str(data["train"]),
                       "--val-path", str(data["val"]), "--save-path", str(out / "m"), "--epochs", "2",
                       "--image-size", "32", "--device", "cpu", "--no-pretrained", "--priority", "7", "--json"),
                 "training"),
        _started(rfuav(svc, "split", "--input-path", str(data["train"]), "--output-path", str(out / "split"),
                       "--train-ratio", "0.5", "--val-ratio", "0.25", "--json"), "preprocessing"),
        _started(rfuav(svc, "augment", "--dataset-path", str(data["train"]), "--output-path", str(out / "aug"),
                       "--methods", "CLAHE", "Sharpen", "--json"), "preprocessing"),
        _started(rfuav(svc, "crop", "--input-path", str(data["train"]), "--output-path", str(out / "crop"),
                       "--x", "0", "--y", "0", "--width", "8", "--height", "8", "--json"), "preprocessing"),
    ]  # fmt: skip
    model_dir = svc.home / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.yaml").write_text("model: resnet18\nnum_classes: 10\n")
    (model_dir / "best.pth").write_bytes(b"not loaded while pending")
    started.append(_started(rfuav(svc, "infer", "--cfg-path", str(model_dir / "config.yaml"), "--weight-path",
                                  str(model_dir / "best.pth"), "--source-path", str(data["test"]), "--device", "cpu",
                                  "--json"), "inference"))  # fmt: skip
    training = svc.client.get_task(started[0])
    assert training["priority"] == 7 and training["total_epochs"] == 2
    assert training["params"]["pretrained"] is False and training["params"]["image_size"] == 32
    plain = rfuav(svc, "split", "--input-path", str(data["train"]), "--output-path", str(out / "split2"))
    assert plain.code == 0 and plain.out.split()[1] == "pending"
    started.append(plain.out.split()[0])
    for task_id in started:
        svc.client.cancel_task(task_id)


def test_refused_request_shows_the_service_message(svc: Service, data: dict[str, Path]) -> None:
    run = rfuav(svc, "train", "--model", "resnet9000", "--num-classes", "2", "--train-path", str(data["train"]),
                "--val-path", str(data["val"]), "--save-path", str(svc.home / "x"))  # fmt: skip
    assert run.code == 1, run
    assert "400" in run.err and "resnet9000" in run.err
    outside = rfuav(svc, "split", "--input-path", "/etc", "--output-path", str(svc.home / "y"))
    assert outside.code == 1 and "input_path" in outside.err
    bad_method = rfuav(svc, "augment", "--dataset-path", str(data["train"]), "--output-path", str(svc.home / "z"),
                       "--methods", "Sepia")  # fmt: skip
    assert bad_method.code == 1 and "Sepia" in bad_method.err


# -- resources ---------------------------------------------------------------------------------


def test_gpu_and_resources(svc: Service) -> None:
    gpu = rfuav(svc, "gpu", "--json")
    assert gpu.code == 0, gpu
    info = gpu.json()
    assert set(info) >= {"available", "count", "devices"}
    text = rfuav(svc, "gpu")
    if info["available"]:
        assert f"{info['count']} GPU(s)" in text.out
    else:
        assert text.out.startswith("no GPU")

    res = rfuav(svc, "resources", "--json")
    assert res.code == 0, res
    assert res.json()["limits"]["cpu"]["training"] == 0
    table = rfuav(svc, "resources")
    assert table.out.splitlines()[0].split()[0] == "DEVICE"
    assert any(line.split()[0] == "cpu" for line in table.out.splitlines())


def test_limits_show_and_set(svc: Service) -> None:
    shown = rfuav(svc, "limits", "--json")
    assert shown.code == 0 and shown.json()["cpu"]["diagnostic"] >= 1
    changed = rfuav(svc, "limits", "--set", "cpu.diagnostic=5", "cpu.inference=0", "--json")
    assert changed.code == 0, changed
    assert svc.client.get_resources()["limits"]["cpu"]["diagnostic"] == 5
    assert rfuav(svc, "limits", "--json").json()["cpu"]["diagnostic"] == 5
    text = rfuav(svc, "limits", "--set", "cpu.diagnostic=8")
    assert text.code == 0 and "DEVICE" in text.out
    refused = rfuav(svc, "limits", "--set", "moon.training=1")
    assert refused.code == 1 and "moon" in refused.err


# -- the progress bar ------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_train_follow_draws_the_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """`rfuav train ... -f` on a real (tiny) training job, stderr on a pseudo-terminal."""
    with Service(env={"RFUAV_API_TOKEN": TOKEN}) as service:
        data = digits(service.home / "digits", per_class=6, size=16)
        save = service.home / "models"
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "train", "--model", "resnet18", "--num-classes", "10",
             "--train-path", str(data["train"]), "--val-path", str(data["val"]), "--save-path", str(save),
             "--name", "tty", "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--device", "cpu",
             "--no-pretrained", "-f"],
            stdout=subprocess.PIPE, stderr=slave, text=True, env=cli_env(service.base_url), cwd=REPO,
        )  # fmt: skip
        os.close(slave)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the CLI closed the terminal (it exited)
                break
            if not chunk:
                break
            terminal += chunk
        os.close(master)
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, terminal.decode(errors="replace") + out
        screen = terminal.decode(errors="replace")
        task_id = out.split()[0]
        assert out.splitlines()[0].split()[1] in ("pending", "running")
        # The bar was redrawn in place (carriage return + erase line) with epoch, loss and accuracy.
        assert "\r\x1b[2K[" in screen
        assert "epoch 2/2" in screen and "loss " in screen and "acc " in screen
        assert f"{task_id} completed" in screen
        assert "epoch 2/2" in out
        assert (save / "tty" / "best.pth").is_file()
        # The task record turns final once the runner is reaped, a moment after its final event.
        assert service.client.wait_for(task_id, timeout=60)["status"] == "completed"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_epoch_loss_and_accuracy() -> None:
    out = _Tty()
    bar = ProgressBar(out)
    bar.update({"kind": "metrics", "stage": "training", "step": 3, "metrics": {"loss": 1.25}, "epoch": 1,
                "total_epochs": 4, "progress": 10})  # fmt: skip
    bar.draw()
    assert "epoch 1/4" in out.getvalue() and "loss 1.2500" in out.getvalue() and " 10%" in out.getvalue()
    bar.update({"kind": "metrics", "stage": "epoch_end", "epoch": 2, "total_epochs": 4, "progress": 50,
                "metrics": {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "train_acc": 80.0, "val_acc": 87.5}})  # fmt: skip
    assert bar.text() == "[############............]  50%  epoch 2/4  loss 0.5000  acc 87.5%"
    # Not a terminal (a pipe, a log file): no bar at all, only the log lines.
    piped = io.StringIO()
    ProgressBar(piped).draw()
    assert piped.getvalue() == ""


def test_progress_bar_through_an_epochs_summary_events() -> None:
    """The epoch's ``training`` summary (train_loss, train_acc; no step) and ``validation``
    events: the bar's loss is the training loss, its accuracy the validation accuracy once known."""
    bar = ProgressBar(_Tty())
    epoch = {"kind": "metrics", "total_epochs": 2}
    bar.update({**epoch, "stage": "training", "step": 4, "epoch": 1, "progress": 40, "metrics": {"loss": 1.5}})
    bar.update({**epoch, "stage": "training", "epoch": 1, "progress": 50,
                "metrics": {"epoch": 1, "train_loss": 1.25, "train_acc": 40.0}})  # fmt: skip
    assert bar.text().endswith("epoch 1/2  loss 1.2500  acc 40.0%")  # no validation yet
    bar.update({**epoch, "stage": "validation", "epoch": 1, "progress": 50,
                "metrics": {"epoch": 1, "val_loss": 1.0, "val_acc": 60.0, "macro_f1": 0.5, "mAP": 0.6, "top1_acc": 60.0}})  # fmt: skip
    assert bar.text().endswith("epoch 1/2  loss 1.2500  acc 60.0%")
    bar.update({**epoch, "stage": "training", "epoch": 2, "progress": 100,
                "metrics": {"epoch": 2, "train_loss": 0.75, "train_acc": 90.0}})  # fmt: skip
    assert bar.text() == "[########################] 100%  epoch 2/2  loss 0.7500  acc 60.0%"
