"""The daemons' garbage-collector policy (``protocol.collector``), in a fresh interpreter (it
freezes that process's objects): full collections walk only what is new, and what became
cyclic garbage while frozen is still freed once the thaw period has passed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = textwrap.dedent(
    """
    import gc, sys, weakref
    import orjson
    from protocol import collector

    class Node:
        def __init__(self):
            self.me = self  # a cycle: only the collector frees it

    out = {}
    collector.install()
    out["frozen_at_start"] = gc.get_freeze_count()

    young = Node(); dead = weakref.ref(young); del young
    kept = [Node() for _ in range(1000)]
    gc.collect()
    out["young_cycle_freed"] = dead() is None
    out["survivors_frozen"] = gc.get_freeze_count() - out["frozen_at_start"]
    out["walked_after"] = len(gc.get_objects(2))

    # A cycle alive at a full collection is frozen; once garbage, it waits for the thaw.
    late = Node(); late_ref = weakref.ref(late)
    gc.collect()
    del late
    gc.collect()
    out["frozen_garbage_kept"] = late_ref() is not None
    collector.THAW_SECONDS = 0.0
    gc.collect()  # ends by thawing everything ...
    out["thawed"] = gc.get_freeze_count()
    gc.collect()  # ... which the next full collection walks (then freezes again)
    out["frozen_garbage_freed"] = late_ref() is None
    out["frozen_again"] = gc.get_freeze_count() > 0

    collector.uninstall()
    out["after_uninstall"] = [gc.get_freeze_count(), collector._after_collection in gc.callbacks]
    sys.stdout.write(orjson.dumps(out).decode())
    """
)


def test_full_collections_walk_only_what_is_new_and_thaw_frees_frozen_garbage() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True, cwd=REPO
    )
    out = orjson.loads(proc.stdout)
    assert out["frozen_at_start"] > 1000  # the interpreter and the modules imported so far
    assert out["young_cycle_freed"] is True
    assert out["survivors_frozen"] >= 1000  # the kept nodes, out of the next walks
    assert out["walked_after"] == 0
    assert out["frozen_garbage_kept"] is True
    assert out["thawed"] == 0
    assert out["frozen_garbage_freed"] is True and out["frozen_again"] is True
    assert out["after_uninstall"] == [0, False]
