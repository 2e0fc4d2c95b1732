"""Changing a VM: record what is wanted in ZooKeeper, then ask the nodes concerned to carry it out.

The record comes first and is the whole truth; the calls to node agents only make convergence immediate
(each node also converges on its own every keepalive interval). Commands on one VM are serialised by a
ZooKeeper lock, so their read-modify-write of the VM's record never interleaves.

Every coordinator write of a VM's desired state (a command's, the leader's flush, ready and recovery, the
leader recording a node's request) goes through `write_desired`, with the desired state read in ZooKeeper
(`read_desired`; commands and tasks read it under the VM's lock): the write checks the version of each part
read, so it loses (`Superseded`) to any change made since, such as a command answered while a task was
deciding. An acknowledged command is never overwritten by a decision taken from an older view.
"""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from kazoo.exceptions import LockTimeout, NoNodeError, NotEmptyError

from pvc import models, node_index, schema
from pvc.cache import OWN_VALUE
from pvc.errors import Busy, Conflict, NotFound, OperationFailed, PVCError, Unavailable
from pvc.rpc.context import CoordinatorContext
from pvc.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT = 3.0
"""Seconds a command waits for a VM's lock; shorter than a client's call timeout, so the caller hears "busy"."""
DECIDE_ATTEMPTS = 3
WAIT_RECHECK_S = 0.5
"""A waiting command is woken by ZooKeeper watches on the VM's status and placement; it also looks again this
often, for anything else its outcome depends on (the leader's own record of a node's request)."""
DESIRED_PARTS = ("spec", "state", "placement")


class Superseded(Conflict):
    """A write of desired state lost: some part of the VM's desired state changed after it was read."""


@dataclass(frozen=True)
class Desired:
    """A VM's desired state as ZooKeeper held it when read (under the VM's lock), with each part's version, so
    that a write based on it loses to any change made since."""

    name: str
    spec: dict[str, Any]
    state: str
    placement: dict[str, Any]
    versions: Mapping[str, int]
    """The version of each of `DESIRED_PARTS` as read."""
    zxids: Mapping[str, int] = field(default_factory=dict)
    """The zxid of the write that made each part, as a node's request names it."""


