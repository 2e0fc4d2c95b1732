"""The coordinator's watched view of ZooKeeper.

List and info calls read this in memory instead of walking ZooKeeper per request. Watches keep it current;
a coordinator that has just written calls `refresh` so that the caller's next read shows the write, without
waiting for the watch to fire. Values only move forward: an update older (by mzxid) than what is held is
dropped, so a late watch callback never undoes a refresh.

A collection reads its znodes with pipelined asynchronous calls, so loading 10,000 VMs (40,000 znodes) costs
a few round trips' worth of waiting, not 40,000 of them; many new children at once (a cold start) are read a
thousand znodes to a request and watched in bulk (`pvc.zk_bulk`).

Reads follow writes across coordinators: `ClusterCache.catch_up` returns once the cache shows every write
ZooKeeper committed before the call, whichever coordinator made it. It relies on two orderings: ZooKeeper
delivers a watch event before the answer to any later request of the same session, and kazoo hands watch
events and answers to two FIFO worker threads in the order they arrived. So after a `sync`, a marker queued
behind the watch events, then a few chained requests queued behind the reads those events started, mark the
point where the cache has applied them all: one sync and a few stats, never a walk of ZooKeeper. Each
collection counts its reads awaiting an answer (a read an answer starts is counted before that answer's is
let go), so when none is outstanding at the marker or after any stat, the cache has applied everything and
catch_up returns at once: at rest a read costs one sync and a hop to the event thread. Each request is a
round trip that a standalone ZooKeeper queues behind its pending disk flushes, which is what made lists
slower when catch_up always chained three stats after the sync. A listing of the VMs that waits out its gap
(`VMS_RELIST_GAP_S`) counts as a read on its way, and the marker starts it at once.

Each collection numbers its changes, so that a reader that comes back (a list's views, the leader's passes)
visits only the children that changed since it last looked (`WatchedCollection.changes`) instead of all of
them: at 10,000 VMs that walk, and the copy of every record it needed, was most of a list's time.
"""
import logging
import threading
import time
from typing import Any, Callable

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import Callback, ZnodeStat

from pvc import schema, zk_bulk
from pvc.errors import Unavailable
from pvc.store import Store

log = logging.getLogger(__name__)

OWN_VALUE = ""
"""The key under which a child's own znode value is held, beside its named sub-keys."""

BULK_FROM = 32
"""New children from which a listing reads them in bulk (`WatchedCollection._watch_many`)."""
BULK_READ = 1_000
"""Znodes per bulk read request."""
VMS_RELIST_GAP_S = 1.0
"""Least time between two listings of the VMs: each listing carries every name (10,000 at vSphere's size), and
listing again on each new VM was half of a coordinator's CPU during a burst of defines; at 0.2 s, the listings
of both coordinators still took a fifth of their CPU during a burst of 250 defines a second. A change after a
quiet second is listed at once, and a reader that catches up lists at once (`WatchedCollection.hurry`)."""
FORGOTTEN_KEPT = 10_000
"""How many forgotten children the change log keeps beyond the living ones; a reader that last looked before
the oldest dropped entry is told to look at everything again."""


