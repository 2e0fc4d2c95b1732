"""One daemon per node name.

Two pvcnoded running the same node name (a cloned host, a typo in a config) would each converge libvirt to
the same records and start the same VMs on two hypervisors. So a daemon owns its name through an ephemeral,
sequential znode of its ZooKeeper session: the earliest live one owns the node. A daemon restarted right
after its predecessor was killed finds the old session's znode still there until ZooKeeper expires that
session, so it waits up to the session timeout before refusing (unless that daemon ran on this same host and its process is gone: then
its znode is removed at once). The path of the owning znode is unique for
ever (sequence numbers are never reused), so a claim that checks it in its transaction fails once the
session that made it has gone, even if another daemon owns the name by then.
"""
import logging
import os
import socket
import time
from pathlib import Path

from kazoo.exceptions import NoNodeError

from pvc import schema
from pvc.errors import Conflict
from pvc.store import Store

log = logging.getLogger(__name__)


class NodeOwnership:
    def __init__(self, store: Store, node: str, wait_s: float):
        self._store = store
        self._node = node
        self._wait_s = wait_s
        self.path: str | None = None
        """Our owner znode while we own the node: claims check it (`Store.transaction(path)`)."""

    @property
    def held(self) -> bool:
        return self.path is not None and self._store.zk.exists(self.path) is not None

    def acquire(self) -> str:
        """Own the node, waiting up to `wait_s` for an earlier owner's session to end; `Conflict` naming the
        host and process that hold it otherwise, leaving nothing behind."""
        directory = schema.node_owners(self._node)
        self._store.zk.ensure_path(directory)
        mine = self._store.zk.create(f"{directory}/{schema.NODE_OWNER_PREFIX}",
                                     schema.encode({"host": socket.gethostname(), "pid": os.getpid()}),
                                     ephemeral=True, sequence=True)
        deadline = time.monotonic() + self._wait_s
        while True:
            earlier = [child for child in sorted(self._store.zk.get_children(directory))
                       if f"{directory}/{child}" < mine and not self._dead_predecessor(f"{directory}/{child}")]
            if not earlier:
                self.path = mine
                return mine
            if time.monotonic() > deadline:
                holder = self._holder(f"{directory}/{earlier[0]}")
                self._store.zk.delete(mine)
                raise Conflict(f"node {self._node} is already run by pvcnoded {holder}; refusing to start a "
                               "second daemon with the same node name")
            log.info("node %s is still owned by %s; waiting up to %g s for that session to end", self._node,
                     self._holder(f"{directory}/{earlier[0]}"), self._wait_s)
            time.sleep(0.5)

    def _dead_predecessor(self, path: str) -> bool:
        """Whether `path` belongs to a daemon of this same host whose process is gone (killed, crashed): its
        session lingers until ZooKeeper expires it, but it can act no more, so its znode is removed now and a
        restart takes over at once. Any other holder is waited for."""
        try:
            owner = schema.decode(self._store.zk.get(path)[0]) or {}
        except NoNodeError:
            return True
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid() \
                or _process_alive(pid):
            return False
        log.info("node %s was owned by pid %d of this host, which is gone: taking over", self._node, pid)
        try:
            self._store.zk.delete(path)
        except NoNodeError:
            pass
        return True

    def _holder(self, path: str) -> str:
        try:
            owner = schema.decode(self._store.zk.get(path)[0]) or {}
        except NoNodeError:
            return "(gone)"
        return f"pid {owner.get('pid')} on host {owner.get('host')}"


def _process_alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not: it will never act again)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
