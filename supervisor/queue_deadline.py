"""The queue's wait limit (``RFUAV_QUEUE_TIMEOUT``; 0: none): a task queued longer fails with that
reason. One loop timer, on the deadline of the task queued first, re-armed whenever the queue
changes (``arm``); the loop's monotonic clock, so after a restart each waits from the restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from supervisor.scheduler import Scheduler

log = logging.getLogger(__name__)


class QueueDeadline:
    """Fails (``expire(task_id, message)``) each task that waits past ``timeout`` seconds."""

    def __init__(self, scheduler: Scheduler, timeout: float, expire: Callable[[str, str], None]) -> None:
        self._scheduler = scheduler
        self.timeout = timeout
        self._expire = expire
        self.timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def arm(self) -> None:
        """One timer, on the deadline of the task queued first (none without a wait limit)."""
        oldest = self._scheduler.oldest() if self.timeout > 0 and not self._stopped else None
        deadline = None if oldest is None else oldest[1] + self.timeout
        if self.timer is not None:
            if self.timer.when() == deadline:
                return
            self.timer.cancel()
            self.timer = None
        if deadline is not None:
            self.timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def stop(self) -> None:
        """No more expiries (the daemon is stopping: pending tasks stay pending)."""
        self._stopped = True
        self.arm()

    def _fire(self) -> None:
        """Fail every task that has waited past the limit, oldest first, then re-arm."""
        self.timer = None
        now = asyncio.get_running_loop().time()
        while (oldest := self._scheduler.oldest()) is not None and now - oldest[1] >= self.timeout:
            self._scheduler.remove(oldest[0])
            waited = now - oldest[1]
            shown = f"{waited:.0f}" if waited >= 10 else f"{waited:.1f}"
            message = f"waited {shown} s for resources (RFUAV_QUEUE_TIMEOUT={self.timeout:g})"
            log.warning("task %s: %s", oldest[0], message)
            self._expire(oldest[0], message)
        self.arm()
