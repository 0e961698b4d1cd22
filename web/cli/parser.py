"""``rfuav``'s argument parser: one function per command.

A start command's options are fields of its request model (``web.schemas``): ``_RequestOptions``
takes each one's type (int, float, str, a yes/no pair for a boolean, several values for a list)
and whether it is required from the model, so the CLI cannot disagree with the API it calls;
the service applies its own defaults to what is not given. Choices and lists come from
``protocol`` (task types, statuses, augmentation methods, model names).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from protocol.catalog import AUGMENT_METHODS, MODELS
from protocol.tasks import STATUSES, TASK_TYPES
from web import schemas
from web.cli import commands, serve
from web.client import RFUAVClient
from web.fields import DEVICE_FORMS, one_of
from web.serving.schemas import DeployRequest, ReloadRequest

DESCRIPTION = "``rfuav``: the service from a shell, over its HTTP API (``web.client.RFUAVClient``)."
DEFAULT_URL = "http://127.0.0.1:8000"

Command = Callable[[RFUAVClient, argparse.Namespace], int]


# -- options from request models ------------------------------------------------------------------
def _value_type(annotation: Any) -> tuple[type, bool]:
    """The option type of a field's annotation (``X | None`` is ``X``) and whether it is a list."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _value_type(args[0])
    if typing.get_origin(annotation) is list:
        return args[0], True
    if isinstance(annotation, type):
        return annotation, False
    raise TypeError(f"no command-line option type for {annotation!r}")


class _RequestOptions:
    """The options of one command that are fields of its request ``model``; ``done()`` records
    their names for ``commands.request_body``."""

    def __init__(self, parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
        self.parser = parser
        self.model = model
        self.fields: list[str] = []

    def add(self, name: str, *flags: str, help: str | None = None, metavar: str | None = None) -> None:
        """``--name-with-dashes`` (or ``flags``) for the field ``name`` (a KeyError if the model
        has no such field)."""
        field = self.model.model_fields[name]
        kind, many = _value_type(field.annotation)
        options: dict[str, Any] = {"dest": name, "help": help}
        if kind is bool:
            options.update(action=argparse.BooleanOptionalAction, default=None)
        else:
            options["required"] = field.is_required()
            if kind is not str:
                options["type"] = kind
            if many:
                options["nargs"] = "+"
            if metavar is not None:
                options["metavar"] = metavar
        self.parser.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), **options)
        self.fields.append(name)

    def add_task_options(self) -> None:
        """The fields every task request shares, and ``-f``."""
        self.add("task_id", help="custom task id")
        self.add("priority", help=schemas.TaskFields.model_fields["priority"].description)
        self.add("description")
        self.parser.add_argument("-f", "--follow", action="store_true", help="stream the log until the task ends")

    def done(self) -> None:
        self.parser.set_defaults(request_fields=tuple(self.fields))


# -- the commands ------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    """Options every command takes (before or after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"service URL (env RFUAV_URL, default {DEFAULT_URL})")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (env RFUAV_API_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="request timeout in seconds (30)")
    return common


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],  # what add_subparsers returns
    common: argparse.ArgumentParser,
    name: str,
    func: Command,
    help_text: str,
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    p.set_defaults(func=func)
    return p


def _no_arguments(p: argparse.ArgumentParser) -> None:
    """``ps``, ``gpu``, ``resources``: the common options only."""


def _train(p: argparse.ArgumentParser) -> None:
    device_default = schemas.TrainingRequest.model_fields["device"].default
    o = _RequestOptions(p, schemas.TrainingRequest)
    o.add("model", help=f"torchvision model name, e.g. {MODELS[0]}")
    for name in ("num_classes", "train_path", "val_path", "save_path", "name", "batch_size"):
        o.add(name)
    o.add("num_epochs", "--epochs")
    o.add("learning_rate", "--lr", "--learning-rate")
    o.add("image_size")
    o.add("device", help=f"{one_of(DEVICE_FORMS)} (default {device_default}: falls back to cpu)")
    o.add("weight_path")
    o.add("seed")
    o.add("pretrained", help="start from pretrained weights")
    o.add("shuffle", help="shuffle the training data")
    o.add("deterministic", help="deterministic algorithms (with --seed)")
    o.add("augment", help="mild train-time augmentation")
    o.add_task_options()
    o.done()


def _infer(p: argparse.ArgumentParser) -> None:
    o = _RequestOptions(p, schemas.InferenceRequest)
    for name in ("cfg_path", "weight_path", "source_path", "save_path", "name", "device", "batch_size", "top_k"):
        o.add(name)
    o.add_task_options()
    o.done()


def _split(p: argparse.ArgumentParser) -> None:
    o = _RequestOptions(p, schemas.SplitRequest)
    for name in ("input_path", "output_path", "train_ratio", "val_ratio", "seed"):
        o.add(name)
    o.add_task_options()
    o.done()


def _augment(p: argparse.ArgumentParser) -> None:
    o = _RequestOptions(p, schemas.AugmentRequest)
    o.add("dataset_path")
    o.add("output_path")
    # No choices: the service names the unknown ones (and the valid ones) in its refusal.
    o.add("methods", metavar="METHOD", help=" ".join(AUGMENT_METHODS))
    o.add("copies")
    o.add("seed")
    o.add_task_options()
    o.done()


