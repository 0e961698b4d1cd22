"""Inference throughput of the service runner against two plain loops, same model and images.

A resnet18 (random weights: throughput does not depend on them) saved as a training job would
save it (``config.yaml`` + ``best.pth``), and the scikit-learn digits rendered as PNG files:

- ``runner``: a real runner process (``python -m runner spec.json``), images/s of its prediction
  loop (decode, transform, batched forward, top-k; ``summary.images_per_s`` of the final result);
- ``per-image``: the original article's style — for each image: read, preprocess, one forward
  pass of batch size 1 under ``torch.no_grad()``, softmax (goal: runner ≥ 3×);
- ``batched``: the best plain batched loop we could write — the same DataLoader pipeline and
  batch size, ``inference_mode``, channels-last (goal: runner ≥ 0.95×).

Same thread count everywhere (the service gives a job 50% of the cores).

    python -m benchmarks.inference [--images 600] [--size 64] [--threads 1] [--workers 1] [--batch 32]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import torch
import yaml
from torch.utils.data import DataLoader

from runner import datasets, models
from tests.runner.harness import RunnerProcess
from tests.support.datasets import digits

MODEL = "resnet18"


def per_image(paths: list[Path], model: torch.nn.Module, size: int) -> float:
    transform = datasets.transforms(size)
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            x = transform(image=datasets.read_rgb(path))["image"]
            output = model(x.unsqueeze(0))
            torch.softmax(output, dim=1).numpy().tolist()
    return len(paths) / (time.perf_counter() - started)


def batched(paths: list[Path], model: torch.nn.Module, size: int, batch: int, workers: int) -> float:
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the caller's model stays as is
    dataset = datasets.ImageList(paths, datasets.transforms(size), size)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers,
                        worker_init_fn=datasets.seed_worker if workers else None)  # fmt: skip
    started = time.perf_counter()
    with torch.inference_mode():
        for images, _, _ in loader:
            probs = torch.softmax(model(images.contiguous(memory_format=torch.channels_last)), dim=1)
            probs.topk(5, dim=1).indices.tolist()
    return len(paths) / (time.perf_counter() - started)


def runner_rate(params: dict[str, object], task_dir: Path, threads: int, workers: int) -> float:
    """A real runner process: images/s of its prediction loop (the final result's summary)."""
    params = dict(params, save_path=str(task_dir / "results"))
    with RunnerProcess("inference", params, task_dir, torch_threads=threads, dataloader_workers=workers) as rp:
        final = rp.finish(timeout=1800)
    if final["status"] != "completed":
        raise SystemExit(f"runner inference failed: {final['message']}\n{rp.log_tail()}")
    return float([e for e in rp.events if e["kind"] == "result"][-1]["result"]["summary"]["images_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="model input size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="rfbench-infer-"))
    try:
        per_class = max(1, args.images // 10)
        data = digits(work / "digits", size=32, per_class=per_class, splits={"all": 1.0}, seed=0)
        paths = datasets.list_images(data["all"])
        model = models.build(MODEL, 10).eval()
        (work / "model").mkdir()
        torch.save(
            {"model": model.state_dict(), "model_name": MODEL, "num_classes": 10},
            work / "model" / "best.pth",
        )
        (work / "model" / "config.yaml").write_text(yaml.safe_dump({
            "model": MODEL, "num_classes": 10, "class_names": [str(i) for i in range(10)], "image_size": args.size,
            "mean": list(datasets.MEAN), "std": list(datasets.STD)}))  # fmt: skip
        print(f"{MODEL} @ {args.size}px, {len(paths)} PNG images, batch {args.batch}, {args.threads} thread(s), "
              f"{args.workers} worker(s)")  # fmt: skip
        params = {"cfg_path": str(work / "model" / "config.yaml"), "weight_path": str(work / "model" / "best.pth"),
                  "source_path": str(data["all"]), "batch_size": args.batch, "top_k": 5}  # fmt: skip
        rates: dict[str, list[float]] = {"runner": [], "per-image": [], "batched": []}
        for n in range(args.rounds):  # interleaved, so that all three see the same machine load
            rates["runner"].append(runner_rate(params, work / f"task{n}", args.threads, args.workers))
            rates["per-image"].append(per_image(paths, model, args.size))
            rates["batched"].append(batched(paths, model, args.size, args.batch, args.workers))
            print("  round " + str(n + 1) + ": " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " img/s")
        runner_best, single, plain = (max(rates[k]) for k in ("runner", "per-image", "batched"))
        print(f"  runner    {runner_best:8.1f} img/s (best of {args.rounds})")
        print(f"  per-image {single:8.1f} img/s  (the article's loop)")
        print(f"  batched  {plain:8.1f} img/s  (best plain batched loop)")
        r1, r2 = runner_best / single, runner_best / plain
        print(f"inference images/s: runner/per-image {r1:.2f}x (goal >= 3) {'OK' if r1 >= 3 else 'BELOW GOAL'}; "
              f"runner/batched {r2:.3f} (goal >= 0.95) {'OK' if r2 >= 0.95 else 'BELOW GOAL'}")  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
