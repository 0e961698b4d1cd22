"""split, augment and crop in real runner processes, outputs checked file by file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from protocol.catalog import AUGMENT_METHODS
from runner.preprocessing import check_ratios, plan_split
from tests.runner.harness import run_job
from tests.support.datasets import write_png


def _final_log(events: list[dict[str, object]]) -> str:
    """The job's closing summary: its last log line at 100%."""
    return str([e for e in events if e["kind"] == "log" and e.get("progress") == 100][-1]["message"])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(120)
def test_split_is_stratified_complete_and_reproducible(spectro: Path, tmp_path: Path) -> None:
    params = {
        "input_path": str(spectro),
        "output_path": str(tmp_path / "a"),
        "train_ratio": 0.5,
        "val_ratio": 0.25,
        "seed": 5,
    }
    rp = run_job("split", params, tmp_path / "t1", timeout=100, torch_threads=2)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    out = _files(tmp_path / "a")
    source = _files(spectro)
    # Every source file lands exactly once, unchanged, under its own class.
    placed: dict[str, str] = {}
    for rel, data in out.items():
        part, klass, name = rel.split("/")
        assert part in ("train", "val", "test")
        assert source[f"{klass}/{name}"] == data
        assert f"{klass}/{name}" not in placed
        placed[f"{klass}/{name}"] = part
    assert set(placed) == set(source)
    for klass in ("carrier", "chirp", "hopping"):  # 12 per class: 6 / 3 / 3
        counts = [
            sum(1 for k, v in placed.items() if k.startswith(klass + "/") and v == part)
            for part in ("train", "val", "test")
        ]
        assert counts == [6, 3, 3]
    assert "train 18, val 9, test 9" in _final_log(rp.events)
    # Same seed, same split; another seed, another one.
    rp = run_job(
        "split",
        dict(params, output_path=str(tmp_path / "b")),
        tmp_path / "t2",
        timeout=100,
        torch_threads=2,
    )
    assert _files(tmp_path / "b") == out
    other = {p.relative_to(spectro).as_posix(): part for part, files in plan_split(
        sorted((spectro / "chirp").iterdir()), "chirp", 0.5, 0.25, 6).items() for p in files}  # fmt: skip
    assert other != {k: v for k, v in placed.items() if k.startswith("chirp/")}


def test_split_ratios_validated() -> None:
    check_ratios(1.0, 0.0)
    check_ratios(0.7, 0.3)
    for train, val, text in [(0, 0.2, "train_ratio"), (-0.1, 0.2, "train_ratio"), (0.7, -0.1, "val_ratio"),
                             (0.8, 0.3, "train_ratio \\+ val_ratio")]:  # fmt: skip
        with pytest.raises(ValueError, match=text):
            check_ratios(train, val)


