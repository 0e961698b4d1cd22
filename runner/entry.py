"""A runner process from start to exit: isolate, configure, connect, run the job, report.

``run(spec)`` is the single entry for both start modes: warm (forked from the supervisor's
preloaded fork server) and cold (``python -m runner <spec.json>``). The order matters:

1. own session and process group (``setsid``), own cgroup and a lower CPU priority
   (``spec.nice``: nicer than the supervisor), before anything can fork;
2. process title, stdout/stderr into the task directory, signal handlers; then a runner bound
   to its host (``spec.host_pid``: a Ray runner host) starts watching it;
3. ``CUDA_VISIBLE_DEVICES`` and thread counts before the first torch/OpenCV operation
   (after a fork ``OMP_NUM_THREADS`` no longer has any effect, so set them by call);
4. connect the publisher and wait for the subscription, then ``running``;
5. the job; its outcome is the final status event, then exit.

A serving replica (job ``replica``, ``runner.serving``) takes steps 1-3 and then serves until
SIGTERM: no publisher and no events (the supervisor probes it with ``status``); a replica that
cannot start prints ``replica failed: <reason>`` as the last line of its stderr and exits 1.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType

from protocol import events as ev
from protocol import serving
from protocol.jobs import JobSpec
from runner.context import Cancelled, JobContext
from runner.publisher import Publisher

#: job name -> "module:function" that runs it. Imported lazily so a job pays only for what it
#: uses. (A job's task type: ``protocol.tasks.JOB_TASK_TYPES``.)
JOB_FUNCTIONS: dict[str, str] = {
    "diagnostic": "runner.diagnostic:run",
    "training": "runner.training:run",
    "inference": "runner.inference:run",
    "split": "runner.preprocessing:split",
    "augment": "runner.preprocessing:augment",
    "crop": "runner.preprocessing:crop",
}

#: Exit codes: the final status event is authoritative; these cover a runner that could not
#: report (the supervisor decodes them when no final event arrived).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STARTUP_FAILURE = 3


def _isolate(spec: JobSpec) -> None:
    if os.getpid() != os.getsid(0):
        try:
            os.setsid()
        except PermissionError:  # already a group leader (cold start with start_new_session)
            pass
    for procs in spec.cgroup_procs:
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    _lower_priority(spec.nice)


def _follow_host(spec: JobSpec) -> None:
    """Do not outlive the runner host that started us (``JobSpec.host_pid``; call once the
    SIGTERM handler is in place): once it is gone, SIGTERM to ourselves (a job stops as when
    cancelled; a replica drains), and ``spec.grace_seconds`` later SIGKILL to our process
    group. A host that is our parent no longer (it died before we looked) is gone already: the
    pidfd then proves nothing, as the pid may be another process's by now."""
    host_pid, grace = spec.host_pid, spec.grace_seconds
    if host_pid <= 0:
        return
    try:
        pidfd: int | None = os.pidfd_open(host_pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None and os.getppid() != host_pid:
        os.close(pidfd)
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has ended
            os.close(pidfd)
        print(
            f"runner host (pid {host_pid}) is gone: stopping (SIGTERM, SIGKILL to the group after {grace:g} s)",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(grace)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="rfuav-host-watch", daemon=True).start()


#: Tries at setting the autogroup's nice: without CAP_SYS_ADMIN the kernel allows one such
#: change every 100 ms on the whole host (``EAGAIN`` otherwise), so jobs starting together retry.
_AUTOGROUP_TRIES = 4


def _lower_priority(increment: int) -> None:
    """Run ``increment`` nicer than now (than the parent that started us): every thread of this
    process (Linux keeps a nice value per thread; what a runner starts later inherits it), and
    its autogroup. The runner leads a session of its own, and where the kernel groups sessions
    (``sched_autogroup``) the group's nice, not the process's, is what weighs against the
    supervisor's session — on a host where no cgroup CPU controller holds the job."""
    if increment <= 0:
        return
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), target)
        except ProcessLookupError:  # a thread that just ended
            pass
    for attempt in range(_AUTOGROUP_TRIES):
        try:
            fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            try:
                os.write(fd, str(target).encode())
            finally:
                os.close(fd)
            return
        except BlockingIOError:  # EAGAIN: another session's nice changed less than 100 ms ago
            if attempt + 1 < _AUTOGROUP_TRIES:
                time.sleep(0.1)
        except OSError:  # no autogroups on this kernel, or not allowed: the process's nice stands
            return


