"""What a replica answers (SERVING.md "Predictions"), the cache of answers, and its figures.

``render`` writes one reply's JSON from the rows of probabilities that answer it: ``predict``
(one answer with ``model`` and ``version``), ``predict_batch`` (``results`` in input order),
and the article's ops (its shapes: ``{"prediction": [[...]]}`` and ``{"results": [[...], ...]}``).
Probabilities are the float32 values as they are (no rounding), in class order.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from protocol import serving as sv
from runner.serving.inputs import media_type


@dataclass(frozen=True, slots=True)
class Labels:
    """What every answer of a replica names: the deployment, its version, the classes."""

    name: str
    version: int
    class_names: tuple[str, ...]
    top_k: int


@dataclass(frozen=True, slots=True)
class Row:
    """One input's softmax probabilities and the size of the forward pass that gave them."""

    probs: list[float]
    batch_size: int


def item_answer(row: Row, labels: Labels, *, cached: bool, latency_ms: float) -> dict[str, Any]:
    """One input's answer, without ``model`` and ``version`` (a ``predict_batch`` result)."""
    probs = row.probs
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[: labels.top_k]
    top = order[0]
    return {
        "prediction": probs,
        "top_class": top,
        "class_name": labels.class_names[top],
        "top_k": [{"class": i, "name": labels.class_names[i], "probability": probs[i]} for i in order],
        "batch_size": row.batch_size,
        "cached": cached,
        "latency_ms": round(latency_ms, 3),
    }


def render(op: bytes, rows: list[Row], labels: Labels, *, cached: bool, latency_ms: float) -> bytes:
    """The 200 reply's body of a request of ``op`` answered by ``rows`` (one per input)."""
    if op == sv.OP_PREDICT:
        (row,) = rows
        answer = item_answer(row, labels, cached=cached, latency_ms=latency_ms)
        return orjson.dumps({**answer, "model": labels.name, "version": labels.version})
    if op == sv.OP_PREDICT_BATCH:
        results = [item_answer(r, labels, cached=cached, latency_ms=latency_ms) for r in rows]
        return orjson.dumps({"results": results, "model": labels.name, "version": labels.version})
    if op == sv.OP_ARTICLE_PREDICT:
        return orjson.dumps({"prediction": [rows[0].probs]})
    if op == sv.OP_ARTICLE_BATCH:
        return orjson.dumps({"results": [r.probs for r in rows]})
    raise ValueError(f"no answer for op {op!r}")


def cache_key(op: bytes, content_type: bytes, body: bytes) -> bytes:
    """The cache key of a request: its op, media type and body (a replica serves one model
    version, so the key holds the version implicitly)."""
    digest = hashlib.blake2b(digest_size=32)
    for part in (op, media_type(content_type).encode(), body):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


class ResultCache:
    """The last ``size`` answers (least recently used dropped first); ``size`` 0: off."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, list[Row]] = OrderedDict()

    def get(self, key: bytes) -> list[Row] | None:
        rows = self._entries.get(key)
        if rows is not None:
            self._entries.move_to_end(key)
        return rows

    def put(self, key: bytes, rows: list[Row]) -> None:
        if self.size <= 0:
            return
        self._entries[key] = rows
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def record_answer(stats: sv.ReplicaStats, status: int, latency_ms: float) -> None:
    """A prediction request answered (``status``), ``latency_ms`` after it arrived."""
    stats.requests += 1
    if status != 200:
        stats.errors += 1
    key = str(status)
    stats.by_status[key] = stats.by_status.get(key, 0) + 1
    stats.latency_ms[sv.bucket_index(sv.LATENCY_BUCKETS_MS, latency_ms)] += 1
    stats.latency_sum_ms += latency_ms


def record_wait(stats: sv.ReplicaStats, wait_ms: float) -> None:
    """A request's time from arrival to the start of its forward pass."""
    stats.queue_wait_ms[sv.bucket_index(sv.LATENCY_BUCKETS_MS, wait_ms)] += 1
    stats.queue_wait_sum_ms += wait_ms


def record_pass(stats: sv.ReplicaStats, size: int) -> None:
    """One forward pass of ``size`` inputs."""
    stats.batches += 1
    stats.batched_items += size
    stats.batch_size[sv.bucket_index(sv.BATCH_BUCKETS, size)] += 1
