"""The shared language: commands, replies, job specs, settings and addresses."""

from __future__ import annotations

import stat
from pathlib import Path

import orjson
import pytest

from protocol import PROTOCOL_VERSION, ProtocolError
from protocol.addresses import default_runtime_dir, ensure_runtime_dir
from protocol.codec import MAX_MESSAGE_BYTES, encode
from protocol.commands import Cancel, Get, Logs, Submit, command_message, parse_command
from protocol.events import check_event, sse_view
from protocol.jobs import JobSpec
from protocol.replies import CommandError, error, ok, parse_reply
from protocol.serving import ReplicaParams, model_config
from protocol.settings import DEFAULT_LIMITS, Settings
from protocol.tasks import TaskRecord


def _wire(**fields: object) -> bytes:
    return orjson.dumps({"v": PROTOCOL_VERSION, "id": "r1", **fields})


def test_command_round_trip() -> None:
    for command in (Get("t1"), Cancel("t2", "training"), Logs("t3", after=5), Submit([{"x": 1}])):
        request_id, parsed = parse_command(encode(command_message("r9", command)))
        assert request_id == "r9"
        assert parsed == command


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (_wire(kind="explode"), "unknown command kind 'explode'"),
        (_wire(kind="get"), "field 'task_id' is required"),
        (_wire(kind="get", task_id=5), "field 'task_id' must be str, got int"),
        (_wire(kind="logs", task_id="t", after="3"), "field 'after' must be int, got str"),
        (_wire(kind="logs", task_id="t", after=True), "field 'after' must be int, got bool"),
        (_wire(kind="get", task_id="t", colour="red"), "unknown field(s) colour"),
        (orjson.dumps({"v": 99, "id": "r", "kind": "ps"}), "protocol version 99 is not supported"),
        (orjson.dumps({"v": 1, "kind": "ps"}), "field 'id' must be a string"),
    ],
)
def test_bad_commands_name_the_problem(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(data)
    assert fragment in str(info.value)


def test_bad_command_keeps_request_id_for_the_reply() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(_wire(kind="nope"))
    assert info.value.request_id == "r1"


def test_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(b" " * (MAX_MESSAGE_BYTES + 1))
    assert info.value.code == "too_large"


def test_replies_route_by_id() -> None:
    assert parse_reply(encode(ok("a", {"x": 1}))) == ("a", {"x": 1})
    request_id, err = parse_reply(encode(error("b", "not_found", "task 'q' not found")))
    assert request_id == "b"
    assert isinstance(err, CommandError)
    assert (err.code, err.message, err.http_status) == ("not_found", "task 'q' not found", 404)
    with pytest.raises(ProtocolError):
        parse_reply(b'{"id": "c"}')


def test_job_spec_round_trip_and_type_check() -> None:
    spec = JobSpec("t", "training", "training", {"a": 1}, "cpu", "cpu", "/tmp/x", "ipc:///tmp/e", batch_cap=8)
    assert JobSpec.load(spec.dump()) == spec
    assert spec.journal_path == Path("/tmp/x/events.jsonl")
    bad = orjson.loads(spec.dump())
    bad["torch_threads"] = "2"
    with pytest.raises(ProtocolError, match="torch_threads"):
        JobSpec.load(orjson.dumps(bad))


def test_events_are_checked() -> None:
    good = {"rseq": 1, "timestamp": "t", "kind": "log", "level": "INFO", "message": "m"}
    assert check_event(good) is None
    assert check_event({**good, "rseq": "1"}) == "rseq must be an integer"
    assert "level" in (check_event({**good, "level": "LOUD"}) or "")
    assert check_event({**good, "metrics": [1]}) == "metrics must be an object"
    assert check_event({**good, "progress": 1.5}) == "progress must be an integer"
    assert "rseq" not in sse_view({**good, "seq": 3})


def test_task_response_has_every_contract_field_and_hides_secrets() -> None:
    record = TaskRecord(
        task_id="t",
        task_type="inference",
        job="inference",
        params={"source_path": "/x", "token": "s3cret"},
        requested_device="cuda",
        priority=3,
        description=None,
        strategy_type="s",
        created_at=1.0,
        updated_at=2.0,
        started_at=10.0,
        finished_at=12.5,
    )
    response = record.response(now=100.0)
    contract = (
        "task_id task_type status message progress device priority description current_epoch "
        "total_epochs latest_metrics duration strategy_type res created_at updated_at"
    ).split()
    assert set(contract) <= set(response)
    assert response["current_epoch"] is None and response["latest_metrics"] is None
    assert response["duration"] == 2.5
    assert "s3cret" not in orjson.dumps(response).decode()


def test_settings_from_env_and_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RFUAV_PORT=9001\nRFUAV_LIMIT_CPU_TRAINING=5\n")
    settings = Settings.from_env(
        {"RFUAV_HOME": str(tmp_path / "home"), "RFUAV_PORT": "9002", "RFUAV_DATA_ROOTS": "/a:/b"},
        env_file=env_file,
    )
    assert settings.port == 9002  # the environment wins over the file
    assert settings.limits["cpu"]["training"] == 5
    assert settings.limits["gpu"] == DEFAULT_LIMITS["gpu"]
    assert settings.data_roots == (Path("/a"), Path("/b"))
    assert settings.home == tmp_path / "home"
    with pytest.raises(ValueError, match="RFUAV_GRACE_SECONDS='soon'"):
        Settings.from_env({"RFUAV_GRACE_SECONDS": "soon"}, env_file=tmp_path / "none")
    with pytest.raises(ValueError, match="RFUAV_START_MODE"):
        Settings.from_env({"RFUAV_START_MODE": "tepid"}, env_file=tmp_path / "none")


def test_runtime_dir_is_private_and_short(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o755)
    ensure_runtime_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    deep = tmp_path / ("d" * 120)
    runtime = default_runtime_dir(deep)
    assert len(str(runtime / "events-out.sock")) < 107


def test_replica_params_out_of_range_are_named() -> None:
    base = {"name": "m", "version": 1, "address": "ipc:///tmp/x", "cfg_path": "c.yaml", "weight_path": "w.pth"}
    ReplicaParams(**base).check()  # the defaults are in range
    with pytest.raises(ValueError, match=r"out of range: max_batch_size=0, top_k=0$"):
        ReplicaParams(**base, max_batch_size=0, top_k=0).check()
    # A CURVE key pair is both keys or neither, each 40 characters of Z85.
    with pytest.raises(ValueError, match="curve_client_key=$"):
        ReplicaParams(**base, curve_secret_key="s" * 40).check()
    ReplicaParams(**base, curve_secret_key="s" * 40, curve_client_key="c" * 40).check()


def test_model_config_is_checked_alike_for_the_supervisor_and_the_runner() -> None:
    assert model_config({"model": "resnet18", "num_classes": "3", "image_size": 32}, "c") == (
        "resnet18", 3, 32, ["0", "1", "2"],
    )  # fmt: skip
    for raw, why in (
        ([1], "c must be a mapping"),
        ({"model": "m", "image_size": 8}, "c lacks 'num_classes'"),
        ({"model": "m", "num_classes": "x", "image_size": 8}, "c: num_classes and image_size must be integers"),
        ({"model": "m", "num_classes": 0, "image_size": 8}, "c: num_classes and image_size must be >= 1"),
        ({"model": "m", "num_classes": 2, "image_size": 8, "class_names": ["a"]}, "c: 1 class_names for num_classes 2"),
    ):
        with pytest.raises(ValueError, match=why):
            model_config(raw, "c")
