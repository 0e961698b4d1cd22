"""The supervisor daemon: control server, store, scheduler, task lifecycle, executors, cgroups.

``daemon`` is the composition root: the home lock, the sockets, the signals and the loops.
``lifecycle`` owns the live tasks and their processes (queue, start, cancel, reap, recover);
``scheduler`` decides what runs where; ``jobs`` builds a job's spec and decides its outcome.
``executor`` is the seam through which a task gets its process; ``local`` implements it on this
host with ``spawner`` (warm or cold start, standby, adoption), ``forkserver`` (the preloaded
``multiprocessing`` fork server), ``handle`` (one runner process), ``cgroups`` and
``job_cgroup`` (limits). ``pipeline`` turns runner events into stored events (``journal``
reads a runner's own record of them) and ``events_out`` publishes them; ``store`` persists
tasks and events in SQLite. ``control`` answers the commands of ``protocol.commands``; ``gpu``
and ``ps`` describe the hardware and the runners; ``notify`` speaks to systemd. Knows
``protocol`` only; never imports torch.
"""
