"""The preloaded fork server: the only module that touches ``multiprocessing``'s internals.

A ``multiprocessing`` fork server imports ``PRELOAD`` (``runner.preload``: torch, torchvision,
albumentations, sklearn, cv2; no torch operation ever runs in it) once, then forks each job,
whose target is ``runner.entry.run_and_exit(spec)``, or a *standby*: a runner forked ahead of
demand that waits for its spec on a pipe (``runner.entry.run_when_sent``). The server writes
each child's pid, then its exit status (``-signum`` when killed), on a per-child status pipe
(``WarmPopen.sentinel``).

``ForkServer`` wraps one server (launch, probe, fork, stop, reap); ``WarmPopen`` is one child's
launch and status pipe; ``Standby`` one pre-forked runner. The policy around them (when to start
a server, replace it, keep a standby) is ``supervisor.spawner``'s.
"""

from __future__ import annotations

import importlib
import io
import logging
import multiprocessing.connection as mp_connection
import multiprocessing.context as mp_context
import multiprocessing.process as mp_process
import os
import select
import shutil
import signal
import time
from multiprocessing import forkserver, popen_forkserver, reduction
from pathlib import Path
from typing import Any

from protocol.addresses import MAX_UNIX_PATH
from protocol.jobs import JobSpec
from supervisor.notify import NOTIFY_ENV_KEYS

log = logging.getLogger(__name__)

#: Modules the fork server imports once, before it forks anything.
PRELOAD: list[str] = ["runner.preload"]
#: The warm job's entry (module, function): runs the job and exits with its code.
WARM_TARGET = ("runner.entry", "run_and_exit")
#: A standby's entry: waits for its spec on a pipe, then runs it like ``WARM_TARGET``.
STANDBY_TARGET = ("runner.entry", "run_when_sent")
#: Run in a child forked from a fresh server: exits 0 only when the preload really happened
#: (``multiprocessing`` ignores an ImportError in a preload module, which would leave every
#: job silently paying the full import cost).
_PROBE = "import sys\nsys.exit(0 if {'torch', 'runner.entry'} <= set(sys.modules) else 3)\n"


class ServerLost(Exception):
    """The fork server went away before it reported a child's exit status."""


