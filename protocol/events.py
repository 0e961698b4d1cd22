"""Runner events: the one record (``Event``), its names, and the wire shape.

Wire shape, on both hops: one ZeroMQ multipart message is ``[task_id, events, …]`` — the topic
frame, then one or more frames, each holding ONE OR MORE events of that task (JSON objects, one
per line: ``pack``), all in order. Batching several events per message, and packing them into
one frame, is what makes 50,000 events/s possible: a message, and each frame of it, costs
microseconds whatever its size, on the sender, in both ZeroMQ I/O threads and on the receiver
(measured over ipc: 4-6 µs of CPU per event sent and received one frame each, 1.5-2.5 µs
packed). At low rates a message carries one event. Readers take the events out with
``unpack``, which also reads one event per frame (what this service sent before it packed).

A runner's events carry ``rseq``, the runner's own gap-free counter (1, 2, 3, …), so the
supervisor can tell a lost event from a late one. The supervisor stores each event under the
task's gap-free ``seq`` (which also numbers events the supervisor itself adds, such as "queued"
or "killed by signal") and republishes them, packed again, with ``seq`` set (events-out).
``seq`` is the SSE ``id:``.

Plain log lines, the bulk of a busy job's events, pass the supervisor as a block. A runner
sends a run of them as ``[task_id, packed, PLAIN]`` (``is_plain``: a ``log`` event with nothing
the supervisor checks or applies; its publisher vouches for every line, all built by
``runner_event`` and ``encode``, ``rseq`` following one another). The supervisor checks that
the run starts where the task's events left off and takes its length from its last line
(``run_rseqs``: the first and last lines' ``rseq``, nothing between read), gives its FIRST line
a ``seq`` and stores and publishes the rest as the runner wrote them: a line of a stored or
published run without a ``seq`` of its own is numbered one past the line before it
(``unpack``, ``numbered``). No event of the run is parsed, checked or copied one by one on the
way through: measured in a burst of 1 KiB events, the supervisor's loop spends 3.8 µs on each
instead of 7.0-7.3. Every line the supervisor writes itself starts with its ``seq``
(``number``, ``supervisor_event``, a re-encoded event), so a stored or published run always
does, and readers that take events out with ``unpack`` (or the store's reads) see every event
numbered, as before. (Events relayed from Ray hosts are read one by one: a remote runner is not
vouched for.)

Everything an event is used for is defined here once, as module functions over the ``Event``
dict (no object per event: the path runs tens of thousands of times a second): ``runner_event``
and ``supervisor_event`` build one, ``encode``/``decode`` write and read it, ``number`` gives a
runner's encoded event its ``seq`` without re-encoding it, ``check_event`` validates what a
runner sent, ``is_final`` says whether it ends its task's stream, ``is_step`` whether it is a
training step (not an epoch's summary), ``sse_view`` is what a client sees of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Required, TypedDict, cast

import orjson

from protocol.tasks import FINAL_STATUSES

Level = Literal["INFO", "WARNING", "ERROR"]
LEVELS: tuple[str, ...] = ("INFO", "WARNING", "ERROR")

# Event kinds.
LOG = "log"  # a plain log line
PROGRESS = "progress"  # progress (0-100) changed; may carry a message
METRICS = "metrics"  # step or epoch metrics
STATUS = "status"  # status change; the final one ends the stream
RESULT = "result"  # inference result for one image (the task's ``res``)
KINDS: tuple[str, ...] = (LOG, PROGRESS, METRICS, STATUS, RESULT)

# Training stages (API.md §8). Not statuses: ``STAGE_COMPLETED`` marks the last metrics event
# of a training run, ``protocol.tasks.COMPLETED`` the task's end (same word on the wire).
EPOCH_START = "epoch_start"
TRAINING = "training"
VALIDATION = "validation"
EPOCH_END = "epoch_end"
STAGE_COMPLETED = "completed"
STAGES: tuple[str, ...] = (EPOCH_START, TRAINING, VALIDATION, EPOCH_END, STAGE_COMPLETED)

#: Who added an event that no runner sent (``source`` of a supervisor event).
SUPERVISOR = "supervisor"


class Event(TypedDict, total=False):
    """One event, as the dict it is on every hop (a ``TypedDict``: a type for the reader and
    mypy, a plain dict at run time). ``timestamp``, ``kind``, ``level`` and ``message`` always;
    the rest only when they apply (absent, never null, on the wire). A job may add fields of
    its own (the diagnostic job's ``i`` and ``sent_ns``)."""

    #: The task's gap-free number, the SSE ``id:``; set by the supervisor when it stores.
    seq: int
    #: The runner's own gap-free number; only in a runner's events.
    rseq: int
    task_id: str
    #: ISO 8601, UTC, milliseconds.
    timestamp: Required[str]
    kind: Required[str]
    level: Required[str]
    message: Required[str]
    stage: str
    metrics: dict[str, Any]
    step: int
    progress: int
    epoch: int
    total_epochs: int
    status: str
    result: dict[str, Any]
    #: A training ``epoch_end``'s validation pass: counts ``[true][predicted]`` in the order of
    #: ``class_names``, and name → precision, recall, f1 (0–1) and support (``runner.metrics.class_report``).
    confusion: list[list[int]]
    class_names: list[str]
    per_class: dict[str, dict[str, float]]
    #: ``"supervisor"`` on the events the supervisor adds; a runner's claim to it is dropped.
    source: str


#: Fields an event may carry, in their wire order.
EVENT_FIELDS: tuple[str, ...] = tuple(Event.__annotations__)

#: The ``metrics`` keys of an epoch (API.md §3.3).
EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "total_epochs",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "macro_f1",
    "micro_f1",
    "mAP",
    "top1_acc",
    "top3_acc",
    "top5_acc",
    "precision",
    "recall",
    "learning_rate",
    "best_acc",
)

