"""``python -m deploy.demo``: see ``deploy/demo/__init__.py``."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from deploy.demo.run import main  # noqa: E402

raise SystemExit(main())
