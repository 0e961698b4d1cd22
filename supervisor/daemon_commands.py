"""The daemon's own control commands: its resources and limits (``resources``, ``gpu``,
``set_limits``), its runners (``ps``), its health (``health``) and ``shutdown``. Composed into
``supervisor.control.Control`` beside the task and serving commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import protocol
from protocol import commands as cmd
from protocol.replies import CommandError, ErrorCode
from protocol.settings import Settings
from supervisor.executor import Executor
from supervisor.gpu import Gpus
from supervisor.scheduler import Scheduler
from supervisor.store import Store

log = logging.getLogger("supervisor.control")  # the control commands' log, as before they moved


@dataclass(frozen=True, slots=True)
class Figures:
    """The daemon's own figures in ``health``."""

    pid: int
    uptime: float
    subscriptions: int
    subscribed: int
    events_received: int
    events_dropped: int
    loop_lag: float
    loop_lag_max: float
    #: The supervisor's own writes the disk refused, waiting to be stored, and why it refused.
    unstored: int = 0
    unstored_why: str = ""


class Service(Protocol):
    """What these commands need of the supervisor (``supervisor.daemon.Daemon``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def gpus(self) -> Gpus: ...

    @property
    def executor(self) -> Executor: ...

    def schedule(self) -> None:
        """Start what may start now (after a limit changed)."""

    def runner_views(self) -> list[dict[str, Any]]: ...

    def figures(self) -> Figures: ...

    def shutdown(self, reason: str) -> None:
        """Stop serving, as SIGTERM does (asked again: kill the running jobs)."""


class DaemonCommands:
    """The handlers of these commands, for one ``Service`` (``handlers``: by command kind)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def handlers(self) -> dict[str, Callable[[Any], dict[str, Any]]]:
        return {
            "resources": self.resources,
            "gpu": self.gpu,
            "set_limits": self.set_limits,
            "ps": self.ps,
            "health": self.health,
            "shutdown": self.shutdown,
        }

    # -- resources -----------------------------------------------------------------------
    def resources(self, c: cmd.Resources) -> dict[str, Any]:
        scheduler = self.service.scheduler
        usage = scheduler.usage()
        return {
            "device_usage": usage,
            "active_tasks": scheduler.active(),
            "limits": scheduler.limits(),
            "gpu_info": self.service.gpus.info(usage),
            "queue_length": scheduler.queue_length,
            "running": scheduler.running_count,
        }

    def gpu(self, c: cmd.Gpu) -> dict[str, Any]:
        info: dict[str, Any] = self.service.gpus.info(self.service.scheduler.usage())
        return info

    def set_limits(self, c: cmd.SetLimits) -> dict[str, Any]:
        scheduler = self.service.scheduler
        why = scheduler.validate_limits(c.limits)
        if why is not None:
            raise CommandError(ErrorCode.BAD_REQUEST, why)
        scheduler.set_limits(c.limits)
        log.info("limits changed: %s", c.limits)
        self.service.schedule()
        return {"limits": scheduler.limits(), "config": scheduler.raw_limits()}

    # -- the daemon ----------------------------------------------------------------------
    def ps(self, c: cmd.Ps) -> dict[str, Any]:
        return {"runners": self.service.runner_views()}

    def health(self, c: cmd.Health) -> dict[str, Any]:
        service, scheduler, store = self.service, self.service.scheduler, self.service.store
        figures = service.figures()
        return {
            "version": protocol.__version__,
            "running": scheduler.running_count,
            "queued": scheduler.queue_length,
            "tasks": store.counts(),
            "gpu_available": service.gpus.count > 0,
            "gpu_count": service.gpus.count,
            "start_mode": service.settings.start_mode,
            "uptime": round(figures.uptime, 3),
            "events_stored": store.events_total(),
            # Additions.
            "pid": figures.pid,
            "subscriptions": figures.subscriptions,
            "subscriptions_seen": figures.subscribed,
            "events_received": figures.events_received,
            "events_dropped": figures.events_dropped,
            "loop_lag_seconds": round(figures.loop_lag, 6),
            "loop_lag_max_seconds": round(figures.loop_lag_max, 6),
            "writes_waiting": figures.unstored,
            "writes_refused": figures.unstored_why or None,
            "executor": service.executor.describe(),
        }

    def shutdown(self, c: cmd.Shutdown) -> dict[str, Any]:
        # Answered first: the daemon stops after this reply, serving while jobs wind down.
        self.service.shutdown("shutdown requested")
        return {"stopping": True}
