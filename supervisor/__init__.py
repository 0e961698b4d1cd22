"""The supervisor daemon: control server, store, scheduler, spawner/reaper, cgroups.

``daemon`` runs the asyncio loop and owns the sockets; ``control`` answers the commands of
``protocol.commands``; ``store`` persists tasks and events in SQLite; ``scheduler`` decides
what runs where; ``pipeline`` turns runner events into stored, published events; ``jobs``
spawns and reaps runners (through ``spawner``). Knows ``protocol`` only; never imports torch.
"""
