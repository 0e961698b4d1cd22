"""WAL checkpoints, the daemon's upkeep: in a thread of their own, below the daemon's priority,
every ``CHECKPOINT_SECONDS`` while events arrive (``checkpoints``), each after syncing the event
files written since the last (``Store.checkpoint``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from supervisor.store import Store

log = logging.getLogger(__name__)

#: Seconds between WAL checkpoints while events arrive.
CHECKPOINT_SECONDS = 1.0


async def checkpoints(store: Store, received: Callable[[], int], nice: int) -> None:
    """WAL checkpoints of ``store`` while ``received()`` (events taken in) moves, until
    cancelled: in a thread of their own, off the event path (see ``Store.checkpoint``),
    ``nice`` steps nicer than the daemon (as the jobs are, ``RFUAV_JOB_NICE``). Copying pages
    into the database is upkeep, and a flood of events is what gives it work, so it never
    takes the CPU from that flood's own runner and from the loop (measured: a quarter of the
    supervisor's CPU in a burst). Where a steady stream of commits keeps checkpoints from
    finishing and the WAL has grown past ``WAL_RESTART_BYTES``, the rest is checkpointed
    here, on the loop, right away: only what was committed while the thread ran, so the WAL
    starts over instead of growing."""
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1, "checkpoint", initializer=lambda: upkeep_thread("rfuavd checkpt", nice))
    stored = -1
    try:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            if received() == stored:
                continue  # nothing new since the last one
            stored = received()
            try:
                if await loop.run_in_executor(thread, store.checkpoint):
                    store.finish_checkpoint()
            except (sqlite3.Error, OSError) as exc:
                log.warning("WAL checkpoint failed: %s", exc)
    finally:
        thread.shutdown(wait=False, cancel_futures=True)


def upkeep_thread(name: str, nice: int) -> None:
    """Name the calling thread for ``ps -L``/``top -H`` and make it ``nice`` steps nicer than
    the daemon (Linux: a thread's name and nice value are its own). The nice value first: a
    thread seen under its name already runs at it."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        with open(f"/proc/self/task/{tid}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError as exc:
        log.warning("%s thread: %s", name, exc)
