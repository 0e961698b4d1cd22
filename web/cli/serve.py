"""``rfuav serve``: deployments (``contract/SERVING.md``) from a shell, one function per action.

    rfuav serve deploy uav --from-task 20240101-abc --device cpu --replicas 2 --wait
    rfuav serve list
    rfuav serve predict uav a.png b.jpg
    rfuav serve reload uav --wait
    rfuav serve undeploy uav

``deploy`` and ``reload`` send the request fields their parser declared that were given
(``commands.request_body``); with ``--wait`` they wait until the deployment is ready (for a
reload: at the next version) and exit 1 if it failed. ``predict`` sends each file's bytes as the
request body (PNG or JPEG, by their first bytes) and goes on after a refused file (exit 1 at the
end).
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Any

from protocol import serving as sv
from web.cli import render
from web.cli.commands import EXIT_API, EXIT_OK, EXIT_USAGE, request_body
from web.client import RFUAVClient, RFUAVError

LIST_HEADER = ["NAME", "STATUS", "VER", "DEVICE", "REPLICAS", "RESTARTS", "REQ/S", "P99", "REQUESTS", "ERRORS",
               "MODEL", "TASK"]  # fmt: skip
PREDICT_HEADER = ["FILE", "CLASS", "PROBABILITY", "MS"]


def usage(client: RFUAVClient, args: argparse.Namespace) -> int:
    """``serve`` without an action (argparse refuses it first)."""
    print("rfuav serve: an action is required (deploy, list, show, predict, reload, undeploy)", file=sys.stderr)
    return EXIT_USAGE


def _ready_count(dep: dict[str, Any]) -> str:
    replicas = dep.get("replicas") or []
    total = (dep.get("settings") or {}).get("replicas", len(replicas))
    return f"{sum(1 for r in replicas if r.get('status') == sv.READY)}/{total}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def line(dep: dict[str, Any]) -> list[str]:
    """A deployment's row under ``LIST_HEADER``."""
    stats = dep.get("stats") or {}
    return [
        dep["name"],
        dep["status"],
        str(dep.get("version", "-")),
        str(dep.get("device") or "-"),
        _ready_count(dep),
        str(dep.get("restarts", 0)),
        f"{stats.get('requests_per_s') or 0:.1f}",
        _ms(stats.get("p99_ms")),
        str(stats.get("requests", 0)),
        str(stats.get("errors", 0)),
        (dep.get("model") or {}).get("model", "-"),
        dep.get("task_id", ""),
    ]


def _summary(dep: dict[str, Any]) -> str:
    version = dep.get("version")
    if dep["status"] == sv.RELOADING:
        version = f"{version} (until {int(version or 0) + 1} is ready)"
    text = f"{dep['name']} {dep['status']}: version {version}, {dep.get('device')}, "
    text += f"{_ready_count(dep)} replicas ready, task {dep.get('task_id')}"
    return text + (f" ({dep['reason']})" if dep.get("reason") else "")


def _waited(client: RFUAVClient, args: argparse.Namespace, dep: dict[str, Any], version: int | None = None) -> int:
    """Report ``dep`` (just deployed or reloading); with ``--wait`` wait for it to serve first."""
    if args.wait:
        dep = client.wait_deployment(dep["name"], sv.READY, args.wait_timeout, version=version)
    if args.json:
        render.emit_json(dep)
    else:
        print(_summary(dep))
    if dep["status"] == sv.FAILED:
        print(f"rfuav: deployment {dep['name']} failed: {dep.get('reason', '')}", file=sys.stderr)
        return EXIT_API
    return EXIT_OK


def deploy(client: RFUAVClient, args: argparse.Namespace) -> int:
    return _waited(client, args, client.deploy(args.name, **request_body(args)))


def reload(client: RFUAVClient, args: argparse.Namespace) -> int:
    dep = client.reload(args.name, **request_body(args))
    return _waited(client, args, dep, version=int(dep["version"]) + 1)


def list_(client: RFUAVClient, args: argparse.Namespace) -> int:
    deployments = client.deployments()
    if args.json:
        render.emit_json(deployments)
        return EXIT_OK
    render.table([line(d) for d in sorted(deployments, key=lambda d: d["name"])], LIST_HEADER)
    return EXIT_OK


def show(client: RFUAVClient, args: argparse.Namespace) -> int:
    dep = client.deployment(args.name)
    if args.json:
        render.emit_json(dep)
        return EXIT_OK
    for key in ("name", "task_id", "status", "version", "device", "restarts", "reason"):
        if dep.get(key) is not None:
            print(f"{key + ':':15} {dep[key]}")
    for title in ("model", "settings", "stats"):
        if dep.get(title):
            print(f"{title}:")
            for k, v in dep[title].items():
                print(f"  {k + ':':20} {'-' if v is None else v}")
    print("replicas:")
    rows = [[str(r.get("pid")), r.get("status", ""), r.get("device", ""), str(r.get("restarts", 0))]
            for r in dep.get("replicas") or []]  # fmt: skip
    table = io.StringIO()
    render.table(rows, ["PID", "STATUS", "DEVICE", "RESTARTS"], out=table)
    print(textwrap.indent(table.getvalue(), "  "), end="")
    return EXIT_OK


def undeploy(client: RFUAVClient, args: argparse.Namespace) -> int:
    dep = client.undeploy(args.name)
    if args.json:
        render.emit_json(dep)
    else:
        print(f"{dep['name']} {dep['status']} (task {dep.get('task_id')})")
    return EXIT_OK


def media_type(head: bytes) -> str:
    """``image/jpeg`` for a JPEG file's first bytes, else ``image/png`` (the service names what
    it cannot decode)."""
    return "image/jpeg" if head.startswith(b"\xff\xd8\xff") else "image/png"


def predict(client: RFUAVClient, args: argparse.Namespace) -> int:
    answers: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    failed = False
    for name in args.files:
        try:
            raw = Path(name).read_bytes()
            answer = client.predict(args.name, raw=raw, content_type=media_type(raw[:4]))
        except OSError as exc:
            problem = f"cannot read it: {exc.strerror or exc}"
        except RFUAVError as exc:
            if exc.code == 0:
                raise  # the service is not there: nothing else will work
            problem = f"{exc.msg} (HTTP {exc.code})"
        else:
            answers.append({"file": name, **answer})
            rows.append([name, answer["class_name"], f"{answer['top_k'][0]['probability']:.4f}",
                         f"{answer.get('latency_ms', 0):.1f}"])  # fmt: skip
            continue
        failed = True
        answers.append({"file": name, "error": problem})
        print(f"rfuav: {name}: {problem}", file=sys.stderr)
    if args.json:
        render.emit_json(answers)
    elif rows:
        render.table(rows, PREDICT_HEADER)
    return EXIT_API if failed else EXIT_OK