class WarmPopen(popen_forkserver.Popen):
    """``multiprocessing``'s fork-server launch against *our* server instance, sending only
    the process name as preparation data. The stock launch also sends the parent's main
    module, which every child would then re-import (pytest, the ``rfuavd`` script …): tens
    of milliseconds and megabytes per job for nothing."""

    def __init__(self, process_obj: Any, server: forkserver.ForkServer) -> None:
        self._server = server
        self.server_lost = False
        super().__init__(process_obj)

    def _launch(self, process_obj: Any) -> None:
        buf = io.BytesIO()
        # The process object carries an AuthenticationString, which pickles only while a
        # spawning Popen is registered.
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump({"name": process_obj.name}, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = self._server.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        self.finalizer = None  # type: ignore[assignment]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)

    def read_exit(self) -> int:
        """The exit status; call once the sentinel is readable. Raises ``ServerLost``."""
        if self.returncode is None:
            try:
                self.returncode = forkserver.read_signed(self.sentinel)
            except (OSError, EOFError) as exc:
                self.server_lost = True
                raise ServerLost(str(exc)) from None
        return int(self.returncode)

    def close_sentinel(self) -> None:
        try:
            os.close(self.sentinel)
        except OSError:
            pass


def use_folder(folder: Path | None) -> None:
    """Make ``folder`` this process's ``multiprocessing`` temporary folder (where a fork
    server's listening socket goes), emptied first, instead of a new ``pymp-*`` in the temporary
    directory, which a process killed with SIGKILL never removes: one more left by every daemon
    so killed. Its daemon's next start empties it. Once set, it stays (a server replaced later
    listens there too). None, or a folder where the socket's path would not fit AF_UNIX:
    ``multiprocessing``'s own, unless one set before still exists."""
    config = mp_process.current_process()._config  # type: ignore[attr-defined]
    if folder is None or len(str(folder / "listener-12345678")) > MAX_UNIX_PATH:
        if config.get("tempdir") and not os.path.isdir(config["tempdir"]):
            del config["tempdir"]  # (a folder given earlier and removed since)
        return
    if config.get("tempdir") == str(folder):
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    config["tempdir"] = str(folder)


class ForkServer:
    """One preloaded fork server and its readiness. Wraps ``multiprocessing.forkserver``;
    the few private attributes it reads (the server's pid, "alive" fd and address) are read
    here only. A pidfd on the server tells its death without polling or pid reuse."""

    def __init__(self, preload: list[str], folder: Path | None = None) -> None:
        """``folder``: where the server's listening socket goes (``use_folder``); None: a
        ``pymp-*`` folder of ``multiprocessing``'s own in the temporary directory."""
        self.folder = folder
        self._server = forkserver.ForkServer()
        self._server.set_forkserver_preload(preload)
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.ready_seconds = 0.0
        self.dead = False

    def launch(self) -> None:
        """Start the server process (returns at once; the preload runs in the background).
        Runs on the loop thread: the daemon-only variables are held back from its environment."""
        use_folder(self.folder)
        saved = {k: os.environ.pop(k) for k in NOTIFY_ENV_KEYS if k in os.environ}
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        try:
            self._server.ensure_running()
        finally:
            os.environ.update(saved)
        self.pid = self._server._forkserver_pid  # type: ignore[attr-defined]
        assert self.pid is not None
        self.pidfd = os.pidfd_open(self.pid)

    def alive(self) -> bool:
        if self.pidfd is None:
            return False
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return not readable

    def probe(self) -> None:
        """Block until the server has preloaded and forked a probe child that exited 0.
        Raises ``RuntimeError`` (with the reason) otherwise. Call from a worker thread."""
        started = time.monotonic()
        process = mp_context.ForkServerProcess(target=exec, args=(_PROBE,), name="rfuav-probe")
        try:
            popen = WarmPopen(process, self._server)
            code = popen.read_exit()
        except (ServerLost, EOFError, OSError) as exc:
            raise RuntimeError(f"fork server died while preloading: {exc}") from None
        popen.close_sentinel()
        if code != 0:
            raise RuntimeError(f"fork server preload incomplete (probe exit {code}); see the daemon's stderr")
        self.ready_seconds = time.monotonic() - started

    def spawn(self, process_obj: Any) -> WarmPopen:
        """Fork one process. Raises ``ServerLost`` when the server is gone (multiprocessing
        would otherwise quietly start an unprobed replacement and block on its preload)."""
        if not self.alive():
            raise ServerLost("fork server is not running")
        try:
            return WarmPopen(process_obj, self._server)
        except (EOFError, ConnectionError) as exc:
            raise ServerLost(str(exc)) from None

    def fork_job(self, spec: JobSpec) -> WarmPopen:
        """Fork the runner of ``spec`` (``WARM_TARGET``). Blocks: call from a worker thread.
        Raises ``ServerLost``."""
        process = mp_context.ForkServerProcess(
            target=Named(*WARM_TARGET),  # type: ignore[arg-type]
            args=(spec,),
            name=f"rfuav-runner-{spec.task_id}",
        )
        return self.spawn(process)

    def fork_standby(self) -> Standby:
        """Fork a standby runner (``STANDBY_TARGET``) that waits for its spec. Blocks: call
        from a worker thread. Raises ``ServerLost``."""
        reader, writer = mp_connection.Pipe(duplex=False)
        process = mp_context.ForkServerProcess(
            target=Named(*STANDBY_TARGET),  # type: ignore[arg-type]
            args=(reader,),
            name="rfuav-standby",
        )
        try:
            popen = self.spawn(process)
        except ServerLost:
            writer.close()
            raise
        finally:
            reader.close()  # the child has its own copy
        return Standby(self, popen, writer)

    def stop(self) -> None:
        """Stop the server: close our "alive" fd (it exits once no job holds it either), and
        SIGTERM it so that a supervisor's stop does not wait for running jobs."""
        server: Any = self._server  # its private attributes are not in typeshed
        if server._forkserver_alive_fd is not None:
            try:
                os.close(server._forkserver_alive_fd)
            except OSError:
                pass
            server._forkserver_alive_fd = None
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
            except ProcessLookupError:
                pass
        address = server._forkserver_address
        if isinstance(address, str):
            try:
                os.unlink(address)
            except OSError:
                pass
            server._forkserver_address = None

    def reap(self, timeout: float) -> None:
        """Collect the server's exit status (it is our child); SIGKILL after ``timeout``.
        Blocks: call from a worker thread, or when the pidfd is already readable."""
        if self.pidfd is None:
            return
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        if not readable:
            log.warning("fork server %s did not stop in %.0f s; killing it", self.pid, timeout)
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        try:
            os.waitpid(self.pid or -1, 0)
        except ChildProcessError:
            pass  # multiprocessing reaped it already
        os.close(self.pidfd)
        self.pidfd = None


class Standby:
    """A runner forked ahead of demand, blocked reading its spec from ``conn``."""

    def __init__(self, server: ForkServer, popen: WarmPopen, conn: mp_connection.Connection) -> None:
        self.server = server
        self.popen = popen
        self.conn = conn

    def send(self, spec: JobSpec) -> bool:
        """Give it its job; False when it is gone (it then gets discarded)."""
        readable, _, _ = select.select([self.popen.sentinel], [], [], 0)
        if readable:  # exited (or its server did): the status pipe has news
            return False
        try:
            self.conn.send(spec)
        except OSError:
            return False
        finally:
            self.conn.close()
        return True

    def discard(self, wait: float = 0.0) -> None:
        """Let it go: EOF on its pipe makes it exit; its status pipe is closed unread. ``wait``:
        seconds to wait for its exit (a daemon stopping leaves no process of its own behind)."""
        try:
            pidfd = os.pidfd_open(self.popen.pid) if wait > 0 else None
        except ProcessLookupError:
            pidfd = None
        self.conn.close()
        self.popen.close_sentinel()
        if pidfd is not None:
            select.select([pidfd], [], [], wait)  # readable once it has exited
            os.close(pidfd)


class _Module:
    """Pickles as ``importlib.import_module(name)``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (importlib.import_module, (self.name,))


class Named:
    """A function named by module and attribute, resolved only where it is unpickled (the
    child): it pickles as ``getattr(import_module(module), name)``, so the supervisor never
    imports runner code and the child never imports supervisor code."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[_Module, str]]:
        return (getattr, (_Module(self.module), self.name))
