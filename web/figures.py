"""Web's own figures (SSE streams, relayed events, read view, request latency, serving answers),
one set per worker process, added up across the workers of one service.

``Figures.local()`` is this process's set as plain JSON-able data. With one worker that is what
``/metrics`` and ``health`` show. With several (``RFUAV_WEB_WORKERS``), each worker also writes
its set to ``<runtime dir>/web-<port>/<pid>.json`` every ``SHARE_SECONDS`` (atomically: a
temporary file renamed over it), and ``total()`` adds its own fresh set to the files of the other
live workers. A scrape through any worker therefore shows the whole service; another worker's
part is at most ``SHARE_SECONDS`` old. A stream that opens or closes is written at once, so ``health``'s
count of SSE streams is current through any worker. A worker that died leaves its file until a
reader sees its pid gone and removes it (its counters leave the totals: a counter reset).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from protocol.addresses import ensure_runtime_dir
from web.hub import Hub
from web.replicas import Replicas
from web.view import View

log = logging.getLogger(__name__)

#: Seconds between two writes of a worker's figures.
SHARE_SECONDS = 1.0
#: Upper bounds of the HTTP latency buckets, in seconds (the last bucket is open).
HTTP_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

#: Counters and gauges that add up across workers.
_SUMS = ("streams", "streams_total", "relayed", "sent", "dropped")
_VIEW_SUMS = ("held", "hits", "misses", "resyncs", "live")


class Latency:
    """Request latency by ``(method, endpoint, status)``: counts per ``HTTP_BUCKETS`` bucket (and
    one past the last) and the sum in seconds."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], list[float]] = {}

    def observe(self, key: tuple[str, str, int], seconds: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(HTTP_BUCKETS) + 2)
        row[bisect.bisect_left(HTTP_BUCKETS, seconds)] += 1
        row[-1] += seconds


class Figures:
    """This worker's figures and, with several workers, everyone's."""

    def __init__(self, share_dir: Path | None = None) -> None:
        """``share_dir``: where the workers of this service share their figures (None: one
        worker, nothing shared)."""
        self.hub: Hub | None = None
        self.view: View | None = None
        self.replicas: Replicas | None = None
        self.latency = Latency()
        self.share_dir = share_dir
        self._pid = os.getpid()
        self._task: asyncio.Task[None] | None = None
        self._write_scheduled = False

    # -- this worker -------------------------------------------------------------------
    def local(self) -> dict[str, Any]:
        hub, view, router = self.hub, self.view, self.replicas
        out: dict[str, Any] = {"workers": 1}
        if hub is not None:
            out.update(
                streams=hub.active, streams_total=hub.streams_total, relayed=hub.relayed, sent=hub.sent,
                dropped=hub.dropped,
            )  # fmt: skip
        if view is not None:
            out["view"] = {**view.figures(), "live": int(view.live)}
        out["http"] = [[*key, row] for key, row in self.latency.series.items()]
        if router is not None:
            out["answers"] = [[name, status, n] for (name, status), n in router.answers.items()]
            out["serving_latency"] = {name: [counts, total] for name, (counts, total) in router.latency.items()}
        return out

    # -- every worker ------------------------------------------------------------------
    def total(self) -> dict[str, Any]:
        """Every live worker's figures added up (this worker's own, fresh)."""
        sets = [self.local()]
        if self.share_dir is not None:
            sets += self._peers()
        return _add(sets)

    def start(self) -> None:
        if self.share_dir is not None:
            ensure_runtime_dir(self.share_dir)
            self._task = asyncio.get_running_loop().create_task(self._share())
            if self.hub is not None:
                # A stream opened or closed is shared at once (``health`` counts them).
                self.hub.on_streams_change = self._write_soon

    def _write_soon(self) -> None:
        if not self._write_scheduled:
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self.write)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.share_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.share_dir / f"{self._pid}.json").unlink()

    async def _share(self) -> None:
        while True:
            self.write()
            await asyncio.sleep(SHARE_SECONDS)

    def write(self) -> None:
        self._write_scheduled = False
        assert self.share_dir is not None
        path = self.share_dir / f"{self._pid}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(self.local()))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("web figures not shared with the other workers: %s", exc)

    def _peers(self) -> list[dict[str, Any]]:
        assert self.share_dir is not None
        out = []
        for path in self.share_dir.glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else -1
            if pid == self._pid:
                continue
            if pid <= 0 or not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                out.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # gone or being replaced: its next write counts
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _add(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' figures as one set (counts added, buckets added bucket by bucket)."""
    out: dict[str, Any] = {"workers": 0}
    views: list[dict[str, int]] = []
    http: dict[tuple[str, str, int], list[float]] = {}
    answers: Counter[tuple[str, int]] = Counter()
    serving: dict[str, tuple[list[int], float]] = {}
    for one in sets:
        out["workers"] += int(one.get("workers", 1))
        for name in _SUMS:
            if name in one:
                out[name] = out.get(name, 0) + int(one[name])
        if isinstance(one.get("view"), dict):
            views.append(one["view"])
        for method, endpoint, status, row in one.get("http", []):
            key = (str(method), str(endpoint), int(status))
            have = http.get(key)
            http[key] = row if have is None else [a + b for a, b in zip(have, row)]
        for name, status, n in one.get("answers", []):
            answers[(str(name), int(status))] += int(n)
        for name, (counts, total) in (one.get("serving_latency") or {}).items():
            have_counts, have_total = serving.get(name) or ([0] * len(counts), 0.0)
            serving[name] = ([a + b for a, b in zip(have_counts, counts)], have_total + float(total))
    if views:
        out["view"] = {name: sum(int(v.get(name, 0)) for v in views) for name in _VIEW_SUMS}
    out["http"] = http
    out["answers"] = answers
    out["serving_latency"] = serving
    return out
