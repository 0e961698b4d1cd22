"""The HTTP face of the RFUAV Model Service: Starlette routes, validation, the envelope, SSE relay.

Stateless: every fact comes from the supervisor over the control socket (``web.control``) and the
events-out socket (``web.hub``). Imports ``protocol`` only; ``python -m web`` runs it.

- serving: ``app`` (the factory), ``routes`` (the table), ``endpoints/`` (one module per
  resource), ``auth``, ``errors`` (the envelope), ``sse``, ``metrics``, ``pages`` + ``static/``,
  ``server`` (uvicorn).
- requests: ``schemas`` (request models), ``fields`` (their shared fields and checks),
  ``validation`` (refusals as ``[{field, error}]``), ``paths`` (data-root confinement).
- the supervisor's sockets: ``loopsocket`` (the base), ``control`` (DEALER), ``hub`` (SUB).
- documentation: ``openapi``, ``responses``.
- clients: ``client`` (Python), ``cli/`` (``rfuav``).
"""
