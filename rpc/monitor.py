"""Watching node keepalives on the watcher's own clock.

A node's wall clock is never compared with a coordinator's. Every keepalive a node writes changes its
keepalive znode (a new mzxid, whatever the node put in it); a coordinator notes on its own monotonic clock
when it first saw each change, and a node's silence is the time since then. A node whose clock runs an hour
ahead or behind looks exactly like any other.

`NodeMonitor` is the leader's: a node in ``run``, or in ``init`` (registered, and so maybe running VMs it
converged to, but not yet ``run``: a daemon dying there must not escape fencing), silent for
`fence_intervals` × `keepalive_interval` is marked ``dead``, both read from the cluster config with the
node's overrides (`pvc.fencing_settings`), the numbers the node's own self-fence is checked against. While a lowered interval has yet to reach a node, the
interval it says it uses (its record) is the longer one and counts. It reads each keepalive's version from ZooKeeper itself on every leader tick, and forgets
what it saw whenever it may have missed something (a new term of leadership, or its ZooKeeper connection
suspended or lost), so each node's silence is measured afresh from then. After its own connection came back,
a node it has not heard from since has its deadline and a grace besides (`fencing_settings.FencingSettings.
reconnect_grace_s`): whatever cut the leader off (most often the ensemble itself: a restart, an election) cut
the nodes off too, and each comes back on its own, to a server that may still be loading its data, some with a
session that expired meanwhile. A cut-off node's self-fence gives itself the same grace after an outage, and
no more (`pvc.node.self_fence`). The write that marks a node dead
checks the leader's election node, the node's daemon state and the keepalive version it judged: a keepalive
arriving meanwhile, or a deposed leader, makes it fail.

`KeepaliveWatch` is every coordinator's, for what `node list` and `node info` show: seconds since this
coordinator saw each node's keepalive change, kept current by watches.
"""
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import ZnodeStat

from pvc import fencing_settings, schema
from pvc.cache import OWN_VALUE, ClusterCache
from pvc.errors import PVCError
from pvc.store import Store

log = logging.getLogger(__name__)

DEFAULT_KEEPALIVE_INTERVAL = 5
WATCHED_STATES = ("init", "run")
"""The daemon states in which a node's silence makes it dead."""


class KeepaliveClock:
    """When this process last saw each node's keepalive change, on its own monotonic clock.

    A change is a newer mzxid of the keepalive znode; `None` stands for "no keepalive znode". A node seen for
    the first time starts its clock at that moment."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, float]] = {}

    def observe(self, name: str, mzxid: int | None) -> bool:
        """Note the keepalive version of `name`; True when it changed since an earlier observation."""
        version = -1 if mzxid is None else mzxid
        with self._lock:
            previous = self._seen.get(name)
            if previous is None or version > previous[0]:
                self._seen[name] = (version, self._clock())
            return previous is not None and version > previous[0]

    def silence(self, name: str) -> float | None:
        """Seconds since the keepalive of `name` was last seen to change, or None if it was never seen."""
        with self._lock:
            seen = self._seen.get(name)
        return None if seen is None else self._clock() - seen[1]

    def forget(self, name: str) -> None:
        with self._lock:
            self._seen.pop(name, None)

    def restart(self) -> None:
        """Forget everything: every node's clock starts again at its next observation."""
        with self._lock:
            self._seen.clear()