class VMControl:
    def __init__(self, context: CoordinatorContext, background_workers: int = 8):
        self._context = context
        self._background = ThreadPoolExecutor(background_workers, thread_name_prefix="vm-converge")

    # -- reading ---------------------------------------------------------------------------------------

    def raw(self, name: str, caught_up: bool = False) -> dict[str, Any]:
        """The VM as the cache holds it, once the cache shows every earlier write (unless the caller has just
        read it from ZooKeeper itself: `caught_up`)."""
        schema.check_name("VM", name)
        if not caught_up:
            self._context.cache.catch_up()
        raw = self._context.cache.vms.get(name)
        if raw is None or raw.get(OWN_VALUE) is None:
            raise NotFound(f"no VM named '{name}'")
        return raw

    def view(self, name: str) -> dict[str, Any]:
        return models.vm_view(name, self.raw(name))

    # -- locking ---------------------------------------------------------------------------------------

    @contextmanager
    def locked(self, name: str, removing: bool = False) -> Iterator[None]:
        """Hold the VM's lock, or raise `Busy` if another command keeps it for `LOCK_TIMEOUT` seconds.

        An unknown VM is `NotFound` before any lock znode is made for it. A VM whose removal is recorded
        (state ``remove``, read in ZooKeeper itself under the lock) takes no other command than a removal
        (`removing`): `Conflict`."""
        self.raw(name)
        lock = self._context.store.lock(schema.vm_lock(name), self._context.name)
        try:
            acquired = lock.acquire(timeout=LOCK_TIMEOUT)
        except LockTimeout:
            acquired = False
        if not acquired:
            raise Busy(f"VM '{name}' is busy with another command; try again in a moment")
        try:
            if not removing:
                self._check_not_removing(name)
            yield
        except Superseded as error:
            raise Busy(f"VM '{name}' changed while this command ran ({error}); try again") from None
        finally:
            lock.release()

    def decided(self, name: str, decide: Callable[[], T], removing: bool = False) -> T:
        """Run `decide` (read with `desired`, check, `record`) under the VM's lock, and run it again if its write
        finds the VM changed since its read. Under the lock that change was no command's but the leader's or a
        node's (a finished move recorded as ``start``, a node's request): the command decides again on what is
        there now instead of telling its caller to try again; only `DECIDE_ATTEMPTS` such changes in a row
        answer `Busy`. A removal (`removing`) decides so too (`locked`)."""
        with self.locked(name, removing):
            for attempt in range(1, DECIDE_ATTEMPTS):
                try:
                    return decide()
                except Superseded as error:
                    log.info("a command on VM %s decides again (attempt %d): %s", name, attempt + 1, error)
            return decide()

    def _check_not_removing(self, name: str) -> None:
        try:
            state = schema.decode(self._context.store.zk.get(schema.vm_key(name, "state"))[0])
        except NoNodeError:
            raise NotFound(f"no VM named '{name}'") from None
        if state == "remove":
            raise Conflict(f"VM '{name}' is being removed (waiting for its node to undefine it)")

    def forget_lock(self, name: str) -> None:
        """Delete a removed VM's lock znode, unless a command is waiting on it (it then finds no VM)."""
        try:
            self._context.store.zk.delete(schema.vm_lock(name))
        except (NoNodeError, NotEmptyError):
            pass

    # -- carrying out ----------------------------------------------------------------------------------

    def converge(self, name: str, nodes: list[str | None], wait: bool, timeout: float = 120.0,
                 hold_calls: bool = False, since_zxid: int | None = None) -> dict[str, Any]:
        """Ask each of `nodes` (old node first, then new) to converge the VM; with `wait`, until it is done.
        Two different nodes mean the VM is moving between them: the new node is also asked at once. Without
        `wait` the answer is the VM as the caller's own refresh after its write read it: a catch-up here was a
        third of a define's time during a burst of defines.

        A waited-for move is answered once the VM runs on its new node, while the nodes are still being asked
        on a thread of the move's own: the old node's call lasts until its libvirt has cleaned up after a live
        migration, stopping the old copy 0.2 s or more after the guest resumed on the new node, which had been
        a fifth of a migration's wall time. With `hold_calls` the nodes are asked in the caller's thread first,
        so that a task's bound on moves at once bounds the calls to the nodes too. A caller that knows the zxid
        of the write it waits for gives it (`since_zxid`); otherwise it is read (`command_zxid`)."""
        moving = len({node for node in nodes if node}) > 1
        if moving and self._may_move_live(name, nodes[-1]):
            # The new node, asked before the old one's call (which lasts the whole live migration), watches for
            # the guest's arrival from the start and records it the moment the guest runs there: asked only
            # after, it left the move to be recorded by the old node once its libvirt had stopped the old copy.
            (self.poke if hold_calls else self.poke_soon)(name, nodes[-1:])
        if not wait:
            self.poke_soon(name, nodes)
            return models.vm_view(name, self.raw(name, caught_up=True))
        if since_zxid is None:
            since_zxid = self.command_zxid(name)
        if moving and not hold_calls:
            threading.Thread(target=self.poke, args=(name, nodes), name=f"move-{name}", daemon=True).start()
        else:
            self.poke(name, nodes)
        return self.wait(name, timeout, since_zxid, moving=moving)

    def _may_move_live(self, name: str, node: str | None) -> bool:
        """Whether moving the VM to `node` may be a live migration: the node migrates live, and the move is
        forced live or the VM's method (else the cluster's) is not ``shutdown``."""
        if node is None or not (self._context.node_view(node) or {}).get("migrates_live"):
            return False
        raw = self._context.cache.vms.get(name) or {}
        if (raw.get("placement") or {}).get("force_live"):
            return True
        method = (raw.get(OWN_VALUE) or {}).get("migration_method") or \
            self._context.cache.config.get().get("migration_method", "auto")
        return method != "shutdown"

    def command_zxid(self, name: str) -> int:
        """The ZooKeeper transaction id of the latest write to the VM's desired state (its definition, state
        and placement): the command just recorded, or a later one. A node's report is newer than the command
        when its own mzxid is larger; ZooKeeper orders both writes, so no host's clock is consulted."""
        zk = self._context.store.zk
        pending = [zk.exists_async(path) for path in
                   (schema.vm(name), schema.vm_key(name, "state"), schema.vm_key(name, "placement"))]
        return max((stat.mzxid for stat in (result.get() for result in pending) if stat is not None), default=0)

    def poke_soon(self, name: str, nodes: list[str | None]) -> None:
        """`poke` from a background thread: a command that does not wait for the nodes answers at once, even
        when a node's agent is frozen and its call would last the agent timeout (a `vm remove --force` of a
        VM on such a node answered after 4.3 s)."""
        self._background.submit(self.poke, name, nodes)

    def poke(self, name: str, nodes: list[str | None], action: str = "converge") -> None:
        """Ask each of `nodes` to converge the VM now. The change is already recorded, so a node that does
        not answer (its daemon restarting, say) only delays it: it converges on its own, and the next node
        is still asked."""
        for node in dict.fromkeys(node for node in nodes if node):
            agent_uri = (self._context.node_view(node) or {}).get("agent_uri")
            if not agent_uri:
                continue
            try:
                self._context.agents.call(node, agent_uri, action, name)
            except PVCError as error:
                log.info("%s of %s on %s now failed (%s); the node will converge on its own", action, name,
                         node, error)

    def wait(self, name: str, timeout: float, since_zxid: int, moving: bool = False) -> dict[str, Any]:
        """Wait until the VM's node reports the outcome its state asks for; raise an error in a status report
        written after the command (`since_zxid`, see `command_zxid`), which is this command's failure. A
        command that moved the VM (`moving`) recorded a fresh placement, so a migration error found there now
        is its own. A report's own ``time`` (the node's clock) is never compared with this host's."""
        deadline = time.monotonic() + timeout
        changed = threading.Event()

        def wake(_event: Any = None) -> None:
            changed.set()
        while True:
            # Watches set by the reads below wake the next round the moment the status or placement changes.
            changed.clear()
            read = self._read_now(name, {"state": None, "placement": wake, "status": wake})
            raw = {**self.raw(name, caught_up=True), "status": {},
                   **{key: value for key, (value, zxid) in read.items() if zxid}}
            view = models.vm_view(name, raw)
            placement = raw.get("placement") or {}
            status, written = raw.get("status") or {}, read["status"][1]
            if status.get("error") and written > since_zxid and \
                    not (self._placement_pending(name, status) and time.monotonic() < deadline):
                raise OperationFailed(f"VM '{name}': {status['error']}"
                                      + (f"; it stays on {view['node']}" if moving else ""))
            if moving and placement.get("migration_error"):
                raise OperationFailed(f"VM '{name}': {placement['migration_error']}; it stays on {view['node']}")
            if settled(view):
                return view
            if time.monotonic() > deadline:
                raise Unavailable(f"VM '{name}' has not reached state {view['state']} on {view['node']} "
                                  f"after {timeout:g} s")
            changed.wait(min(WAIT_RECHECK_S, max(deadline - time.monotonic(), 0.01)))

    def _placement_pending(self, name: str, status: dict[str, Any]) -> bool:
        """Whether the node asked the leader to place the VM back (a failed move) and the leader has not yet
        recorded it: the caller is told where the VM stays only once that is true."""
        request = status.get("request") or {}
        return request.get("kind") in ("keep", "return") and \
            request.get("placement_zxid") == self._context.cache.vms.get_with_zxids(name)[1].get("placement")

    def _read_now(self, name: str, watches: dict[str, Callable[[Any], None] | None]) -> dict[str, tuple[Any, int]]:
        """Some of the VM's keys as they are in ZooKeeper now, read side by side, each with the zxid of the write
        that made it (a key that does not exist: None, 0); each key's watch, if any, is called once at its next
        change (or creation). A waiting command reads only these each round: the rest of the VM comes from the
        cache, which its own write updated (a refresh of every key each round was a fifth of a recovery's
        requests to ZooKeeper)."""
        zk = self._context.store.zk
        pending = {key: zk.get_async(schema.vm_key(name, key), watch=watch) for key, watch in watches.items()}
        read = {}
        for key, answer in pending.items():
            try:
                data, stat = answer.get()
                read[key] = schema.decode(data), stat.mzxid
            except NoNodeError:
                watch = watches[key]
                if watch is not None and zk.exists(schema.vm_key(name, key), watch=watch) is not None:
                    return self._read_now(name, watches)
                read[key] = None, 0
        return read

    # -- recording -------------------------------------------------------------------------------------

    def desired(self, name: str) -> Desired:
        """The VM's desired state read in ZooKeeper itself (`read_desired`): what a caller holding the VM's lock
        decides from and gives `record`."""
        return read_desired(self._context.store, name)

    def record(self, name: str, read: Desired, state: str | None = None, placement: dict[str, Any] | None = None,
               spec: dict[str, Any] | None = None, leader_node: str | None = None,
               checks: Sequence[tuple[str, int]] = ()) -> int:
        """Write the given parts of the VM's desired state (`write_desired`), and show them to the next read (from
        what was written, without reading it back; a write that failed is read); the zxid of the write."""
        try:
            zxid = write_desired(self._context.store, name, read, state, placement, spec, leader_node, checks)
        except BaseException:
            self._context.cache.vms.refresh(name)
            raise
        values = {OWN_VALUE: spec, "state": state, "placement": placement}
        self._context.cache.vms.written(name, {key: value for key, value in values.items() if value is not None},
                                        zxid, created=False)
        return zxid