class WatchedCollection:
    """Mirror of a parent znode's children: each child's value and the values of its `keys` sub-znodes.

    With an `index` (a znode whose children name some of the parent's), it mirrors only the children the index
    names, and those its owner asked for (`refresh`); one the index no longer names stays mirrored until its
    owner lets it go (`release`), so that a node daemon watches a VM leaving it until it is done with it.

    With a `relist_gap`, a change of the children is listed no sooner than that long after the last listing;
    the one waiting counts as a read on its way, so `idle` is False until it is done or hurried."""

    def __init__(self, store: Store, parent: str, child_path: Callable[[str], str], keys: tuple[str, ...] = (),
                 index: str | None = None, relist_gap: float = 0.0):
        self._store = store
        self._parent = parent
        self._index = index
        self._indexed: set[str] = set()
        self._child_path = child_path
        self._keys = (OWN_VALUE, *keys)
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._created: dict[str, int] = {}
        self._watchers: dict[tuple[str, str], Callable] = {}
        self._loading = threading.Condition()
        self._in_flight = 0
        self._resync_needed = False
        self._sequence = 0
        self._changed: dict[str, int] = {}
        self._horizon = -1
        self._relist_gap = relist_gap
        self._listed_at = float("-inf")
        self._listing_due = False

    def start(self, timeout: float = 300.0) -> None:
        """Load the whole collection (returns once it is loaded) and keep it current from then on."""
        self._store.add_state_listener(self._on_session_state)
        self._list_children()
        with self._loading:
            self._loading.wait_for(lambda: self._in_flight == 0, timeout)

    def idle(self) -> bool:
        """Whether no read of this collection is waiting for its answer: called from kazoo's watch-event
        thread, after the events it has handled, it says that every read those events started is applied."""
        with self._loading:
            return self._in_flight == 0

    def _read_started(self) -> None:
        with self._loading:
            self._in_flight += 1

    def _read_done(self) -> None:
        """Wake the loader only when the last read is answered: waking it on each of 40,000 answers cost a
        thread switch each during a cold load."""
        with self._loading:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._loading.notify_all()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._items)

    def get(self, name: str) -> dict[str, Any] | None:
        """A copy of one child's values by key (`OWN_VALUE` for its own), or None if it does not exist."""
        with self._lock:
            item = self._items.get(name)
            return dict(item) if item is not None else None

    def get_with_zxids(self, name: str) -> tuple[dict[str, Any] | None, dict[str, int]]:
        """Like `get`, with the zxid of the write that made each value (read together, so they match): what a
        reader acted on, for a later writer to check that nothing changed since."""
        with self._lock:
            item = self._items.get(name)
            if item is None:
                return None, {}
            return dict(item), {key: self._versions[(name, key)] for key in item if (name, key) in self._versions}

    def created(self, name: str) -> int | None:
        """The zxid that created child `name` (its znode's czxid), or None if it is not held."""
        with self._lock:
            return self._created.get(name)

    def changes(self, since: int) -> tuple[int, list[str] | None]:
        """The current change number, and the children changed (or forgotten) after change number `since`,
        oldest first; None instead of the list when the log no longer reaches back that far."""
        with self._lock:
            if since < self._horizon:
                return self._sequence, None
            changed = []
            for name in reversed(self._changed):
                if self._changed[name] <= since:
                    break
                changed.append(name)
            return self._sequence, changed[::-1]

    @property
    def through_index(self) -> bool:
        """Whether only the children an index names (and those asked for) are mirrored."""
        return self._index is not None

    def mirror_every_child(self) -> None:
        """Mirror every child of the parent, not only those the index names; only before `start`."""
        self._index = None

    def indexed(self) -> set[str]:
        """The children the index named when last listed (none without an index)."""
        with self._lock:
            return set(self._indexed) if self._index is not None else set()

    def release(self, name: str) -> bool:
        """Stop mirroring a child the index does not name (its watches end with their next event); False, and
        nothing changes, while the index names it or when there is no index."""
        with self._lock:
            if self._index is None or name in self._indexed:
                return False
            self._forget(name)
            return True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(item) for name, item in self._items.items()}

    def refresh(self, name: str) -> None:
        """Read one child now, so that a write just made is visible to the next read: its keys at once, each
        read one round trip (an exists, then a get, for each key in turn took ten). A key not watched yet is
        watched by the same read (a read for the value, then another for the watch, was a third of a define's
        requests)."""
        zk = self._store.zk
        fresh = self._new_watchers(name)
        pending = [(key, zk.get_async(self._path(name, key), watch=fresh.get(key))) for key in self._keys]
        for key, answer in pending:
            try:
                data, stat = answer.get()
            except NoNodeError:
                if key == OWN_VALUE:
                    self._drop(name)
                    return
                if key in fresh:
                    self._await_creation(name, key, fresh[key])
                continue
            self._apply(name, key, data, stat)

    def written(self, name: str, values: dict[str, Any], zxid: int, created: bool = True) -> None:
        """Show a child this process has just created (or, not `created`, changed), from the values it wrote (by
        key) and the id of the transaction that wrote them, and watch its keys from that transaction on: what
        `refresh` would read back, without reading (a define's refresh was four of its requests; this is at most
        one). A changed child this process does not watch yet is read instead: its other keys are not known."""
        if not created:
            with self._lock:
                czxid = self._created.get(name)
                watched = czxid is not None and all((name, key) in self._watchers for key in self._keys)
            if not watched:
                self.refresh(name)
                return
        fresh = self._new_watchers(name)
        for key, value in values.items():
            self._hold(name, key, schema.decode(schema.encode(value)), zxid, zxid if created else czxid)
        self._set_watches(zxid, [(self._path(name, key), key in values, watcher) for key, watcher in fresh.items()])

    def _new_watchers(self, name: str) -> dict[str, Callable]:
        """A watcher for each key of `name` that has none yet, entered as its watcher."""
        with self._lock:
            fresh = {key: self._watcher(name, key) for key in self._keys if (name, key) not in self._watchers}
            self._watchers.update({(name, key): watcher for key, watcher in fresh.items()})
        return fresh

    def _set_watches(self, zxid: int, watches: list[tuple[str, bool, Callable]]) -> None:
        """Watch each (path, present, watcher) from `zxid` on (`pvc.zk_bulk.watch`)."""
        def on_watched(result) -> None:
            try:
                result.get()
            except KazooException:
                self._resync_needed = True
            finally:
                self._read_done()

        for sent in zk_bulk.watch(self._store.zk, zxid, watches):
            self._read_started()
            sent.rawlink(on_watched)

    def _path(self, name: str, key: str) -> str:
        base = self._child_path(name)
        return base if key == OWN_VALUE else f"{base}/{key}"

    def _on_children_changed(self, _event) -> None:
        wait = self._listed_at + self._relist_gap - time.monotonic()
        if wait <= 0:
            self._list_children()
            return
        self._read_started()
        with self._lock:
            self._listing_due = True
        timer = threading.Timer(wait, self.hurry)
        timer.daemon = True
        timer.start()

    def hurry(self) -> None:
        """List now the children whose listing waits out the gap, if one does."""
        with self._lock:
            due, self._listing_due = self._listing_due, False
        if due:
            if not self._store.stopping:
                self._list_children()
            self._read_done()

    def _list_children(self) -> None:
        """List the children and watch for the next change, asynchronously, so that the listing's answer
        keeps its place among the other reads (kazoo's ChildrenWatch lists from a thread of its own)."""
        self._read_started()
        self._listed_at = time.monotonic()

        def on_listed(result) -> None:
            try:
                children, stat = result.get()
                self._on_children(children, stat.pzxid)
            except KazooException as error:
                log.debug("listing %s failed (%s); it is listed again on reconnection", self._parent, error)
                self._resync_needed = True
            finally:
                self._read_done()

        self._store.zk.get_children_async(self._index or self._parent, watch=self._on_children_changed,
                                          include_data=True).rawlink(on_listed)

    def _on_children(self, children: list[str], listed_zxid: int) -> None:
        """Forget the children this listing lacks, except one created after it was taken: a `refresh` may
        have read a child that a listing answered a moment earlier does not have yet. Through an index, a
        child leaves only when released. Only children not held yet are watched here (one that is held has its
        watches, or is being given them by the refresh that read it): each define lists all 10,000 VMs again,
        and visiting every one of them cost a define more than its own writes."""
        present = set(children)
        with self._lock:
            self._indexed = present
            if self._index is None:
                for gone in set(self._items) - present:
                    if self._created.get(gone, -1) <= listed_zxid:
                        self._forget(gone)
            new = present.difference(self._items)
        if len(new) >= BULK_FROM:
            self._watch_many(sorted(new))
        else:
            for name in new:
                self._watch(name)

    def _watch(self, name: str) -> None:
        for key in self._keys:
            with self._lock:
                if (name, key) in self._watchers:
                    continue
                self._items.setdefault(name, {})
                watcher = self._watchers[(name, key)] = self._watcher(name, key)
            self._fetch(name, key, watcher)

    def _watch_many(self, names: list[str]) -> None:
        """Watch many children at once: their znodes read `BULK_READ` to a request, then watched from the zxid
        each request was answered at (`pvc.zk_bulk`). A cold start's 40,000 separate reads took 4-5 s of CPU
        in kazoo alone."""
        entries = []
        with self._lock:
            for name in names:
                self._items.setdefault(name, {})
                for key in self._keys:
                    if (name, key) not in self._watchers:
                        watcher = self._watchers[(name, key)] = self._watcher(name, key)
                        entries.append((name, key, watcher))
        self._read_many(entries)

    def _read_many(self, entries: list[tuple[str, str, Callable]]) -> None:
        """Read each (name, key, watcher) and leave its watch, `BULK_READ` to a request."""
        for first in range(0, len(entries), BULK_READ):
            self._read_batch(entries[first:first + BULK_READ])

    def _read_batch(self, entries: list[tuple[str, str, Callable]]) -> None:
        if self._store.stopping:
            return
        zk = self._store.zk
        paths = [self._path(name, key) for name, key, _watcher in entries]
        self._read_started()
        answer, request = zk_bulk.read(zk, paths)

        def on_read(result) -> None:
            try:
                try:
                    values = result.get()
                except KazooException as error:
                    log.debug("a bulk read of %s failed (%s); its znodes are read one by one", self._parent, error)
                    values = [error] * len(entries)
                watches = []
                for (name, key, watcher), path, value in zip(entries, paths, values):
                    with self._lock:
                        if self._watchers.get((name, key)) is not watcher:
                            continue
                    if isinstance(value, NoNodeError) and key == OWN_VALUE:
                        self._drop(name)
                    elif isinstance(value, NoNodeError):
                        watches.append((path, False, watcher))
                    elif isinstance(value, Exception):
                        self._fetch(name, key, watcher)
                    else:
                        self._apply(name, key, *value)
                        watches.append((path, True, watcher))
                self._set_watches(request.answered_at, watches)
            except KazooException as error:
                log.debug("watching %d znodes of %s failed (%s); they are read again on reconnection", len(paths),
                          self._parent, error)
                self._resync_needed = True
            finally:
                self._read_done()

        answer.rawlink(on_read)

    def _watcher(self, name: str, key: str) -> Callable:
        """The one watch function of a znode; kazoo keeps a set of them per path, so reusing it means a
        change triggers one read however many times the watch was set."""
        def on_event(_event) -> None:
            with self._lock:
                watcher = self._watchers.get((name, key))
            if watcher is not None:
                self._fetch(name, key, watcher)
        return on_event

    def _fetch(self, name: str, key: str, watcher: Callable) -> None:
        """Read a znode and leave a watch on it, or while it is absent, on its creation."""
        if self._store.stopping:
            return
        path = self._path(name, key)
        zk = self._store.zk
        self._read_started()

        def on_data(result) -> None:
            try:
                data, stat = result.get()
                with self._lock:
                    current = self._watchers.get((name, key)) is watcher
                if current:
                    self._apply(name, key, data, stat)
            except NoNodeError:
                if key == OWN_VALUE:
                    self._drop(name)
                else:
                    self._await_creation(name, key, watcher)
            except KazooException as error:
                log.debug("reading %s failed (%s); it is read again on reconnection", path, error)
                self._resync_needed = True
            finally:
                self._read_done()

        zk.get_async(path, watch=watcher).rawlink(on_data)

    def _await_creation(self, name: str, key: str, watcher: Callable) -> None:
        """Watch an absent znode for its creation, and read it (`_fetch`) once it exists."""
        if self._store.stopping:
            return
        self._read_started()

        def on_exists(result) -> None:
            try:
                if result.get() is not None:
                    self._fetch(name, key, watcher)
            except KazooException:
                self._resync_needed = True
            finally:
                self._read_done()

        self._store.zk.exists_async(self._path(name, key), watch=watcher).rawlink(on_exists)

    def _on_session_state(self, state: str) -> None:
        """A lost session loses its watches, and a read cut off by a lost connection never completes: read
        everything again (in bulk) when connected again, from a thread of its own. kazoo calls this on its
        connection thread, which also drains the pipe each request pokes; thousands of reads sent from here
        filled that pipe, and the thread blocked writing to itself: every coordinator hung for good after a
        ZooKeeper quorum loss (fault checker, lab family)."""
        if state != KazooState.CONNECTED:
            self._resync_needed = True
        elif self._resync_needed:
            self._resync_needed = False
            self._store.zk.handler.spawn(self._resync)

    def _resync(self) -> None:
        self._list_children()
        with self._lock:
            watched = [(name, key, watcher) for (name, key), watcher in self._watchers.items()]
        self._read_many(watched)

    def _apply(self, name: str, key: str, data: bytes | None, stat: ZnodeStat) -> None:
        self._hold(name, key, schema.decode(data), stat.mzxid, stat.czxid)

    def _hold(self, name: str, key: str, value: Any, mzxid: int, czxid: int) -> None:
        with self._lock:
            held = self._versions.get((name, key), -1)
            if mzxid < held:
                return
            self._versions[(name, key)] = mzxid
            if key == OWN_VALUE:
                self._created[name] = czxid
            self._items.setdefault(name, {})[key] = value
            if mzxid > held:
                self._touch(name)

    def _touch(self, name: str) -> None:
        """Move `name` to the end of the change log (the caller holds the lock)."""
        self._sequence += 1
        self._changed.pop(name, None)
        self._changed[name] = self._sequence

    def _drop(self, name: str) -> None:
        with self._lock:
            self._forget(name)

    def _forget(self, name: str) -> None:
        if self._items.pop(name, None) is not None:
            self._touch(name)
        self._created.pop(name, None)
        for key in self._keys:
            self._versions.pop((name, key), None)
            self._watchers.pop((name, key), None)
        while len(self._changed) > len(self._items) + FORGOTTEN_KEPT:
            oldest = next(iter(self._changed))
            self._horizon = self._changed.pop(oldest)


