"""The kazoo session every PVC process holds, with the cluster's credentials, transactions and locks.

All znodes are created with the cluster's digest ACL, so a client that can reach the ZooKeeper port but does
not hold the credentials can neither read nor change the cluster.
"""
import logging
import time
from typing import Any, Callable, Iterable

from kazoo.client import KazooClient, KazooState, TransactionRequest
from kazoo.exceptions import (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError,
                              RolledBackError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Transaction as KazooTransaction
from kazoo.recipe.lock import Lock
from kazoo.retry import KazooRetry, RetryFailedError
from kazoo.security import make_digest_acl

from pvc import request_ids, schema
from pvc.zk_bulk import BulkWatchClient
from pvc.zk_select import PollingHandler
from pvc.errors import AlreadyExists, Conflict, ConfigError, NotFound, NotLeader, Unavailable

log = logging.getLogger(__name__)

RECONNECT_ATTEMPTS_PER_SESSION = 10
"""The wait between attempts to reconnect is capped at this fraction of the session timeout (and at 1 s): when a
ZooKeeper ensemble elects a new leader it drops every client, and a client whose retries have backed off to 1 s
comes back up to 1.4 s (jitter) after the ensemble serves again, which a node's self-fence, counting its silence
from its last keepalive, takes for isolation."""


class Store:
    """One ZooKeeper session; thread-safe, as kazoo is."""

    def __init__(self, hosts: str, user: str, password: str, session_timeout: float = 10.0):
        self.hosts = hosts
        self._acl = [make_digest_acl(user, password, all=True)]
        self.zk = BulkWatchClient(
            hosts=hosts, timeout=session_timeout, handler=PollingHandler(),
            auth_data=[("digest", f"{user}:{password}")], default_acl=self._acl,
            connection_retry=KazooRetry(max_tries=-1,
                                        max_delay=min(1.0, session_timeout / RECONNECT_ATTEMPTS_PER_SESSION)),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0),
        )
        self.stopping = False
        """Set before the session closes: watchers that would read again leave it be (a read sent while kazoo
        stops can block its caller for good, and `KazooClient.stop` waits for that caller)."""

    def start(self, connect_timeout: float = 15.0) -> None:
        """Connect and make sure the layout exists, or raise `Unavailable` after `connect_timeout` seconds
        leaving no background retries. A connection lost meanwhile is waited out: 96 daemons starting at once
        on two cores starved one's heartbeat past its 2.5 s session, and it exited on its first request."""
        began = time.monotonic()
        try:
            self.zk.start(timeout=connect_timeout)
            left = max(0.0, connect_timeout - (time.monotonic() - began))
            KazooRetry(max_tries=-1, max_delay=1.0, deadline=left)(self._ensure_layout)
        except (KazooTimeoutError, RetryFailedError):
            self.zk.stop()
            self.zk.close()
            raise Unavailable(f"ZooKeeper at {self.hosts} did not answer within {connect_timeout:g} s") from None

    def stop(self) -> None:
        self.stopping = True
        self.zk.stop()
        self.zk.close()

    @property
    def connected(self) -> bool:
        return self.zk.state == KazooState.CONNECTED

    @property
    def connection_thread_alive(self) -> bool:
        """Whether kazoo's connection thread runs, the one thread that ever connects again: a client that has
        lost it stays cut off for good while looking merely disconnected (a coordinator whose thread died
        retried leadership on a closed client for 6 minutes, answering on its port meanwhile)."""
        routine = self.zk._connection._connection_routine
        return routine is not None and routine.is_alive()

    def add_state_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(state)` on each change of the session's state. It runs on kazoo's connection thread and
        must return at once: a ZooKeeper request made there can block that thread on itself for good
        (`WatchedCollection._on_session_state`), so work that asks ZooKeeper is handed to a thread of its own."""
        self.zk.add_listener(listener)

    def _ensure_layout(self) -> None:
        for path in schema.CONTAINERS:
            self.zk.ensure_path(path, acl=self._acl)
        try:
            self.zk.create(schema.SCHEMA_VERSION_PATH, schema.encode(schema.SCHEMA_VERSION), acl=self._acl)
        except NodeExistsError:
            stored = self.read(schema.SCHEMA_VERSION_PATH)
            if stored > schema.SCHEMA_VERSION:
                raise ConfigError(f"the cluster's ZooKeeper schema is version {stored}, newer than this PVC "
                                  f"understands ({schema.SCHEMA_VERSION}); upgrade PVC") from None
        try:
            self.zk.create(schema.CONFIG, schema.encode(schema.DEFAULT_CLUSTER_CONFIG), acl=self._acl)
        except NodeExistsError:
            pass
        self._ensure_node_index_root()

    def _ensure_node_index_root(self) -> None:
        """Create the node index's root (`pvc.node_index`) complete when there is no VM yet, since every VM then
        gets its entry with its placement; with VMs it is left for `pvc.node_index.build`. A VM defined
        meanwhile creates its node's folder, and with it the root without the marker, first: the root is then
        found there and stays incomplete."""
        if self.zk.exists(schema.NODE_VMS) is not None:
            return
        try:
            self.zk.create(schema.NODE_VMS, schema.encode({"complete": not self.children(schema.VMS)}),
                           acl=self._acl)
        except NodeExistsError:
            pass

    def read(self, path: str) -> Any:
        """The decoded value at `path`, or None if there is no such znode."""
        try:
            data, _stat = self.zk.get(path)
        except NoNodeError:
            return None
        return schema.decode(data)

    def write(self, path: str, value: Any) -> None:
        """Set `path`, creating it (and its parents) if needed."""
        data = schema.encode(value)
        try:
            self.zk.set(path, data)
        except NoNodeError:
            try:
                self.zk.create(path, data, makepath=True)
            except NodeExistsError:
                self.zk.set(path, data)

    def children(self, path: str) -> list[str]:
        try:
            return sorted(self.zk.get_children(path))
        except NoNodeError:
            return []

    def transaction(self, leader_node: str | None = None) -> "Transaction":
        """A kazoo transaction; with `leader_node`, it commits only while that election node still exists."""
        return Transaction(self, leader_node)

    def lock(self, path: str, identifier: str) -> Lock:
        return self.zk.Lock(path, identifier)


class _Multi(KazooTransaction):
    """kazoo's multi request, keeping the zxid its answer carried: that of the transaction itself, which every
    znode it created has as its czxid and mzxid."""

    def __new__(cls, operations: list, client: KazooClient) -> "_Multi":
        multi = super().__new__(cls, operations)
        multi.client, multi.zxid = client, None
        return multi

    def deserialize(self, data: bytes, offset: int) -> list:
        """Called by kazoo's connection thread right after it took the answer's zxid from its header."""
        self.zxid = self.client.last_zxid
        return KazooTransaction.deserialize(data, offset)


class Transaction:
    """Collects operations and commits them atomically, turning a failed commit into a PVC error."""

    def __init__(self, store: Store, leader_node: str | None):
        self._store = store
        self._operations: list[tuple[str, str, Callable[[TransactionRequest], None]]] = []
        self._leader_node = leader_node
        self.zxid: int | None = None
        """Once committed, the ZooKeeper transaction id it was committed as."""
        if leader_node:
            self.check(leader_node, 0)

    def create(self, path: str, value: Any, ephemeral: bool = False) -> "Transaction":
        data = schema.encode(value)
        return self._add("create", path, lambda request: request.create(path, data, ephemeral=ephemeral))

    def set(self, path: str, value: Any, version: int = -1) -> "Transaction":
        data = schema.encode(value)
        return self._add("set", path, lambda request: request.set_data(path, data, version))

    def put(self, path: str, value: Any) -> "Transaction":
        """Set `path`, or create it if it does not exist now: for a key with one writer, which nobody else
        creates or deletes meanwhile."""
        return (self.set if self._store.zk.exists(path) else self.create)(path, value)

    def delete(self, path: str, version: int = -1) -> "Transaction":
        return self._add("delete", path, lambda request: request.delete(path, version))

    def delete_tree(self, paths: Iterable[str]) -> "Transaction":
        """Delete `paths`, given children first."""
        for path in paths:
            self.delete(path)
        return self

    def check(self, path: str, version: int) -> "Transaction":
        return self._add("check", path, lambda request: request.check(path, version))

    def _add(self, operation: str, path: str, add: Callable[[TransactionRequest], None]) -> "Transaction":
        self._operations.append((operation, path, add))
        return self

    def commit(self) -> None:
        """Commit; the first transaction of a call that carries a request id also records the id, as its first
        operation: ZooKeeper reports only the first operation of a transaction that fails, so a retry that
        collides with its own first attempt (a define that created the VM meanwhile) meets the recorded id,
        `request_ids.Repeated`, and is answered from that attempt rather than told the VM exists already."""
        operations = list(self._operations)
        pending = request_ids.take()
        if pending is not None:
            path, data = schema.request(pending[0]), schema.encode(pending[1])
            operations.insert(0, ("create", path, lambda request: request.create(path, data)))
        zk = self._store.zk
        request = zk.transaction()
        for _, _, add in operations:
            add(request)
        multi, answer = _Multi(request.operations, zk), zk.handler.async_result()
        zk._call(multi, answer)
        try:
            results = answer.get()
        except BaseException:
            request_ids.committed(pending, succeeded=False)
            raise
        failed = [(operation, path, result) for (operation, path, _), result in zip(operations, results)
                  if isinstance(result, Exception) and not isinstance(result, RolledBackError)]
        request_ids.committed(pending, succeeded=not failed)
        if not failed:
            self.zxid = multi.zxid
        for operation, path, result in failed:
            if pending is not None and path == schema.request(pending[0]) and isinstance(result, NodeExistsError):
                raise request_ids.Repeated(pending[0])
            raise self._explain(operation, path, result)

    def _explain(self, operation: str, path: str, error: Exception) -> Exception:
        if operation == "check" and path == self._leader_node:
            if path.startswith(schema.NODE_OWNERS + "/"):
                return Conflict("this daemon's ZooKeeper session no longer owns its node; the write was refused")
            return NotLeader("this coordinator is no longer the cluster leader; the write was refused")
        if isinstance(error, NodeExistsError):
            return AlreadyExists(f"{path} exists already")
        if isinstance(error, NoNodeError):
            return NotFound(f"{path} does not exist")
        if isinstance(error, (BadVersionError, NotEmptyError)):
            return Conflict(f"{path} changed concurrently; try again")
        return error
