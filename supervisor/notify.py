"""systemd's notify protocol (``sd_notify``): readiness, status, watchdog and stopping.

The daemon runs under ``Type=notify`` with ``WatchdogSec=``: systemd hands it a datagram
socket in ``NOTIFY_SOCKET`` and expects ``READY=1`` once it serves, ``WATCHDOG=1`` more often
than every ``WATCHDOG_USEC`` microseconds, ``STATUS=`` lines for ``systemctl status`` and
``STOPPING=1`` when it begins to shut down. Outside systemd (a terminal, the tests without the
variable) every function here is a no-op, so the daemon calls them unconditionally.

The protocol is small enough to speak directly (no libsystemd binding): one ``AF_UNIX``
``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` assignments per call. A leading
``@`` in ``NOTIFY_SOCKET`` names a Linux abstract-namespace socket (the ``@`` becomes a NUL).
A failed send is logged and swallowed: a missing notification must never crash the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = [
    "NOTIFY_ENV_KEYS",
    "enabled",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

#: Variables that belong to the daemon alone: the fork server and a cold-started runner get an
#: environment without them (``supervisor.forkserver``, ``supervisor.spawner``; with the default
#: ``NotifyAccess=main`` systemd would ignore a job's messages anyway, but a job has no business
#: holding the daemon's notify socket or watchdog).
NOTIFY_ENV_KEYS: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(env: Mapping[str, str]) -> str | bytes | None:
    """The socket address named by ``NOTIFY_SOCKET``, or None when there is none to use."""
    raw = env.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):
        # Abstract namespace: a NUL byte where the '@' is, no filesystem path.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    if raw:
        # systemd also allows vsock:… addresses (VMs); we only speak AF_UNIX.
        log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address; notifications disabled", raw)
    return None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """True when a notify socket is configured (the process runs under ``Type=notify``)."""
    return _address(os.environ if env is None else env) is not None


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one datagram.

    Returns True when the datagram was sent, False when notifications are disabled or the
    send failed (logged). Never raises for socket errors.
    """
    address = _address(os.environ if env is None else env)
    if address is None or not assignments:
        return False
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"notify assignment {item!r} must be KEY=value")
    payload = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, address)
    except OSError as exc:
        # systemd gone or socket removed: log and carry on serving.
        log.warning("sd_notify %s failed: %s", assignments[0].split("=", 1)[0], exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """``READY=1`` (with ``MAINPID`` and an optional ``STATUS=``): sockets bound, store open."""
    items = ["READY=1", f"MAINPID={os.getpid()}"]
    if status_text is not None:
        items.append(_status_item(status_text))
    return notify(*items)


def status(text: str) -> bool:
    """``STATUS=<text>``: the one-line state shown by ``systemctl status``."""
    return notify(_status_item(text))


def watchdog() -> bool:
    """``WATCHDOG=1``: the event loop is alive. Send it every ``watchdog_interval()`` seconds."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun (jobs are being cancelled, sockets closing)."""
    items = ["STOPPING=1"]
    if status_text is not None:
        items.append(_status_item(status_text))
    return notify(*items)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is expected.

    systemd sets ``WATCHDOG_USEC`` (the timeout) and ``WATCHDOG_PID`` (the process that must
    ping). When ``WATCHDOG_PID`` names another process the watchdog is not ours (it was
    inherited through the environment). We ping at half the timeout, as sd_watchdog_enabled(3)
    recommends, so one late loop iteration does not get the service killed.
    """
    env = os.environ if env is None else env
    if _address(env) is None:
        return None
    raw_usec = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw_usec)
    except ValueError:
        if raw_usec:
            log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", raw_pid)
            return None
    return usec / 1_000_000 / 2


def _status_item(text: str) -> str:
    # A newline would start a new assignment: keep STATUS to one line.
    return "STATUS=" + " ".join(text.splitlines())
