"""Leadership among coordinators, through kazoo's lock recipe.

Leadership is the ZooKeeper session, not a belief: the moment the session is suspended or lost, `is_leader`
is False and the leader's loops pause; every leader write is a transaction that checks the election node
(`leader_node`), so a coordinator that lost its session cannot write as leader even if it has not noticed.

A suspended session is not a lost one: a link cut for less than the session timeout comes back with the same
session and the same election node, so the leader resumes rather than stepping down. Whatever ends an attempt,
the next one first removes the election nodes its own session still holds: one left behind would stay first in
line, alive with the session, and every contender, this one included, would wait behind it for ever.
"""
import logging
import threading
import time
from typing import Callable

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NoNodeError

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
        self._lock = self._store.lock(schema.ELECTION, self._identifier)
        self._lock.acquire()
        if self._stopping.is_set():
            return
        node = f"{self._lock.path}/{self._lock.node}"
        self._leader_node = node
        log.info("coordinator %s is now the cluster leader", self._identifier)
        try:
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
                self._stopping.wait(self._tick)
        finally:
            self._leader_node = None
            log.info("coordinator %s is no longer the leader", self._identifier)
            if self._store.connected:
                try:
                    self._lock.release()
                except KazooException:
                    pass

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
