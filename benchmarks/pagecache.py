"""What a write into the page cache costs on this host: to pages the kernel has not used lately,
against pages it has just freed. Behind the event files' and journals' let-go
(``supervisor.event_files``, ``runner.publisher``): on a VM whose host takes free memory back,
the first costs several times the second; on other hosts the two are alike.

Two ways of writing the same volume, in files of ``--file-mb``, 1 MiB a ``write``:

- **kept**: every file stays (its pages stay cached), so each next file takes pages from the
  free memory at large: once the pages freed recently are used up, pages not used lately;
- **recycled**: each file is removed before the next is written, so the next takes the pages
  just freed.

Printed: the CPU of each file's writes (the writing thread's own, system time included) in µs a
KiB, each way's median, and their ratio kept/recycled. Every file is removed at the end.

    python -m benchmarks.pagecache [--mb 2400] [--file-mb 200] [--dir var]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHUNK = b"y" * (1 << 20)


def write_file(path: Path, mb: int) -> float:
    """Write ``mb`` MiB to a new file at ``path``; the CPU it took, in µs a KiB."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.thread_time()
        for _ in range(mb):
            os.write(fd, CHUNK)
        return (time.thread_time() - start) / (mb * 1024) * 1e6
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=2400, help="MiB written each way")
    parser.add_argument("--file-mb", type=int, default=200, help="MiB per file")
    parser.add_argument(
        "--dir", default=str(REPO / "var"), help="where the files go (the store's file system: not a tmpfs)"
    )
    args = parser.parse_args()
    files = max(1, args.mb // args.file_mb)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="pagecache-", dir=args.dir))
    try:
        kept = [write_file(where / f"kept{i}", args.file_mb) for i in range(files)]
        recycled = []
        for _ in range(files):
            recycled.append(write_file(where / "recycled", args.file_mb))
            (where / "recycled").unlink()
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"{files} files of {args.file_mb} MiB each way, in {where.parent}; CPU µs a KiB written")
    print("  kept:     " + " ".join(f"{v:.2f}" for v in kept))
    print("  recycled: " + " ".join(f"{v:.2f}" for v in recycled))
    k, r = statistics.median(kept), statistics.median(recycled)
    print(f"  medians: kept {k:.2f}, recycled {r:.2f}: ratio kept/recycled {k / r:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
