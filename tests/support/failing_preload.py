"""A fork-server preload module that fails (not with ImportError, which multiprocessing ignores):
the spawner must give up warm start once, not retry the server in a loop."""

raise RuntimeError("this preload module fails on purpose (spawner test)")
