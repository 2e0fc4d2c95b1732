"""Leadership among coordinators, through kazoo's lock recipe.

Leadership is the ZooKeeper session, not a belief: the moment the session is suspended or lost, `is_leader`
is False and the leader's loops pause; every leader write is a transaction that checks the election node
(`leader_node`), so a coordinator that lost its session cannot write as leader even if it has not noticed.

A suspended session is not a lost one: a link cut for less than the session timeout comes back with the same
session and the same election node, so the leader resumes rather than stepping down. Whatever ends an attempt,
the next one first removes the election nodes its own session still holds: one left behind would stay first in
line, alive with the session, and every contender, this one included, would wait behind it for ever.

A graceful handoff (`schema.LEADER_HANDOFF`, `pvc node primary|secondary`) moves leadership to one named
coordinator, or away from one, without waiting for a session to expire: the leader finishes its tick, records
that it lets go (its last write as leader, checked against its election node) and releases its lock; until the
handoff is settled, no coordinator other than its target contends (one already queued that wins all the same
lets go at once, before acting), and the one it wants to leave waits; the new leader marks the request taken as
its first write. ZooKeeper orders these writes, so there is never a moment with two leaders acting. A request no
one settles within `schema.HANDOFF_TIMEOUT_S` is void.
"""
import logging
import threading
import time
from typing import Callable

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, LockTimeout, NoNodeError

from pvc import schema
from pvc.store import Store

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, store: Store, identifier: str, tick: float, on_tick: Callable[[str], None]):
        self._store = store
        self._identifier = identifier
        self._tick = tick
        self._on_tick = on_tick
        self._session_ok = threading.Event()
        self._session_ok.set()
        self._stopping = threading.Event()
        self._lock = store.lock(schema.ELECTION, identifier)
        """The lock of the current attempt; a new one for each, as a lock lost with its session is spent."""
        self._leader_node: str | None = None
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        store.add_state_listener(self._on_session_state)

    @property
    def leader_node(self) -> str | None:
        """The election znode proving leadership, while this coordinator holds it."""
        return self._leader_node if self._session_ok.is_set() else None

    @property
    def is_leader(self) -> bool:
        return self.leader_node is not None

    def current_leader(self) -> str | None:
        """The identifier of whichever coordinator leads now, read from the election."""
        try:
            contenders = self._lock.contenders()
        except KazooException:
            return None
        return contenders[0] if contenders else None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Step down. Closing the session (`Store.stop`) removes the election node in any case, so nothing
        here waits on a ZooKeeper that may be gone."""
        self._stopping.set()
        self._session_ok.set()
        self._lock.cancel()
        if self._store.connected:
            try:
                self._lock.release()
            except KazooException:
                pass
        self._thread.join(timeout=2)

    def _on_session_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._session_ok.set()
        else:
            if self._leader_node:
                log.warning("ZooKeeper session %s: pausing leader duties", state.lower())
            self._session_ok.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._lead_while_elected()
            except Exception as error:
                if not self._stopping.is_set():
                    log.warning("leadership attempt failed (%s); retrying", error)
                    time.sleep(self._tick)

    def _lead_while_elected(self) -> None:
        if self._stopping.is_set():
            return
        self._remove_own_leftovers()
        if not self._may_contend():
            self._stopping.wait(self._tick)
            return
        self._lock = self._store.lock(schema.ELECTION, self._identifier)
        try:
            if not self._lock.acquire(timeout=max(self._tick, 0.5)):
                return
        except LockTimeout:
            return  # kazoo withdrew the attempt; look at any handoff again before the next
        if self._stopping.is_set():
            return
        node = f"{self._lock.path}/{self._lock.node}"
        if self._handoff_elsewhere():
            log.info("coordinator %s won the election during a handoff to another: letting go", self._identifier)
            self._lock.release()
            return
        self._leader_node = node
        log.info("coordinator %s is now the cluster leader", self._identifier)
        try:
            self._settle_handoff(node)
            while not self._stopping.is_set():
                self._session_ok.wait()
                if self._stopping.is_set():
                    break
                elected = self._still_elected(node)
                if elected is False:
                    break
                if elected:
                    try:
                        self._on_tick(node)
                    except Exception:
                        log.exception("leader loop failed")
                if elected and self._handoff_elsewhere():
                    self._let_go(node)
                    break
                self._stopping.wait(self._tick)
        finally:
            self._leader_node = None
            log.info("coordinator %s is no longer the leader", self._identifier)
            if self._store.connected:
                try:
                    self._lock.release()
                except KazooException:
                    pass

    # -- graceful handoff ---------------------------------------------------------------------------------

    def _handoff(self) -> dict | None:
        try:
            request = self._store.read(schema.LEADER_HANDOFF)
        except KazooException:
            return None
        if not request or request.get("taken_by") or \
                time.time() - request.get("requested", 0) > schema.HANDOFF_TIMEOUT_S:
            return None
        return request

    def _handoff_elsewhere(self) -> bool:
        """Whether a pending handoff wants leadership somewhere other than here."""
        request = self._handoff()
        if request is None:
            return False
        if request.get("to"):
            return request["to"] != self._identifier
        return request.get("away_from") == self._identifier

    def _may_contend(self) -> bool:
        """Not while a pending handoff wants another coordinator (or leadership away from this one)."""
        return not self._handoff_elsewhere()

    def _let_go(self, node: str) -> None:
        """Record, as this leader's last write, that it lets go; the caller then releases the lock."""
        request = self._handoff() or {}
        try:
            self._store.transaction(node).set(schema.LEADER_HANDOFF, {
                **request, "released_by": self._identifier, "released": time.time()}).commit()
        except Exception as error:
            log.warning("handoff: could not record letting go (%s); releasing all the same", error)
        log.info("coordinator %s hands leadership over (%s)", self._identifier,
                 f"to {request['to']}" if request.get("to") else "away from it")

    def _settle_handoff(self, node: str) -> None:
        """As the new leader's first write, mark the handoff that made it leader taken (with the ZooKeeper
        transaction id of the old leader's last write, which ZooKeeper ordered before this one), so that the
        others contend again."""
        try:
            data, stat = self._store.zk.get(schema.LEADER_HANDOFF)
        except NoNodeError:
            return
        request = schema.decode(data) or {}
        if request.get("taken_by") or not (request.get("released_by") or request.get("to") == self._identifier):
            return
        self._store.transaction(node).set(schema.LEADER_HANDOFF, {
            **request, "taken_by": self._identifier, "taken": time.time(), "released_zxid": stat.mzxid},
            version=stat.version).commit()
        log.info("coordinator %s took over leadership from %s", self._identifier,
                 request.get("released_by") or "its previous leader")

    def _still_elected(self, node: str) -> bool | None:
        """None when ZooKeeper could not be asked: the session may come back with the node still held."""
        try:
            return self._store.zk.exists(node) is not None
        except KazooException:
            return None

    def _remove_own_leftovers(self) -> None:
        zk = self._store.zk
        session = zk.client_id[0] if zk.client_id else None
        try:
            children = zk.get_children(schema.ELECTION)
        except NoNodeError:
            return
        for child in children:
            path = schema.election_contender(child)
            stat = zk.exists(path)
            if stat is not None and session is not None and stat.ephemeralOwner == session:
                log.info("removing election node %s left by an earlier attempt of this coordinator", child)
                try:
                    zk.delete(path, version=stat.version)
                except NoNodeError:
                    pass
