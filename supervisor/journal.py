"""Reading a runner's journal, ``<task_dir>/events.jsonl``.

The runner appends every event to its journal *before* sending it (``runner/publisher.py``), so
the journal is the complete record: the supervisor reads it to fill an ``rseq`` gap, to catch
events still in flight when a runner exits, and to catch up after its own restart.

A ``Journal`` remembers how far it has read (byte offset and the ``rseq`` of the last complete
line), so repeated reads are incremental. A line still being written (no trailing newline yet)
is left for the next read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson

log = logging.getLogger(__name__)

#: Below this many bytes between two positions a linear read is cheaper than bisecting.
_LINEAR_BYTES = 64 * 1024


class Journal:
    """One task's journal file, read forward from a remembered position."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rseq = 0  # rseq of the last complete line before _offset

    def read(self, after: int, until: int | None = None) -> list[tuple[dict[str, Any], bytes]]:
        """Events with ``after < rseq`` (and ``rseq < until`` when given), in file order, as
        ``(event, raw_json)``. Lines that do not parse are logged and skipped."""
        if self._rseq > after:
            # Asked for something before our position (not expected): read from the start.
            self._offset, self._rseq = 0, 0
        out: list[tuple[dict[str, Any], bytes]] = []
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return out
        with fh:
            if self._rseq < after:
                self._skip_to(fh, after)
            fh.seek(self._offset)
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # being written right now
                self._offset += len(line)
                raw = line.rstrip(b"\n")
                try:
                    event = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.error("%s: unreadable journal line at byte %d skipped", self.path, self._offset - len(line))
                    continue
                rseq = event.get("rseq") if isinstance(event, dict) else None
                if not isinstance(rseq, int):
                    log.error("%s: journal line without rseq skipped", self.path)
                    continue
                self._rseq = rseq
                if rseq > after and (until is None or rseq < until):
                    out.append((event, raw))
                if until is not None and rseq >= until - 1:
                    break
        return out

    def _skip_to(self, fh: BinaryIO, after: int) -> None:
        """Move the position forward, by bisection over byte offsets (rseq grows line by
        line), to a line boundary at or before the first line with ``rseq > after``. A
        100 MB journal's tail is then found in a few reads, not a full scan."""
        lo = self._offset
        hi = os.fstat(fh.fileno()).st_size
        while hi - lo > _LINEAR_BYTES:
            mid = (lo + hi) // 2
            fh.seek(mid)
            fh.readline()  # the rest of the line mid falls into
            start = fh.tell()
            line = fh.readline()
            rseq = _rseq_of(line) if line.endswith(b"\n") else None
            if rseq is None or rseq > after:
                hi = mid
            else:
                lo, self._rseq = start + len(line), rseq
        self._offset = lo


def _rseq_of(line: bytes) -> int | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    rseq = event.get("rseq") if isinstance(event, dict) else None
    return rseq if isinstance(rseq, int) else None