class WatchedValue:
    """Mirror of a single znode's value."""

    def __init__(self, store: Store, path: str, default: Any = None):
        self._store = store
        self._path = path
        self._default = default
        self._lock = threading.Lock()
        self._value = default
        self._version = -1

    def start(self) -> None:
        self._store.zk.DataWatch(self._path, self._on_data)

    def get(self) -> Any:
        with self._lock:
            return self._value

    def refresh(self) -> None:
        data, stat = self._store.zk.get(self._path)
        self._on_data(data, stat)

    def _on_data(self, data: bytes | None, stat: ZnodeStat | None) -> None:
        with self._lock:
            if stat is None:
                self._value, self._version = self._default, -1
            elif stat.mzxid >= self._version:
                self._value, self._version = schema.decode(data), stat.mzxid


class ClusterCache:
    """Everything a coordinator serves reads from."""

    CATCH_UP_ROUNDS = 3
    """Requests chained after the marker when a read is still on its way: a listing's answer starts the reads
    of new children, whose answer may start a wait for a key not created yet, whose answer starts its read."""

    def __init__(self, store: Store):
        self._store = store
        self.config = WatchedValue(store, schema.CONFIG, dict(schema.DEFAULT_CLUSTER_CONFIG))
        self.nodes = WatchedCollection(store, schema.NODES, schema.node, schema.NODE_KEYS)
        self.vms = WatchedCollection(store, schema.VMS, schema.vm, schema.VM_KEYS, relist_gap=VMS_RELIST_GAP_S)
        self.faults = WatchedCollection(store, schema.FAULTS, schema.fault, schema.FAULT_KEYS)
        self.tasks = WatchedCollection(store, schema.TASKS, schema.task)
        self._collections = (self.nodes, self.vms, self.faults, self.tasks)

    def start(self) -> None:
        self.config.start()
        self.nodes.start()
        self.vms.start()
        self.faults.start()
        self.tasks.start()

    def catch_up(self, timeout: float = 10.0) -> None:
        """Return once the cache shows every write committed before this call, from any coordinator."""
        zk = self._store.zk
        caught_up = threading.Event()

        def chain(rounds: int) -> None:
            if rounds == self.CATCH_UP_ROUNDS:
                for collection in self._collections:
                    collection.hurry()
            if rounds == 0 or all(collection.idle() for collection in self._collections):
                caught_up.set()
            else:
                zk.exists_async(schema.ROOT).rawlink(lambda _answer: chain(rounds - 1))

        try:
            zk.sync(schema.ROOT)
        except KazooException as error:
            raise Unavailable(f"ZooKeeper did not answer a sync: {error!r}") from None
        zk.handler.dispatch_callback(Callback("watch", chain, (self.CATCH_UP_ROUNDS,)))
        if not caught_up.wait(timeout):
            raise Unavailable(f"the coordinator's view of ZooKeeper did not catch up within {timeout:g} s")


