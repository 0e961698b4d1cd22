"""The shared language of the RFUAV Model Service.

Typed records for control commands and replies (``commands``, ``replies``), runner events
(``events``), task records (``tasks``), job specs and configs (``jobs``), their orjson encoding
(``codec``), the socket addresses of one runtime directory (``addresses``), settings
(``settings``) and the catalogues of model and augmentation names (``catalog``). Imports nothing from ``supervisor``, ``runner`` or ``web``.
"""

from protocol.codec import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ProtocolError"]
__version__ = "2.0.0"
