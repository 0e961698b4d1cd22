"""Run every benchmark module in ``benchmarks/`` in turn (each as its own process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))
    failed = []
    for name in names:
        print(f"=== benchmarks.{name} ===", flush=True)
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=str(here.parent))
        if code != 0:
            failed.append(name)
            print(f"benchmarks.{name} exited with {code}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
