"""The preprocessing jobs: ``split``, ``augment`` and ``crop`` of image datasets.

Each reads a local folder (or a zip or URL, fetched like training data), writes to a local
output folder, works on a thread pool of ``spec.torch_threads`` workers (OpenCV releases the GIL
while decoding and encoding); the workers only compute, the job's own thread counts what is
done, reports progress and checks for a stop at the batch boundaries. Contracts:

- ``split``: ImageFolder in, ``output/{train,val,test}/<class>/…`` out. Per class: files sorted,
  shuffled with ``Random(f"{seed}/{class}")`` (reproducible), then ``round(n * train_ratio)``
  to train, ``round(n * val_ratio)`` to val (never more than what is left), the rest to test.
  Ratios: ``0 < train_ratio``, ``0 <= val_ratio``, ``train_ratio + val_ratio <= 1``.
- ``augment``: every image is copied as is, plus ``copies`` augmented versions per method named
  ``<stem>_<method>_<n><ext>``, keeping the relative (class) folders. Each augmented file depends
  only on ``(seed, relative path, method, n)``, not on thread scheduling.
- ``crop``: the box ``(x, y, width, height)`` cut from every image, relative folders kept;
  images too small for the box (or unreadable) are named in a WARNING event and counted in the
  final message, never silently dropped; when no image could be cropped the job fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import random
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import albumentations as A
import cv2
import numpy as np

from protocol.catalog import AUGMENT_METHODS
from runner import datasets, fetch
from runner.context import JobContext
from runner.safefs import OutputTree

T = TypeVar("T")

#: The augmentation of each method (always applied: p=1). Strengths are moderate: the images are
#: spectrograms whose colours encode power.
_METHODS: dict[str, Callable[[], Any]] = {
    # sigma from 0.6 and shape (beta) from 0.9: below, the kernel can collapse to a delta and
    # the "blurred" copy equals the input.
    "AdvancedBlur": lambda: A.AdvancedBlur(
        sigma_x_limit=(0.6, 1.5), sigma_y_limit=(0.6, 1.5), beta_limit=(0.9, 4.0), p=1.0
    ),
    "CLAHE": lambda: A.CLAHE(p=1.0),
    "ColorJitter": lambda: A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=1.0),
    "GaussNoise": lambda: A.GaussNoise(std_range=(0.03, 0.1), p=1.0),
    "ISONoise": lambda: A.ISONoise(p=1.0),
    "Sharpen": lambda: A.Sharpen(p=1.0),
}
assert set(_METHODS) == set(AUGMENT_METHODS)


# -- shared -------------------------------------------------------------------------------
def _parallel(ctx: JobContext, items: list[T], work: Callable[[T], Any], what: str) -> list[Any]:
    """Run ``work`` over ``items`` on the thread pool; progress and stop checks from this thread.
    Returns the results in ``items`` order."""
    results: list[Any] = [None] * len(items)
    threads = max(1, int(ctx.spec.torch_threads))
    done = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prep") as pool:
        pending: dict[Future[Any], int] = {}
        queue = iter(enumerate(items))
        # A bounded window keeps memory flat and lets a cancel stop quickly.
        for i, item in _take(queue, threads * 4):
            pending[pool.submit(work, item)] = i
        try:
            while pending:
                finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                ctx.check_stop()
                for fut in finished:
                    results[pending.pop(fut)] = fut.result()
                    done += 1
                for i, item in _take(queue, len(finished)):
                    pending[pool.submit(work, item)] = i
                if finished:
                    ctx.progress(99 * done / max(1, len(items)))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    ctx.log(f"{what}: {done}/{len(items)} done", progress=99)
    return results


def _take(it: Iterable[tuple[int, T]], n: int) -> list[tuple[int, T]]:
    out = []
    for pair in it:
        out.append(pair)
        if len(out) >= n:
            break
    return out


def _write_image(out: OutputTree, rel: Path, image: np.ndarray) -> None:
    """Encode by the file's extension (``imwrite`` cannot take every path; a bad write raises)."""
    ok, data = cv2.imencode(rel.suffix or ".png", image)
    if not ok:
        raise OSError(f"cannot encode {rel.name}")
    out.write_bytes(rel, data.tobytes())


