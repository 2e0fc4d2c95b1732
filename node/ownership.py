"""One daemon per node name.

Two pvcnoded running the same node name (a cloned host, a container, a typo in a config) would each converge
libvirt to the same records and start the same VMs on two hypervisors. So a daemon owns its name through an
ephemeral, sequential znode of its ZooKeeper session: the earliest live one owns the node, and every write the
daemon makes as the node checks that its znode still exists (`Store.transaction(path)`). The path of the
owning znode is unique for ever (sequence numbers are never reused), so such a write fails once the session
that made it has gone, even if another daemon owns the name by then.

A daemon restarted right after its predecessor was killed finds the old session's znode still there until
ZooKeeper expires that session. It removes that znode at once only when it can prove the process that made
it is gone: the znode records the kernel's boot id, the PID namespace, the pid and that process's start time
(`ProcessIdentity`), and all of boot id and namespace must be this process's own while that pid runs no more
(or runs a later process). A hostname and a pid prove nothing: a cloned host image, a container or another
PID namespace has the same hostname and its own pid 1, and taking its znode for a dead one's would let two
daemons remove each other's. Any other holder is waited for until its session ends, then refused.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kazoo.exceptions import NoNodeError

from pvc import schema
from pvc.errors import Conflict, NotFound
from pvc.store import Store, Transaction

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessIdentity:
    """What names one process for ever: a pid alone is reused, and means another process in another PID
    namespace or after a reboot."""
    host: str
    pid: int
    boot_id: str
    pid_namespace: int
    """The inode of /proc/self/ns/pid."""
    start_time: int
    """Field 22 of /proc/PID/stat: clock ticks after boot at which the process started."""

    @classmethod
    def of_this_process(cls) -> ProcessIdentity:
        return cls(socket.gethostname(), os.getpid(), BOOT_ID.read_text().strip(),
                   os.stat("/proc/self/ns/pid").st_ino, _start_time(os.getpid()) or 0)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def gone_from(self, owner: dict[str, Any]) -> bool:
        """Whether `owner` (an owner znode's record) was made by a process of this same boot and PID namespace
        that no longer runs: only then can its session act no more although ZooKeeper still holds it."""
        pid = owner.get("pid")
        if owner.get("boot_id") != self.boot_id or owner.get("pid_namespace") != self.pid_namespace \
                or not isinstance(pid, int):
            return False
        if pid == self.pid and owner.get("start_time") == self.start_time:
            return True  # an earlier session of this very process, which ZooKeeper has expired
        started = _start_time(pid)
        return started is None or started != owner.get("start_time")


class NodeOwnership:
    def __init__(self, store: Store, node: str, wait_s: float):
        self._store = store
        self._node = node
        self._wait_s = wait_s
        self._me = ProcessIdentity.of_this_process()
        self.path: str | None = None
        """Our owner znode while we own the node: every write as the node checks it (`Store.transaction`)."""
        self._session: int | None = None
        """The ZooKeeper session that made `path`: its znode lives exactly as long."""
        self._suspected = False
        self.confirmed_at: float | None = None
        """When (monotonic) the request that found this daemon the node's owner began: ZooKeeper answered it."""

    @property
    def held(self) -> bool:
        """Whether our owner znode exists, asked of ZooKeeper (and watched again: `maybe_lost`)."""
        if self.path is None:
            return False
        present = self._store.zk.exists(self.path, watch=self._on_owner_event) is not None
        if present and self._session_id() == self._session:
            self._suspected = False
        return present

    @property
    def maybe_lost(self) -> bool:
        """Whether `held` needs asking: our znode's session is no longer the client's, the znode changed (a watch
        on it fired: deleted), or a write as the node was refused since (`suspect`). Asking every keepalive
        was 6% of an idle node's CPU and 19 ZooKeeper requests a second at 96 nodes; a znode that only its
        session's end or a deletion removes cannot be lost otherwise."""
        return self.path is None or self._suspected or self._session_id() != self._session

    def suspect(self) -> None:
        """A write as the node was refused: ask `held` at the next check."""
        self._suspected = True

    def _on_owner_event(self, _event: Any) -> None:
        self.suspect()

    def _session_id(self) -> int | None:
        client_id = self._store.zk.client_id
        return client_id[0] if client_id else None

    def transaction(self) -> Transaction:
        """A transaction that commits only while this daemon owns the node: a daemon whose session, and so its
        ownership, has ended (or that never owned it) writes nothing as the node (`Conflict`)."""
        if self.path is None:
            raise Conflict(f"this daemon does not own node {self._node}; the write was refused")
        return self._store.transaction(self.path)

    def write(self, path: str, value: Any) -> None:
        """Set `path` (creating it if need be) as the node, only while this daemon owns it."""
        try:
            self.transaction().set(path, value).commit()
        except NotFound:
            self.transaction().create(path, value).commit()

    def acquire(self) -> str:
        """Own the node, waiting up to `wait_s` for an earlier owner's session to end; `Conflict` naming the
        host and process that hold it otherwise, leaving nothing behind."""
        directory = schema.node_owners(self._node)
        self._store.zk.ensure_path(directory)
        mine = self._store.zk.create(f"{directory}/{schema.NODE_OWNER_PREFIX}", schema.encode(self._me.record()),
                                     ephemeral=True, sequence=True)
        session = self._session_id()
        deadline = time.monotonic() + self._wait_s
        while True:
            asked = time.monotonic()
            earlier = [child for child in sorted(self._store.zk.get_children(directory))
                       if f"{directory}/{child}" < mine and not self._dead_predecessor(f"{directory}/{child}")]
            if not earlier:
                self.path, self._session, self._suspected = mine, session, False
                self.confirmed_at = asked
                if self._store.zk.exists(mine, watch=self._on_owner_event) is None:
                    self._suspected = True
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
        """Whether `path` belongs to a daemon of this very host, boot and PID namespace whose process is gone
        (killed, crashed): its session lingers until ZooKeeper expires it, but it can act no more, so its
        znode is removed now and a restart takes over at once. Any other holder is waited for."""
        try:
            owner = schema.decode(self._store.zk.get(path)[0]) or {}
        except NoNodeError:
            return True
        if not self._me.gone_from(owner):
            return False
        log.info("node %s was owned by pid %d of this host, boot and PID namespace, which is gone: taking over",
                 self._node, owner["pid"])
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
        where = []
        if owner.get("boot_id") != self._me.boot_id:
            where.append("another boot or machine")
        elif owner.get("pid_namespace") != self._me.pid_namespace:
            where.append("another PID namespace")
        return f"pid {owner.get('pid')} on host {owner.get('host')}" + (f" ({', '.join(where)})" if where else "")


def _start_time(pid: int) -> int | None:
    """When pid started (field 22 of its stat), or None when it does not run (a zombie does not: it will never
    act again)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])
