"""``python -m web``: the HTTP front end under uvicorn, in the foreground.

``rfuavd web`` (systemd's ``rfuav-web.service``) and ``rfuavd all`` start this module by name:
the supervisor package never imports web. Settings come from ``RFUAV_*`` variables (and
``.env``); a bad one is a one-line error, exit 2. SIGINT or SIGTERM stops it (uvicorn's graceful
shutdown: open SSE streams get ``web.server.GRACEFUL_SHUTDOWN`` seconds, then clients resume).
"""

from __future__ import annotations

import sys

from protocol.settings import Settings
from web.server import run


def main() -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"web: bad setting: {exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
