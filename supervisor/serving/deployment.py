"""A deployment's state: its generations of replicas, its figures, its views.

A **generation** is the set of replicas of one ``version``: deploy starts generation 1; a reload
starts the next one beside it and switches when every new replica is ready (then the old one
drains). Each slot of a generation is kept alive by a keeper (``supervisor.serving.manager``)
that restarts its replica with backoff and counts the restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import serving as sv
from protocol.tasks import TaskRecord
from supervisor.serving.replica import READY, Replica

#: Seconds of history behind the live figures (req/s, p50/p99) of a deployment.
WINDOW_SECONDS = 60.0


@dataclass(eq=False)
class Generation:
    """The replicas of one version; ``slots[i]`` is slot i's current process (None between two)."""

    version: int
    model: sv.ModelInfo
    settings: sv.ServingSettings
    slots: list[Replica | None]
    restarts: list[int]
    keepers: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    #: Set with the reason when a slot's replica kept dying.
    failed: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def new(cls, version: int, model: sv.ModelInfo, settings: sv.ServingSettings) -> Generation:
        n = settings.replicas
        return cls(version, model, settings, [None] * n, [0] * n)

    def ready(self) -> list[Replica]:
        return [r for r in self.slots if r is not None and r.state == READY]

    def all_ready(self) -> bool:
        return len(self.ready()) == len(self.slots)

    def replicas(self) -> list[Replica]:
        return [r for r in self.slots if r is not None]


def _add(into: sv.ReplicaStats, other: sv.ReplicaStats) -> None:
    for f in dataclasses.fields(sv.ReplicaStats):
        a, b = getattr(into, f.name), getattr(other, f.name)
        if isinstance(a, list):
            setattr(into, f.name, [x + y for x, y in zip(a, b)])
        elif isinstance(a, dict):
            merged = dict(a)
            for k, v in b.items():
                merged[k] = merged.get(k, 0) + v
            setattr(into, f.name, merged)
        else:
            setattr(into, f.name, a + b)


@dataclass(eq=False)
class Deployment:
    name: str
    task: TaskRecord
    device: str
    current: Generation
    status: str = sv.LOADING
    #: The generation a reload is bringing up (None when no reload runs).
    incoming: Generation | None = None
    #: Generations being drained after a switch or undeploy.
    draining: list[Generation] = field(default_factory=list)
    #: Figures of replicas that are gone (so totals never go backwards).
    retired: sv.ReplicaStats = field(default_factory=sv.ReplicaStats)
    #: ``(monotonic time, totals)`` once per probe round, for the live figures.
    history: deque[tuple[float, sv.ReplicaStats]] = field(default_factory=lambda: deque(maxlen=256))
    reason: str | None = None
    #: Restarts of the replicas of earlier versions (``restarts`` counts the deployment's life).
    earlier_restarts: int = 0

    @property
    def version(self) -> int:
        return self.current.version

    def retire(self, replica: Replica) -> None:
        """Keep a finished replica's last figures in the totals."""
        if replica.status is not None:
            last = dataclasses.replace(replica.status.stats, queued=0)
            _add(self.retired, last)
            replica.status = None

    def totals(self) -> sv.ReplicaStats:
        total = dataclasses.replace(self.retired, by_status=dict(self.retired.by_status))
        for gen in (self.current, self.incoming, *self.draining):
            if gen is None:
                continue
            for r in gen.replicas():
                if r.status is not None:
                    _add(total, r.status.stats)
        return total

    def record(self) -> None:
        now = time.monotonic()
        self.history.append((now, self.totals()))
        while self.history and now - self.history[0][0] > WINDOW_SECONDS + 5:
            self.history.popleft()

    def stats(self, total: sv.ReplicaStats | None = None) -> dict[str, Any]:
        """The contract's ``stats`` (totals), plus live figures over the last minute."""
        total = total if total is not None else self.totals()
        out: dict[str, Any] = {
            "requests": total.requests,
            "errors": total.errors,
            "batches": total.batches,
            "mean_batch_size": round(total.batched_items / total.batches, 3) if total.batches else 0.0,
            "p50_ms": None,
            "p99_ms": None,
            "cache_hits": total.cache_hits,
            "queued": total.queued,
            "requests_per_s": 0.0,
        }
        if len(self.history) >= 2:
            now, latest = self.history[-1]
            then, base = next(((t, s) for t, s in self.history if now - t <= WINDOW_SECONDS), self.history[0])
            counts = [a - b for a, b in zip(latest.latency_ms, base.latency_ms)]
            if sum(counts) == 0:  # quiet for a minute: the figures since the start
                counts = latest.latency_ms
            p50 = sv.quantile(sv.LATENCY_BUCKETS_MS, counts, 0.5)
            p99 = sv.quantile(sv.LATENCY_BUCKETS_MS, counts, 0.99)
            out["p50_ms"] = None if p50 is None else round(p50, 3)
            out["p99_ms"] = None if p99 is None else round(p99, 3)
            if now > then:
                out["requests_per_s"] = round((latest.requests - base.requests) / (now - then), 2)
        return out

    def view(self) -> dict[str, Any]:
        gen = self.current
        total = self.totals()
        replicas = [r.view(gen.restarts[i]) if r is not None else None for i, r in enumerate(gen.slots)]
        view: dict[str, Any] = {
            "name": self.name,
            "task_id": self.task.task_id,
            "status": self.status,
            "version": gen.version,
            "device": self.device,
            "model": dataclasses.asdict(gen.model),
            "settings": dataclasses.asdict(gen.settings),
            "replicas": [r for r in replicas if r is not None],
            "stats": self.stats(total),
            # Additions: the replicas' histograms (counts per bucket of protocol.serving's bounds).
            "histograms": {
                "batch_size": total.batch_size,
                "batched_items": total.batched_items,
                "queue_wait_ms": total.queue_wait_ms,
                "queue_wait_sum_ms": round(total.queue_wait_sum_ms, 3),
            },
            "restarts": self.earlier_restarts + sum(gen.restarts),
        }
        if self.incoming is not None:
            view["incoming"] = {
                "version": self.incoming.version,
                "replicas": [r.view(self.incoming.restarts[i]) for i, r in enumerate(self.incoming.slots) if r],
            }
        if self.reason:
            view["reason"] = self.reason
        return view

    def route(self) -> dict[str, Any]:
        """Where web sends this deployment's requests: the current generation's ready replicas."""
        gen = self.current
        return {
            "task_id": self.task.task_id,
            "status": self.status,
            "version": gen.version,
            "max_batch_items": gen.settings.max_batch_size * sv.BATCH_ITEMS_FACTOR,
            "replicas": [r.route() for r in gen.ready()],
        }
