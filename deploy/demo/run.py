"""The demo, step by step (``python -m deploy.demo --help``). Exit status: 0 when every step
worked and the service stopped cleanly, 1 when one failed (the service's log tail is printed),
130 after a Ctrl-C or a SIGTERM (the service is stopped all the same)."""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from deploy.demo import spectra
from deploy.demo.service import Service, ServiceError
from web.cli.follow import follow
from web.client import RFUAVClient, RFUAVError

#: The file that marks a folder as the demo's own, to be emptied by the next run.
MARKER = ".rfuav-demo"
#: The demo's classes: four patterns of drone links (``deploy.demo.spectra``).
CLASSES: tuple[str, ...] = ("carrier", "chirp", "hopping", "ofdm")
#: The demo's deployment of its trained model.
DEPLOYMENT = "demo"


class DemoFailed(RuntimeError):
    """A step did not work; the message says which and why."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument("--home", type=Path, default=Path("var/demo"),
                        help="the service's home for the demo (emptied first; default ./var/demo)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--per-class", type=int, default=80, help="images per class (default 80)")
    parser.add_argument("--image-size", type=int, default=32, help="training image size (default 32)")
    parser.add_argument("--keep", action="store_true", help="keep the service running at the end, until Ctrl-C")
    args = parser.parse_args(argv)
    if args.per_class < 5 or args.epochs < 1:
        parser.error("--per-class must be at least 5 (a split needs train, val and test images), --epochs at least 1")
    return args


def say(text: str) -> None:
    print(text, flush=True)


def prepare_home(home: Path) -> None:
    """Empty ``home`` when an earlier demo made it; refuse a folder of anything else, or one a
    running service holds."""
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise DemoFailed(f"{home} is not empty and was not made by the demo: pass another --home")
        lock = home / "supervisor.lock"
        if lock.exists():
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DemoFailed(f"a service is running with home {home}: stop it first") from None
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by python -m deploy.demo; emptied by its next run\n")


def finished(client: RFUAVClient, task_id: str, what: str, timeout: float) -> dict[str, Any]:
    """The task's record once it ended; ``DemoFailed`` unless it completed."""
    task = client.wait_for(task_id, timeout=timeout)
    if task["status"] != "completed":
        raise DemoFailed(f"{what} {task['status']}: {task['message']}")
    return task


def run_steps(args: argparse.Namespace, home: Path, client: RFUAVClient) -> dict[str, str]:
    """Data, split, training, inference; returns the task ids by step."""
    started = time.monotonic()
    raw = spectra.spectrograms(home / "data" / "raw", per_class=args.per_class, size=48, seed=0, classes=CLASSES)
    say(f"data: {args.per_class * len(CLASSES)} synthetic RF spectrograms, {len(CLASSES)} classes "
        f"({', '.join(CLASSES)}) in {raw}")  # fmt: skip

    split_dir = home / "data" / "split"
    split = client.split_dataset(str(raw), str(split_dir), train_ratio=0.6, val_ratio=0.2, seed=0)
    finished(client, split["task_id"], "split", timeout=120)
    counts = {part: len(list((split_dir / part).rglob("*.png"))) for part in ("train", "val", "test")}
    say(f"split ({split['task_id']}): {counts['train']} train, {counts['val']} val, {counts['test']} test images")

    say(f"training resnet18 at {args.image_size} px for {args.epochs} epochs on the CPU:")
    train = client.start_training(
        "resnet18", len(CLASSES), str(split_dir / "train"), str(split_dir / "val"), str(home / "models"),
        name="demo", batch_size=8, num_epochs=args.epochs, learning_rate=1e-3, image_size=args.image_size,
        device="cpu", pretrained=False, augment=False, seed=0, description="make demo",
    )  # fmt: skip
    final = follow(client, train["task_id"], as_json=False)  # the ``rfuav logs -f`` view, progress bar and all
    if final.get("status") != "completed":
        raise DemoFailed(f"training {final.get('status')}: {final.get('message')}")
    task = finished(client, train["task_id"], "training", timeout=60)
    m = task["latest_metrics"] or {}
    out = home / "models" / "demo"
    say(f"trained ({train['task_id']}): val_acc {m['val_acc']:.1f}%, best {m['best_acc']:.1f}%, macro_f1 "
        f"{m['macro_f1']:.3f}, mAP {m['mAP']:.3f}; weights {out / 'best.pth'}")  # fmt: skip

    results = home / "results"
    infer = client.start_inference(str(out / "config.yaml"), str(out / "best.pth"), str(split_dir / "test"),
                                   save_path=str(results), name="demo", device="cpu")  # fmt: skip
    finished(client, infer["task_id"], "inference", timeout=120)
    rows = json.loads((results / "demo" / "results.json").read_text())["results"]
    right = sum(r.get("top_class") == Path(r["image"]).parent.name for r in rows)
    say(f"inferred ({infer['task_id']}): {len(rows)} test images, {right} right ({100.0 * right / max(1, len(rows)):.1f}%); "
        f"results in {results / 'demo' / 'results.json'}")  # fmt: skip

    deployment = deploy_and_predict(client, train["task_id"], split_dir / "test")
    say(f"demo: every step done in {time.monotonic() - started:.0f} s")
    return {"split": split["task_id"], "training": train["task_id"], "inference": infer["task_id"],
            "deployment": deployment}  # fmt: skip


