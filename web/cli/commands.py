"""The commands of ``rfuav``: one function each, ``(client, args) -> exit code``.

A start command sends the request fields its parser declared (``args.request_fields``, names of
the request model's fields; ``web.cli.parser``) that were given: the service applies its own
defaults to the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from protocol.hardware import summary_lines
from web.cli import render
from web.cli.follow import follow
from web.client import RFUAVClient

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the command declared and the user gave (None: the service's default)."""
    names: tuple[str, ...] = args.request_fields
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _follow_to_exit(client: RFUAVClient, task_id: str, as_json: bool) -> int:
    """Follow the task until it ends: 0 when it completed, 1 otherwise (failed, cancelled)."""
    final = follow(client, task_id, as_json)
    if final["status"] == "completed":
        print(f"{task_id} completed", file=sys.stderr)
        return EXIT_OK
    print(f"rfuav: {task_id} {final['status']}: {final.get('message', '')}", file=sys.stderr)
    return EXIT_API


def _started(client: RFUAVClient, args: argparse.Namespace, task: dict[str, Any]) -> int:
    """Report a started task; with ``--follow`` stream its log until it ends."""
    if args.json and not args.follow:
        render.emit_json(task)
        return EXIT_OK
    if not args.json:
        print(f"{task['task_id']} {task['status']} on {task.get('device')}")
    if args.follow:
        return _follow_to_exit(client, task["task_id"], args.json)
    return EXIT_OK


# -- starting tasks -----------------------------------------------------------------------------
def train(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _started(client, args, client.start_training(**request_body(args)))


def infer(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _started(client, args, client.start_inference(**request_body(args)))


def split(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _started(client, args, client.split_dataset(**request_body(args)))


def augment(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _started(client, args, client.augment_dataset(**request_body(args)))


def crop(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _started(client, args, client.crop_images(**request_body(args)))


# -- tasks ----------------------------------------------------------------------------------------
def tasks(client: RFUAVClient, args: argparse.Namespace) -> int:
    data = client.get_all_tasks(status=args.status, task_type=args.type)
    # Every "<type>_tasks" group: the contract's three and any addition (diagnostic).
    listed = [t for key, group in data.items() if key.endswith("_tasks") for t in group]
    listed.sort(key=lambda t: t.get("created_at") or "", reverse=True)
    if args.json:
        render.emit_json(listed)
        return EXIT_OK
    render.table([render.task_line(t) for t in listed], render.TASK_HEADER)
    return EXIT_OK


#: ``show``'s lines, in order (those the task has).
_SHOW_KEYS = ["task_id", "task_type", "job", "status", "message", "progress", "device", "priority", "description",
              "created_at", "started_at", "finished_at", "duration", "pid", "exit_code", "task_dir"]  # fmt: skip
_SHOW_TRAINING_KEYS = ["current_epoch", "total_epochs"]
_SHOW_SECTIONS = (("metrics", "latest_metrics"), ("result", "res"), ("params", "params"))


def show(client: RFUAVClient, args: argparse.Namespace) -> int:
    task = client.get_task(args.task_id)
    if args.json:
        render.emit_json(task)
        return EXIT_OK
    keys = _SHOW_KEYS + (_SHOW_TRAINING_KEYS if task.get("task_type") == "training" else [])
    for key in keys:
        if task.get(key) is not None:
            print(f"{key + ':':15} {task[key]}")
    for title, key in _SHOW_SECTIONS:
        if task.get(key):
            print(f"{title}:")
            for k, v in task[key].items():
                print(f"  {k + ':':14} {v}")
    return EXIT_OK


def logs(client: RFUAVClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow_to_exit(client, args.task_id, args.json)
    for event in client.get_logs(args.task_id):
        print(json.dumps(event, sort_keys=True) if args.json else render.log_line(event))
    return EXIT_OK


def cancel(client: RFUAVClient, args: argparse.Namespace) -> int:
    reply = client.cancel_task(args.task_id)
    if args.json:
        render.emit_json(reply)
    else:
        print(f"{args.task_id}: {reply.get('message') or reply.get('status')}")
    return EXIT_OK if reply.get("status", "success") == "success" else EXIT_API


# -- processes and resources ---------------------------------------------------------------------
def ps(client: RFUAVClient, args: argparse.Namespace) -> int:
    data = client.runners()
    if args.json:
        render.emit_json(data)
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
            render.human_bytes(sum(p.get("rss") or 0 for p in procs)),
            str(main.get("threads", "-")),
            str(max(0, len(procs) - 1)),
            render.age(run.get("age")),
            main.get("title", ""),
        ])  # fmt: skip
    render.table(rows, ["PID", "TASK", "TYPE", "DEVICE", "CPU%", "RSS", "THR", "CHILD", "AGE", "TITLE"])
    return EXIT_OK


def gpu(client: RFUAVClient, args: argparse.Namespace) -> int:
    """The hardware summary the supervisor logged at start (``protocol.hardware``), with the
    current memory and tasks, then each GPU's utilisation."""
    info = client.get_gpu_info()
    if args.json:
        render.emit_json(info)
        return EXIT_OK
    for line in summary_lines(info):
        print(line)
    for d in info.get("devices", []):
        print(f"{d.get('device_name')}: utilization {d.get('utilization', '-')}%")
    return EXIT_OK


def resources(client: RFUAVClient, args: argparse.Namespace) -> int:
    res = client.get_resources()
    if args.json:
        render.emit_json(res)
        return EXIT_OK
    render.limits_table(res.get("limits", {}), res.get("device_usage", {}))
    print(f"running {res.get('running', '-')}, queued {res.get('queue_length', '-')}")
    for dev, active in (res.get("active_tasks") or {}).items():
        for task in active:
            print(f"  {dev}: {task.get('id')} ({task.get('type')})")
    return EXIT_OK


def limits(client: RFUAVClient, args: argparse.Namespace) -> int:
    if not args.set:
        res = client.get_resources()
        if args.json:
            render.emit_json(res.get("limits", {}))
        else:
            render.limits_table(res.get("limits", {}), res.get("device_usage", {}))
        return EXIT_OK
    changes: dict[str, dict[str, int]] = {}
    for dev, task_type, value in args.set:
        changes.setdefault(dev, {})[task_type] = value
    reply = client.set_limits(changes)
    if args.json:
        render.emit_json(reply)
    else:
        print(reply.get("message") or "limits changed")
        current = reply.get("current_config") or {}
        render.limits_table(current.get("max_concurrent", current), {})
    return EXIT_OK
