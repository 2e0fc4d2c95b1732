"""Converging this node's libvirt to the desired state in ZooKeeper.

Each VM's desired state (`state`) and place (`placement.node`) are recorded in ZooKeeper before anything moves;
the node that should run a VM starts it, the node that should not stops it. A coordinator's call (`converge`)
only makes this happen sooner: a node daemon also passes over all its VMs every keepalive interval, so a
lost call or a crashed coordinator delays an action but never loses it.

A VM never runs on two nodes: before starting one, a node *claims* it with a transaction that checks the
placement it read is still current and writes the VM's `status` as running here, refusing while the status
says it runs on another node. The other node clears that only after its copy has stopped.

Removal is in order too: a coordinator marks the VM's state ``remove``; the node that holds it stops and
undefines its domain and reports that (status ``removed``, asking the leader to ``forget`` it); only then is
the record deleted (`pvc.rpc.removal`). A node knows the domains PVC manages from PVC's metadata element in
the domain XML (`pvc.node.host_xml`), never from memory: whenever it finds such a domain whose record is gone
(it was down when the record went, say) it undefines it, and a domain without that element (defined by hand)
it leaves alone.

A libvirt call that times out is not an answer: libvirtd may carry it out later (a start seconds after the
node gave up on it). The VM is then `unknown`, never "not running", and nothing else is decided about it until
the call's worker has ended (`pvc.node.hypervisor.Hypervisor.in_flight`); what it did is then reconciled
before the node reports again, stopping a copy this node no longer holds. "Not running" after a failed call
is said only of a VM this node never claimed (re-read after the failure, never the record read before the
claim), and only when no call of this node can still be running in libvirtd.
"""
import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

from kazoo.exceptions import NoNodeError

from pvc import network_records, schema
from pvc.cache import OWN_VALUE, WatchedCollection
from pvc.errors import Conflict, OperationFailed, PVCError, Unavailable
from pvc.hookspecs import StorageBackend
from pvc.node.host_xml import HostPaths, device_for_host, for_host
from pvc.node.hypervisor import (DomainActions, DomainList, MigrationTarget, TargetNotReached, TargetUnreachable,
                                 timed_out)
from pvc.node.network.node_networks import NodeNetworks, made_on
from pvc.node.ownership import NodeOwnership
from pvc.store import Store

log = logging.getLogger(__name__)

PEER_ASK_TIMEOUT_S = 5.0
"""How long the source of a failed live migration waits for the target's libvirt to say whether it runs the VM."""

TARGET_NETWORKS_WAIT_S = 10.0
"""How long a live migration's source waits for its target to make the VM's networks (the target makes them on
its next pass once the VM is placed there, at most a keepalive interval later)."""

ARRIVAL_POLL_S = 0.02
"""How often the target of a live migration in flight asks its own libvirt whether the guest runs here yet."""

SOURCE_CLEANUP_WAIT_S = 15.0
"""How long a VM that arrived here by live migration waits, before it goes back to that migration's source, for
the source's libvirt to be done with its old copy (which it stops after the target resumed the guest)."""

ACTED_ON = "acted_on"
"""Key added to a VM's values while converging: the zxids of the values this node acts on (`requests`)."""


