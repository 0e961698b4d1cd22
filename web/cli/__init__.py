"""``rfuav``: the service from a shell, over its HTTP API (``web.client.RFUAVClient``).

Exit codes: 0 ok; 1 the API refused (its ``msg`` on stderr) or, for ``logs -f`` and
``--follow``, the task failed or was cancelled; 2 usage; 3 the service is unreachable (no
answer, or 503 because the supervisor is down). ``--json`` prints the API's ``data`` (one
JSON document; ``logs`` prints one event per line) for scripts. ``RFUAV_URL`` (default
http://127.0.0.1:8000) and ``RFUAV_API_TOKEN`` set the service and its token.

``parser`` (one function per command, options from the request models), ``commands`` (one
function per command), ``serve`` (``rfuav serve deploy|list|show|predict|reload|undeploy``: the
deployments), ``follow`` (``logs -f``), ``render`` (tables, log lines, progress bar).
"""

from __future__ import annotations

import os
import sys

import httpx

from web.cli.commands import EXIT_API, EXIT_OK, EXIT_UNREACHABLE
from web.cli.parser import DEFAULT_URL, build_parser
from web.client import RFUAVClient, RFUAVError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("RFUAV_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("RFUAV_API_TOKEN") or None
    client = RFUAVClient(url, token=token, timeout=getattr(args, "timeout", 30.0))
    try:
        code: int = args.func(client, args)
        return code
    except RFUAVError as exc:
        if exc.code in (0, 503):
            # 0: no answer at all; 503: web answers but the supervisor is down.
            print(f"rfuav: service unreachable at {url}: {exc.msg}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"rfuav: {exc.msg} (HTTP {exc.code})", file=sys.stderr)
        return EXIT_API
    except httpx.TransportError as exc:  # a stream that broke outside the client's own retry
        print(f"rfuav: cannot reach the service at {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rfuav tasks | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK
    finally:
        client.close()