@pytest.mark.timeout(100)
def test_split_bad_ratio_fails_the_task(spectro: Path, tmp_path: Path) -> None:
    params = {
        "input_path": str(spectro),
        "output_path": str(tmp_path / "o"),
        "train_ratio": 0.9,
        "val_ratio": 0.2,
    }
    rp = run_job("split", params, tmp_path / "t", timeout=90, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "train_ratio + val_ratio must be <= 1" in rp.final["message"]
    assert not any((tmp_path / "o").rglob("*.png"))


@pytest.mark.timeout(150)
def test_augment_writes_every_copy_per_method(spectro: Path, tmp_path: Path) -> None:
    params = {
        "dataset_path": str(spectro),
        "output_path": str(tmp_path / "a"),
        "methods": list(AUGMENT_METHODS),
        "copies": 2,
        "seed": 3,
    }
    rp = run_job("augment", params, tmp_path / "t1", timeout=140, torch_threads=2)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    out = _files(tmp_path / "a")
    source = _files(spectro)
    expected: set[str] = set()
    for rel in source:
        stem = rel[: -len(".png")]
        expected.add(rel)
        expected |= {f"{stem}_{m}_{n}.png" for m in AUGMENT_METHODS for n in (1, 2)}
    assert set(out) == expected
    for rel, data in source.items():
        assert out[rel] == data  # the original, unchanged
        original = cv2.imread(str(spectro / rel))
        for m in AUGMENT_METHODS:
            first = cv2.imread(str(tmp_path / "a" / f"{rel[:-4]}_{m}_1.png"))
            second = cv2.imread(str(tmp_path / "a" / f"{rel[:-4]}_{m}_2.png"))
            assert first.shape == original.shape
            assert not np.array_equal(first, original), (
                rel,
                m,
            )  # the method really changed it
            if m != "CLAHE":  # CLAHE is deterministic: its copies are equal by nature
                assert not np.array_equal(first, second), (rel, m)
    assert f"{len(expected)} files" in _final_log(rp.events)
    # Reproducible with the seed, whatever the thread scheduling.
    params2 = dict(params, output_path=str(tmp_path / "b"), methods=["GaussNoise", "ColorJitter"])
    rp2 = run_job("augment", params2, tmp_path / "t2", timeout=140, torch_threads=2)
    assert rp2.final is not None and rp2.final["status"] == "completed", rp2.log_tail()
    again = _files(tmp_path / "b")
    assert len(again) == len(source) * 5  # the original and 2 copies of 2 methods each
    for rel, data in again.items():
        assert out[rel] == data


@pytest.mark.timeout(100)
def test_augment_unknown_method_fails(spectro: Path, tmp_path: Path) -> None:
    params = {
        "dataset_path": str(spectro),
        "output_path": str(tmp_path / "a"),
        "methods": ["Blur"],
    }
    rp = run_job("augment", params, tmp_path / "t", timeout=90, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed" and "unknown: ['Blur']" in rp.final["message"]


@pytest.mark.timeout(100)
def test_crop_cuts_the_box_and_names_small_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    big = {f"a/big{i}.png": rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for i in range(3)}
    gray = {"b/gray.png": rng.integers(0, 255, (50, 50), dtype=np.uint8)}
    small = {"b/small.png": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)}
    for rel, img in {**big, **gray, **small}.items():
        write_png(src / rel, img)
    params = {
        "input_path": str(src),
        "output_path": str(tmp_path / "out"),
        "x": 5,
        "y": 10,
        "width": 30,
        "height": 25,
    }
    rp = run_job("crop", params, tmp_path / "t", timeout=90, torch_threads=2)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted([*big, *gray])
    for rel, img in {**big, **gray}.items():
        got = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(got, img[10:35, 5:35])
    warning = [e for e in rp.events if e["level"] == "WARNING"]
    assert len(warning) == 1 and "b/small.png (30x20 is smaller than the box)" in warning[0]["message"]
    assert "cropped 4 of 5 images" in _final_log(rp.events)
    assert "1 too small" in _final_log(rp.events)


@pytest.mark.timeout(100)
def test_crop_nothing_fits_fails(tmp_path: Path) -> None:
    write_png(tmp_path / "src" / "x.png", np.zeros((10, 10, 3), np.uint8))
    params = {
        "input_path": str(tmp_path / "src"),
        "output_path": str(tmp_path / "out"),
        "x": 0,
        "y": 0,
        "width": 64,
        "height": 64,
    }
    rp = run_job("crop", params, tmp_path / "t", timeout=90, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "no image could be cropped" in rp.final["message"]
    assert any("x.png (10x10 is smaller than the box)" in e["message"] for e in rp.events)


@pytest.mark.timeout(100)
def test_split_refuses_a_symlinked_folder_below_the_output(spectro: Path, tmp_path: Path) -> None:
    """output_path is inside the data roots, but output_path/train is a symbolic link to a folder
    outside them: the job fails naming it and nothing is written outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "root" / "split"
    out.mkdir(parents=True)
    (out / "train").symlink_to(outside, target_is_directory=True)
    params = {"input_path": str(spectro), "output_path": str(out), "train_ratio": 0.5, "val_ratio": 0.25}
    roots = [str(tmp_path / "root"), str(spectro)]
    rp = run_job("split", params, tmp_path / "t", timeout=90, torch_threads=1, config={"data_roots": roots})
    assert rp.final is not None and rp.final["status"] == "failed", rp.log_tail()
    assert rp.final["message"] == f"UnsafePath: refused to write {out / 'train'}: train is a symbolic link"
    assert not list(outside.iterdir())
