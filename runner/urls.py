"""Which URLs a job may download from or upload to, enforced where each connection is made.

Policy (``UrlPolicy``; every refusal raises ``FetchError`` saying why):

- ``http`` and ``https`` only, with a host.
- Refused always, whatever ``allow_hosts`` says: the unspecified addresses (0.0.0.0/8 and
  ``::``, which reach this host's own services), link-local addresses (169.254.0.0/16,
  fe80::/10), the cloud-metadata addresses and host names. An IPv4 address carried inside an
  IPv6 one (mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``,
  6to4 ``2002::/16``) is judged as that IPv4 address.
- Loopback (127.0.0.0/8, ``::1``) refused unless ``allow_loopback`` (``RFUAV_URL_ALLOW_LOOPBACK``).
- Private ranges are allowed; with ``allow_hosts`` only those hosts and their sub-domains.
- A host passes only if every address it resolves to passes.

Where: ``check_url`` before a request (a clear early message), and the connections of
``session(policy)``, which resolve the host, check every address and connect to the checked
address themselves — for every connection: each redirect hop, each retry, the upload target. A
DNS answer that changes between the early check and the connection (rebinding) meets the same
rules at connect time. Proxies from the environment are never used (they would connect for us).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as u3connection

from protocol.jobs import JobConfig

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class FetchError(ValueError):
    """An input that cannot be fetched or unpacked safely; the message says exactly why."""


@dataclass(frozen=True)
class UrlPolicy:
    allow_hosts: tuple[str, ...] = ()
    allow_loopback: bool = False

    @classmethod
    def from_config(cls, config: JobConfig) -> UrlPolicy:
        """From the job spec's ``config`` (``url_allow_hosts``, ``url_allow_loopback``)."""
        return cls(
            allow_hosts=tuple(h.strip().lower().rstrip(".") for h in config.url_allow_hosts if h.strip()),
            allow_loopback=config.url_allow_loopback,
        )


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or (addr in _V4_COMPATIBLE and not (addr.is_unspecified or addr.is_loopback)):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_refusal(addr: Address, allow_loopback: bool) -> str | None:
    """Why a connection to ``addr`` is refused, or None when it is allowed."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_v4(addr)
        if embedded is not None:
            return address_refusal(embedded, allow_loopback)
    if addr in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if addr.is_unspecified or addr in _THIS_NETWORK:
        return "an unspecified address (it reaches this host)"
    if addr.is_link_local:
        return "link-local"
    if addr.is_loopback and not allow_loopback:
        return "loopback (allowed only with RFUAV_URL_ALLOW_LOOPBACK=1)"
    return None


def resolve(host: str, port: int, policy: UrlPolicy) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` of ``host``, refused unless every address passes ``policy``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        why = address_refusal(address, policy.allow_loopback)
        if why:
            raise FetchError(f"host {host} resolves to {address}, {why}")
    return infos


def check_url(url: str, policy: UrlPolicy = UrlPolicy()) -> None:
    """Refuse ``url`` unless it is http(s) to an allowed host whose every address is allowed."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"URL {url!r} refused: only http and https are allowed")
    try:
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise FetchError(f"URL {url!r} refused: {exc}") from None
    if not host:
        raise FetchError(f"URL {url!r} refused: no host")
    if host in _METADATA_HOSTS:
        raise FetchError(f"URL {url!r} refused: {host} is a cloud metadata host")
    if policy.allow_hosts and not any(host == h or host.endswith("." + h) for h in policy.allow_hosts):
        raise FetchError(f"URL {url!r} refused: host {host} is not in url_allow_hosts")
    try:
        resolve(host, port, policy)
    except FetchError as exc:
        raise FetchError(f"URL {url!r} refused: {exc}") from None


# -- connections that check what they connect to ----------------------------------------------
def _connect(conn: HTTPConnection, policy: UrlPolicy) -> socket.socket:
    """What ``HTTPConnection._new_conn`` does, but only to addresses that pass ``policy``."""
    host = conn._dns_host.rstrip(".").lower()
    if host in _METADATA_HOSTS:
        raise FetchError(f"connection to {host} refused: a cloud metadata host")
    infos = resolve(host, conn.port or 80, policy)
    error: OSError | None = None
    for info in infos:
        try:
            return u3connection.create_connection(
                (str(info[4][0]), conn.port or 80),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            error = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}")


def _pool_classes(policy: UrlPolicy) -> dict[str, type[HTTPConnectionPool]]:
    class Connection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect(self, policy)

    class TLSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect(self, policy)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy  # before super().__init__, which builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._policy)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise FetchError("proxies are not used: the address checks must hold")


def session(policy: UrlPolicy) -> requests.Session:
    """A ``requests.Session`` whose every connection is checked against ``policy``."""
    s = requests.Session()
    s.trust_env = False  # no proxy or .netrc from the environment
    adapter = _GuardedAdapter(policy)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
