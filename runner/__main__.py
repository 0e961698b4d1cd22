"""Cold start: ``python -m runner <spec.json>`` runs one job in a fresh interpreter."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from runner.entry import main_from_file  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m runner <spec.json>", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main_from_file(sys.argv[1]))