def deploy_and_predict(client: RFUAVClient, training: str, test_dir: Path) -> str:
    """Deploy the trained model (2 replicas), send a few test images as they are, then a batch of
    them; returns the deployment's name. The deployment keeps serving until the service stops."""
    client.deploy(DEPLOYMENT, from_task=training, device="cpu", replicas=2, max_batch_delay_ms=5)
    dep = client.wait_deployment(DEPLOYMENT, timeout=120)
    if dep["status"] != "ready":
        raise DemoFailed(f"deployment {dep['status']}: {dep.get('reason', '')}")
    say(f"deployed '{DEPLOYMENT}' ({dep['task_id']}): version {dep['version']}, {len(dep['replicas'])} replicas "
        f"(pids {', '.join(str(r['pid']) for r in dep['replicas'])}) on {dep['device']}")  # fmt: skip
    images = sorted(test_dir.rglob("*.png"))
    picked = [images[i * len(images) // 4] for i in range(4)]
    for path in picked:
        answer = client.predict(DEPLOYMENT, raw=path.read_bytes(), content_type="image/png")
        say(f"  predict {path.parent.name}/{path.name}: {answer['class_name']} "
            f"({100 * answer['top_k'][0]['probability']:.1f}%) in {answer['latency_ms']:.1f} ms")  # fmt: skip
    images = images[: 16 * 8]  # one predict_batch takes at most max_batch_size × 8 items
    batch = client.predict_batch(DEPLOYMENT, paths=[str(p) for p in images])
    right = sum(r["class_name"] == p.parent.name for r, p in zip(batch["results"], images))
    say(f"  predict_batch: {len(images)} test images, {right} right; POST /predict and /predict_batch answer "
        "the article's shapes too")  # fmt: skip
    return DEPLOYMENT


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (``.venv/bin/rfuav``)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def where_to_look(svc: Service, home: Path, tasks: dict[str, str], keep: bool) -> None:
    rfuav = shown(Path(sys.executable).with_name("rfuav"))
    if keep:
        url, prefix = svc.base_url, f"RFUAV_URL={svc.base_url} "
        say(f"\nthe service keeps running (Ctrl-C stops it): dashboard {url}/  API docs {url}/docs")
    else:
        url, prefix = "http://127.0.0.1:8000", ""
        say(
            f"\nto look around afterwards: RFUAV_HOME={shown(home)} {shown(Path(sys.executable).with_name('rfuavd'))} all"
        )
        say(f"  then the dashboard {url}/#task={tasks['training']} and the API docs {url}/docs")
        say("  (or run the demo with --keep: make demo DEMO_ARGS=--keep)")
    say(f"  {prefix}{rfuav} tasks")
    say(f"  {prefix}{rfuav} show {tasks['training']}")
    say(f"  {prefix}{rfuav} logs {tasks['training']}")
    say(f"  {prefix}{rfuav} show {tasks['inference']}")
    if keep:
        say(f"  {prefix}{rfuav} serve show {tasks['deployment']}")
        say(f"  {prefix}{rfuav} serve predict {tasks['deployment']} {shown(home / 'data' / 'split' / 'test')}/*/*.png")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's path: stop the service, then exit


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    home = args.home.resolve()
    code = 0
    svc: Service | None = None
    try:
        prepare_home(home)
        svc = Service(home)
        say(f"demo: starting the service (rfuavd all) on {svc.base_url}, home {home}, log {svc.log_path}")
        svc.start()
        say(f"demo: service up; follow along in the dashboard at {svc.base_url}/")
        with RFUAVClient(svc.base_url, timeout=30.0) as client:
            tasks = run_steps(args, home, client)
        where_to_look(svc, home, tasks, args.keep)
        if args.keep:  # until Ctrl-C or SIGTERM, taken here rather than by a handler
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        say("\ndemo: interrupted")
        code = 130
    except (DemoFailed, ServiceError, RFUAVError, OSError, TimeoutError, KeyError) as exc:
        say(f"demo: FAILED: {exc!r}" if isinstance(exc, KeyError) else f"demo: FAILED: {exc}")
        if svc is not None:
            say(f"--- service log ({svc.log_path}), last lines ---\n{svc.log_tail()}")
        code = 1
    finally:
        if svc is not None:
            if svc.proc is not None:
                say("demo: stopping the service (SIGTERM)")
            try:
                said = svc.stop()
                if svc.proc is not None:
                    say(f"demo: service stopped: {said}")
            except ServiceError as exc:
                say(f"demo: service stop FAILED: {exc}")
                code = code or 1
    return code
