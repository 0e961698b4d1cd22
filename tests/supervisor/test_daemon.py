"""The daemon's stop path, its signal handler called directly (the loop calls it on SIGTERM or
SIGINT): one ``shutdown``; the first call stops starting tasks and lets ``serve`` cancel the
running ones, a second kills them. (tests/supervisor/test_recovery.py does it with signals to
a real daemon.)"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from protocol.settings import Settings
from supervisor.daemon import Daemon


class FakeLifecycle:
    def __init__(self) -> None:
        self.closing = False
        self.kills = 0

    def close(self) -> None:
        self.closing = True

    def kill_jobs(self) -> None:
        self.kills += 1


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_signal_shuts_down_and_a_second_kills_the_jobs(tmp_path: Path) -> None:
    daemon = Daemon(Settings(home=tmp_path, runtime_dir=tmp_path / "run", start_mode="cold"))
    lifecycle = FakeLifecycle()
    daemon.lifecycle = lifecycle  # type: ignore[assignment]
    try:
        daemon.handle_signal(signal.SIGTERM)
        assert lifecycle.closing and lifecycle.kills == 0
        assert daemon._stopping.is_set()  # serve() wakes and cancels the running jobs
        daemon.handle_signal(signal.SIGINT)
        assert lifecycle.kills == 1
        daemon.shutdown("again")  # the same path, whoever asks
        assert lifecycle.kills == 2
    finally:
        daemon.gpus.close()