def _desired_paths(name: str) -> dict[str, str]:
    return {"spec": schema.vm(name), "state": schema.vm_key(name, "state"),
            "placement": schema.vm_key(name, "placement")}


def read_desired(store: Store, name: str) -> Desired:
    """The VM's desired state read in ZooKeeper itself (not a cache), each part with its version and zxid;
    `NotFound` when the VM has no record."""
    pending = {part: store.zk.get_async(path) for part, path in _desired_paths(name).items()}
    values, versions, zxids = {}, {}, {}
    for part, result in pending.items():
        try:
            data, stat = result.get()
        except NoNodeError:
            raise NotFound(f"no VM named '{name}'") from None
        values[part], versions[part], zxids[part] = schema.decode(data), stat.version, stat.mzxid
    return Desired(name, values["spec"] or {}, values["state"] or "stop", values["placement"] or {}, versions,
                   zxids)


def refuse_mirror(name: str, read: Desired) -> None:
    """A mirror runs nowhere, moves nowhere and changes state only by its promotion."""
    if read.state == schema.MIRROR_STATE:
        raise Conflict(f"VM '{name}' is a mirror of a VM on another cluster and cannot be started, stopped or "
                       f"moved here: promote it first (pvc vm mirror promote {name})")


def write_desired(store: Store, name: str, read: Desired, state: str | None = None,
                  placement: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
                  leader_node: str | None = None, checks: Sequence[tuple[str, int]] = ()) -> int:
    """Write the given parts of a VM's desired state in one transaction (returns its zxid): the one way a
    coordinator changes it
    (its commands, the leader's tasks, the leader recording a node's request).

    The transaction checks that every part (spec, state, placement) is still at the version `read` found,
    written or not, so a change made since (a command answered meanwhile) wins and this write raises
    `Superseded`; with `leader_node`, it also checks the writer still leads, and each of `checks` (path, version)
    that a znode the write depends on has not changed. A placement written moves the
    VM's node index entry in the same transaction (`pvc.node_index`). A mirror (`schema.MIRROR_STATE`)
    takes no other state than ``remove``, whoever asks: its disks follow another cluster's VM until it is
    promoted (`pvc.rpc.mirror.receive`, which writes its state itself)."""
    if state not in (None, schema.MIRROR_STATE, "remove"):
        refuse_mirror(name, read)
    paths = _desired_paths(name)
    values = {"spec": spec, "state": state, "placement": placement}
    transaction = store.transaction(leader_node)
    for part in DESIRED_PARTS:
        if values[part] is None:
            transaction.check(paths[part], read.versions[part])
        else:
            transaction.set(paths[part], values[part], version=read.versions[part])
    for path, version in checks:
        transaction.check(path, version)
    if placement is not None:
        node_index.place(store, transaction, name, read.placement.get("node"), placement.get("node"))
    try:
        transaction.commit()
    except Conflict as error:
        raise Superseded(f"VM '{name}' changed since it was read: {error}") from None
    return transaction.zxid


def settled(view: dict[str, Any]) -> bool:
    """Whether a VM has reached what its state asks for."""
    state = view["state"]
    if state in ("start", "migrate", "unmigrate"):
        # A move is done once the VM runs on its new node; recording "start" after it is the leader's.
        return view["running"] is True
    if state in ("stop", "shutdown", "disable", "fail", schema.MIRROR_STATE):
        return view["running"] is False
    return False
