"""The endpoints of API.md, one module per resource; each a small function over the control client.

An endpoint validates (``web.schemas``, ``web.paths``), asks the supervisor (``web.control``)
and shapes the reply in the envelope (``web.errors``). Web holds no task state: every fact comes
from the supervisor, so any number of requests may be in flight and web restarts lose nothing.

- ``request``: the lifespan's ``State`` and reading a request (JSON body, query integers, ids).
- ``starts``: submitting tasks (training, inference, preprocessing, diagnostic).
- ``tasks``: one task's record, cancel, delete, the paged task list, the stored log.
- ``streams``: the SSE event streams.
- ``resources``: usage, GPUs, concurrency limits, live runners.
- ``meta``: health, info, metrics, the OpenAPI document.

``web.routes`` maps them to paths; ``web.pages`` serves the browser's pages.
"""
