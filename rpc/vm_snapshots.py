"""Whole-VM snapshots: the domain document, the VM's metadata and a snapshot of every volume it uses, at one
moment.

Each change is recorded before anything is done and settled after, in the snapshot's own record
(`pvc.schema.vm_snapshot`), with the VM's lock and the locks of every pool its volumes live in held meanwhile:

- create: the record is written with an intent ``create``; the node running the guest pauses it, snapshots
  every volume at once and resumes it (`pvc.node.guest_snapshots`; a stopped VM's volumes are snapshotted by
  any storage node); then one transaction marks every volume snapshot as the VM snapshot's and settles the
  record. So the VM snapshot is whole (record and every volume snapshot) or absent.
- remove: intent ``remove``; each volume snapshot goes; one transaction forgets them and the record.
- rollback (VM stopped): intent ``rollback``; every volume returns to its snapshot, the VM's definition and
  metadata to the snapshot's, and the record is settled.

A coordinator that dies midway leaves the intent. The leader finishes a removal or a rollback (each step can be
repeated) and undoes a creation (its volume snapshots go, then the record) once the node taking it says it is
no longer at it (or, if that node cannot be asked, once the creation's deadline has passed). The guest itself
never stays paused: its node resumes it on its own deadline.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PVCError, Unavailable
from pvc.rpc.areas.storage import STORAGE_ACTION_TIMEOUT_S, StorageArea
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.vm_control import VMControl

log = logging.getLogger(__name__)

ACTIONS = ("create", "remove", "rollback")
DOING = {"create": "created", "remove": "removed", "rollback": "rolled back"}
MAX_PAUSE_LIMIT_S = 60.0
"""The longest pause a caller may ask for; each node caps it further (``snapshot_max_pause``)."""
RESOLVE_LOCK_TIMEOUT_S = 0.5
"""The leader does not wait on a lock a change in progress holds: it tries again on its next pass."""
SPEC_KEPT = ("xml", "memory_mib", "vcpus", "disks", "nics", "volumes", "node_limit", "node_selector",
             "node_autostart", "migration_method", "max_downtime", "profile")
"""What of a VM's record a snapshot keeps and a rollback restores: its document and what is derived from it,
and its metadata. Its tags, name and UUID stay as they are."""


class VMSnapshots:
    def __init__(self, context: CoordinatorContext, control: VMControl, storage: StorageArea):
        self._context = context
        self._control = control
        self._storage = storage

    # -- reading ---------------------------------------------------------------------------------------

    def list(self, vm: str | None = None) -> list[dict[str, Any]]:
        """The snapshots of `vm`, or of every VM, oldest first within each VM."""
        store = self._context.store
        names = [schema.check_name("VM", vm)] if vm is not None else sorted(store.children(schema.VM_SNAPSHOTS))
        views = []
        for name in names:
            records = [store.read(schema.vm_snapshot(name, each)) for each in store.children(schema.vm_snapshots(name))]
            views += sorted((view(record) for record in records if record), key=lambda each: each["created"])
        return views

    def info(self, vm: str, name: str) -> dict[str, Any]:
        return view(self._require(vm, name))

    # -- changing --------------------------------------------------------------------------------------

    def create(self, vm: str, name: str | None = None, crash_consistent: bool = False,
               max_pause_ms: int | None = None) -> dict[str, Any]:
        """Snapshot the VM's document, metadata and every volume at one moment; a running guest is paused
        for the duration (at most `max_pause_ms`, else the snapshot is abandoned) unless `crash_consistent`."""
        name = schema.check_name("snapshot", name if name is not None else time.strftime("%Y%m%d%H%M%S"))
        max_pause_s = _max_pause(max_pause_ms)
        with self._control.locked(vm):
            desired = self._control.desired(vm)
            spec = desired.spec
            volumes = list(spec.get("volumes") or [])
            if self._context.store.read(schema.vm_snapshot(vm, name)) is not None:
                raise AlreadyExists(f"VM '{vm}' has a snapshot named '{name}' already")
            node, take = self._taker(vm, desired, volumes, name, max_pause_s, not crash_consistent) \
                if volumes else (None, lambda: {"paused_ms": None, "method": "none"})
            with self._storage._pools_locked(_pools(volumes)):
                for pool, volume in _pairs(volumes):
                    if name in (self._storage._require_volume(pool, volume).get("snapshots") or {}):
                        raise AlreadyExists(f"volume '{pool}/{volume}' has a snapshot named '{name}' already")
                record = {"vm": vm, "name": name, "created": time.time(), "spec": _kept(spec),
                          "volumes": volumes, "crash_consistent": bool(crash_consistent)}
                deadline = time.time() + max_pause_s + STORAGE_ACTION_TIMEOUT_S
                begun = self._begin(record, "create", deadline=deadline, node=node)
                try:
                    outcome = take()
                except BaseException:
                    self._undo_once_taken(begun)
                    raise
                settled = {**record, "paused_ms": outcome.get("paused_ms"), "method": outcome.get("method"),
                           "consistency": _consistency(crash_consistent, outcome)}
                self._settle_create(settled)
        return view(settled)

    def remove(self, vm: str, name: str, mirror_prune: bool = False) -> None:
        """Remove the snapshot: every volume snapshot it made, then its record. A mirror's snapshots are the
        chain its next send builds on: only its own pruning (`mirror_prune`) removes them."""
        if not mirror_prune:
            _refuse_mirror(self._control.desired(vm), "remove its snapshots")
        record = self._require(vm, name)
        with self._storage._pools_locked(_pools(record["volumes"])):
            record = self._require(vm, name)
            _refuse_other_intent(record, "remove")
            self._begin(record, "remove")
            self._finish_remove(record)

    def rollback(self, vm: str, name: str) -> dict[str, Any]:
        """Return a stopped VM's volumes, document and metadata to the snapshot's. A rollback that failed
        midway (some volumes back, some not) is finished by the next one: its steps repeat safely."""
        with self._control.locked(vm):
            desired = self._control.desired(vm)
            _refuse_mirror(desired, "roll it back")
            record = self._require(vm, name)
            _refuse_other_intent(record, "rollback")
            self._refuse_running(vm, desired, "before rolling it back")
            with self._storage._pools_locked(_pools(record["volumes"])):
                self._begin(record, "rollback")
                self._finish_rollback(record)
        self._control.converge(vm, [desired.placement.get("node")], wait=False)
        return self._control.view(vm)

    def rollback_pending(self, vm: str) -> str | None:
        """The snapshot an unfinished rollback of `vm` returns it to, if any: its volumes may be part at the
        snapshot and part not, so the VM must not start until the rollback is finished."""
        store = self._context.store
        for name in store.children(schema.vm_snapshots(vm)):
            record = store.read(schema.vm_snapshot(vm, name)) or {}
            if (record.get("intent") or {}).get("action") == "rollback":
                return name
        return None

    def _refuse_running(self, vm: str, desired: Any, doing: str) -> None:
        status = self._control.raw(vm).get("status") or {}
        if desired.state in schema.RUNNING_STATES or status.get("running") is not False:
            running = "unknown" if status.get("running") is None else "running"
            raise Conflict(f"VM '{vm}' is {desired.state} ({running}): stop it {doing}")

    # -- after a crash ---------------------------------------------------------------------------------

    def resolve_orphaned(self) -> list[str]:
        """For the leader: finish or undo the changes whose coordinator is gone; returns what was done."""
        store = self._context.store
        done = []
        for vm in store.children(schema.VM_SNAPSHOTS):
            for name in store.children(schema.vm_snapshots(vm)):
                record = store.read(schema.vm_snapshot(vm, name)) or {}
                pending = record.get("intent")
                if not pending or (self._alive(pending) and not pending.get("handed_over")):
                    continue
                if pending["action"] == "create" and self._still_taking(record):
                    continue
                try:
                    done.append(self._resolve(record))
                except Exception as error:
                    log.warning("VM snapshot %s@%s: its unfinished %s waits: %s", vm, name, pending["action"], error)
        for outcome in done:
            log.warning("VM snapshot check: %s", outcome)
        return done

    def _alive(self, pending: dict[str, Any]) -> bool:
        """Whether the coordinator that recorded an intent still runs: the same process, not merely one of the
        same name started again (its announcement belongs to the session the intent names)."""
        stat = self._context.store.zk.exists(schema.live_coordinator(pending.get("coordinator", "?")))
        return stat is not None and stat.ephemeralOwner == pending.get("session")

    def _resolve(self, record: dict[str, Any]) -> str:
        vm, name, action = record["vm"], record["name"], record["intent"]["action"]
        label = f"{vm}@{name}"
        with self._storage._pools_locked(_pools(record["volumes"]), timeout=RESOLVE_LOCK_TIMEOUT_S):
            current = self._context.store.read(schema.vm_snapshot(vm, name))
            if not current or (current.get("intent") or {}).get("action") != action:
                return f"{label}: settled meanwhile"
            if action == "create":
                self._undo_create(current)
                return f"{label}: its unfinished creation was undone"
            if action == "remove":
                self._finish_remove(current)
                return f"{label}: its removal was finished"
        with self._control.locked(vm):
            # A rollback is never finished under a guest: its disks would change beneath it.
            self._refuse_running(vm, self._control.desired(vm), "to have its rollback finished")
            with self._storage._pools_locked(_pools(record["volumes"]), timeout=RESOLVE_LOCK_TIMEOUT_S):
                self._finish_rollback(self._context.store.read(schema.vm_snapshot(vm, name)))
        return f"{label}: its rollback was finished"

    # -- steps -----------------------------------------------------------------------------------------

    def _taker(self, vm: str, desired: Any, volumes: list[str], name: str, max_pause_s: float,
               pause: bool) -> tuple[str, Callable[[], dict[str, Any]]]:
        """Which node snapshots the volumes, and how: the node running the guest (which pauses it), or any
        storage node for a VM that runs nowhere. A VM whose node cannot say whether it runs is refused."""
        status = self._control.raw(vm).get("status") or {}
        running = status.get("running")
        if running is None and status:
            raise Unavailable(f"VM '{vm}' is in an unknown state on node {status.get('node')}: "
                              f"{status.get('unknown') or 'its node could not ask libvirt'}")
        if running or desired.state in schema.RUNNING_STATES:
            node = status.get("node") or desired.placement.get("node")
            facts = (self._context.cache.nodes.get(node) or {}).get(OWN_VALUE) or {}
            if not facts.get("agent_uri"):
                raise Unavailable(f"VM '{vm}' runs on node {node}, which has no agent to snapshot it")
            return node, lambda: self._context.agents.call(node, facts["agent_uri"], "vm_snapshot", vm, volumes,
                                                           name, max_pause_s, pause,
                                                           timeout=STORAGE_ACTION_TIMEOUT_S)
        node, agent_uri = self._storage._storage_node(_pools(volumes)[0])[:2]
        return node, lambda: self._storage._agent(node, agent_uri, "snapshot_volumes", vm, volumes, name)

    def _still_taking(self, record: dict[str, Any]) -> bool:
        """Whether the node that takes a creation's volume snapshots may still be at it: it says so, or it
        cannot be asked and the creation's deadline has not passed."""
        node = record["intent"].get("node")
        facts = (self._context.cache.nodes.get(node) or {}).get(OWN_VALUE) or {} if node else {}
        try:
            return bool(self._storage._agent(node, facts["storage_agent_uri"], "snapshot_in_progress",
                                                 record["vm"], record["name"]))
        except Exception as error:
            if time.time() < record["intent"].get("deadline", 0):
                log.info("VM snapshot %s@%s: node %s cannot say whether it still takes it (%s); waiting",
                         record["vm"], record["name"], node, error)
                return True
            return False

    def _undo_once_taken(self, record: dict[str, Any]) -> None:
        """Undo a creation whose taking failed here, once its node is no longer at it: a call that failed for
        this coordinator (a connection reset, a timeout) may still be running on the node, and an undo before
        it ends left the volume snapshots it then made, with no record. A node still at it (or that cannot say,
        before the creation's deadline), or an undo that fails, hands the undo over to the leader's pass, which
        waits for the node and tries again: the intent of a coordinator still alive is otherwise no pass's."""
        if not self._still_taking(record):
            try:
                self._undo_create(record)
                return
            except PVCError as error:
                log.warning("VM snapshot %s@%s: its undo failed (%s)", record["vm"], record["name"], error)
        path = schema.vm_snapshot(record["vm"], record["name"])
        self._context.store.transaction().set(path, {**record, "intent": {**record["intent"],
                                                                          "handed_over": True}}).commit()
        log.warning("VM snapshot %s@%s: the leader undoes it once its node is no longer taking it",
                    record["vm"], record["name"])

    def _begin(self, record: dict[str, Any], action: str, deadline: float | None = None,
               node: str | None = None) -> dict[str, Any]:
        intent = {"action": action, "coordinator": self._context.name,
                  "session": self._context.store.zk.client_id[0],
                  **({"deadline": deadline, "node": node} if action == "create" else {})}
        path = schema.vm_snapshot(record["vm"], record["name"])
        transaction = self._context.store.transaction()
        begun = {**record, "intent": intent}
        if action == "create":
            self._context.store.zk.ensure_path(schema.vm_snapshots(record["vm"]))
            transaction.create(path, begun)
        else:
            transaction.set(path, begun)
        transaction.commit()
        return begun

    def _settle_create(self, record: dict[str, Any]) -> None:
        """One transaction: every volume snapshot marked as this VM snapshot's, and the record settled."""
        label = f"{record['vm']}@{record['name']}"
        transaction = self._context.store.transaction()
        for pool, volume in _pairs(record["volumes"]):
            raw = self._storage._require_volume(pool, volume)
            snapshots = dict(raw.get("snapshots") or {})
            snapshots[record["name"]] = {"created": record["created"], "size_bytes": raw[OWN_VALUE]["size_bytes"],
                                         "vm_snapshot": label}
            transaction.set(schema.volume_snapshots(pool, volume), snapshots)
        transaction.set(schema.vm_snapshot(record["vm"], record["name"]), _settled(record))
        transaction.commit()
        for pool, volume in _pairs(record["volumes"]):
            self._storage._refresh_volume(pool, volume)

    def _undo_create(self, record: dict[str, Any]) -> None:
        for pool, volume in _pairs(record["volumes"]):
            self._storage._pool_agent(pool)("snapshot_remove", pool, volume, record["name"])
        self._forget(record)

    def _finish_remove(self, record: dict[str, Any]) -> None:
        for pool, volume in _pairs(record["volumes"]):
            self._storage._pool_agent(pool)("snapshot_remove", pool, volume, record["name"])
        self._forget(record)

    def _forget(self, record: dict[str, Any]) -> None:
        """One transaction: the volume records stop listing the snapshot, and its record goes."""
        store = self._context.store
        transaction = store.transaction()
        for pool, volume in _pairs(record["volumes"]):
            snapshots = store.read(schema.volume_snapshots(pool, volume))
            if snapshots is not None and record["name"] in snapshots:
                transaction.set(schema.volume_snapshots(pool, volume),
                                {key: value for key, value in snapshots.items() if key != record["name"]})
        transaction.delete(schema.vm_snapshot(record["vm"], record["name"]))
        transaction.commit()
        for pool, volume in _pairs(record["volumes"]):
            self._storage._refresh_volume(pool, volume)

    def _finish_rollback(self, record: dict[str, Any]) -> None:
        """Every step repeats safely: the volumes return to the snapshot (again), the VM's record takes the
        snapshot's document and metadata, volume sizes follow, and the snapshot's record is settled."""
        vm, name = record["vm"], record["name"]
        sizes = {}
        for pool, volume in _pairs(record["volumes"]):
            agent = self._storage._pool_agent(pool)
            agent("snapshot_rollback", pool, volume, name)
            sizes[(pool, volume)] = agent("volume_size", pool, volume)
        desired = self._control.desired(vm)
        spec = {**desired.spec, **record["spec"], "generation": desired.spec.get("generation", 1) + 1}
        self._control.record(vm, desired, spec=spec)
        store = self._context.store
        transaction = store.transaction()
        for (pool, volume), size_bytes in sizes.items():
            current = store.read(schema.volume(pool, volume))
            if current is not None and size_bytes is not None:
                transaction.set(schema.volume(pool, volume), {**current, "size_bytes": size_bytes})
        transaction.set(schema.vm_snapshot(vm, name), _settled(record))
        transaction.commit()
        for pool, volume in sizes:
            self._storage._refresh_volume(pool, volume)

    def _require(self, vm: str, name: str) -> dict[str, Any]:
        schema.check_name("VM", vm)
        schema.check_name("snapshot", name)
        record = self._context.store.read(schema.vm_snapshot(vm, name))
        if record is None:
            raise NotFound(f"VM '{vm}' has no snapshot named '{name}'")
        return record


