"""The receiving end of a mirror: another cluster's sends applied to a VM kept here in state ``mirror``.

A send arrives in three calls from the sending coordinator: `MirrorReceiver.begin` checks it and records its
intent in the mirror's record (`pvc.schema.mirror_vm`) before anything changes, makes the volumes of a first
(whole) send, and has a storage node issue a ticket for the stream (`pvc.node.mirror_transfer`); the sending
cluster's node streams the data; `end` records the outcome in one transaction (the volumes, their snapshot, the
VM snapshot, the VM itself in state ``mirror`` and the mirror's list of snapshots), or `abort` undoes the send.

Undoing a send leaves the mirror as the previous send left it: the volumes of a whole send go, those of an
incremental one return to the parent snapshot (which the mirror holds, since it never runs). A send whose sender
died is undone once its deadline has passed, by the leader's storage check or by the next send or promotion,
whichever comes first; until then they are refused as busy.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from pvc import domain_xml, mirror_manifest, node_index, schema, storage_records
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound, PVCError, Unavailable
from pvc.rpc.areas.storage import StorageArea
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.vm_control import VMControl

log = logging.getLogger(__name__)

RECEIVE_DEADLINE_S = 600.0
"""How long a send may take from its ticket to its end before another send or a promotion undoes it."""
LOCK_TIMEOUT_S = 30.0
META = ("node_selector", "migration_method", "max_downtime", "profile")
"""The metadata a mirror takes from its source VM: not its node limit (the nodes are another cluster's), nor
autostart (a mirror never starts)."""


class MirrorReceiver:
    def __init__(self, context: CoordinatorContext, control: VMControl, storage: StorageArea, vms: Any):
        self._context = context
        self._control = control
        self._storage = storage
        self._vms = vms

    def state(self, vm: str) -> dict[str, Any]:
        """What a sender needs to choose its send: whether a VM of that name exists here, whether it is a mirror,
        and the newest snapshot the mirror holds (with when the sender took it)."""
        vm = schema.check_name("VM", vm)
        record = self._context.store.read(schema.mirror_vm(vm))
        exists = self._context.store.read(schema.vm(vm)) is not None
        snapshots = (record or {}).get("snapshots") or []
        return {"vm": vm, "exists": exists, "mirror": exists and record is not None,
                "newest": snapshots[-1] if snapshots and exists else None,
                "pending": bool((record or {}).get("intent"))}

    def begin(self, manifest: dict[str, Any], size_bytes: int, checksum: str, source: dict[str, Any]
              ) -> dict[str, Any]:
        """Check a send and record its intent; the ticket its stream goes under, with the send's id."""
        manifest = mirror_manifest.checked(manifest)
        vm, snapshot, parent = manifest["vm"], manifest["snapshot"], manifest["parent"]
        volumes = [volume["volume"] for volume in manifest["volumes"]]
        self._spec(manifest["spec"], vm, volumes)
        if isinstance(size_bytes, bool) or size_bytes != sum(volume["bytes"] for volume in manifest["volumes"]):
            raise InvalidInput("the send's size is not the sum of its volumes' streams; nothing was sent")
        store = self._context.store
        for pool in sorted({volume.split("/", 1)[0] for volume in volumes}):
            if store.read(schema.pool(pool)) is None:
                raise NotFound(f"this cluster has no storage pool '{pool}' for VM '{vm}''s volumes; add it first")
        with self._locked(vm):
            record = self._without_stale_send(vm)
            held = self.state(vm)
            if held["exists"] and not held["mirror"]:
                raise Conflict(f"a VM named '{vm}' exists on this cluster and is not a mirror; nothing was sent")
            names = [each["name"] for each in (record or {}).get("snapshots") or []]
            if parent is None:
                if held["exists"]:
                    at = f"at snapshot '{names[-1]}'" if names else "handed over, with no snapshot of its own"
                    raise Conflict(f"this cluster holds a mirror of VM '{vm}' already ({at}): send incrementally, "
                                   "or remove it first")
            else:
                newest = held["newest"]
                if newest is None:
                    raise NotFound(f"this cluster holds no mirror of VM '{vm}': send it whole")
                if newest["name"] != parent or newest["source_created"] != manifest["parent_created"]:
                    raise Conflict(f"the mirror of VM '{vm}' here has diverged: its newest snapshot is "
                                   f"'{newest['name']}', not the sender's '{parent}'; nothing was sent")
                if sorted(volumes) != sorted(self._control.desired(vm).spec.get("volumes") or []):
                    raise Conflict(f"snapshot '{snapshot}' of VM '{vm}' holds other volumes than its mirror "
                                   "here: send it whole to a cluster without the mirror")
            if snapshot in names:
                raise AlreadyExists(f"the mirror of VM '{vm}' holds snapshot '{snapshot}' already")
            node, agent_uri, _backend = self._storage._storage_node(volumes[0].split("/", 1)[0])
            send_id = uuid.uuid4().hex
            intent = {"send_id": send_id, "snapshot": snapshot, "parent": parent, "volumes": volumes,
                      "deadline": time.time() + RECEIVE_DEADLINE_S, "coordinator": self._context.name,
                      "node": node}
            updated = {"source": source, "snapshots": (record or {}).get("snapshots") or [], "intent": intent}
            with self._storage._pools_locked(sorted({volume.split("/", 1)[0] for volume in volumes})):
                if parent is None:
                    self._refuse_taken(node, agent_uri, volumes)
                if record is None:
                    store.transaction().create(schema.mirror_vm(vm), updated).commit()
                else:
                    store.transaction().set(schema.mirror_vm(vm), updated).commit()
                try:
                    if parent is None:
                        for volume in manifest["volumes"]:
                            self._storage._agent(node, agent_uri, "volume_create", *volume["volume"].split("/", 1),
                                                 volume["size_bytes"])
                    ticket = self._storage._agent(node, agent_uri, "open_mirror_upload",
                                                  volumes[0].split("/", 1)[0], manifest, size_bytes, checksum)
                except BaseException:
                    self._undo(vm, store.read(schema.mirror_vm(vm)))
                    raise
        return {**ticket, "send_id": send_id, "node": node, "manifest": manifest}

    def _refuse_taken(self, node: str, agent_uri: str, volumes: list[str]) -> None:
        """A whole send makes its volumes new: a name taken here, recorded or only in the storage, refuses it
        (under the pools' locks, so none is taken before the send's own are made)."""
        for volume in volumes:
            if self._storage._taken(node, agent_uri, volume):
                raise AlreadyExists(f"volume '{volume}' exists on this cluster already; nothing was sent")

    def end(self, vm: str, send_id: str, manifest: dict[str, Any], received: dict[str, Any]) -> dict[str, Any]:
        """Record a send whose stream the storage node applied (`received`: its answer): one transaction."""
        manifest = mirror_manifest.checked(manifest)
        store = self._context.store
        with self._locked(vm):
            record = store.read(schema.mirror_vm(vm)) or {}
            intent = record.get("intent") or {}
            if intent.get("send_id") != send_id or intent.get("snapshot") != manifest["snapshot"]:
                raise Conflict(f"the send of {vm}@{manifest['snapshot']} was undone meanwhile (it took longer than "
                               f"{RECEIVE_DEADLINE_S:.0f} s, or another send replaced it); send it again")
            try:
                self._record(vm, record, manifest, received)
            except BaseException:
                self._undo(vm, record)
                raise
        for volume in intent["volumes"]:
            self._storage._refresh_volume(*volume.split("/", 1))
        self._context.cache.vms.refresh(vm)
        node = self._control.desired(vm).placement.get("node")
        return {**self._control.converge(vm, [node], wait=False), "snapshot": manifest["snapshot"]}

    def abort(self, vm: str, send_id: str) -> None:
        """Undo a send its sender gave up on."""
        with self._locked(vm):
            record = self._context.store.read(schema.mirror_vm(vm)) or {}
            if (record.get("intent") or {}).get("send_id") == send_id:
                self._undo(vm, record)

    def promote(self, vm: str, expected: str | None = None) -> dict[str, Any]:
        """Turn a mirror into an ordinary stopped VM of this cluster, at the last snapshot it received; with
        `expected` (a handover's last snapshot), only if that is the one it received last."""
        with self._locked(vm):
            record = self._without_stale_send(vm)
            if record is None:
                raise Conflict(f"VM '{vm}' is not a mirror: there is nothing to promote")
            newest = ((record.get("snapshots") or [{}])[-1]).get("name")
            if expected is not None and newest != expected:
                raise Conflict(f"the mirror of VM '{vm}' ends at snapshot '{newest}', not at the source's last "
                               f"'{expected}' (was it sent elsewhere?); nothing was promoted")
            with self._control.locked(vm):
                desired = self._control.desired(vm)
                if desired.state != schema.MIRROR_STATE:
                    raise Conflict(f"VM '{vm}' is {desired.state}, not a mirror")
                self._context.store.transaction() \
                    .set(schema.vm_key(vm, "state"), "stop", version=desired.versions["state"]) \
                    .delete(schema.mirror_vm(vm)).commit()
                self._context.cache.vms.refresh(vm)
        return self._control.view(vm)

    def resolve_expired(self) -> list[str]:
        """For the leader: undo the sends whose deadline has passed (their sender died); what was undone."""
        undone = []
        for vm in self._context.store.children(schema.MIRROR_VMS):
            intent = (self._context.store.read(schema.mirror_vm(vm)) or {}).get("intent")
            if not intent or time.time() < intent["deadline"]:
                continue
            try:
                with self._locked(vm):
                    record = self._context.store.read(schema.mirror_vm(vm))
                    if (record or {}).get("intent", {}).get("send_id") == intent["send_id"]:
                        self._undo(vm, record)
                        undone.append(f"{vm}@{intent['snapshot']}")
            except PVCError as error:
                log.warning("mirror of VM %s: the abandoned send of %s waits: %s", vm, intent["snapshot"], error)
        for send in undone:
            log.warning("mirror check: the send of %s, abandoned by its sender, was undone", send)
        return undone

    def prune(self, vm: str, keep: int, prefix: str) -> list[str]:
        """Remove the mirror's snapshots named `prefix`... but the newest `keep` of them, so never the newest of
        all (the next send's parent); the names removed."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInput(f"keep must be a whole number of at least 1, not {keep!r}")
        with self._locked(vm):
            record = self._without_stale_send(vm)
            if record is None:
                raise Conflict(f"VM '{vm}' is not a mirror")
            doomed = [each["name"] for each in record["snapshots"] if each["name"].startswith(prefix)][:-keep]
            for name in doomed:
                try:
                    self._vms._vm_snapshots().remove(vm, name, mirror_prune=True)
                except NotFound:
                    pass  # removed by hand, or by a prune cut off before it recorded so
            kept = [each for each in record["snapshots"] if each["name"] not in doomed]
            self._context.store.transaction().set(schema.mirror_vm(vm), {**record, "snapshots": kept}).commit()
        return doomed

    def source(self, vm: str) -> dict[str, Any]:
        """Where a mirror came from: ``{"cluster", "destination"}`` as its sender said."""
        record = self._context.store.read(schema.mirror_vm(schema.check_name("VM", vm)))
        if record is None or self._context.store.read(schema.vm(vm)) is None:
            raise Conflict(f"VM '{vm}' is not a mirror")
        return record["source"]

    # -- steps -----------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, vm: str) -> Iterator[None]:
        lock = self._context.store.lock(schema.mirror_lock(vm), self._context.name)
        if not lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise Busy(f"another send to the mirror of VM '{vm}' holds it; try again")
        try:
            yield
        finally:
            lock.release()

    def _without_stale_send(self, vm: str) -> dict[str, Any] | None:
        """The mirror's record once a send its sender abandoned is undone; a send still under way is `Busy`. A
        record left by a mirror removed since (`vm remove`) is forgotten."""
        store = self._context.store
        record = store.read(schema.mirror_vm(vm))
        if record is None:
            return None
        intent = record.get("intent")
        if intent:
            if time.time() < intent["deadline"]:
                raise Busy(f"a send of snapshot '{intent['snapshot']}' to the mirror of VM '{vm}' is under way; "
                           "try again")
            self._undo(vm, record)
            record = store.read(schema.mirror_vm(vm))
        if record is not None and store.read(schema.vm(vm)) is None:
            store.transaction().delete(schema.mirror_vm(vm)).commit()
            return None
        return record

    def _undo(self, vm: str, record: dict[str, Any] | None) -> None:
        """Leave the mirror as the previous send left it (every step repeats safely)."""
        intent = (record or {}).get("intent")
        if not intent:
            return
        self._stop_receiving(vm, intent)
        agent = self._storage._pool_agent(intent["volumes"][0].split("/", 1)[0])
        for volume in intent["volumes"]:
            pool, name = volume.split("/", 1)
            if intent["parent"] is None:
                agent("volume_remove", pool, name)
            else:
                agent("snapshot_rollback", pool, name, intent["parent"])
                agent("snapshot_remove", pool, name, intent["snapshot"])
        transaction = self._context.store.transaction()
        if record.get("snapshots"):
            transaction.set(schema.mirror_vm(vm), {key: value for key, value in record.items() if key != "intent"})
        else:
            transaction.delete(schema.mirror_vm(vm))
        transaction.commit()

    def _stop_receiving(self, vm: str, intent: dict[str, Any]) -> None:
        """Before a send is undone: the node it was streamed to honours none of its tickets any more, and is not
        applying its stream now (a slow stream past its deadline is still writing: rolling back under it would
        leave disks that match no snapshot). A node that cannot be asked may still be writing: `Unavailable`,
        and nothing is undone."""
        node, pool = intent.get("node"), intent["volumes"][0].split("/", 1)[0]
        agent_uri = next((uri for name, uri, _backend in self._storage._storage_nodes(pool) if name == node), None)
        if node is None or agent_uri is None:
            raise Unavailable(f"node {node} that received the send of {vm}@{intent['snapshot']} cannot be asked "
                              "whether it still writes it; it is undone once it can")
        if self._storage._agent(node, agent_uri, "mirror_receive_stop", vm, intent["snapshot"]):
            raise Busy(f"the send of snapshot '{intent['snapshot']}' to the mirror of VM '{vm}' is still being "
                       f"written on node {node}; try again once it ends")

    def _record(self, vm: str, record: dict[str, Any], manifest: dict[str, Any], received: dict[str, Any]) -> None:
        store = self._context.store
        snapshot, now = manifest["snapshot"], time.time()
        sizes = received.get("sizes") or {}
        whole = manifest["parent"] is None
        spec = self._spec(manifest["spec"], vm, [volume["volume"] for volume in manifest["volumes"]])
        transaction = store.transaction()
        for volume in manifest["volumes"]:
            pool, name = volume["volume"].split("/", 1)
            size_bytes = sizes.get(volume["volume"]) or volume["size_bytes"]
            listed = {} if whole else dict(store.read(schema.volume_snapshots(pool, name)) or {})
            listed[snapshot] = {"created": now, "size_bytes": size_bytes, "vm_snapshot": f"{vm}@{snapshot}"}
            if whole:
                transaction.create(schema.volume(pool, name), storage_records.volume_record(pool, name, size_bytes))
                transaction.create(schema.volume_snapshots(pool, name), listed)
            else:
                transaction.set(schema.volume(pool, name), {**store.read(schema.volume(pool, name)),
                                                            "size_bytes": size_bytes})
                transaction.set(schema.volume_snapshots(pool, name), listed)
        store.zk.ensure_path(schema.vm_snapshots(vm))
        transaction.create(schema.vm_snapshot(vm, snapshot), {
            "vm": vm, "name": snapshot, "created": now, "spec": manifest["spec"], "volumes": spec["volumes"],
            "crash_consistent": False, "consistency": "mirror", "paused_ms": None, "method": "mirror",
            "source_created": manifest["created"]})
        if whole:
            spec["generation"] = 1
            node = self._vms._initial_node(spec, None)
            transaction.create(schema.vm_uuid(spec["uuid"]), vm)
            transaction.create(schema.vm(vm), spec)
            transaction.create(schema.vm_key(vm, "state"), schema.MIRROR_STATE)
            transaction.create(schema.vm_key(vm, "placement"), {"node": node, "last_node": None})
            node_index.place(store, transaction, vm, None, node)
        else:
            desired = self._control.desired(vm)
            if desired.state != schema.MIRROR_STATE:
                raise Conflict(f"VM '{vm}' stopped being a mirror meanwhile")
            transaction.set(schema.vm(vm), {**desired.spec, **spec, "tags": desired.spec.get("tags", {}),
                                            "generation": desired.spec.get("generation", 1) + 1},
                            version=desired.versions["spec"])
        snapshots = [*record.get("snapshots", []), {"name": snapshot, "source_created": manifest["created"]}]
        transaction.set(schema.mirror_vm(vm), {"source": record.get("source"), "snapshots": snapshots})
        transaction.commit()

    def _spec(self, sent: dict[str, Any], vm: str, volumes: list[str]) -> dict[str, Any]:
        """The mirror's record from the sender's document and metadata, checked as this cluster checks any
        definition (its own host-device setting), naming the VM sent and exactly the volumes sent: a document
        naming another VM's volume here, or a host device this cluster does not allow, is refused."""
        domain = domain_xml.parse(sent["xml"], allow_host_devices=self._vms._allow_host_devices())
        if domain.name != vm:
            raise InvalidInput(f"the sent domain document names VM '{domain.name}', not '{vm}'; nothing was sent")
        if sorted(domain.volumes) != sorted(volumes):
            raise InvalidInput(f"the sent domain document's volumes ({', '.join(sorted(domain.volumes)) or 'none'}) "
                               f"are not the ones sent ({', '.join(sorted(volumes))}); nothing was sent")
        return {**self._vms._spec(domain), **{key: sent.get(key) for key in META}, "node_limit": None,
                "node_autostart": False, "tags": {}}
