"""``rfuavd``: the service's command.

- ``rfuavd supervisor`` runs the daemon in the foreground (by hand or under systemd, the same).
- ``rfuavd web`` runs the HTTP front end: it execs ``python -m web`` (same process, so systemd and
  signals see web itself).
- ``rfuavd all`` runs both as two child processes in the foreground: SIGINT or SIGTERM stops
  both (web first, then the supervisor, which cancels running jobs with the grace period); if
  either dies the other is stopped and ``rfuavd`` exits non-zero.

Web is started by module name, never imported: the daemon's package does not depend on the HTTP
front end (web and the supervisor share only ``protocol``).

Settings come from ``RFUAV_*`` variables (and ``.env``); a bad one is a one-line error, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys

from protocol.settings import Settings

log = logging.getLogger("rfuavd")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"rfuavd: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_supervisor(settings: Settings) -> int:
    from supervisor.daemon import AlreadyRunning, run
    from supervisor.heap import keep_freed_memory

    keep_freed_memory()  # (the jobs' processes are started afresh, never forked from here)

    try:
        from setproctitle import setproctitle

        setproctitle("rfuavd supervisor")
    except ImportError:  # pragma: no cover - a dependency; the title is a convenience
        pass
    try:
        return asyncio.run(run(settings))
    except AlreadyRunning as exc:
        print(f"rfuavd: {exc}", file=sys.stderr)
        return 1


#: The command of each child of ``rfuavd all`` (and of ``rfuavd web``, exec'd).
COMMANDS: dict[str, list[str]] = {
    "supervisor": [sys.executable, "-m", "supervisor", "supervisor"],
    "web": [sys.executable, "-m", "web"],
}


def run_web() -> int:
    """Replace this process by ``python -m web`` (returns only if the exec fails)."""
    argv = COMMANDS["web"]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"rfuavd: cannot start web ({' '.join(argv)}): {exc}", file=sys.stderr)
    return 1


def run_all() -> int:
    """Supervisor and web as children; stop both on a signal or when either dies."""
    # Each child in a process group of its own: a terminal's Ctrl-C reaches only this process,
    # which stops the children in order with one SIGTERM each (a second signal would make the
    # supervisor kill running jobs at once instead of granting them the grace period).
    children = {name: subprocess.Popen(COMMANDS[name], process_group=0) for name in ("supervisor", "web")}
    # Block the signals we wait for only now, after the children started: a blocked mask is
    # inherited across exec, and the children must see SIGTERM. A child that died before the
    # block is caught by the poll below (its SIGCHLD may have been discarded).
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    code = 0
    try:
        while True:
            dead = [name for name, proc in children.items() if proc.poll() is not None]
            if dead:
                for name in dead:
                    log.error("%s exited with code %s: stopping the rest", name, children[name].returncode)
                code = 1
                break
            sig = signal.sigwait(watched)
            if sig != signal.SIGCHLD:
                log.info("%s: stopping web, then the supervisor", signal.Signals(sig).name)
                break
    finally:
        # Web first (it holds client connections), then the supervisor (which cancels jobs).
        for name in ("web", "supervisor"):
            proc = children[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop within 120 s: killing it", name)
                    proc.kill()
                    proc.wait()
                    code = 1
        # Consume signals that arrived meanwhile so unblocking does not deliver them now.
        while signal.sigtimedwait(watched, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rfuavd", description="RFUAV Model Service daemon")
    parser.add_argument("command", choices=("supervisor", "web", "all"), help="what to run")
    args = parser.parse_args(argv)
    settings = _settings()
    _configure_logging(settings.log_level)
    if args.command == "supervisor":
        return run_supervisor(settings)
    if args.command == "web":
        return run_web()
    return run_all()


if __name__ == "__main__":
    raise SystemExit(main())
