"""Online serving's runner side (``contract/SERVING.md``, wire in ``protocol.serving``): the
replica process that holds one model and answers requests with dynamic batching.

- ``inputs``: one request's body into model-ready tensors (pure functions; ``BadInput`` names
  the field and the reason);
- ``answers``: the answers' JSON, the result cache and the replica's figures;
- ``replica``: the process (``serve(spec)``, started by ``runner.entry`` for job ``replica``).

This module imports nothing heavy: ``runner.entry`` uses ``failure_line`` before torch loads.
"""

from __future__ import annotations

#: The last line of a replica's stderr when it could not start (the supervisor reads it).
FAILED_PREFIX = "replica failed: "


def failure_line(exc: BaseException) -> str:
    """``replica failed: <ExcType>: <message>`` on one line."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return FAILED_PREFIX + " ".join(text.split())