def _redirect_output(task_dir: Path) -> None:
    for fd, name in ((1, "stdout.log"), (2, "stderr.log")):
        out = os.open(task_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(out, fd)
        os.close(out)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _configure_compute(spec: JobSpec) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = spec.cuda_visible_devices
    threads = str(spec.torch_threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = threads
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    if "torch" in sys.modules or spec.job in ("training", "inference", serving.JOB):
        import torch

        torch.set_num_threads(spec.torch_threads)
        try:
            torch.set_num_interop_threads(spec.interop_threads)
        except RuntimeError:  # already fixed in this process; harmless
            pass
    if "cv2" in sys.modules or spec.job in ("training", "inference", serving.JOB, "split", "augment", "crop"):
        import cv2

        cv2.setNumThreads(spec.opencv_threads)


def _resolve(job: str) -> Callable[[JobContext], str | None]:
    target = JOB_FUNCTIONS.get(job)
    if target is None:
        raise ValueError(f"unknown job {job!r}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def _set_title(title: str) -> None:
    try:
        from setproctitle import setproctitle

        setproctitle(title)
    except ImportError:  # pragma: no cover - a dependency; the title is a convenience
        pass


def _run_replica(spec: JobSpec) -> int:
    """A serving replica: isolated and configured as a job, then ``runner.serving.replica.serve``
    (which handles SIGTERM once the model is loaded and warm, and returns 0 after draining)."""
    from runner.serving import failure_line

    _set_title(f"rfuav-replica {spec.params.get('name')} v{spec.params.get('version')} {spec.task_id}")
    _redirect_output(Path(spec.task_dir))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C is for the daemon
    # Until the model is loaded (``serve`` then drains on SIGTERM), a SIGTERM simply ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _follow_host(spec)
    try:
        _configure_compute(spec)
        from runner.serving.replica import serve

        return serve(spec)
    except Exception as exc:  # noqa: BLE001 - the supervisor reads the last line of stderr.log
        traceback.print_exc()
        print(failure_line(exc), file=sys.stderr)
        return EXIT_FAILED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run(spec: JobSpec) -> int:
    """Run one job in this process; return the exit code. Never raises."""
    _isolate(spec)
    if spec.job == serving.JOB:
        return _run_replica(spec)
    task_dir = Path(spec.task_dir)
    _set_title(f"rfuav-runner {spec.task_type} {spec.task_id}")
    _redirect_output(task_dir)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C is for the daemon

    try:
        start_rseq = _journal_length(spec.journal_path)
        curve = (spec.events_server_key, spec.events_public_key, spec.events_secret_key)
        publisher = Publisher(
            spec.task_id,
            spec.events_endpoint,
            spec.journal_path,
            start_rseq=start_rseq,
            curve=curve if curve[0] else None,
        )
    except Exception:  # noqa: BLE001 - nothing to report to yet; stderr.log has it
        traceback.print_exc()
        return EXIT_STARTUP_FAILURE
    ctx = JobContext(spec, publisher)

    def handle_term(signum: int, frame: FrameType | None) -> None:
        # Handlers only set a flag: the job stops at its next safe point.
        ctx.stop_requested.set()

    signal.signal(signal.SIGTERM, handle_term)
    ctx.stop_requested.wake_on_signals()
    _follow_host(spec)
    publisher.wait_for_subscriber(spec.subscribe_timeout)
    code = EXIT_OK
    try:
        _configure_compute(spec)
        ctx.emit(ev.STATUS, f"running on {spec.host_device} (pid {os.getpid()})", status="running")
        outcome = _resolve(spec.job)(ctx)
        ctx.check_stop()
    except Cancelled:
        ctx.emit(ev.STATUS, "cancelled", "WARNING", status="cancelled")
    except Exception as exc:  # noqa: BLE001 - every job error becomes the task's failure
        code = EXIT_FAILED
        ctx.error(traceback.format_exc().rstrip())
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ctx.emit(ev.STATUS, message, "ERROR", status="failed")
    else:
        # A job may return its closing message (e.g. "completed; upload failed: ...").
        message = outcome if isinstance(outcome, str) and outcome else "completed"
        ctx.emit(ev.STATUS, message, status="completed", progress=100)
    finally:
        publisher.close()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _journal_length(path: Path) -> int:
    """Events already journaled (a runner never restarts, but a spec may be re-run by hand)."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def main_from_file(path: str) -> int:
    spec = JobSpec.load(Path(path).read_bytes())
    return run(spec)


def run_and_exit(spec: JobSpec) -> None:
    """The warm-start target (forked from the supervisor's fork server): ``multiprocessing``
    ignores a target's return value, so exit with the job's code."""
    raise SystemExit(run(spec))


def run_when_sent(conn: Connection) -> None:
    """A standby runner, forked ahead of demand so that the fork is off a job's start path:
    wait for the spec on ``conn``, then run it as ``run_and_exit`` does. One spec only (a
    runner is never reused); EOF means the supervisor no longer needs it: exit quietly."""
    try:
        spec = conn.recv()
    except EOFError:
        raise SystemExit(0) from None
    finally:
        conn.close()
    raise SystemExit(run(spec))