class NodeMonitor:
    """The leader's failure detector (see the module docstring)."""

    def __init__(self, store: Store, cache: ClusterCache, fence_intervals: int,
                 clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._cache = cache
        self._fence_intervals = fence_intervals
        self._keepalives = KeepaliveClock(clock)
        self._term: str | None = None
        """The election node under which the current observations were made."""
        self._interrupted = False
        self._unheard: set[str] = set()
        """Nodes not heard from since this leader regained ZooKeeper: each has a grace besides its deadline."""
        store.add_state_listener(self._on_session_state)

    def _on_session_state(self, state: str) -> None:
        if state != KazooState.CONNECTED:
            self._interrupted = True

    def check(self, leader_node: str) -> list[str]:
        """One leader tick: observe the keepalive of every node in a `WATCHED_STATES` state and mark dead the
        ones silent too long. Returns the nodes marked dead."""
        running = {name: raw for name, raw in self._cache.nodes.snapshot().items()
                   if raw.get(OWN_VALUE) is not None and raw.get("daemon_state") in WATCHED_STATES}
        if leader_node != self._term or self._interrupted:
            reconnected = self._interrupted and leader_node == self._term
            self._unheard = set(running) if reconnected else set()
            self._interrupted = False
            self._term = leader_node
            self._keepalives.restart()
            log.info("watching node keepalives afresh: each node's silence is measured from now%s",
                     " (with a reconnection grace until it is heard from again)" if reconnected else "")
        for name in set(self._cache.nodes.names()) - set(running):
            self._keepalives.forget(name)
        try:
            stats = self._keepalive_stats(sorted(running))
        except KazooException as error:
            log.warning("keepalives not read this tick: %s", error)
            return []
        for name, stat in stats.items():
            if self._keepalives.observe(name, stat.mzxid if stat else None):
                self._unheard.discard(name)
        self._unheard &= set(running)
        marked = []
        for name, raw in sorted(running.items()):
            silence = self._keepalives.silence(name)
            settings = self._settings(name, raw)
            deadline = settings.fence_deadline_s + (settings.reconnect_grace_s if name in self._unheard else 0)
            if silence is not None and silence > deadline and self._mark_dead(name, leader_node, stats[name]):
                log.warning("node %s silent for %.1f s (deadline %g s): marked dead", name, silence, deadline)
                marked.append(name)
        return marked

    def half_silent(self) -> set[str]:
        """The watched nodes silent for more than half their deadline: about to look dead too."""
        return {name for name, raw in self._cache.nodes.snapshot().items()
                if raw.get("daemon_state") in WATCHED_STATES
                and (self._keepalives.silence(name) or 0) > self.deadline(name, raw) / 2}

    def deadline(self, name: str, raw: dict[str, Any]) -> float:
        """Seconds of silence after which a node is dead (`_settings`)."""
        return self._settings(name, raw).fence_deadline_s

    def _settings(self, name: str, raw: dict[str, Any]) -> fencing_settings.FencingSettings:
        """The fencing settings of `name` as the cluster config sets them (this coordinator's own values where
        it sets none), the keepalive interval never shorter than the one the node says it uses."""
        used = (raw.get(OWN_VALUE) or {}).get("keepalive_interval") or DEFAULT_KEEPALIVE_INTERVAL
        settings = fencing_settings.resolve(self._cache.config.get(), name,
                                            {"fence_intervals": self._fence_intervals, "keepalive_interval": used})
        return dataclasses.replace(settings, keepalive_interval=max(settings.keepalive_interval, used))

    def _keepalive_stats(self, names: list[str]) -> dict[str, ZnodeStat | None]:
        """Each node's keepalive znode stat, read now from ZooKeeper (not the cache), in one pipelined pass."""
        pending = {name: self._store.zk.exists_async(schema.node_key(name, "keepalive")) for name in names}
        return {name: result.get() for name, result in pending.items()}

    def _mark_dead(self, name: str, leader_node: str, keepalive: ZnodeStat | None) -> bool:
        """Mark `name` dead if it is still ``init`` or ``run`` and its keepalive is still the one judged
        silent."""
        state_path = schema.node_key(name, "daemon_state")
        try:
            data, state_stat = self._store.zk.get(state_path)
        except NoNodeError:
            return False
        if schema.decode(data) not in WATCHED_STATES:
            return False
        transaction = self._store.transaction(leader_node)
        if keepalive is not None:
            transaction.check(schema.node_key(name, "keepalive"), keepalive.version)
        transaction.set(state_path, "dead", version=state_stat.version)
        try:
            transaction.commit()
        except PVCError as error:
            log.info("node %s not marked dead: %s", name, error)
            return False
        finally:
            self._cache.nodes.refresh(name)
        self._keepalives.forget(name)
        return True


class KeepaliveWatch:
    """Seconds since this coordinator saw each node's keepalive change, for the node views.

    One data watch per node's keepalive znode, added as nodes appear; kazoo reads each again after a lost
    connection, so a change made meanwhile counts from when it is seen."""

    def __init__(self, store: Store):
        self._store = store
        self._keepalives = KeepaliveClock()
        self._lock = threading.Lock()
        self._watched: set[str] = set()

    def start(self) -> None:
        self._store.zk.ChildrenWatch(schema.NODES, self._on_nodes)

    def age(self, name: str) -> float | None:
        """Seconds since this coordinator saw the keepalive of `name` change; None before it saw one."""
        silence = self._keepalives.silence(name)
        return None if silence is None else round(silence, 1)

    def _on_nodes(self, names: list[str]) -> None:
        with self._lock:
            added = set(names) - self._watched
            for gone in self._watched - set(names):
                self._keepalives.forget(gone)
            self._watched = set(names)
        for name in sorted(added):
            self._store.zk.handler.spawn(self._watch, name)

    def _watch(self, name: str) -> None:
        def on_change(_data: bytes | None, stat: ZnodeStat | None, _event: Any = None) -> bool | None:
            with self._lock:
                if name not in self._watched:
                    return False
            if stat is not None:
                self._keepalives.observe(name, stat.mzxid)
            return None
        self._store.zk.DataWatch(schema.node_key(name, "keepalive"), on_change)
