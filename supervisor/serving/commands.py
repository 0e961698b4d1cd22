"""The serving control commands (``protocol.commands``: deploy, deployments, deployment,
undeploy, reload, routes): checked here, carried out by ``supervisor.serving.manager``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from protocol import commands as cmd
from protocol import serving as sv
from protocol.replies import CommandError, ErrorCode
from protocol.settings import Settings
from protocol.tasks import RUNNING, TaskRecord
from supervisor import jobs
from supervisor.scheduler import Scheduler
from supervisor.serving.manager import Serving
from supervisor.serving.source import bad, model_of, settings_of
from supervisor.store import Store


class Service(Protocol):
    """What the serving commands need of the supervisor (``supervisor.daemon.Daemon``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def serving(self) -> Serving: ...

    def live_task(self, task_id: str) -> TaskRecord | None:
        """A pending or running task (the authoritative copy while it lives)."""


class ServingCommands:
    def __init__(self, service: Service) -> None:
        self.service = service

    def handlers(self) -> dict[str, Callable[[Any], dict[str, Any]]]:
        return {
            "deploy": self.deploy,
            "deployments": self.deployments,
            "deployment": self.deployment,
            "undeploy": self.undeploy,
            "reload": self.reload,
            "routes": self.routes,
        }

    def _find_task(self, task_id: str) -> TaskRecord | None:
        return self.service.live_task(task_id) or self.service.store.get_task(task_id)

    def deploy(self, c: cmd.Deploy) -> dict[str, Any]:
        service, serving = self.service, self.service.serving
        if not isinstance(c.name, str) or not sv.NAME_RE.fullmatch(c.name):
            raise bad(
                "name must be 1-64 characters of letters, digits, '_', '.', '-' starting with a letter or digit, "
                f"got {c.name!r}"
            )
        if serving.closing:
            raise CommandError(ErrorCode.UNAVAILABLE, "the supervisor is shutting down")
        existing = serving.deployments.get(c.name)
        live = existing is not None and existing.task.status == RUNNING and existing.status != sv.STOPPED
        if live and not c.replace:
            raise CommandError(ErrorCode.CONFLICT, f"deployment {c.name!r} exists (replace: true swaps it)")
        why = service.scheduler.check_device(c.device)
        if why is not None:
            raise bad(f"device: {why}")
        cfg = settings_of(c, jobs.cores())
        model = model_of(c, self._find_task)
        if live and existing is not None:
            serving.reload(existing, model, cfg)
            return {"deployment": existing.view()}
        device, note = service.scheduler.room(sv.TASK_TYPE, c.device, cfg.replicas)
        if device is None:
            raise CommandError(ErrorCode.CONFLICT, f"replicas: {note}")
        now = time.time()
        task_id = str(uuid.uuid4())
        task = TaskRecord(
            task_id=task_id, task_type=sv.TASK_TYPE, job=sv.JOB, params={}, requested_device=c.device, priority=5,
            description=f"deployment {c.name}", strategy_type=None, status=RUNNING, message="loading", device=device,
            created_at=now, updated_at=now, started_at=now, task_dir=str(service.settings.tasks_dir / task_id),
        )  # fmt: skip
        service.store.insert_tasks([task])
        serving.create(task, c.name, device, model, cfg, warning=note)
        return {"deployment": serving.get(c.name).view()}

    def deployments(self, c: cmd.Deployments) -> dict[str, Any]:
        return {"deployments": [d.view() for d in self.service.serving.deployments.values()]}

    def deployment(self, c: cmd.ShowDeployment) -> dict[str, Any]:
        return {"deployment": self.service.serving.get(c.name).view()}

    def undeploy(self, c: cmd.Undeploy) -> dict[str, Any]:
        serving = self.service.serving
        dep = serving.get(c.name)
        serving.undeploy(dep)
        return {"deployment": dep.view()}

    def reload(self, c: cmd.Reload) -> dict[str, Any]:
        serving = self.service.serving
        dep = serving.get(c.name)
        if dep.task.status != RUNNING or dep.status in (sv.FAILED, sv.STOPPED):
            raise CommandError(ErrorCode.CONFLICT, f"deployment {c.name!r} is {dep.status}: deploy it again")
        if c.from_task is None and c.cfg_path is None and c.weight_path is None:
            model = dep.current.model  # the same files again (e.g. rewritten in place)
        else:
            model = model_of(c, self._find_task)
        serving.reload(dep, model, dep.current.settings)
        return {"deployment": dep.view()}

    def routes(self, c: cmd.Routes) -> dict[str, Any]:
        return {"routes": self.service.serving.routes()}
