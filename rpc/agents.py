"""Coordinators' connections to node agents, presenting the cluster secret.

Pyro5 proxies belong to one thread, so each thread keeps its own per node.
"""
import threading
from typing import Any

import Pyro5.errors

from pvc import wire
from pvc.errors import AuthenticationError, Unavailable
from pvc.handshake import authenticated_proxy


class NodeAgents:
    def __init__(self, cluster_secret: str, timeout: float = 30.0):
        self._secret = cluster_secret
        self._timeout = timeout
        self._local = threading.local()

    def call(self, node: str, agent_uri: str, method: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call `method` on a node's agent; `timeout` overrides the default for actions known to be long."""
        proxies = self._local.__dict__.setdefault("proxies", {})
        proxy = proxies.get(agent_uri)
        if proxy is None:
            proxy = proxies[agent_uri] = authenticated_proxy(agent_uri, self._secret, self._timeout)
        proxy._pyroTimeout = timeout or self._timeout
        try:
            return getattr(proxy, method)(*args, **kwargs)
        except Pyro5.errors.CommunicationError as error:
            proxies.pop(agent_uri, None)
            proxy._pyroRelease()
            if wire.is_handshake_refusal(error):
                raise AuthenticationError(f"node {node} refused this coordinator: "
                                          f"{wire.handshake_refusal_reason(error)}") from None
            raise Unavailable(f"node {node}'s agent did not answer: {error}") from None
