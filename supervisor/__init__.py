"""The supervisor daemon: control server, store, scheduler, spawner/reaper, cgroups.

``daemon`` runs the asyncio loop and owns the sockets; ``control`` answers the commands of
``protocol.commands``; ``store`` persists tasks and events in SQLite; ``scheduler`` decides
what runs where; ``pipeline`` turns runner events into stored, published events (``journal``
reads a runner's own record of them); ``jobs`` builds a job's spec and decides its outcome;
``spawner``/``cgroups``/``gpu``/``ps`` start, confine and describe runners; ``notify`` speaks
to systemd. Knows ``protocol`` only; never imports torch.
"""
