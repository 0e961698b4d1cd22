"""The garbage-collector policy of the long-running daemons (supervisor, web): full collections
walk only what is new.

CPython's full (generation 2) collection walks every object the collector tracks, and every
object those refer to. The daemons hold a record per queued or live task (and web a view
entry): measured with 28k queued tasks, a full collection took 40-60 ms in each process,
collected nothing, and came every few seconds while tasks were being submitted — the whole
tail of the POST latency.

So (``install``):

- what start-up made (modules, the app, the routes) is collected once, then frozen
  (``gc.freeze``: out of the collector's sight; it is still freed when its last reference
  goes);
- after every full collection its survivors are frozen too: the next one walks only what was
  promoted since (CPython still times full collections by the number of objects it promoted,
  against the number that survived the last one);
- every ``THAW_SECONDS`` the frozen objects are put back (``gc.unfreeze``) before the next full
  collection, which then walks everything once: what became cyclic garbage while frozen (a
  finished job's coroutine and exception, say) is freed within that time instead of never.
"""

from __future__ import annotations

import gc
import time
from typing import Any

#: How often the frozen objects are walked again (one full-length collection per period).
THAW_SECONDS = 600.0

_state = {"installed": False, "thawed_at": 0.0}


def install() -> None:
    """Collect and freeze what exists now, then keep full collections short (idempotent)."""
    gc.collect()
    gc.freeze()
    _state["thawed_at"] = time.monotonic()
    if not _state["installed"]:
        gc.callbacks.append(_after_collection)
        _state["installed"] = True


def uninstall() -> None:
    """Back to CPython's own policy, everything thawed (tests; a process that stops serving)."""
    if _state["installed"]:
        gc.callbacks.remove(_after_collection)
        _state["installed"] = False
    gc.unfreeze()


def _after_collection(phase: str, info: dict[str, Any]) -> None:
    if phase != "stop" or info["generation"] != 2:
        return
    if gc.get_freeze_count() and time.monotonic() - _state["thawed_at"] >= THAW_SECONDS:
        # Walk everything at the next full collection (a collection cannot start from here).
        gc.unfreeze()
        _state["thawed_at"] = time.monotonic()
        return
    gc.freeze()