def _crop(p: argparse.ArgumentParser) -> None:
    o = _RequestOptions(p, schemas.CropRequest)
    for name in ("input_path", "output_path", "x", "y", "width", "height"):
        o.add(name)
    o.add_task_options()
    o.done()


def _tasks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", choices=list(TASK_TYPES))
    p.add_argument("--status", choices=list(STATUSES))


def _task_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_id")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_id")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the task ends; exit 1 unless it completed")


def _limit(text: str) -> tuple[str, str, int]:
    """``DEVICE.TYPE=N``, e.g. ``cpu.training=2`` or ``gpu.inference=3``."""
    try:
        key, value = text.split("=", 1)
        dev, task_type = key.rsplit(".", 1)
        return dev, task_type, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEVICE.TYPE=N, e.g. cpu.training=2") from None


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", type=_limit, metavar="DEVICE.TYPE=N", help="e.g. cpu.training=1 gpu.inference=2")


# -- serve: one subcommand per deployment action (``web.cli.serve``) --------------------------------
def _serve_source(o: _RequestOptions) -> None:
    """``--from-task ID`` or ``--cfg PATH --weights PATH`` (the service checks exactly one)."""
    o.add("from_task", metavar="ID", help="a completed training task: its best.pth and config.yaml")
    o.add("cfg_path", "--cfg", "--cfg-path", metavar="PATH", help="a training's config.yaml (with --weights)")
    o.add("weight_path", "--weights", "--weight-path", metavar="PATH", help="its weights, e.g. best.pth")


def _serve_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait until {what}; exit 1 if the deployment failed")
    p.add_argument("--wait-timeout", type=float, default=300.0, metavar="SECONDS", help="how long --wait waits (300)")


def _serve_deploy(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the deployment's name: letters, digits, _ . - (up to 64)")
    o = _RequestOptions(p, DeployRequest)
    _serve_source(o)
    device_default = DeployRequest.model_fields["device"].default
    o.add("device", help=f"{one_of(DEVICE_FORMS)} (default {device_default}: falls back to cpu)")
    o.add("replicas", help="replica processes (1-64, default 1)")
    o.add("threads", help="torch threads per replica (CPU default: cores / replicas)")
    o.add("max_batch_size", help="largest batch of one forward pass (default 16)")
    o.add("max_batch_delay_ms", help="longest a request waits for others to join its batch (default 5)")
    o.add("max_queue", help="requests waiting before 503 (default 256)")
    o.add("cache_size", help="answers kept per replica (0: off; default 1024)")
    o.add("top_k", help="entries in top_k (default 5)")
    o.add("replace", help="swap an existing deployment of that name with zero downtime")
    o.done()
    _serve_wait(p, "it is ready")


def _serve_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")


def _serve_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("files", nargs="+", metavar="FILE", help="PNG or JPEG files, each sent as the request body")


def _serve_reload(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    o = _RequestOptions(p, ReloadRequest)
    _serve_source(o)
    o.done()
    _serve_wait(p, "the new version serves")


#: ``serve``'s subcommands: name, function, help, arguments.
SERVE_COMMANDS: tuple[tuple[str, Command, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("deploy", serve.deploy, "deploy a trained model (--from-task ID, or --cfg PATH --weights PATH)", _serve_deploy),
    ("list", serve.list_, "the deployments: status, replicas, req/s, p99", _no_arguments),
    ("show", serve.show, "one deployment: model, settings, replicas, figures", _serve_name),
    ("predict", serve.predict, "predict image files: class and probability per file", _serve_predict),
    ("reload", serve.reload, "swap in new weights (or the same files) with zero downtime", _serve_reload),
    ("undeploy", serve.undeploy, "stop a deployment (requests in flight are answered)", _serve_name),
)


def _serve(p: argparse.ArgumentParser) -> None:
    common = _common()
    sub = p.add_subparsers(dest="serve_command", metavar="ACTION", required=True)
    for name, func, help_text, add_arguments in SERVE_COMMANDS:
        add_arguments(_command(sub, common, name, func, help_text))


#: name, function, help, and the function that adds the command's own arguments; in help order.
COMMANDS: tuple[tuple[str, Command, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("ps", commands.ps, "live runner processes: pid, task, cpu, memory, threads, children, age", _no_arguments),
    ("train", commands.train, "start a training task", _train),
    ("infer", commands.infer, "start an inference task", _infer),
    ("split", commands.split, "split an ImageFolder dataset into train/val/test", _split),
    ("augment", commands.augment, "write augmented copies of a dataset", _augment),
    ("crop", commands.crop, "crop every image to a box", _crop),
    ("tasks", commands.tasks, "list tasks, newest first", _tasks),
    ("show", commands.show, "one task's details", _task_id),
    ("logs", commands.logs, "a task's log (-f: follow live, with a progress bar)", _logs),
    ("cancel", commands.cancel, "cancel a pending or running task", _task_id),
    ("gpu", commands.gpu, "GPU hardware and current tasks", _no_arguments),
    ("resources", commands.resources, "usage, limits and active tasks per device", _no_arguments),
    ("limits", commands.limits, "show concurrency limits, or change them with --set", _limits),
    ("serve", serve.usage, "online serving: deploy, list, show, predict, reload, undeploy", _serve),
)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="rfuav", description=DESCRIPTION, parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, func, help_text, add_arguments in COMMANDS:
        add_arguments(_command(sub, common, name, func, help_text))
    return parser