def _refuse_other_intent(record: dict[str, Any], action: str) -> None:
    """A change of a snapshot waits while another is unfinished; the same one is finished (its steps repeat)."""
    pending = (record.get("intent") or {}).get("action")
    if pending and pending != action:
        raise Conflict(f"snapshot '{record['vm']}@{record['name']}' is being {DOING.get(pending, pending)}; "
                       "try again once that is finished")


def view(record: dict[str, Any]) -> dict[str, Any]:
    """What `pvc vm snapshot list` shows and ``--format json`` prints."""
    return {"name": record["name"], "vm": record["vm"], "created": record["created"],
            "volumes": record["volumes"], "crash_consistent": record.get("crash_consistent", False),
            "consistency": record.get("consistency"),
            "paused_ms": record.get("paused_ms"), "method": record.get("method"),
            "pending": (record.get("intent") or {}).get("action")}


def _consistency(crash_consistent: bool, outcome: dict[str, Any]) -> str:
    """``frozen`` (filesystems frozen by the guest's agent), ``paused``, ``stopped`` (the guest ran nowhere)
    or ``crash`` (taken from a running guest as it went)."""
    mode = outcome.get("mode")
    if mode:
        return {"freeze": "frozen", "pause": "paused"}[mode]
    return "crash" if crash_consistent else "stopped"


def _kept(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: spec[key] for key in SPEC_KEPT if key in spec}


def _settled(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "intent"}


def _pairs(volumes: list[str]) -> list[tuple[str, str]]:
    return [tuple(volume.split("/", 1)) for volume in volumes]


def _pools(volumes: list[str]) -> list[str]:
    return sorted({pool for pool, _volume in _pairs(volumes)})


def _max_pause(max_pause_ms: int | None) -> float:
    if max_pause_ms is None:
        return MAX_PAUSE_LIMIT_S
    if not isinstance(max_pause_ms, int) or isinstance(max_pause_ms, bool) or \
            not 0 < max_pause_ms <= MAX_PAUSE_LIMIT_S * 1000:
        raise InvalidInput(f"the maximum pause must be 1 to {MAX_PAUSE_LIMIT_S * 1000:.0f} ms, not {max_pause_ms!r}")
    return max_pause_ms / 1000


def _refuse_mirror(desired: Any, what: str) -> None:
    """A mirror's disks follow its source's snapshots: changing them here would make the next send build on
    something else than what it was computed against."""
    if desired.state == schema.MIRROR_STATE:
        raise Conflict(f"VM '{desired.name}' is a mirror: promote it first, then {what}")
