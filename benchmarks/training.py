"""Training throughput of the service runner against a bare PyTorch loop, and bit-identity.

Both train resnet18 on the scikit-learn digits (rendered as PNGs) for one epoch with the same
data pipeline (OpenCV + albumentations ImageFolder, DataLoader with the same workers), the same
thread count, seed, deterministic mode and augmentation off:

- ``runner``: a real runner process (``python -m runner spec.json``; events to our SUB socket),
  images/s of its training phase (``train_images_per_s`` of the ``epoch_end`` event);
- ``bare``: the plain loop (forward, loss, zero_grad, backward, step), also in a fresh process
  (``--bare`` mode of this module: a warmed-up allocator would flatter it), timed over the same
  span (first batch requested → last step done).

Rounds alternate the two so that both see the same machine load; the best of each is compared.

Goal: runner / bare ≥ 0.97, and the weights after the epoch bit-identical (printed check).

    python -m benchmarks.training [--per-class 100] [--threads 1] [--workers 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import torch
from torch import nn

from runner import datasets, models
from runner.trainparts import make_loader, make_optimizer, seed_everything
from tests.runner.harness import RunnerProcess
from tests.support.datasets import digits

MODEL = "resnet18"
IMAGE_SIZE = 32
BATCH = 32
SEED = 1234


def bare_epoch(train: Path, workers: int) -> tuple[float, dict[str, torch.Tensor]]:
    """One epoch of the plain loop; returns (images/s, state dict). Same call order as the job."""
    seed_everything(SEED, True)
    transform = datasets.transforms(IMAGE_SIZE, train=True, augment=False)
    transform.set_random_seed(SEED)
    train_set = datasets.ImageFolder(train, transform)
    model = models.build(MODEL, len(train_set.class_names))
    loader = make_loader(train_set, batch_size=BATCH, workers=workers, shuffle=True, seed=SEED)
    optimizer = make_optimizer(model, 1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    started = time.perf_counter()
    for images, targets in loader:
        logits = model(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += targets.shape[0]
    elapsed = time.perf_counter() - started
    del loader
    return seen / elapsed, {k: v.clone() for k, v in model.state_dict().items()}


def runner_epoch(data: dict[str, Path], work: Path, threads: int, workers: int, n: int) -> tuple[float, dict[str, Any]]:
    params = {"model": MODEL, "num_classes": 10, "train_path": str(data["train"]), "val_path": str(data["val"]),
                  "save_path": str(work / f"out{n}"), "batch_size": BATCH, "num_epochs": 1, "learning_rate": 1e-3,
                  "image_size": IMAGE_SIZE, "pretrained": False, "shuffle": True, "seed": SEED, "deterministic": True,
                  "augment": False, "num_workers": workers}  # fmt: skip
    with RunnerProcess(
        "training",
        params,
        work / f"task{n}",
        torch_threads=threads,
        dataloader_workers=workers,
    ) as rp:
        final = rp.finish(timeout=1800)
    if final["status"] != "completed":
        raise SystemExit(f"runner training failed: {final['message']}\n{rp.log_tail()}")
    rate = float(rp.stage("epoch_end")[-1]["metrics"]["train_images_per_s"])
    checkpoint = torch.load(work / f"out{n}" / "last.pth", weights_only=True)
    return rate, checkpoint["model"]


def bare_process(train: Path, work: Path, threads: int, workers: int, n: int) -> tuple[float, dict[str, Any]]:
    """``bare_epoch`` in a fresh interpreter, like the runner's."""
    out = work / f"bare{n}.pth"
    cmd = [sys.executable, "-m", "benchmarks.training", "--bare", str(train), str(out),
           "--threads", str(threads), "--workers", str(workers)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    saved = torch.load(out, weights_only=True)
    return float(saved["rate"]), saved["model"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100, help="digits per class (60%% train)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (the service gives 50%% of the cores)",
    )
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each; best taken")
    parser.add_argument("--bare", nargs=2, metavar=("TRAIN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cv2.setNumThreads(1)
    if args.bare:
        rate, state = bare_epoch(Path(args.bare[0]), args.workers)
        torch.save({"rate": rate, "model": state}, args.bare[1])
        return 0
    work = Path(tempfile.mkdtemp(prefix="rfbench-train-"))
    try:
        data = digits(work / "digits", size=16, per_class=args.per_class, seed=0)
        images = sum(1 for _ in data["train"].rglob("*.png"))
        print(f"{MODEL} @ {IMAGE_SIZE}px, {images} training images, batch {BATCH}, {args.threads} thread(s), "
              f"{args.workers} worker(s), seed {SEED}, deterministic, augmentation off")  # fmt: skip
        runner_rates, bare_rates = [], []
        identical = True
        for n in range(args.rounds):
            rate, runner_state = runner_epoch(data, work, args.threads, args.workers, n)
            runner_rates.append(rate)
            brate, bare_state = bare_process(data["train"], work, args.threads, args.workers, n)
            bare_rates.append(brate)
            same = runner_state.keys() == bare_state.keys() and all(
                torch.equal(runner_state[k], bare_state[k]) for k in bare_state
            )
            identical &= same
            print(f"  round {n + 1}: runner {rate:7.1f} img/s   bare {brate:7.1f} img/s   weights identical: {same}")
        best_runner, best_bare = max(runner_rates), max(bare_rates)
        ratio = best_runner / best_bare
        print(f"training images/s: runner {best_runner:.1f}, bare loop {best_bare:.1f}, "
              f"ratio {ratio:.3f} (goal >= 0.97) {'OK' if ratio >= 0.97 else 'BELOW GOAL'}")  # fmt: skip
        print(f"weights after one epoch bit-identical to the bare loop: {identical}")
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