#: The ``metrics`` keys of an epoch's ``training`` summary event, in the original's shape (its
#: README's log-stream example). A step event has the same stage but ``loss`` in its metrics and
#: a ``step`` field: ``is_step`` tells them apart.
TRAINING_SUMMARY_METRICS: tuple[str, ...] = ("epoch", "train_loss", "train_acc")
#: The ``metrics`` keys of an epoch's ``validation`` event, in the original's shape.
VALIDATION_METRICS: tuple[str, ...] = ("epoch", "val_loss", "val_acc", "macro_f1", "mAP", "top1_acc")


# -- building ----------------------------------------------------------------------------------
def runner_event(
    rseq: int, task_id: str, timestamp: str, kind: str, level: str, message: str, fields: Mapping[str, Any]
) -> Event:
    """A runner's event; ``None`` values in ``fields`` are left out.

    ``rseq`` is the dict's FIRST key, so ``encode`` writes ``RUNNER_PREFIX`` first: the
    supervisor's fast path (``number``) relies on it.
    """
    event: dict[str, Any] = {
        "rseq": rseq,
        "task_id": task_id,
        "timestamp": timestamp,
        "kind": kind,
        "level": level,
        "message": message,
    }
    for key, value in fields.items():
        if value is not None:
            event[key] = value
    return event  # type: ignore[return-value]  # (``cast`` would cost a call per event)


def supervisor_event(
    seq: int, task_id: str, timestamp: str, kind: str, level: str, message: str, fields: Mapping[str, Any]
) -> Event:
    """An event the supervisor adds to a task's stream (``source: "supervisor"``, no ``rseq``);
    ``None`` values in ``fields`` are left out."""
    event: dict[str, Any] = {
        "seq": seq,
        "task_id": task_id,
        "timestamp": timestamp,
        "kind": kind,
        "level": level,
        "message": message,
    }
    for key, value in fields.items():
        if value is not None:
            event[key] = value
    event["source"] = SUPERVISOR
    return cast(Event, event)


# -- encoding ----------------------------------------------------------------------------------
#: An event's JSON bytes: the journal line, the frame on both sockets, the stored row.
#: (``orjson.dumps`` itself, not a wrapper: it runs once or twice per event.)
encode: Callable[[Event], bytes] = orjson.dumps

#: How a runner's encoded event starts (``runner_event`` puts ``rseq`` first).
RUNNER_PREFIX = b'{"rseq":'


def pack(events: list[bytes]) -> bytes:
    """Encoded events of one task as one frame, newline-separated (``encode`` never writes a
    raw newline: JSON escapes it inside strings). The journal's lines are the same bytes."""
    return b"\n".join(events)


#: The last frame of a runner's message whose events are all plain log lines (``is_plain``).
PLAIN = b"plain"
#: Fields of a runner's log line that the supervisor reads: checked or applied (``check_event``,
#: ``supervisor.pipeline``), or not a runner's to set.
READ_FIELDS = frozenset(("progress", "metrics", "result", "step", "epoch", "total_epochs", "seq", "source"))
#: Fields that keep a ``log`` event from being plain: those, and the ones ``runner_event`` sets.
NOT_PLAIN_FIELDS = READ_FIELDS | {"rseq", "task_id", "timestamp"}
_SEQ_PREFIX = b'{"seq":'


def is_plain(kind: str, level: str, message: object, fields: Mapping[str, Any]) -> bool:
    """Whether a runner's event built from these (``runner_event``) is a plain log line: one the
    supervisor stores and publishes as it is, without reading it (``PLAIN``)."""
    return kind == LOG and level in _LEVEL_SET and type(message) is str and NOT_PLAIN_FIELDS.isdisjoint(fields)


def unpack(message: list[bytes]) -> list[bytes]:
    """``[task_id, event, event, …]``, one event per item and each with its ``seq`` where the
    message's events have one (``numbered``), from a message of packed frames (``pack``), with
    or without ``PLAIN`` at the end; ``message`` itself when each frame holds one event."""
    frames = message[1:]
    if frames and frames[-1] == PLAIN:
        frames = frames[:-1]
    elif all(b"\n" not in frame for frame in frames):
        return message
    out = [message[0]]
    for frame in frames:
        lines = frame.split(b"\n")
        out.extend(numbered(lines) if frame.startswith(_SEQ_PREFIX) and len(lines) > 1 else lines)
    return out


