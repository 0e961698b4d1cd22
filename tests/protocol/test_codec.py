"""``codec.build``: every field of every command and record is type-checked from its resolved
annotation, and a value that does not fit is a ``bad_request`` naming the field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import orjson
import pytest

from protocol import PROTOCOL_VERSION, ProtocolError
from protocol.codec import build
from protocol.commands import COMMANDS, Get, List, Logs, SetLimits, Submit, parse_command
from protocol.jobs import JobConfig, JobSpec
from protocol.tasks import TaskSpec

RECORDS: list[type] = [TaskSpec, JobSpec, JobConfig]

#: The smallest valid fields of each record (commands need none but ``task_id`` where asked).
REQUIRED: dict[type, dict[str, Any]] = {
    TaskSpec: {"task_type": "training", "job": "training"},
    JobSpec: {
        "task_id": "t",
        "task_type": "training",
        "job": "training",
        "params": {},
        "device": "cpu",
        "host_device": "cpu",
        "task_dir": "/tmp/t",
        "events_endpoint": "ipc:///tmp/e",
    },  # fmt: skip
    JobConfig: {},
}


def _arms(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _admits_object(tp: Any) -> bool:
    return any(typing.get_origin(arm) is dict or dataclasses.is_dataclass(arm) for arm in _arms(tp))


def _wrong(tp: Any) -> Any:
    """A JSON value that ``tp`` does not admit."""
    if typing.get_origin(tp) is typing.Literal:
        return "no-such-" + str(typing.get_args(tp)[0])
    return [1] if _admits_object(tp) else {"x": 1}


def _valid(tp: Any) -> Any:
    """A JSON value that ``tp`` admits."""
    arm = _arms(tp)[0]
    origin = typing.get_origin(arm)
    if origin is typing.Literal:
        return typing.get_args(arm)[0]
    return {list: [], dict: {}, tuple: []}.get(origin, {str: "x", int: 1, float: 1.0, bool: True}.get(arm))


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if hints[f.name] is not Any]


def _required(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: _valid(hints[f.name])
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


@pytest.mark.parametrize(
    ("kind", "name", "tp"),
    [(kind, name, tp) for kind, cls in COMMANDS.items() for name, tp in _fields(cls)],
)
def test_every_command_field_is_checked(kind: str, name: str, tp: Any) -> None:
    cls = COMMANDS[kind]
    fields = {**_required(cls), "kind": kind}
    assert build(cls, fields, where=kind) is not None  # the fields besides the wrong one are fine
    with pytest.raises(ProtocolError) as info:
        if name == "kind":  # (on the wire, a wrong kind names another command or none)
            build(cls, {**fields, "kind": _wrong(tp)}, where=f"command '{kind}'")
        else:
            parse_command(orjson.dumps({"v": PROTOCOL_VERSION, "id": "r", **fields, name: _wrong(tp)}))
    assert info.value.code == "bad_request"
    assert f"field '{name}'" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "name", "tp"),
    [(cls, name, tp) for cls in RECORDS for name, tp in _fields(cls)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_every_record_field_is_checked(cls: type, name: str, tp: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        build(cls, {**REQUIRED[cls], name: _wrong(tp)}, where=cls.__name__)
    assert info.value.code == "bad_request"
    assert f"field '{name}'" in str(info.value)


def test_an_alias_is_checked() -> None:
    """``TaskType`` and ``Job`` are Literal aliases: once unchecked, then an ``internal`` error."""
    with pytest.raises(ProtocolError, match="field 'task_type' must be one of") as info:
        build(TaskSpec, {"task_type": 42, "job": ["x"]}, where="task")
    assert info.value.code == "bad_request"
    with pytest.raises(ProtocolError, match=r"field 'job' must be one of \[.*\], got 'nap'"):
        build(TaskSpec, {"task_type": "training", "job": "nap"}, where="task")


def test_optional_fields() -> None:
    assert parse_command(orjson.dumps({"v": 1, "id": "r", "kind": "get", "task_id": "t", "task_type": None}))[1] == Get(
        "t"
    )
    with pytest.raises(ProtocolError, match=r"field 'task_type' must be str \| None, got int"):
        build(Get, {"task_id": "t", "task_type": 5}, where="get")
    with pytest.raises(ProtocolError, match=r"field 'cursor' must be int \| None, got bool"):
        build(List, {"cursor": True}, where="list")
    with pytest.raises(ProtocolError, match="field 'task_id' must not be null"):
        build(Get, {"task_id": None}, where="get")


def test_literal_fields() -> None:
    with pytest.raises(ProtocolError, match="field 'kind' must be one of \\['logs'\\], got 'get'"):
        build(Logs, {"task_id": "t", "kind": "get"}, where="logs")


def test_list_and_dict_items_are_checked() -> None:
    assert build(Submit, {"tasks": [{"a": 1}]}, where="submit") == Submit([{"a": 1}])
    with pytest.raises(ProtocolError, match=r"field 'tasks' must be list\[dict\[str, Any\]\], got int at tasks\[0\]"):
        build(Submit, {"tasks": [1]}, where="submit")
    with pytest.raises(ProtocolError, match="field 'tasks' must be list"):
        build(Submit, {"tasks": {"a": 1}}, where="submit")
    ok = build(SetLimits, {"limits": {"cpu": {"training": 2}}}, where="set_limits")
    assert ok == SetLimits({"cpu": {"training": 2}})
    for bad in ({"cpu": {"training": "2"}}, {"cpu": {"training": True}}, {"cpu": 3}, [1]):
        with pytest.raises(ProtocolError, match="field 'limits' must be dict") as info:
            build(SetLimits, {"limits": bad}, where="set_limits")
        assert info.value.code == "bad_request"


def test_nested_record_tuple_and_float() -> None:
    spec = build(
        JobSpec, {**REQUIRED[JobSpec], "config": {"data_roots": ["/a", "/b"], "download_timeout": 1}}, where="spec"
    )
    assert spec.config.data_roots == ("/a", "/b")
    assert spec.config.download_timeout == 1.0 and type(spec.config.download_timeout) is float
    assert JobSpec.load(spec.dump()) == spec
    with pytest.raises(ProtocolError, match="field 'config': field 'data_roots' must be tuple") as info:
        build(JobSpec, {**REQUIRED[JobSpec], "config": {"data_roots": "/a"}}, where="spec")
    assert info.value.code == "bad_request"
    with pytest.raises(ProtocolError, match="field 'url_allow_loopback' must be bool, got int"):
        build(JobConfig, {"url_allow_loopback": 1}, where="config")
