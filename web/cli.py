"""``rfuav``: the service from a shell, over its HTTP API (``web.client.RFUAVClient``).

Exit codes: 0 ok; 1 the API refused (its ``msg`` on stderr) or, for ``logs -f`` and
``--follow``, the task failed or was cancelled; 2 usage; 3 the service is unreachable (no
answer, or 503 because the supervisor is down). ``--json`` prints the API's ``data`` (one
JSON document; ``logs`` prints one event per line) for scripts. ``RFUAV_URL`` (default
http://127.0.0.1:8000) and ``RFUAV_API_TOKEN`` set the service and its token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from web.client import RFUAVClient, RFUAVError

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = ("completed", "failed", "cancelled")
EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
#: How long ``logs -f`` keeps trying to reconnect to a service that went away.
RECONNECT_FOR = 60.0


# -- output -------------------------------------------------------------------------------


def _emit_json(data: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _table(rows: list[list[str]], header: list[str], out: TextIO = sys.stdout) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out.writelines("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() + "\n" for line in [header, *rows])


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit in ("B", "K") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


def _task_line(task: dict[str, Any]) -> list[str]:
    job = task.get("job") or task["task_type"]
    kind = task["task_type"] if job == task["task_type"] else f"{task['task_type']}/{job}"
    return [
        task["task_id"],
        kind,
        task["status"],
        f"{task.get('progress', 0)}%",
        str(task.get("device") or "-"),
        str(task.get("created_at") or "")[:19].replace("T", " "),
        task.get("message") or "",
    ]


TASK_HEADER = ["TASK", "TYPE", "STATUS", "PROG", "DEVICE", "CREATED", "MESSAGE"]


# -- commands: one function each; each returns an exit code -------------------------------


def cmd_ps(client: RFUAVClient, args: argparse.Namespace) -> int:
    data = client.runners()
    if args.json:
        _emit_json(data)
        return EXIT_OK
    rows = []
    for run in data.get("runners", []):
        procs = run.get("processes") or []
        main = next((p for p in procs if p.get("pid") == run.get("pid")), procs[0] if procs else {})
        rows.append([
            str(run.get("pid")),
            run.get("task_id", ""),
            run.get("task_type", ""),
            run.get("device", ""),
            f"{sum(p.get('cpu_percent') or 0 for p in procs):.0f}",
            _bytes(sum(p.get("rss") or 0 for p in procs)),
            str(main.get("threads", "-")),
            str(max(0, len(procs) - 1)),
            _age(run.get("age")),
            main.get("title", ""),
        ])  # fmt: skip
    _table(rows, ["PID", "TASK", "TYPE", "DEVICE", "CPU%", "RSS", "THR", "CHILD", "AGE", "TITLE"])
    return EXIT_OK


def _started(client: RFUAVClient, args: argparse.Namespace, task: dict[str, Any]) -> int:
    """Report a started task; with ``--follow`` stream its log until it ends."""
    if args.json and not args.follow:
        _emit_json(task)
        return EXIT_OK
    if not args.json:
        print(f"{task['task_id']} {task['status']} on {task.get('device')}")
    if args.follow:
        return _follow(client, task["task_id"], args.json)
    return EXIT_OK


def _fields(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The request fields among ``names`` that were given (None: the service's default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


COMMON_TASK_FIELDS = ["task_id", "priority", "description"]


def cmd_train(client: RFUAVClient, args: argparse.Namespace) -> int:
    body = _fields(args, [
        "model", "num_classes", "train_path", "val_path", "save_path", "name", "batch_size",
        "num_epochs", "learning_rate", "image_size", "device", "weight_path", "pretrained",
        "shuffle", "seed", "deterministic", "augment", *COMMON_TASK_FIELDS,
    ])  # fmt: skip
    return _started(client, args, client.start_training(**body))


def cmd_infer(client: RFUAVClient, args: argparse.Namespace) -> int:
    body = _fields(args, [
        "cfg_path", "weight_path", "source_path", "save_path", "name", "device", "batch_size",
        "top_k", *COMMON_TASK_FIELDS,
    ])  # fmt: skip
    return _started(client, args, client.start_inference(**body))


def cmd_split(client: RFUAVClient, args: argparse.Namespace) -> int:
    body = _fields(args, ["input_path", "output_path", "train_ratio", "val_ratio", "seed", *COMMON_TASK_FIELDS])
    return _started(client, args, client.split_dataset(**body))


def cmd_augment(client: RFUAVClient, args: argparse.Namespace) -> int:
    body = _fields(args, ["dataset_path", "output_path", "methods", "copies", "seed", *COMMON_TASK_FIELDS])
    return _started(client, args, client.augment_dataset(**body))


def cmd_crop(client: RFUAVClient, args: argparse.Namespace) -> int:
    body = _fields(args, ["input_path", "output_path", "x", "y", "width", "height", *COMMON_TASK_FIELDS])
    return _started(client, args, client.crop_images(**body))


def cmd_tasks(client: RFUAVClient, args: argparse.Namespace) -> int:
    data = client.get_all_tasks(status=args.status, task_type=args.type)
    # Every "<type>_tasks" group: the contract's three and any addition (diagnostic).
    tasks = [t for key, group in data.items() if key.endswith("_tasks") for t in group]
    tasks.sort(key=lambda t: t.get("created_at") or "", reverse=True)
    if args.json:
        _emit_json(tasks)
        return EXIT_OK
    _table([_task_line(t) for t in tasks], TASK_HEADER)
    return EXIT_OK


def cmd_show(client: RFUAVClient, args: argparse.Namespace) -> int:
    task = client.get_task(args.task_id)
    if args.json:
        _emit_json(task)
        return EXIT_OK
    keys = ["task_id", "task_type", "job", "status", "message", "progress", "device", "priority",
            "description", "created_at", "started_at", "finished_at", "duration", "pid", "exit_code",
            "task_dir"]  # fmt: skip
    if task.get("task_type") == "training":
        keys += ["current_epoch", "total_epochs"]
    for key in keys:
        if task.get(key) is not None:
            print(f"{key + ':':15} {task[key]}")
    for title, key in (("metrics", "latest_metrics"), ("result", "res"), ("params", "params")):
        if task.get(key):
            print(f"{title}:")
            for k, v in task[key].items():
                print(f"  {k + ':':14} {v}")
    return EXIT_OK


def cmd_logs(client: RFUAVClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(client, args.task_id, args.json)
    events = client.get_logs(args.task_id)
    for event in events:
        if args.json:
            print(json.dumps(event, sort_keys=True))
        else:
            print(_log_line(event))
    return EXIT_OK


def cmd_cancel(client: RFUAVClient, args: argparse.Namespace) -> int:
    reply = client.cancel_task(args.task_id)
    if args.json:
        _emit_json(reply)
    else:
        print(f"{args.task_id}: {reply.get('message') or reply.get('status')}")
    return EXIT_OK if reply.get("status", "success") == "success" else EXIT_API


def cmd_gpu(client: RFUAVClient, args: argparse.Namespace) -> int:
    info = client.get_gpu_info()
    if args.json:
        _emit_json(info)
        return EXIT_OK
    if not info.get("available"):
        print(f"no GPU: jobs run on the CPU (PyTorch {info.get('pytorch_version') or '?'})")
        return EXIT_OK
    print(f"{info['count']} GPU(s), CUDA {info.get('cuda_version')}")
    rows = [
        [str(d["id"]), d.get("device_name") or d.get("name", ""), f"{d.get('free_memory_gb', 0):.1f}",
         f"{d.get('total_memory_gb', 0):.1f}", str(d.get("utilization", "-")),
         f"{d.get('current_tasks', {}).get('training', 0)}/{d.get('current_tasks', {}).get('inference', 0)}"]
        for d in info.get("devices", [])
    ]  # fmt: skip
    _table(rows, ["ID", "NAME", "FREE GB", "TOTAL GB", "UTIL%", "TRAIN/INFER"])
    return EXIT_OK


def cmd_resources(client: RFUAVClient, args: argparse.Namespace) -> int:
    res = client.get_resources()
    if args.json:
        _emit_json(res)
        return EXIT_OK
    _print_limits(res.get("limits", {}), res.get("device_usage", {}))
    print(f"running {res.get('running', '-')}, queued {res.get('queue_length', '-')}")
    for dev, active in (res.get("active_tasks") or {}).items():
        for task in active:
            print(f"  {dev}: {task.get('id')} ({task.get('type')})")
    return EXIT_OK


def _print_limits(limits: dict[str, dict[str, int]], usage: dict[str, dict[str, int]]) -> None:
    types = sorted({t for per in limits.values() for t in per})
    rows = [
        [dev, *(f"{usage.get(dev, {}).get(t, 0)}/{per[t]}" if t in per else "-" for t in types)]
        for dev, per in limits.items()
    ]
    _table(rows, ["DEVICE", *(t.upper() for t in types)])


def cmd_limits(client: RFUAVClient, args: argparse.Namespace) -> int:
    if not args.set:
        res = client.get_resources()
        if args.json:
            _emit_json(res.get("limits", {}))
        else:
            _print_limits(res.get("limits", {}), res.get("device_usage", {}))
        return EXIT_OK
    changes: dict[str, dict[str, int]] = {}
    for dev, task_type, value in args.set:
        changes.setdefault(dev, {})[task_type] = value
    reply = client.set_limits(changes)
    if args.json:
        _emit_json(reply)
    else:
        print(reply.get("message") or "limits changed")
        current = reply.get("current_config") or {}
        _print_limits(current.get("max_concurrent", current), {})
    return EXIT_OK


# -- following a task's log ---------------------------------------------------------------


def _log_line(event: dict[str, Any]) -> str:
    stamp = str(event.get("timestamp", ""))[11:19]
    return f"{stamp} {event.get('level', 'INFO'):7} {event.get('message', '')}"


class ProgressBar:
    """One status line (percent, epoch, loss, accuracy) redrawn under the log on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.progress = 0
        self.epoch: str = ""
        self.loss: float | None = None
        self.acc: float | None = None

    def update(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("progress"), int):
            self.progress = event["progress"]
        if event.get("epoch") is not None:
            self.epoch = f"{event['epoch']}/{event.get('total_epochs', '?')}"
        metrics = event.get("metrics") or {}
        loss = metrics.get("loss", metrics.get("train_loss"))
        if isinstance(loss, (int, float)):
            self.loss = float(loss)
        acc = metrics.get("val_acc", metrics.get("acc", metrics.get("train_acc")))
        if isinstance(acc, (int, float)):
            self.acc = float(acc)

    def text(self) -> str:
        filled = self.progress * 24 // 100
        parts = [f"[{'#' * filled}{'.' * (24 - filled)}] {self.progress:3d}%"]
        if self.epoch:
            parts.append(f"epoch {self.epoch}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.acc is not None:
            parts.append(f"acc {self.acc:.1f}%")
        return "  ".join(parts)

    def clear(self) -> None:
        if self.live:
            self.out.write("\r\x1b[2K")

    def draw(self) -> None:
        if self.live:
            self.out.write("\r\x1b[2K" + self.text())
            self.out.flush()


def _follow(client: RFUAVClient, task_id: str, as_json: bool) -> int:
    """Print the task's events as they come and exit by its outcome.

    ``stream_events`` resumes after a dropped connection by itself (``Last-Event-ID``); when it
    gives up (the service stayed away) we start it again from the last event printed, for up
    to ``RECONNECT_FOR`` seconds, so a restart of the web front end loses nothing.
    """
    bar = ProgressBar(sys.stderr)
    last_seq = 0
    final: dict[str, Any] | None = None
    deadline = time.monotonic() + RECONNECT_FOR
    while final is None:
        try:
            for event in client.stream_events(task_id, last_event_id=last_seq or None):
                deadline = time.monotonic() + RECONNECT_FOR
                seq = event.get("seq")
                if isinstance(seq, int):
                    if seq <= last_seq:
                        continue  # already printed before a reconnect
                    last_seq = seq
                bar.clear()
                print(json.dumps(event, sort_keys=True) if as_json else _log_line(event), flush=True)
                bar.update(event)
                bar.draw()
                if event.get("kind") == "status" and event.get("status") in FINAL_STATUSES:
                    final = event
            if final is None:
                # The stream ended without a final event in view: the task says how it ended.
                task = client.get_task(task_id)
                if task["status"] in FINAL_STATUSES:
                    final = task
        except RFUAVError as exc:
            if exc.code not in (0, 503) or time.monotonic() > deadline:
                bar.clear()
                raise
            bar.clear()
            print(f"rfuav: stream interrupted ({exc.msg}); resuming after event {last_seq}", file=sys.stderr)
            time.sleep(1.0)  # back off before reconnecting
    bar.clear()
    if final["status"] == "completed":
        print(f"{task_id} completed", file=sys.stderr)
        return EXIT_OK
    print(f"rfuav: {task_id} {final['status']}: {final.get('message', '')}", file=sys.stderr)
    return EXIT_API


# -- argument parsing ---------------------------------------------------------------------


def _limit(text: str) -> tuple[str, str, int]:
    """``DEVICE.TYPE=N``, e.g. ``cpu.training=2`` or ``gpu.inference=3``."""
    try:
        key, value = text.split("=", 1)
        dev, task_type = key.rsplit(".", 1)
        return dev, task_type, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEVICE.TYPE=N, e.g. cpu.training=2") from None


def _bool_pair(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction,
                        default=None, help=help_text)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"service URL (env RFUAV_URL, default {DEFAULT_URL})")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (env RFUAV_API_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="request timeout in seconds (30)")

    parser = argparse.ArgumentParser(prog="rfuav", description=__doc__.split("\n\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[RFUAVClient, argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def task_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task-id", help="custom task id")
        p.add_argument("--priority", type=int, help="1-10, higher runs first")
        p.add_argument("--description")
        p.add_argument("-f", "--follow", action="store_true", help="stream the log until the task ends")

    command("ps", cmd_ps, "live runner processes: pid, task, cpu, memory, threads, children, age")

    p = command("train", cmd_train, "start a training task")
    p.add_argument("--model", required=True, help="torchvision model name, e.g. resnet18")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--train-path", required=True)
    p.add_argument("--val-path", required=True)
    p.add_argument("--save-path", required=True)
    p.add_argument("--name")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", dest="num_epochs", type=int)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cuda: falls back to cpu)")
    p.add_argument("--weight-path")
    p.add_argument("--seed", type=int)
    _bool_pair(p, "pretrained", "start from pretrained weights")
    _bool_pair(p, "shuffle", "shuffle the training data")
    _bool_pair(p, "deterministic", "deterministic algorithms (with --seed)")
    _bool_pair(p, "augment", "mild train-time augmentation")
    task_options(p)

    p = command("infer", cmd_infer, "start an inference task")
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--weight-path", required=True)
    p.add_argument("--source-path", required=True)
    p.add_argument("--save-path")
    p.add_argument("--name")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--top-k", type=int)
    task_options(p)

    p = command("split", cmd_split, "split an ImageFolder dataset into train/val/test")
    p.add_argument("--input-path", required=True)
    p.add_argument("--output-path", required=True)
    p.add_argument("--train-ratio", type=float)
    p.add_argument("--val-ratio", type=float)
    p.add_argument("--seed", type=int)
    task_options(p)

    p = command("augment", cmd_augment, "write augmented copies of a dataset")
    p.add_argument("--dataset-path", required=True)
    p.add_argument("--output-path", required=True)
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                   help="AdvancedBlur CLAHE ColorJitter GaussNoise ISONoise Sharpen")  # fmt: skip
    p.add_argument("--copies", type=int)
    p.add_argument("--seed", type=int)
    task_options(p)

    p = command("crop", cmd_crop, "crop every image to a box")
    p.add_argument("--input-path", required=True)
    p.add_argument("--output-path", required=True)
    for name in ("x", "y", "width", "height"):
        p.add_argument(f"--{name}", type=int, required=True)
    task_options(p)

    p = command("tasks", cmd_tasks, "list tasks, newest first")
    p.add_argument("--type", choices=["training", "inference", "preprocessing", "diagnostic"])
    p.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])

    p = command("show", cmd_show, "one task's details")
    p.add_argument("task_id")

    p = command("logs", cmd_logs, "a task's log (-f: follow live, with a progress bar)")
    p.add_argument("task_id")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the task ends; exit 1 unless it completed")

    p = command("cancel", cmd_cancel, "cancel a pending or running task")
    p.add_argument("task_id")

    command("gpu", cmd_gpu, "GPU hardware and current tasks")
    command("resources", cmd_resources, "usage, limits and active tasks per device")

    p = command("limits", cmd_limits, "show concurrency limits, or change them with --set")
    p.add_argument("--set", nargs="+", type=_limit, metavar="DEVICE.TYPE=N",
                   help="e.g. cpu.training=1 gpu.inference=2")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("RFUAV_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("RFUAV_API_TOKEN") or None
    client = RFUAVClient(url, token=token, timeout=getattr(args, "timeout", 30.0))
    try:
        code: int = args.func(client, args)
        return code
    except RFUAVError as exc:
        if exc.code in (0, 503):
            # 0: no answer at all; 503: web answers but the supervisor is down.
            print(f"rfuav: service unreachable at {url}: {exc.msg}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"rfuav: {exc.msg} (HTTP {exc.code})", file=sys.stderr)
        return EXIT_API
    except httpx.TransportError as exc:  # a stream that broke outside the client's own retry
        print(f"rfuav: cannot reach the service at {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rfuav tasks | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