def numbered(lines: list[bytes], *, stored: bool = False) -> list[bytes]:
    """``lines`` (a stored or published run) with ``seq`` prepended to each line without one:
    the previous line's plus one. A runner's own lines (no ``seq`` before them) stay as they
    are. Changes ``lines`` in place, and returns it. ``stored``: lines read from the store,
    where a version before runs were passed through wrote a re-encoded event with its ``seq``
    last (the service writes it first now): such a line keeps its own."""
    seq = -1
    for i, line in enumerate(lines):
        if line.startswith(RUNNER_PREFIX):
            if seq < 0:
                prev = lines[i - 1] if i else b""
                if not prev.startswith(_SEQ_PREFIX):
                    continue
                try:
                    seq = int(prev[7 : prev.index(b",", 7)])
                except ValueError:
                    continue
            seq += 1
            if not (stored and line.endswith(b'"seq":%d}' % seq)):
                lines[i] = b'{"seq":%d,' % seq + line[1:]
        else:
            seq = -1
    return lines


#: Fewer bytes than any runner's event takes (``runner_event``: rseq, task_id, a timestamp, kind,
#: level and message): bounds how many lines a run of so many bytes can hold.
MIN_EVENT_BYTES = 64


def run_rseqs(run: bytes) -> tuple[int, int] | None:
    """The first and last ``rseq`` of a runner's packed run (``PLAIN``), read from its first and
    last lines' starts (``RUNNER_PREFIX``) without reading the lines between; None when either
    does not start so, or when they span more lines than the run has bytes for. The publisher
    vouches that the lines between follow one another."""
    last = run.rfind(b"\n") + 1
    if not (run.startswith(RUNNER_PREFIX) and run.startswith(RUNNER_PREFIX, last)):
        return None
    try:
        first, final = int(run[8 : run.index(b",", 8)]), int(run[last + 8 : run.index(b",", last + 8)])
    except ValueError:
        return None
    if not 0 <= final - first <= len(run) // MIN_EVENT_BYTES:
        return None
    return first, final


def decode(data: bytes) -> Event:
    """One event frame as an ``Event``; ``ValueError`` (``orjson.JSONDecodeError`` is one)
    when it is not a JSON object. Its fields are not checked here: see ``check_event``."""
    event: Event = orjson.loads(data)  # (typed by assignment: ``cast`` would cost a call per event)
    if type(event) is not dict:
        raise ValueError(f"expected an object, got {type(event).__name__}")
    return event


def number(raw: bytes, seq: int) -> bytes | None:
    """``raw`` (a runner's event as it encoded it) with ``seq`` set, by prepending it instead
    of re-encoding 1 KiB; None when ``raw`` is not in the runner's own encoding (then decode,
    set ``seq`` and ``encode``). The caller ensures ``raw`` carries no ``seq`` of its own."""
    if not raw.startswith(RUNNER_PREFIX):
        return None
    return b'{"seq":%d,' % seq + raw[1:]


# -- reading -----------------------------------------------------------------------------------
_KIND_SET = frozenset(KINDS)
_LEVEL_SET = frozenset(LEVELS)
_INT_FIELDS = ("step", "progress", "epoch", "total_epochs")
_OBJECT_FIELDS = ("metrics", "result")


def check_event(event: Mapping[str, Any]) -> str | None:
    """Return why ``event`` is not a well-formed runner event, or None when it is.

    On the supervisor's hot path (tens of thousands of calls a second): exact ``type`` checks
    (``bool`` is not an ``int`` here) and set look-ups only.
    """
    if type(event.get("rseq")) is not int:
        return "rseq must be an integer"
    if event.get("kind") not in _KIND_SET:
        return f"kind must be one of {KINDS}"
    if event.get("level") not in _LEVEL_SET:
        return f"level must be one of {LEVELS}"
    if type(event.get("message")) is not str:
        return "message must be a string"
    if type(event.get("timestamp")) is not str:
        return "timestamp must be a string"
    for key in _OBJECT_FIELDS:
        if key in event and type(event[key]) is not dict:
            return f"{key} must be an object"
    for key in _INT_FIELDS:
        if key in event and type(event[key]) is not int:
            return f"{key} must be an integer"
    return None


def is_final(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` is its task's final status event, the last of its stream."""
    return event.get("kind") == STATUS and event.get("status") in FINAL_STATUSES


def is_step(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` is a training step (stage ``training`` with a ``step``), not the
    epoch's ``training`` summary (``TRAINING_SUMMARY_METRICS``, no ``step``)."""
    return event.get("stage") == TRAINING and "step" in event


def sse_view(event: Mapping[str, Any]) -> Event:
    """The event as an SSE ``data:`` object and a ``logs`` answer: all but runner bookkeeping
    (``rseq``)."""
    return {k: v for k, v in event.items() if k != "rseq"}  # type: ignore[return-value]  # (no ``cast`` call)
