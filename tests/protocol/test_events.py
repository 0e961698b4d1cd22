"""The one ``Event``: how it is built, numbered, checked, ended and shown."""

from __future__ import annotations

import orjson
import pytest

from protocol import events as ev
from protocol.tasks import FINAL_STATUSES, STATUSES


def test_runner_event_puts_rseq_first_and_leaves_out_none() -> None:
    event = ev.runner_event(7, "t1", "2025-01-01T00:00:00.000+00:00", ev.LOG, "INFO", "m", {"step": None, "i": 3})
    assert list(event) == ["rseq", "task_id", "timestamp", "kind", "level", "message", "i"]
    raw = ev.encode(event)
    assert raw.startswith(ev.RUNNER_PREFIX)
    assert ev.check_event(ev.decode(raw)) is None


def test_number_prepends_seq_to_a_runner_encoding_only() -> None:
    raw = ev.encode(ev.runner_event(2, "t1", "ts", ev.PROGRESS, "INFO", "half", {"progress": 50}))
    numbered = ev.number(raw, 41)
    assert numbered is not None and numbered.startswith(b'{"seq":41,"rseq":2,')
    assert orjson.loads(numbered) == {**orjson.loads(raw), "seq": 41}
    # An encoding with another key first is re-encoded by the caller instead.
    assert ev.number(b'{"kind":"log","rseq":2}', 41) is None
    assert ev.number(b'{ "rseq":2}', 41) is None


def test_supervisor_event_shape() -> None:
    event = ev.supervisor_event(5, "t1", "ts", ev.STATUS, "ERROR", "killed", {"status": "failed", "x": None})
    assert list(event) == ["seq", "task_id", "timestamp", "kind", "level", "message", "status", "source"]
    assert event["source"] == ev.SUPERVISOR and "rseq" not in event
    assert ev.is_final(event)


@pytest.mark.parametrize("status", STATUSES)
def test_is_final(status: str) -> None:
    assert ev.is_final({"kind": ev.STATUS, "status": status}) == (status in FINAL_STATUSES)
    assert not ev.is_final({"kind": ev.LOG, "status": status, "message": "a log line naming a status"})


def test_sse_view_drops_rseq_only() -> None:
    event = ev.decode(b'{"seq":3,"rseq":1,"task_id":"t","timestamp":"ts","kind":"log","level":"INFO","message":"m"}')
    view = ev.sse_view(event)
    assert "rseq" not in view and view == {k: v for k, v in event.items() if k != "rseq"}
    assert list(view)[0] == "seq"


def test_decode_refuses_what_is_not_an_object() -> None:
    for data in (b"[1]", b"3", b"not json", b'"s"'):
        with pytest.raises(ValueError):
            ev.decode(data)


def test_event_fields_and_stage_names() -> None:
    assert ev.EVENT_FIELDS[:2] == ("seq", "rseq") and "source" in ev.EVENT_FIELDS
    assert ev.STAGE_COMPLETED == "completed" and ev.STAGE_COMPLETED in ev.STAGES


def test_epoch_summaries_use_the_original_keys_and_are_not_steps() -> None:
    # The original's README: a "training" event with epoch/train_loss/train_acc and a
    # "validation" one with epoch/val_loss/val_acc/macro_f1/mAP/top1_acc; all keys of §3.3.
    assert ev.TRAINING_SUMMARY_METRICS == ("epoch", "train_loss", "train_acc")
    assert ev.VALIDATION_METRICS == ("epoch", "val_loss", "val_acc", "macro_f1", "mAP", "top1_acc")
    assert set(ev.TRAINING_SUMMARY_METRICS + ev.VALIDATION_METRICS) <= set(ev.EPOCH_METRICS)
    step = {"kind": "metrics", "stage": "training", "step": 7, "metrics": {"loss": 0.5}}
    summary = {"kind": "metrics", "stage": "training", "epoch": 1, "metrics": {"epoch": 1, "train_loss": 0.5}}
    end = {"kind": "metrics", "stage": "epoch_end", "step": 7, "metrics": {"train_loss": 0.5}}
    assert [ev.is_step(e) for e in (step, summary, end)] == [True, False, False]


def test_pack_and_unpack_one_event_per_line_and_read_one_per_frame_too() -> None:
    a, b, c = (ev.encode(ev.runner_event(i, "t1", "now", "log", "INFO", f"line\n{i}", {})) for i in (1, 2, 3))
    assert b"\n" not in a  # a newline inside a message is escaped: one event is one line
    packed = ev.pack([a, b, c])
    assert packed.split(b"\n") == [a, b, c]
    assert ev.unpack([b"t1", packed]) == [b"t1", a, b, c]
    assert ev.unpack([b"t1", ev.pack([a]), ev.pack([b, c])]) == [b"t1", a, b, c]
    # One event per frame (what the service sent before it packed): read as it is.
    message = [b"t1", a, b, c]
    assert ev.unpack(message) is message
    assert [ev.decode(x)["rseq"] for x in ev.unpack([b"t1", packed])[1:]] == [1, 2, 3]


def test_unpack_numbers_the_lines_of_a_run_after_its_first_and_drops_plain() -> None:
    """A stored or published run: only its first line (and supervisor events) carry ``seq``;
    ``unpack`` gives every line after one its ``seq`` by place. A runner's own lines, which
    carry none before them, are read as they are, ``PLAIN`` or not."""
    a, b, c, d = (ev.encode(ev.runner_event(i, "t1", "now", "log", "INFO", f"m{i}", {"i": i})) for i in (1, 2, 3, 4))
    queued = ev.encode(ev.supervisor_event(7, "t1", "now", ev.LOG, "INFO", "queued", {}))
    assert ev.unpack([b"t1", ev.pack([a, b]), ev.PLAIN]) == [b"t1", a, b]
    assert ev.unpack([b"t1", a, ev.PLAIN]) == [b"t1", a]
    # Two runs published in one frame, a supervisor event between them.
    frame = ev.pack([ev.number(a, 5), b, queued, ev.number(c, 8), d])  # type: ignore[list-item]
    out = [ev.decode(x) for x in ev.unpack([b"t1", frame])[1:]]
    assert [e["seq"] for e in out] == [5, 6, 7, 8, 9]
    assert [e.get("rseq") for e in out] == [1, 2, None, 3, 4]
    assert out[1] == {"seq": 6, **ev.decode(b)} and list(out[1])[:2] == ["seq", "rseq"]
    # Every line numbered already: as it is.
    numbered = ev.pack([ev.number(a, 1), ev.number(b, 2)])  # type: ignore[list-item]
    assert ev.unpack([b"t1", numbered])[1:] == numbered.split(b"\n")


def test_run_rseqs_reads_a_runs_first_and_last_line_only() -> None:
    a, b, c = (ev.encode(ev.runner_event(i, "t1", "now", "log", "INFO", "m", {})) for i in (7, 8, 9))
    assert ev.run_rseqs(ev.pack([a, b, c])) == (7, 9)
    assert ev.run_rseqs(a) == (7, 7)
    assert ev.run_rseqs(ev.pack([a, b"{}"])) is None  # a last line not in the runner's encoding
    assert ev.run_rseqs(b'{"kind":"log"}') is None
    assert ev.run_rseqs(b'{"rseq":x1,"kind":"log"}') is None
    assert ev.run_rseqs(b'{"rseq":12}') is None  # nothing after rseq: not a runner's event
    # A last rseq before the first, or more lines than the run has bytes for: not believed.
    assert ev.run_rseqs(ev.pack([c, a])) is None
    assert ev.run_rseqs(ev.pack([a, b'{"rseq":99999,"kind":"log"}'])) is None
