"""The HTTP face of the RFUAV Model Service: Starlette routes, validation, the envelope, SSE relay.

Stateless: every fact comes from the supervisor over the control socket (``web.control``) and the
events-out socket (``web.hub``). Imports ``protocol`` only.
"""
