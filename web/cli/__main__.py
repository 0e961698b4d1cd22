"""``python -m web.cli``: the same as the ``rfuav`` command."""

from web.cli import main

raise SystemExit(main())
