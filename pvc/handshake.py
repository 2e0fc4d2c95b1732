"""Authentication in the Pyro5 handshake, shared by the coordinators and the node agents.

A connection presents its key once, when it connects; a daemon refuses the connection (and so every call on
it) unless the key is one it accepts. Clients present an API key to coordinators; coordinators present the
cluster secret to node agents, which accept nothing else.
"""
import hmac
from pathlib import Path
from typing import Iterable

import Pyro5
import Pyro5.api
import Pyro5.server
from kazoo.exceptions import KazooException

from pvc import wire
from pvc.errors import AuthenticationError, ConfigError, Unavailable


SYSTEM_CAS = "system"
"""A client's ``tls_ca`` that means the system's CA store (upstream's ``connection add -s``): verified all the
same, never unverified."""


def use_tls(cert: str | None = None, key: str | None = None, ca: str | None = None) -> None:
    """Turn on TLS for every Pyro5 daemon and proxy of this process.

    Pyro5 keeps its TLS settings per process, so a cluster uses TLS everywhere or nowhere: `cert` and `key`
    serve it (coordinators, node agents), `ca` verifies the servers this process connects to (clients,
    coordinators calling node agents), including that their certificate names the host connected to."""
    if not (cert or ca):
        return
    for path in (cert, key, ca if ca != SYSTEM_CAS else None):
        if path and not Path(path).is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    Pyro5.config.SSL = True
    if cert:
        Pyro5.config.SSL_SERVERCERT = cert
        Pyro5.config.SSL_SERVERKEY = key or ""
    if ca and ca != SYSTEM_CAS:
        Pyro5.config.SSL_CACERTS = ca


class AuthenticatingDaemon(Pyro5.server.Daemon):
    """A Pyro5 daemon that accepts only connections presenting one of `keys`."""

    def __init__(self, keys: Iterable[str], what: str, host: str, port: int):
        wire.register()
        self._keys = [key.encode() for key in keys if key]
        if not self._keys:
            raise AuthenticationError(f"no {what} configured: refusing to serve without authentication")
        self._what = what
        super().__init__(host=host, port=port)

    def validateHandshake(self, conn, data):
        presented = data.get("api_key") if isinstance(data, dict) else None
        if not isinstance(presented, str) or not presented:
            raise AuthenticationError(f"no {self._what} presented")
        if not any(hmac.compare_digest(presented.encode(), key) for key in self._keys):
            raise AuthenticationError(f"invalid {self._what}")
        return "welcome"

    def _sendExceptionResponse(self, connection, seq, serializer_id, exc_value, tbinfo, flags=0,
                               annotations=None):
        """A ZooKeeper error inside a call (a connection lost while the ensemble elects a leader) is no class a
        caller can rebuild, and would arrive as a serialisation failure: it crosses as `Unavailable`, which
        every caller already reads as "not acknowledged" (and retries under the same request id)."""
        if isinstance(exc_value, KazooException):
            exc_value = Unavailable(f"ZooKeeper did not answer during the call ({type(exc_value).__name__}); it "
                                    "may or may not have taken effect")
        super()._sendExceptionResponse(connection, seq, serializer_id, exc_value, tbinfo, flags, annotations)


def authenticated_proxy(uri: str, key: str, timeout: float) -> Pyro5.api.Proxy:
    """A proxy that presents `key` when it connects."""
    wire.register()
    proxy = Pyro5.api.Proxy(uri)
    proxy._pyroHandshake = {"api_key": key}
    proxy._pyroTimeout = timeout
    return proxy