class Views:
    """Views built from a collection's children, rebuilt only for the children that changed since the last
    call, so that listing 10,000 VMs neither copies every record nor builds every view again."""

    def __init__(self, collection: WatchedCollection, build: Callable[[str, dict[str, Any]], Any | None]):
        self._collection = collection
        self._build = build
        self._lock = threading.Lock()
        self._seen = -1
        self._views: dict[str, Any] = {}
        self._ordered: list[Any] | None = None

    def current(self) -> list[Any]:
        """Every child's view (children whose view is None left out), by name; the caller must not change
        the list or the views."""
        with self._lock:
            if self._update() or self._ordered is None:
                self._ordered = [self._views[name] for name in sorted(self._views)]
            return self._ordered

    def get(self, name: str) -> Any | None:
        """One child's view, or None; the caller must not change it."""
        with self._lock:
            if self._update():
                self._ordered = None
            return self._views.get(name)

    def _update(self) -> bool:
        """Rebuild the views of the children changed since the last call; whether any was."""
        sequence, changed = self._collection.changes(self._seen)
        if changed is None:
            changed = set(self._views) | set(self._collection.names())
        for name in changed:
            raw = self._collection.get(name)
            view = self._build(name, raw) if raw is not None else None
            if view is None:
                self._views.pop(name, None)
            else:
                self._views[name] = view
        self._seen = sequence
        return bool(changed)