class Reconciler:
    def __init__(self, node_name: str, store: Store, vms: WatchedCollection, actions: DomainActions,
                 paths: HostPaths, storage: StorageBackend, migration_timeout: float,
                 ownership: NodeOwnership, networks: NodeNetworks | None = None):
        self.node = node_name
        self._networks = networks
        self._ownership = ownership
        self.paths = paths
        self._storage = storage
        self._migration_timeout = migration_timeout
        self._store = store
        self._vms = vms
        self._actions = actions
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._fallback_notes: dict[str, str] = {}
        """Why a VM's live migration fell back to a shutdown, until the status saying so is written."""
        self._arrivals: set[str] = set()
        """VMs on their way here by live migration, each watched by a thread of its own (`_await_arrival`)."""
        self._arrived_from: dict[str, str] = {}
        """The source of the live migration each VM last arrived here by (`_take_over_migrated`)."""
        self._arrivals_lock = threading.Lock()
        self.starts_refused: str | None = None
        """Why this node starts no VM (it has fenced itself, `pvc.node.self_fence`); None while it may."""

    def converge(self, name: str, fresh: bool = True, seen: DomainList | None = None) -> dict[str, Any]:
        """Make libvirt match what ZooKeeper wants for one VM; returns the VM's status as reported.

        A libvirt call that timed out is not an answer: the VM is `unknown` (never "not running", whatever
        this node read before it acted), and while that call's worker still runs nothing else is decided about
        the VM. Once the worker has ended, what it did is reconciled before the node reports again
        (`_settle_late_calls`).

        A pass gives what one bulk call listed (`seen`); a VM held here that is as it should be is then
        decided without a libvirt call of its own (`DomainActions`). Its end is noted (`DomainActions.touch`):
        a pass that listed the domains while this ran asks about this VM again."""
        with self._locks[name]:
            try:
                return self._converge(name, fresh, seen)
            finally:
                self._actions.touch(name)

    @contextmanager
    def settled_here(self, name: str) -> Iterator[None]:
        """The VM's lock, for work on its guest here that no converge may interleave with (a snapshot's pause
        or freeze), while the VM is placed here and no migration of it is under way: a pause or freeze begun as
        a migration started went with the guest to its new node, and the release sent here found no domain
        (the guest stayed paused, or its filesystems frozen, there)."""
        with self._locks[name]:
            raw = self._reread(name) or {}
            status, placement = raw.get("status") or {}, raw.get("placement") or {}
            moving = status.get("migrating_to") or (status.get("node") not in (None, self.node))
            if moving or placement.get("node") != self.node:
                raise Conflict(f"VM '{name}' is moving to node {status.get('migrating_to') or placement.get('node')}"
                               "; try again once it has moved")
            yield

    def _converge(self, name: str, fresh: bool, seen: DomainList | None) -> dict[str, Any]:
        if fresh:
            self._vms.refresh(name)
        raw, zxids = self._vms.get_with_zxids(name)
        pending = self._actions.in_flight(name)
        if pending:
            if raw is None or raw.get(OWN_VALUE) is None:
                return {"node": self.node, "running": None, "unknown": pending}
            return self._report_unknown(name, self._reread(name) or raw, pending)
        if raw is None or raw.get(OWN_VALUE) is None:
            self._remove_deleted(name, seen)
            self._actions.forget_late(name)
            return {"node": self.node, "running": False, "removed": True}
        raw[ACTED_ON] = zxids
        placement = raw.get("placement") or {}
        try:
            self._settle_late_calls(name, raw)
            status = raw.get("status") or {}
            if status.get("node") == self.node and status.get("migrating_to"):
                unsettled = self._settle_migration(name, raw)
                if unsettled is not None:
                    return unsettled
                raw = self._reread(name) or raw
                placement = raw.get("placement") or {}
            if raw.get("state") == "remove":
                return self._remove_marked(name, raw)
            if placement.get("node") != self.node:
                return self._let_go(name, raw)
            return self._hold(name, raw, seen)
        except Unavailable as error:
            # Decided on the record as it is now, not as read before acting: this node may have claimed
            # the VM since, and a start that timed out may yet succeed.
            current = self._reread(name) or raw
            status = current.get("status") or {}
            if not timed_out(error) and not self._actions.ended_late(name) \
                    and (current.get("placement") or {}).get("node") == self.node \
                    and status.get("node") != self.node:
                # libvirtd is gone (no call of ours is left running in it) and this node never claimed the
                # VM (a claim comes before any start): it is known not to run here.
                return self._failed(name, current, str(error), running=False)
            return self._report_unknown(name, current, str(error))

    def _reread(self, name: str) -> dict[str, Any] | None:
        """The VM's values as ZooKeeper has them now, with the zxids they were read at (None: its record is
        gone)."""
        self._vms.refresh(name)
        raw, zxids = self._vms.get_with_zxids(name)
        if raw is None or raw.get(OWN_VALUE) is None:
            return None
        raw[ACTED_ON] = zxids
        return raw

    def _settle_late_calls(self, name: str, raw: dict[str, Any]) -> None:
        """A libvirt call on this VM that timed out has ended since: whatever it did (a start that succeeded
        late) is in libvirt now. A copy running here that this node no longer holds (placed elsewhere, or
        claimed by another node meanwhile) is stopped before anything is reported about it. A VM whose last
        report says it runs here is still this node's, wherever it is placed (no node claims it before this
        one reports it off): moving it away is `_let_go`'s, and a migration's incoming copy is its own
        settling's. Both had been destroyed when any call on them (a read) had ended late."""
        late = self._actions.ended_late(name)
        if not late:
            return
        current = self._reread(name) or raw
        status, placement = current.get("status") or {}, current.get("placement") or {}
        held = (placement.get("node") == self.node and status.get("node") in (None, self.node)) \
            or (status.get("node") == self.node and status.get("running") is not False) \
            or status.get("migrating_to") == self.node
        if not held and self._actions.is_running(name):
            log.warning("%s: the %s that timed out went on and it runs here, but this node no longer holds it "
                        "(placed on %s, status from %s): stopping it", name, " and ".join(late),
                        placement.get("node"), status.get("node"))
            self._actions.stop(name)
        self._actions.forget_late(name)

    def converge_all(self) -> None:
        """One pass over every VM this node runs, holds, or should run (those its index names, those it still
        watches, and every domain in libvirt here), from one bulk answer of libvirt about every domain here
        (`DomainActions.listed`); a VM that needs acting on is asked about itself. When libvirt cannot be asked,
        every VM this node holds is reported `unknown`. Then the VMs this node is done with are let go
        (`_release_settled`)."""
        known = self._vms.snapshot()
        held = {name for name, raw in known.items()
                if (raw.get("placement") or {}).get("node") == self.node
                or (raw.get("status") or {}).get("node") == self.node} | self._vms.indexed()
        try:
            seen = self._actions.listed()
            names = held | set(seen.domains)
        except Unavailable as error:
            for name in sorted(held):
                with self._locks[name]:
                    raw = self._vms.get(name)
                    if raw is not None and raw.get(OWN_VALUE) is not None:
                        self._report_unknown(name, raw, str(error))
            raise
        for name in sorted(names):
            try:
                # A VM not watched yet (a domain here that this node's index does not name) is read first.
                self.converge(name, fresh=name not in known, seen=seen)
            except Exception as error:
                log.warning("converging %s failed: %s", name, error)
        self._release_settled(set(seen.domains))
        if self._networks is not None:
            self._networks.converge(self._vms.snapshot())

    def watch_reported_here(self) -> None:
        """At start, watch every VM whose status says this node may hold it, placed here or not: one moved away
        (recovered elsewhere, say) while this daemon was down, whose status still says it runs here, must be
        reported off by this node before its new node may claim it, even when this host has no domain of it
        any more (it was powered off). Only this node writes a status naming it, so once running it watches
        every such VM already (`_release_settled` keeps them): this is one read of each status, without
        watches, at start only."""
        if not self._vms.through_index:
            return
        zk = self._store.zk
        names = [name for name in zk.get_children(schema.VMS) if name not in self._vms.indexed()]
        pending = [(name, zk.get_async(schema.vm_key(name, "status"))) for name in names]
        for name, result in pending:
            try:
                status = schema.decode(result.get()[0]) or {}
            except NoNodeError:
                continue
            if (status.get("node") == self.node and status.get("running") is not False) \
                    or status.get("migrating_to") == self.node:
                self._vms.refresh(name)

    def _release_settled(self, domains: set[str]) -> None:
        """Stop watching the VMs this node's index no longer names once nothing about them is left to this node:
        no domain of theirs here (as listed at the start of the pass), no status saying this node holds them
        or may run them, no migration to here, no libvirt call of this node still running on them. A VM let go
        too early is still never missed: a domain here is converged (and watched again) by the next pass, and
        one placed here again comes back through the index."""
        for name in sorted(set(self._vms.names()) - self._vms.indexed() - domains):
            with self._locks[name]:
                raw = self._vms.get(name)
                if raw is None:
                    continue
                status = raw.get("status") or {}
                holds = status.get("node") == self.node and status.get("running") is not False
                if holds or status.get("migrating_to") == self.node \
                        or (raw.get("placement") or {}).get("node") == self.node \
                        or self._actions.in_flight(name) or self._actions.ended_late(name):
                    continue
                with self._arrivals_lock:
                    if name in self._arrivals:
                        continue
                self._vms.release(name)

    def remove(self, name: str) -> None:
        """A coordinator removed the VM (or marked it removed): take its domain off this node."""
        self.converge(name)

    def _remove_deleted(self, name: str, seen: DomainList | None = None) -> None:
        """Stop and undefine a domain PVC manages (its metadata says so) whose record is gone, checked in
        ZooKeeper itself (the cache may lag). A domain without PVC's metadata is not PVC's: it stays."""
        if self._store.zk.exists(schema.vm(name)) is not None:
            return
        identity = self._actions.identity(name, seen)
        if identity is not None and identity.managed and seen is not None:
            identity = self._actions.identity(name)  # asked itself, right before it is removed
        if identity is not None and identity.managed:
            log.info("%s is no longer in the cluster: removing it from libvirt", name)
            self._actions.undefine(name)

    def _remove_marked(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The VM is marked removed: stop and undefine its domain here, then (if this node holds it) report
        that, asking the leader to forget the record. The mark is read again from ZooKeeper first, since this
        destroys a domain; a domain of that name that is not this VM's (another UUID) is left alone."""
        current = self._reread(name)
        if current is None or current.get("state") != "remove" or \
                current[OWN_VALUE].get("uuid") != raw[OWN_VALUE].get("uuid"):
            # The cache said "remove", ZooKeeper does not (any more): a VM of that name defined again since
            # must not lose its domain to the old one's removal. The next pass acts on what is there now.
            log.info("%s: the removal read from the cache is not in ZooKeeper any more; not removing", name)
            return (current or raw).get("status") or {}
        raw = current
        spec, status = raw[OWN_VALUE], raw.get("status") or {}
        identity = self._actions.identity(name)
        ours = identity is not None and (identity.uuid.lower() == spec["uuid"].lower() if spec.get("uuid")
                                         else identity.managed)
        if ours:
            log.info("%s is being removed: removing it from libvirt", name)
            self._actions.undefine(name)
        held_here = status.get("node") == self.node and status.get("running") is not False
        if (raw.get("placement") or {}).get("node") != self.node and not held_here:
            return status
        report = {"node": self.node, "running": False, "removed": True, "error": None, "unknown": None,
                  "request": {"kind": "forget", "state_zxid": raw[ACTED_ON].get("state")}, "time": time.time()}
        if _unchanged(status, report):
            return status
        self._write_status_if_ours(name, report)
        return report

    def _retire_old_names(self, name: str, uuid: str | None) -> None:
        """Undefine a domain PVC defined with this VM's UUID under another name (the VM was renamed): libvirt
        would refuse the new name while it exists."""
        if not uuid:
            return
        identity = self._actions.identity_by_uuid(uuid)
        if identity is not None and identity.name != name and identity.managed:
            log.info("%s was renamed %s: removing the old name from libvirt", identity.name, name)
            self._actions.undefine(identity.name)

    def _let_go(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The VM belongs elsewhere: stop and undefine our copy, then say so, so its new node may start it."""
        status = raw.get("status") or {}
        if _awaits(status, self.node, "keep", raw[ACTED_ON], "placement"):
            return status
        if status.get("migrating_to") == self.node and status.get("node") not in (None, self.node):
            # Placed elsewhere again before the migration here settled: if the guest runs here, this node holds
            # it (and moves it on below); a copy that never ran here goes as a stray.
            status = self._take_over_migrated(name, raw)
        if status.get("node") not in (None, self.node) and status.get("running") is not False:
            if status.get("migrating_to") == self.node and self._fenced(status["node"]) is None:
                # A copy here is the target of that node's live migration, which decides what becomes of it
                # (a paused target is never a second running copy, and stopping it would fail the migration).
                return status
            if self._actions.is_running(name):
                # Another node holds the VM and may run it (the target of a migration whose source lost its
                # libvirtd midway, which then left its paused copy here), or its source is fenced and nothing
                # can resume this copy: either way this copy is the one that must go.
                log.warning("%s has a copy here, but node %s holds it: stopping this copy", name, status["node"])
                self._actions.stop(name)
        if not self._actions.exists(name):
            if status.get("node") == self.node and status.get("running") is not False:
                # Our last word was "running" or "unknown" (libvirt did not answer then); libvirt has just
                # answered that no such domain is here, and until we say so no other node may start it. The
                # cache may not show yet the hand-over just written: it is not written twice (the second
                # would drop its migration note).
                current = self._store.read(schema.vm_key(name, "status")) or {}
                if current.get("node") == self.node and current.get("running") is not False:
                    return self._handed_over(name, raw)
                return current
            return status
        target = (raw.get("placement") or {}).get("node")
        if self._actions.is_running(name) and target:
            outcome = self._migrate_live(name, raw, target)
            if outcome != "shutdown":
                return {"node": target if outcome == "moved" else self.node,
                        "running": None if outcome == "unsettled" else True}
        self._actions.shutdown(name)
        self._actions.undefine(name)
        return self._handed_over(name, raw)

    def _handed_over(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        status = {"node": self.node, "running": False, "error": None, "time": time.time(),
                  "migration_note": self._fallback_notes.pop(name, None)}
        self._write_status_if_ours(name, status)
        log.info("%s handed over to %s", name, (raw.get("placement") or {}).get("node"))
        return status

    def _migrate_live(self, name: str, raw: dict[str, Any], target: str) -> str:
        """Move a running VM without stopping it, where the hypervisor can and the VM's method allows.

        Returns ``moved`` when it now runs on `target`; ``shutdown`` when the caller should migrate it by
        shutting it down (method ``shutdown``, no live migration here, or ``auto`` after a failure the target
        could have survived); ``kept`` when method ``live`` failed, or the target's hypervisor did not answer
        (a shut-down VM could not start there either): the VM never stopped, so it stays here, placed back,
        with the error; ``unsettled`` when the migration failed and neither host has said yet where the VM
        runs (`_settle_migration` finds out on later passes).

        The status names the target (``migrating_to``) before libvirt is asked to move anything, and keeps
        naming it until the target is known not to run the VM: a failed migration may have resumed the guest
        there (libvirt resumes the target before it tells the source), and until then no node may start it.
        """
        began = time.monotonic()
        forced = bool((raw.get("placement") or {}).get("force_live"))
        method = "live" if forced else raw[OWN_VALUE].get("migration_method") or \
            (self._store.read(schema.CONFIG) or {}).get("migration_method", "auto")
        if not forced and (method == "shutdown" or not self._actions.can_migrate_live):
            return "shutdown"
        record = self._store.read(schema.node(target)) or {}
        try:
            if not self._actions.can_migrate_live:
                raise OperationFailed(f"live migration was forced (--force-live), but node {self.node}'s "
                                      "hypervisor cannot migrate live; the VM stays here")
            if not record.get("migration_uri"):
                raise OperationFailed(f"node {target} has published no migration URI")
            self._target_networks_ready(raw, target)
            destination = MigrationTarget(record["migration_uri"], record.get("migration_stream_uri"),
                                          self._host_xml(raw[OWN_VALUE]["xml"], HostPaths.from_record(record)))
        except OperationFailed as error:
            return self._live_migration_failed(name, raw, method, error)
        if self._arrived_from.pop(name, None) == target:
            self._await_old_copy_gone(name, target, record["migration_uri"])
        self._record_migration_intent(name, target)
        asked = time.monotonic()
        try:
            self._actions.migrate_live(name, destination, raw[OWN_VALUE].get("max_downtime"),
                                       self._storage.shares_volumes, self._migration_timeout)
        except OperationFailed as error:
            outcome = "here" if isinstance(error, TargetNotReached) else self._migration_outcome(name, target)
            if outcome == "there":
                self._record_moved(name, raw, target)
                return "moved"
            if outcome is None:
                self._report_unsettled(name, self._reread(name) or raw, target, str(error))
                return "unsettled"
            self._settled_here(name)
            return self._live_migration_failed(name, raw, method, error)
        done = time.monotonic()
        recorded = self._record_moved(name, raw, target)
        log.info("%s moved live to %s: %.0f ms to the intent, %.0f ms in libvirt, %s", name, target,
                 (asked - began) * 1000, (done - asked) * 1000,
                 f"{(time.monotonic() - done) * 1000:.0f} ms to record it" if recorded else "recorded by the target")
        return "moved"

    def _live_migration_failed(self, name: str, raw: dict[str, Any], method: str, error: OperationFailed) -> str:
        """The VM did not move and runs here (the target was shown not to run it): fall back to a shutdown
        migration where the method allows, else keep it here (see `_migrate_live`)."""
        if method == "auto" and not isinstance(error, TargetUnreachable):
            log.warning("%s: live migration failed (%s); falling back to shutdown migration", name, error)
            self._fallback_notes[name] = f"live migration failed ({error}); migrated by shutting it down"
            return "shutdown"
        self._keep_here(name, raw, str(error))
        return "kept"

    def _keep_here(self, name: str, raw: dict[str, Any], reason: str) -> dict[str, Any]:
        """Ask the leader to place the VM back here, where it stayed, with why."""
        status = {"node": self.node, "running": self._actions.is_running(name), "error": reason, "unknown": None,
                  "time": time.time(), "generation": (raw.get("status") or {}).get("generation"),
                  "request": {"kind": "keep", "placement_zxid": raw[ACTED_ON].get("placement"), "reason": reason}}
        self._write_status_if_ours(name, status)
        return status

    def _record_migration_intent(self, name: str, target: str) -> None:
        """Name the target in the status this node holds, before libvirt moves anything; a status that is not
        this node's, or a write that fails, stops the migration here. An earlier error goes: written again now,
        it would read as this migration's to a client waiting on it."""
        path = schema.vm_key(name, "status")
        try:
            data, stat = self._store.zk.get(path)
        except NoNodeError:
            data, stat = None, None
        status = (schema.decode(data) or {}) if data else {}
        if status.get("node") not in (None, self.node):
            raise OperationFailed(f"node {status['node']} holds {name}; it is not migrated from here")
        intent = {**status, "node": self.node, "migrating_to": target, "error": None}
        transaction = self._ownership.transaction()
        if stat is None:
            transaction.create(path, intent)
        else:
            transaction.set(path, intent, version=stat.version)
        transaction.commit()

    def _record_moved(self, name: str, raw: dict[str, Any], target: str) -> bool:
        """Record the VM on `target`, unless the target has already said so itself (`_take_over_migrated`): it
        holds the VM from then on, and its later reports are not overwritten. Whether this node recorded it."""
        path = schema.vm_key(name, "status")
        try:
            data, stat = self._store.zk.get(path)
            if (schema.decode(data) or {}).get("node") != self.node:
                return False
            self._ownership.transaction().set(path, {
                "node": target, "running": True, "error": None, "generation": raw[OWN_VALUE].get("generation"),
                "time": time.time()}, version=stat.version).commit()
            return True
        except (PVCError, NoNodeError) as error:
            log.warning("%s moved to %s, not recorded (%s): the next pass reports it gone from here", name, target,
                        error)
            return False

    def _await_old_copy_gone(self, name: str, target: str, uri: str) -> None:
        """The VM arrived here from `target` by live migration, and that host's libvirt may still be stopping
        its old copy (it does so after the guest resumed here, and this node took the VM over then): a
        migration back now would find that copy and fail. Wait, within `SOURCE_CLEANUP_WAIT_S`, while the
        target's libvirt says it has a paused copy; anything else is for the migration itself to find out."""
        deadline = time.monotonic() + SOURCE_CLEANUP_WAIT_S
        while self._actions.peer_copy_state(uri, name, PEER_ASK_TIMEOUT_S) == "paused":
            if time.monotonic() > deadline:
                log.warning("%s: %s still has a paused copy from the migration that brought it here", name, target)
                return
            time.sleep(ARRIVAL_POLL_S)

    def _migration_outcome(self, name: str, target: str) -> str | None:
        """Where a live migration that failed left the VM: ``here`` once the target's libvirt answers that it
        has no copy, or the target is fenced (confirmed off); ``there`` once the target runs it and the copy
        here runs no guest code (it is stopped first); None while either is not known (a host that does not
        answer, a target copy still paused, a job still under way here)."""
        if self._fenced(target) is not None:
            return "here"
        uri = (self._store.read(schema.node(target)) or {}).get("migration_uri")
        there = self._actions.peer_copy_state(uri, name, PEER_ASK_TIMEOUT_S) if uri else None
        if there == "off":
            # Not while this host's libvirtd still runs a job on it: a migration whose daemon died goes on
            # there, and its target has no copy yet while it connects, or one not yet started.
            return "here" if self._actions.job_under_way(name) is False else None
        if there != "running" or self._actions.copy_state(name) not in ("off", "paused"):
            return None
        self._actions.stop(name)
        return "there"

    def _settle_migration(self, name: str, raw: dict[str, Any]) -> dict[str, Any] | None:
        """A live migration from here failed without saying where the VM runs (`_migrate_live`), or this node's
        daemon stopped between naming the target and libvirt's answer: ask again. Returns the VM's report while
        it stays unsettled; None once it ran here all along, the status no longer naming the target.

        A failure that libvirt reported is kept aside (``migration_error``), and a call that did not end in time
        leaves its reason (``unknown``): a VM either one left here is placed back here with it. Without either,
        the migration never ran or this daemon never heard how it ended: the VM, shown here with no job under
        way and not on the target, is moved as its placement still says (the move had been answered as failed,
        "see the node log", though nothing had failed)."""
        status = raw["status"]
        target = status["migrating_to"]
        outcome = self._migration_outcome(name, target)
        if outcome is None:
            return self._report_unsettled(name, raw, target, status.get("migration_error") or "")
        if outcome == "there":
            log.info("%s: the live migration to %s that failed had moved it", name, target)
            self._record_moved(name, raw, target)
            return {"node": target, "running": True}
        reason = status.get("migration_error") or status.get("unknown")
        if reason and (raw.get("placement") or {}).get("node") != self.node:
            return self._keep_here(name, raw, reason)
        if not reason:
            log.info("%s: the live migration to %s was cut off before libvirt answered, and left it here; it "
                     "moves as its placement says", name, target)
        self._settled_here(name)
        return None

    def _settled_here(self, name: str) -> None:
        """The failed migration left the VM here: the status stops naming the target before anything else is
        done with the VM (a fallback shutdown that fails midway must not leave the intent behind, or the next
        pass would settle it again and report the migration's failure over the fallback)."""
        status = self._store.read(schema.vm_key(name, "status")) or {}
        self._write_status_if_ours(name, {**status, "migrating_to": None, "migration_error": None, "unknown": None,
                                          "time": time.time(), "running": self._actions.is_running(name)})

    def _report_unsettled(self, name: str, raw: dict[str, Any], target: str, error: str) -> dict[str, Any]:
        """The VM is `unknown` until the migration settles; the failure is kept aside (``migration_error``),
        not as the status's error, which a client waiting on the migration would take for its outcome."""
        status = raw.get("status") or {}
        report = {**status, "node": self.node, "running": None, "migrating_to": target,
                  "migration_error": error or status.get("migration_error"),
                  "unknown": f"a live migration to {target} failed midway ({error or status.get('migration_error')}) "
                             f"and {target} has not shown that it does not run the VM; no node starts it until then",
                  "time": time.time()}
        if _unchanged(status, report):
            return status
        log.warning("%s: %s", name, report["unknown"])
        self._write_status_if_ours(name, report)
        return report

    def _hold(self, name: str, raw: dict[str, Any], seen: DomainList | None = None) -> dict[str, Any]:
        """Run (or keep off) a VM placed here as its state says. With `seen` (a pass's bulk answer), a VM that
        is as it should be costs no libvirt call (`DomainActions`); not one that another node holds or that is in
        a live migration, whose domain may come here by a call of another host's libvirtd (an incoming
        migration), which no call of this node marks."""
        spec, state = raw[OWN_VALUE], raw.get("state") or "stop"
        status = raw.get("status") or {}
        if status.get("node") not in (None, self.node) or status.get("migrating_to"):
            seen = None
        if _awaits(status, self.node, "return", raw[ACTED_ON], "placement"):
            return status
        if state == "restart" and _awaits(status, self.node, "settle", raw[ACTED_ON], "state"):
            state = "start"  # restarted already; the leader has yet to record it
        try:
            identity = self._actions.identity(name, seen)
            if identity is not None and identity.managed and identity.pvc_uuid not in (None, spec.get("uuid")) \
                    and seen is not None:
                identity = self._actions.identity(name)  # asked itself, right before it is removed
            if identity is not None and identity.managed and identity.pvc_uuid not in (None, spec.get("uuid")):
                # PVC's domain of an earlier VM of this name, whose removal this node missed.
                log.info("%s here is an earlier VM of that name (UUID %s): removing it", name, identity.pvc_uuid)
                self._actions.undefine(name)
                identity = None
            redefine = identity is None or not identity.managed or status.get("generation") != spec.get("generation")
            if spec.get("networks") and (redefine or (state in schema.RUNNING_STATES and
                                                      not self._actions.is_running(name, seen))):
                # Before libvirt needs the bridges; a running guest's are kept by the networks' own pass.
                self._ensure_networks(spec["networks"])
            defined_off = False
            if redefine:
                self._retire_old_names(name, spec.get("uuid"))
                defined_off = not self._actions.define(self._host_xml(spec["xml"], self.paths))
            kept_off = defined_off and state not in schema.RUNNING_STATES
            if state in schema.RUNNING_STATES:
                self._run_here(name, raw, state, seen)
            elif kept_off:
                pass  # libvirt answered the define: the domain is not active
            elif state == "shutdown":
                self._actions.shutdown(name, seen, wanted=lambda: self._still_wanted(name, raw))
            elif state in ("stop", "disable", "fail", schema.MIRROR_STATE):
                self._actions.stop(name, seen)
        except OperationFailed as error:
            return self._failed(name, raw, str(error))
        if _awaits(status, self.node, "return", raw[ACTED_ON], "placement"):
            return status
        if status.get("node") not in (None, self.node) and status.get("migrating_to") == self.node:
            return self._take_over_migrated(name, raw)
        running = False if kept_off else self._actions.is_running(name, seen)
        if status.get("node") not in (None, self.node) and status.get("running") is not False and not running:
            if status.get("running") is True:
                self._await_arrival(name)
            return status
        refused = self.starts_refused if state in schema.RUNNING_STATES and not running else None
        # The request names the recorded state (a restart already done here still asks to be settled): a report
        # that dropped it would make the next pass restart the VM again, and again, until a leader saw one.
        report = {"node": self.node, "running": running, "error": refused, "unknown": None,
                  "generation": spec.get("generation"), "migration_note": status.get("migration_note"),
                  "request": self._settle_request(raw, raw.get("state") or "stop", running), "time": time.time()}
        if _unchanged(status, report):
            return status
        self._write_status_if_ours(name, report)
        return report

    def _still_wanted(self, name: str, raw: dict[str, Any]) -> bool:
        """Whether the VM is still wanted as `raw` has it: the same state, placed on the same node."""
        current = self._vms.get(name) or {}
        return current.get("state") == raw.get("state") \
            and (current.get("placement") or {}).get("node") == (raw.get("placement") or {}).get("node")

    def _take_over_migrated(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """This node is the target of a live migration its source has not settled: once the guest runs here
        (resumed, not a paused incoming copy that libvirt may yet discard), this node says so, which settles
        it; the source then stops whatever copy it has left."""
        path = schema.vm_key(name, "status")
        data, stat = self._store.zk.get(path)
        status = schema.decode(data) or {}
        if status.get("migrating_to") != self.node:
            return status
        if self._actions.copy_state(name) != "running":
            self._await_arrival(name)
            return status
        report = {"node": self.node, "running": True, "error": None, "unknown": None,
                  "generation": raw[OWN_VALUE].get("generation"), "time": time.time(),
                  "request": self._settle_request(raw, raw.get("state") or "stop", True)}
        try:
            self._ownership.transaction().set(path, report, version=stat.version).commit()
        except PVCError as error:
            log.info("%s runs here after a migration from %s; not recorded yet (%s)", name, status.get("node"),
                     error)
            return status
        log.info("%s runs here (taken over): the live migration from %s moved it", name, status.get("node"))
        self._arrived_from[name] = status.get("node")
        return report

    def _await_arrival(self, name: str) -> None:
        """Watch a VM placed here that another node still holds, on a thread of its own, for as long as a live
        migration may take: the moment it runs here this node takes it over (`_take_over_migrated`). libvirt
        resumes the guest here, then the source's libvirt stops its old copy before it answers the source
        (a fifth of a second or more: it polls the stopped QEMU every 0.2 s); the move is recorded, and a
        caller waiting on it answered, without waiting for that. While no live migration names this node as
        its target, only the record is read (in memory); this node's libvirt is asked only during one."""
        if not self._actions.can_migrate_live:
            return
        with self._arrivals_lock:
            if name in self._arrivals:
                return
            self._arrivals.add(name)
        threading.Thread(target=self._watch_arrival, args=(name,), name=f"arrival-{name}", daemon=True).start()

    def _watch_arrival(self, name: str) -> None:
        deadline = time.monotonic() + self._migration_timeout
        try:
            while time.monotonic() < deadline:
                raw = self._vms.get(name) or {}
                status = raw.get("status") or {}
                if (raw.get("placement") or {}).get("node") != self.node:
                    return
                if status.get("node") == self.node:
                    self.converge(name)  # recorded here by its source: confirmed at once, as after a start
                    return
                if status.get("running") is not True or status.get("node") is None:
                    return
                if status.get("migrating_to") == self.node and self._actions.copy_state(name) == "running":
                    self.converge(name)
                    return
                time.sleep(ARRIVAL_POLL_S)
        except Exception as error:
            log.warning("%s: watching for its arrival here failed: %s", name, error)
        finally:
            with self._arrivals_lock:
                self._arrivals.discard(name)

    def _host_xml(self, xml: str, paths: HostPaths) -> str:
        return for_host(xml, paths, self._storage.disk_source, self._network_mtu)

    def device_for_host(self, device_xml: str) -> str:
        """A device to hot-plug as this host's libvirt takes it; a NIC's network is made here first."""
        records = self._networks.records() if self._networks is not None else {}
        device, vnis = device_for_host(device_xml, lambda name: network_records.resolve(name, records),
                                       self._network_mtu)
        if vnis:
            self._ensure_networks(vnis)
        return device

    def _network_mtu(self, vni: int) -> int | None:
        record = self._networks.record(vni) if self._networks is not None else None
        return record["mtu"] if record else None

    def _ensure_networks(self, vnis: list[int]) -> None:
        if self._networks is None:
            raise OperationFailed(f"node {self.node} makes no network devices (no bridge_dev or cluster_dev), "
                                  f"and this VM names network(s) {', '.join(map(str, vnis))}")
        self._networks.ensure(vnis)

    def _target_networks_ready(self, raw: dict[str, Any], target: str) -> None:
        """Wait until the migration's target reports the VM's networks made (it makes them once placed); a
        target that does not is an `OperationFailed` the caller may fall back from."""
        wanted = set(raw[OWN_VALUE].get("networks") or [])
        deadline = time.monotonic() + TARGET_NETWORKS_WAIT_S
        while wanted - made_on(self._store, target):
            if time.monotonic() > deadline:
                missing = ", ".join(map(str, sorted(wanted - made_on(self._store, target))))
                raise OperationFailed(f"node {target} has not made network(s) {missing} for the VM")
            time.sleep(0.1)

    def _run_here(self, name: str, raw: dict[str, Any], state: str, seen: DomainList | None = None) -> None:
        if state == "restart" and self._actions.is_running(name, seen):
            self._actions.shutdown(name, wanted=lambda: self._still_wanted(name, raw))
        if not self._actions.is_running(name, seen):
            if self.starts_refused:
                log.info("%s is not started: %s", name, self.starts_refused)
                return
            if not self._claim(name):
                return
            self._actions.start(name)

    @staticmethod
    def _settle_request(raw: dict[str, Any], state: str, running: bool) -> dict[str, Any] | None:
        """Once a restart, migrate or unmigrate has run its course here, ask the leader to record ``start``
        for exactly the state this node acted on (a newer command is never overwritten)."""
        if state in ("restart", "migrate", "unmigrate") and running:
            return {"kind": "settle", "state_zxid": raw[ACTED_ON].get("state"), "to": "start"}
        return None

    def _claim(self, name: str) -> bool:
        """Atomically take the right to run `name` here; False while it still runs elsewhere, and while this
        node may start nothing: the leader holds it (``dead`` or ``fenced``, until `node ready` releases it;
        checked in the same transaction) or it has fenced itself (`starts_refused`)."""
        if self.starts_refused:
            return False
        zk = self._store.zk
        own_state_path = schema.node_key(self.node, "daemon_state")
        try:
            own_state, own_stat = zk.get(own_state_path)
            placement_data, placement_stat = zk.get(schema.vm_key(name, "placement"))
        except NoNodeError:
            return False
        if schema.decode(own_state) in schema.HELD_DAEMON_STATES:
            log.info("%s is not claimed: node %s is %s", name, self.node, schema.decode(own_state))
            return False
        if (schema.decode(placement_data) or {}).get("node") != self.node:
            return False
        status_path = schema.vm_key(name, "status")
        stat = zk.exists(status_path)
        current = schema.decode(zk.get(status_path)[0]) if stat else {}
        # Only a report from a node that its copy is off, or a confirmed fence of that node, lets this one
        # start: "running" and "unknown" (it could not ask libvirt) both mean a copy may still run there, and
        # so does an unsettled live migration's target.
        holder, target = current.get("node"), current.get("migrating_to")
        fences = {}
        if holder not in (None, self.node) and current.get("running") is not False:
            fences[holder] = self._fenced(holder)
            if fences[holder] is None:
                log.info("%s may still run on %s (%s): waiting before starting it here", name, holder,
                         "unknown: " + current["unknown"] if current.get("unknown") else "running")
                return False
        if target not in (None, self.node) and not self._off_on_migration_target(name, target, holder):
            fences[target] = self._fenced(target)
            if fences[target] is None:
                log.info("%s may run on %s, the target of a live migration from %s that did not settle: waiting "
                         "before starting it here", name, target, holder)
                return False
        claim = {**current, "node": self.node, "running": True, "error": None, "unknown": None,
                 "migrating_to": None, "migration_error": None, "time": time.time()}
        try:
            transaction = self._ownership.transaction() \
                .check(own_state_path, own_stat.version) \
                .check(schema.vm_key(name, "placement"), placement_stat.version)
            for other, (state_version, record_version) in fences.items():
                transaction.check(schema.node_key(other, "daemon_state"), state_version) \
                    .check(schema.node(other), record_version)
            if stat:
                transaction.set(status_path, claim, version=stat.version)
            else:
                transaction.create(status_path, claim)
            transaction.commit()
        except PVCError as error:
            log.info("claim of %s lost a race (%s); will retry", name, error)
            return False
        return True

    def _off_on_migration_target(self, name: str, target: str, source: str | None) -> bool:
        """Whether the target of a live migration that its source never settled is known not to run the VM:
        only once the source is fenced (off: nothing can resume the target's copy any more), and the target's
        libvirt answers that it has none."""
        if source is None or source == self.node or self._fenced(source) is None:
            return False
        uri = (self._store.read(schema.node(target)) or {}).get("migration_uri")
        return bool(uri) and self._actions.peer_copy_state(uri, name, PEER_ASK_TIMEOUT_S) == "off"

    def _report_unknown(self, name: str, raw: dict[str, Any], reason: str) -> dict[str, Any]:
        """Say that libvirt could not be asked about a VM this node holds: never "not running", which would
        let another node start it."""
        status = raw.get("status") or {}
        if status.get("node") not in (None, self.node) and status.get("running") is not False:
            return status
        if status.get("node") == self.node and status.get("running") is False:
            # This node checked it was off, and starts a VM only after claiming it (the claim says running
            # first): off it still is, and its next holder may rely on that.
            return status
        if status.get("unknown") == reason and status.get("node") == self.node:
            return status
        log.warning("%s: state unknown: %s", name, reason)
        report = {**status, "node": self.node, "running": None, "unknown": reason, "time": time.time()}
        self._write_status_if_ours(name, report)
        return report

    def _fenced(self, node: str) -> tuple[int, int] | None:
        """While `node` says ``fenced`` (confirmed off) and its daemon has not registered since: the versions of
        its daemon state and of its record, which a claim relying on the fence checks in its transaction. A
        node that runs again after its fence (its BMC powered it on) is believed only through its own
        reports, which it writes before it registers; None then, as for any node not fenced."""
        try:
            data, state = self._store.zk.get(schema.node_key(node, "daemon_state"))
        except NoNodeError:
            return None
        record = self._store.zk.exists(schema.node(node))
        if schema.decode(data) != "fenced" or record is None or record.mzxid > state.mzxid:
            return None
        return state.version, record.version

    def _failed(self, name: str, raw: dict[str, Any], reason: str, running: bool | None = None) -> dict[str, Any]:
        """Record the error; a VM that failed to start here after a migration, and is known not to run here
        (`running` False, else libvirt's answer), goes back where it was."""
        log.warning("%s: %s", name, reason)
        if running is None:
            running = self._actions.is_running(name)
        status = {"node": self.node, "running": running, "error": reason, "unknown": None, "time": time.time(),
                  "generation": (raw.get("status") or {}).get("generation")}
        placement = raw.get("placement") or {}
        if not running and raw.get("state") in ("migrate", "unmigrate") and placement.get("last_node"):
            status["request"] = {"kind": "return", "placement_zxid": raw[ACTED_ON].get("placement"),
                                 "to": placement["last_node"], "reason": f"migration to {self.node} failed: {reason}"}
            log.warning("%s could not start here; asking to return it to %s", name, placement["last_node"])
        self._write_status_if_ours(name, status)
        return status

    def _write_status_if_ours(self, name: str, status: dict[str, Any]) -> None:
        """Write the status unless another node holds the VM (its status says it runs there), and only while
        this daemon owns the node (`NodeOwnership.transaction`)."""
        path = schema.vm_key(name, "status")
        try:
            data, stat = self._store.zk.get(path)
        except NoNodeError:
            try:
                self._ownership.transaction().create(path, status).commit()
            except PVCError:
                pass  # the VM is gone (no parent), another report came first, or this daemon no longer owns the node
            return
        current = schema.decode(data) or {}
        if current.get("node") not in (None, self.node) and current.get("running") is not False:
            return
        try:
            self._ownership.transaction().set(path, status, version=stat.version).commit()
        except PVCError:
            pass


def _awaits(status: dict[str, Any], node: str, kind: str, acted_on: dict[str, int], key: str) -> bool:
    """Whether this node already asked the leader for `kind` about exactly the `key` it now sees: it waits
    for the leader's answer instead of acting (or failing) again."""
    request = status.get("request") or {}
    return status.get("node") == node and request.get("kind") == kind and \
        request.get(f"{key}_zxid") == acted_on.get(key)


def _unchanged(status: dict[str, Any], report: dict[str, Any]) -> bool:
    """Whether a report says nothing new, so the periodic pass need not write it again."""
    return all(status.get(key) == value for key, value in report.items() if key != "time")
