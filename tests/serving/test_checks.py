"""The supervisor's checks of a deployment (no processes): model sources, settings, room."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import serving as sv
from protocol.commands import Deploy
from protocol.replies import CommandError
from protocol.tasks import COMPLETED, FAILED, TaskRecord
from supervisor.scheduler import Scheduler
from supervisor.serving.source import describe, model_of, settings_of


def _files(tmp_path: Path, cfg: str) -> tuple[str, str]:
    (tmp_path / "config.yaml").write_text(cfg)
    (tmp_path / "best.pth").write_bytes(b"weights")
    return str(tmp_path / "config.yaml"), str(tmp_path / "best.pth")


def test_the_model_is_described_from_its_config(tmp_path: Path) -> None:
    cfg, weights = _files(tmp_path, "model: resnet18\nnum_classes: 2\nimage_size: 64\nclass_names: [drone, noise]\n")
    info = describe(cfg, weights)
    assert (info.model, info.num_classes, info.image_size, info.class_names) == ("resnet18", 2, 64, ["drone", "noise"])


@pytest.mark.parametrize(
    ("cfg", "why"),
    [
        ("model: resnet18\nimage_size: 64\n", "lacks 'num_classes'"),
        ("- a list\n", "must be a mapping"),
        ("model: x\nnum_classes: 3\nimage_size: 8\nclass_names: [a]\n", "1 class_names for num_classes 3"),
        ("model: x\nnum_classes: many\nimage_size: 8\n", "must be integers"),
        ("model: [\n", "not a readable YAML"),
    ],
)
def test_a_bad_config_is_refused_naming_cfg_path(tmp_path: Path, cfg: str, why: str) -> None:
    files = _files(tmp_path, cfg)
    with pytest.raises(CommandError) as err:
        describe(*files)
    assert err.value.message.startswith("cfg_path: ") and why in err.value.message


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    cfg, _ = _files(tmp_path, "model: x\nnum_classes: 1\nimage_size: 8\n")
    with pytest.raises(CommandError, match="weight_path"):
        describe(cfg, str(tmp_path / "nope.pth"))


def _training(status: str, result: dict[str, str] | None) -> TaskRecord:
    return TaskRecord(task_id="t", task_type="training", job="training", params={}, requested_device="cpu",
                      priority=5, description=None, strategy_type=None, status=status, result=result)  # fmt: skip


def test_from_task_needs_a_completed_training_that_names_its_artifacts(tmp_path: Path) -> None:
    cfg, weights = _files(tmp_path, "model: x\nnum_classes: 1\nimage_size: 8\n")
    ok = _training(COMPLETED, {"config_path": cfg, "best_path": weights})
    assert model_of(Deploy(name="n", from_task="t"), lambda _: ok).weight_path == str(Path(weights).resolve())
    for task, code, why in [
        (None, "not_found", "not found"),
        (_training(FAILED, None), "bad_request", "is failed, not completed"),
        (_training(COMPLETED, {}), "bad_request", "does not name its artifacts"),
    ]:
        with pytest.raises(CommandError) as err:
            model_of(Deploy(name="n", from_task="t"), lambda _, task=task: task)  # type: ignore[misc]
        assert err.value.code == code and why in err.value.message
    with pytest.raises(CommandError, match="weight_path is required with cfg_path"):
        model_of(Deploy(name="n", cfg_path=cfg), lambda _: None)


def test_settings_are_bounded_and_threads_default_to_the_cores_per_replica() -> None:
    assert settings_of(Deploy(name="n", replicas=2), cores=8).threads == 4
    assert settings_of(Deploy(name="n", replicas=16), cores=8).threads == 1
    for field, value in [("replicas", 65), ("max_batch_size", 0), ("max_batch_delay_ms", float("nan")),
                         ("max_queue", 0), ("cache_size", -1), ("top_k", True)]:  # fmt: skip
        with pytest.raises(CommandError) as err:
            settings_of(Deploy(name="n", **{field: value}), cores=2)  # type: ignore[arg-type]
        assert err.value.message.startswith(field)


def test_room_for_replicas_respects_the_serving_limit() -> None:
    s = Scheduler({"cpu": {"serving": 3}, "gpu": {"serving": 1}}, gpu_count=2)
    assert s.room(sv.TASK_TYPE, "cpu", 3) == ("cpu", None)
    s.occupy("r1", sv.TASK_TYPE, "cpu")
    device, why = s.room(sv.TASK_TYPE, "cpu", 3)
    assert device is None and "3 serving slot(s) needed, 2 free" in str(why)
    s.occupy("g0", sv.TASK_TYPE, "cuda:0")
    assert s.room(sv.TASK_TYPE, "cuda", 1) == ("cuda:1", None)
    assert s.room(sv.TASK_TYPE, "cuda", 2)[0] is None
    assert Scheduler({}, gpu_count=0).room(sv.TASK_TYPE, "cuda", 1)[0] == "cpu"
