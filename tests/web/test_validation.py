"""Request validation and path confinement, without a server (pure functions on real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from protocol.catalog import MODELS
from web import schemas
from web.paths import Confinement, PathRefused
from web.validation import validation_errors


def errors_of(model: type[BaseModel], body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return {e["field"]: e["error"] for e in validation_errors(info.value)}


TRAIN = {"model": "resnet18", "num_classes": 3, "train_path": "t", "val_path": "v", "save_path": "s"}
INFER = {"cfg_path": "c", "weight_path": "w", "source_path": "s"}


def test_training_defaults_match_the_contract() -> None:
    req = schemas.TrainingRequest.model_validate(TRAIN)
    assert (req.batch_size, req.num_epochs, req.learning_rate, req.image_size) == (8, 100, 0.0001, 224)
    assert (req.device, req.weight_path, req.pretrained, req.shuffle, req.priority) == ("cuda", "", True, True, 5)
    assert req.enable_upload is False and req.token is None and req.name is None


def test_each_bad_field_is_named_with_its_reason() -> None:
    errs = errors_of(
        schemas.TrainingRequest,
        {"model": "resnet18", "num_classes": 0, "train_path": 5, "val_path": "v", "batch_size": "8",
         "learning_rate": 0, "priority": 11, "device": "gpu0", "pretrained": 1},
    )  # fmt: skip
    assert errs == {
        "num_classes": "must be >= 1",
        "train_path": "must be a string",
        "save_path": "is required",
        "batch_size": "must be an integer",
        "learning_rate": "must be > 0",
        "priority": "must be <= 10",
        "device": "must be 'cpu', 'cuda' or 'cuda:N'",
        "pretrained": "must be a boolean",
    }


def test_unknown_model_lists_the_valid_names() -> None:
    err = errors_of(schemas.TrainingRequest, {**TRAIN, "model": "resnet19"})["model"]
    assert "unknown model 'resnet19'" in err
    assert all(name in err for name in MODELS)


def test_model_input_size_rules() -> None:
    assert (
        "needs image_size 224"
        in errors_of(schemas.TrainingRequest, {**TRAIN, "model": "vit_b_16", "image_size": 256})["image_size"]
    )
    assert (
        "needs image_size >= 75"
        in errors_of(schemas.TrainingRequest, {**TRAIN, "model": "inception_v3", "image_size": 64})["image_size"]
    )


def test_unknown_augmentation_method() -> None:
    err = errors_of(schemas.AugmentRequest, {"dataset_path": "d", "output_path": "o", "methods": ["CLAHE", "Blurry"]})
    assert "unknown augmentation method(s) 'Blurry'" in err["methods"]
    assert "is required" not in err["methods"]


def test_split_ratios_and_crop_box() -> None:
    assert (
        "must be <= 1"
        in errors_of(
            schemas.SplitRequest, {"input_path": "i", "output_path": "o", "train_ratio": 0.8, "val_ratio": 0.3}
        )["val_ratio"]
    )
    errs = errors_of(
        schemas.CropRequest, {"input_path": "i", "output_path": "o", "x": -1, "y": 0, "width": 0, "height": 5}
    )
    assert errs == {"x": "must be >= 0", "width": "must be >= 1"}


def test_task_id_and_name_are_safe() -> None:
    assert "task_id" in errors_of(schemas.TrainingRequest, {**TRAIN, "task_id": "../x"})
    assert "name" in errors_of(schemas.TrainingRequest, {**TRAIN, "name": "a/b"})
    assert "name" in errors_of(
        schemas.InferenceRequest, {"cfg_path": "c", "weight_path": "w", "source_path": "s", "name": ".."}
    )


def test_token_value_never_appears_in_errors() -> None:
    with pytest.raises(ValidationError) as info:
        schemas.TrainingRequest.model_validate({**TRAIN, "token": 12345678, "upload_url": "ftp://x"})
    text = repr(validation_errors(info.value))
    assert "12345678" not in text and "token" in text and "upload_url" in text


@pytest.mark.parametrize(
    "token", ["s3cret\n", " s3cret", "s3cret ", "s3\r\ncret", "s3\tcret", "s3\x00cret", "s3cr\u00e9t", "s" * 4097]
)
def test_token_must_be_a_header_safe_value(token: str) -> None:
    for model, body in ((schemas.TrainingRequest, TRAIN), (schemas.InferenceRequest, INFER)):
        errs = errors_of(model, {**body, "token": token})
        assert list(errs) == ["token"] and "printable ASCII" in errs["token"] and "s3cret" not in repr(errs)


def test_good_tokens_and_upload_urls() -> None:
    for token in (None, "", "s3cret", "Bearer abc.DEF-123_~+/=", "x" * 4096):
        assert schemas.InferenceRequest.model_validate({**INFER, "token": token}).token == token
    for url, reason in (("http://:80/up", "no host"), ("http://example.org:99999/up", "bad host or port"),
                        ("http://example.org/a b", "whitespace"), ("ftp://example.org/up", "http or https")):  # fmt: skip
        assert reason in errors_of(schemas.InferenceRequest, {**INFER, "upload_url": url})["upload_url"]


def test_limits_request() -> None:
    assert schemas.LimitsRequest.model_validate({"max_concurrent": {"cuda:0": {"training": 2}}}).max_concurrent == {
        "cuda:0": {"training": 2}
    }
    assert "max_concurrent" in errors_of(schemas.LimitsRequest, {"max_concurrent": {"tpu": {"training": 1}}})
    assert "max_concurrent.cpu.training" in errors_of(
        schemas.LimitsRequest, {"max_concurrent": {"cpu": {"training": "1"}}}
    )


# -- confinement ----------------------------------------------------------------------------
@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Confinement, Path, Path]:
    home = tmp_path / "home"
    extra = tmp_path / "data"
    (home / "sets" / "a").mkdir(parents=True)
    extra.mkdir()
    (tmp_path / "outside").mkdir()
    return Confinement(home, [home, extra]), home, extra


def test_relative_paths_resolve_against_home(roots: tuple[Confinement, Path, Path]) -> None:
    paths, home, _ = roots
    assert paths.resolve("train_path", "sets/a", must_exist=True) == str(home.resolve() / "sets" / "a")
    assert paths.resolve("save_path", "out/new") == str(home.resolve() / "out" / "new")


def test_paths_outside_the_roots_are_refused(roots: tuple[Confinement, Path, Path]) -> None:
    paths, home, extra = roots
    for bad in ("/etc/passwd", "../outside", "sets/../../outside", str(home.parent / "outside")):
        with pytest.raises(PathRefused, match="outside the data roots"):
            paths.resolve("input_path", bad)
    assert paths.resolve("input_path", str(extra)) == str(extra.resolve())


def test_symlinks_are_followed_before_the_check(roots: tuple[Confinement, Path, Path]) -> None:
    paths, home, _ = roots
    os.symlink(home.parent / "outside", home / "escape")
    with pytest.raises(PathRefused, match="outside the data roots"):
        paths.resolve("train_path", "escape")
    with pytest.raises(PathRefused, match="outside the data roots"):
        paths.resolve("save_path", "escape/new-dir")
    os.symlink(home / "sets", home / "inside")
    assert paths.resolve("train_path", "inside/a", must_exist=True) == str(home.resolve() / "sets" / "a")


def test_urls_and_schemes(roots: tuple[Confinement, Path, Path]) -> None:
    paths, _, _ = roots
    assert paths.resolve("train_path", "https://example.org/d.zip", allow_url=True) == "https://example.org/d.zip"
    with pytest.raises(PathRefused, match="scheme 'file'"):
        paths.resolve("train_path", "file:///etc/passwd", allow_url=True)
    with pytest.raises(PathRefused, match="local path is required"):
        paths.resolve("save_path", "http://example.org/x")
    with pytest.raises(PathRefused, match="does not exist"):
        paths.resolve("train_path", "sets/missing", must_exist=True)
    with pytest.raises(PathRefused, match="must not be empty"):
        paths.resolve("train_path", "  ")


def test_the_fast_resolution_agrees_with_realpath(tmp_path: Path) -> None:
    """``web.paths._realpath`` (``O_PATH`` opens) gives ``os.path.realpath``'s answer, and
    whether the path exists, for every kind of path: plain, through links and link chains,
    ``..`` after a link, a missing tail (under a directory, a link, a file), ``..`` after a
    missing name, a dangling link, a loop, a file, the root."""
    from web.paths import _realpath

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.png").write_bytes(b"x")
    os.symlink(tmp_path / "a" / "b", tmp_path / "ln")
    os.symlink(tmp_path / "ln", tmp_path / "chain")
    os.symlink("b", tmp_path / "a" / "rel")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    cases = ["a", "a/b/f.png", "ln", "chain/f.png", "ln/..", "chain/../b", "a/rel/f.png", "a/b/missing/deeper",
             "ln/missing", "chain/missing/./x/", "a/b/f.png/x", "a/missing/../b", "ln/missing/../../a", "dangling",
             "dangling/x", "loop1", "loop1/x", "a/./b//f.png", "a/b/../../a", "a/b/"]  # fmt: skip
    for case in cases:
        path = str(tmp_path / case)
        resolved = os.path.realpath(path)
        assert _realpath(path) == (resolved, os.path.exists(resolved)), case
    assert _realpath("/") == ("/", True)
    assert _realpath("/no-such-dir-here/x") == ("/no-such-dir-here/x", False)
