"""The other nodes' agent URIs, remembered while ZooKeeper is reachable, for when it is not.

A node cut off from ZooKeeper asks its peers whether they still reach it (`pvc.node.self_fence`); by then it
can no longer read where they listen, so it keeps the URIs from watches on the node records (a record changes
only when its daemon starts, so the watches cost nothing in between).
"""
import threading
from typing import Any

from kazoo.protocol.states import ZnodeStat

from pvc import schema
from pvc.store import Store


class PeerDirectory:
    def __init__(self, store: Store, own_name: str):
        self._store = store
        self._own_name = own_name
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._uris: dict[str, str] = {}

    def start(self) -> None:
        self._store.zk.ChildrenWatch(schema.NODES, self._on_nodes)

    def agent_uris(self) -> dict[str, str]:
        """Peer name → agent URI, as last seen."""
        with self._lock:
            return dict(self._uris)

    def _on_nodes(self, names: list[str]) -> None:
        with self._lock:
            added = set(names) - self._watched - {self._own_name}
            for gone in self._watched - set(names):
                self._uris.pop(gone, None)
            self._watched = (self._watched | added) & set(names)
        for name in sorted(added):
            self._store.zk.DataWatch(schema.node(name), self._on_record(name))

    def _on_record(self, name: str):
        def on_change(data: bytes | None, _stat: ZnodeStat | None, _event: Any = None) -> bool | None:
            with self._lock:
                if name not in self._watched:
                    self._uris.pop(name, None)
                    return False
                uri = (schema.decode(data) or {}).get("agent_uri") if data else None
                if uri:
                    self._uris[name] = uri
            return None
        return on_change