def _read_unchanged(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None


def _io(ctx: JobContext) -> fetch.Inputs:
    return fetch.Inputs(ctx.task_dir, fetch.Limits.from_config(ctx.config), ctx.check_stop, ctx.log)


def _source_and_output(ctx: JobContext, input_key: str, label: str) -> tuple[Path, OutputTree]:
    """The job's input (fetched if a URL or zip) and its output folder, kept apart."""
    io = _io(ctx)
    source = io.resolve(str(ctx.params[input_key]), label)
    out = io.output(str(ctx.params["output_path"]))
    output = out.root
    if output == source or output.is_relative_to(source):
        raise ValueError(f"output_path {output} must not lie inside the input folder {source}")
    return source, out


def _images(ctx: JobContext, input_key: str, label: str) -> tuple[Path, OutputTree, list[Path]]:
    """``_source_and_output`` plus every image below the source; none is an error."""
    source, out = _source_and_output(ctx, input_key, label)
    images = datasets.list_images(source)
    if not images:
        raise ValueError(f"no images found in {ctx.params[input_key]}")
    return source, out, images


# -- split --------------------------------------------------------------------------------
def check_ratios(train_ratio: float, val_ratio: float) -> None:
    if not 0 < train_ratio <= 1:
        raise ValueError(f"train_ratio must be > 0 and <= 1, got {train_ratio}")
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be >= 0 and < 1, got {val_ratio}")
    if train_ratio + val_ratio > 1 + 1e-9:
        raise ValueError(f"train_ratio + val_ratio must be <= 1, got {train_ratio + val_ratio:g}")


def plan_split(
    files: list[Path],
    klass: str,
    train_ratio: float,
    val_ratio: float,
    seed: int | None,
) -> dict[str, list[Path]]:
    """Which files of one class go to train, val and test (see the module docstring)."""
    order = sorted(files)
    rng = random.Random(f"{seed}/{klass}") if seed is not None else random.Random()
    rng.shuffle(order)
    n = len(order)
    n_train = min(n, round(n * train_ratio))
    n_val = min(n - n_train, round(n * val_ratio))
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def split(ctx: JobContext) -> str:
    p = ctx.params
    train_ratio, val_ratio = (
        float(p.get("train_ratio", 0.7)),
        float(p.get("val_ratio", 0.2)),
    )
    check_ratios(train_ratio, val_ratio)
    seed = p.get("seed", 42)
    source, out = _source_and_output(ctx, "input_path", "input")
    output = out.root
    classes = datasets.class_folders(source)
    if not classes:
        raise ValueError(f"no class folders with images in {p['input_path']} (expected ImageFolder layout)")
    jobs: list[tuple[Path, Path]] = []
    counts: dict[str, dict[str, int]] = {}
    for klass in classes:
        plan = plan_split(datasets.list_images(source / klass), klass, train_ratio, val_ratio, seed)
        counts[klass] = {part: len(files) for part, files in plan.items()}
        for part, files in plan.items():
            jobs += [(f, Path(part, klass, f.relative_to(source / klass))) for f in files]
    ctx.log(
        f"split of {len(jobs)} images in {len(classes)} classes (train {train_ratio:g}, val {val_ratio:g}, seed {seed})"
    )

    def copy(job: tuple[Path, Path]) -> None:
        out.copy_from(*job)

    _parallel(ctx, jobs, copy, "split")
    totals = {part: sum(c[part] for c in counts.values()) for part in ("train", "val", "test")}
    for klass, c in counts.items():
        ctx.log(f"class {klass}: train {c['train']}, val {c['val']}, test {c['test']}")
    message = (
        f"split {len(jobs)} images: train {totals['train']}, val {totals['val']}, test {totals['test']} into {output}"
    )
    ctx.log(message, progress=100)
    return message


# -- augment ------------------------------------------------------------------------------
def _seed_of(seed: int | None, rel: Path, method: str, n: int) -> int | None:
    if seed is None:
        return None
    return zlib.crc32(f"{seed}/{rel.as_posix()}/{method}/{n}".encode())


def augment(ctx: JobContext) -> str:
    p = ctx.params
    methods = list(p.get("methods") or [])
    unknown = [m for m in methods if m not in _METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be a non-empty list of {', '.join(AUGMENT_METHODS)}; unknown: {unknown}")
    copies = int(p.get("copies", 1))
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    seed = p.get("seed")
    source, out, images = _images(ctx, "dataset_path", "dataset")
    output = out.root
    local = threading.local()  # a Compose is not thread-safe: one per thread and method

    def transform(method: str) -> A.Compose:
        cache: dict[str, A.Compose] = local.__dict__.setdefault("cache", {})
        if method not in cache:
            cache[method] = A.Compose([_METHODS[method]()])
        return cache[method]

    def work(path: Path) -> int:
        rel = path.relative_to(source) if path != source else Path(path.name)
        out.copy_from(path, rel)
        image = datasets.read_rgb(path)
        written = 1
        for method in methods:
            for n in range(1, copies + 1):
                compose = transform(method)
                s = _seed_of(seed, rel, method, n)
                if s is not None:
                    compose.set_random_seed(s)
                augmented = compose(image=image)["image"]
                _write_image(
                    out, rel.with_name(f"{path.stem}_{method}_{n}{path.suffix}"),
                    cv2.cvtColor(augmented, cv2.COLOR_RGB2BGR),
                )  # fmt: skip
                written += 1
        return written

    ctx.log(f"augmenting {len(images)} images with {', '.join(methods)} ({copies} per method)")
    written = sum(_parallel(ctx, images, work, "augment"))
    message = f"augmented {len(images)} images: {written} files ({len(images)} originals) in {output}"
    ctx.log(message, progress=100)
    return message


# -- crop ---------------------------------------------------------------------------------
def crop(ctx: JobContext) -> str:
    p = ctx.params
    x, y, width, height = (int(p[k]) for k in ("x", "y", "width", "height"))
    if x < 0 or y < 0 or width < 1 or height < 1:
        raise ValueError(f"crop box must have x, y >= 0 and width, height >= 1, got {(x, y, width, height)}")
    source, out, images = _images(ctx, "input_path", "input")
    output = out.root

    def work(path: Path) -> str | None:
        """None when cropped, else why not."""
        image = _read_unchanged(path)
        if image is None:
            return "unreadable"
        h, w = image.shape[:2]
        if x + width > w or y + height > h:
            return f"{w}x{h} is smaller than the box"
        rel = path.relative_to(source) if path != source else Path(path.name)
        _write_image(out, rel, np.ascontiguousarray(image[y : y + height, x : x + width]))
        return None

    ctx.log(f"cropping {len(images)} images to {width}x{height} at ({x}, {y})")
    outcomes = _parallel(ctx, images, work, "crop")
    skipped = [(path, why) for path, why in zip(images, outcomes) if why is not None]
    cropped = len(images) - len(skipped)
    if skipped:
        names = "; ".join(
            f"{path.relative_to(source) if path != source else path.name} ({why})" for path, why in skipped
        )
        ctx.warning(f"{len(skipped)} images not cropped: {names}")
    message = f"cropped {cropped} of {len(images)} images into {output}; {len(skipped)} too small or unreadable"
    if cropped == 0:
        raise ValueError(
            f"no image could be cropped: {len(skipped)} too small for the box {(x, y, width, height)} or unreadable"
        )
    ctx.log(message, progress=100)
    return message
