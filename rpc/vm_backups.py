"""Exporting a VM snapshot to a node's backup root, and importing a VM from a chain of exports.

The data moves on a node that serves storage (`pvc.node.backups`), which checks every path against its own
backup roots; the coordinator checks names and records. An import records its new volumes first (intent
``clone``, `pvc.rpc.storage_intents`), so one cut off is undone by the next change in their pool; the VM is
defined (stopped) only once every volume is whole and every checksum matched.

Exports and imports may also stream to and from the client (`pvc.vms_client`): an export is then staged on a
storage node as a mirror send is and fetched under a download ticket; an import's chain of streamed exports is
checked from its manifests (`pvc.mirror_manifest.checked_chain`), streamed into a stage of a storage node, and
imported from there by the same record-first steps as an import from a backup root.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from lxml import etree

from pvc import domain_xml, mirror_manifest, schema, storage_records
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PVCError, Unavailable
from pvc.rpc import storage_intents
from pvc.rpc.areas.storage import STORAGE_ACTION_TIMEOUT_S, StorageArea
from pvc.rpc.areas.vms import VMsArea
from pvc.rpc.context import CoordinatorContext
from pvc.store import Transaction

log = logging.getLogger(__name__)

RESTORE_WITHIN_S = STORAGE_ACTION_TIMEOUT_S - 60.0
"""How long a node's restore may write: it then has a minute of the coordinator's wait to remove what it made
and answer (`pvc.node.backups.Deadline`)."""


class VMBackups:
    def __init__(self, context: CoordinatorContext, storage: StorageArea, vms: VMsArea):
        self._context = context
        self._storage = storage
        self._vms = vms

    def export(self, vm: str, snapshot: str, destination: str, incremental_parent: str | None = None
               ) -> dict[str, Any]:
        """Write snapshot `snapshot` of `vm` to the new directory `destination` under a backup root, whole or
        (with `incremental_parent`, exported beside it already) as the changes since that snapshot."""
        manifest, _node, _agent_uri = self.plan_export(vm, snapshot, incremental_parent)
        node, written = self._export_where_it_can_be(manifest, destination)
        return {"vm": vm, "snapshot": snapshot, "parent": incremental_parent, "destination": destination,
                "node": node, "bytes": sum(volume["bytes"] for volume in written["volumes"])}

    def export_stream(self, vm: str, snapshot: str, incremental_parent: str | None = None) -> dict[str, Any]:
        """Stage snapshot `snapshot` of `vm` (whole, or the changes since `incremental_parent`) on a storage node
        for the client to fetch: the manifest a mirror send declares (`pvc.mirror_manifest`) and the single-use
        ticket of the download (address, token, size and checksum of the stream)."""
        record = self._settled(vm, snapshot)
        parent = self._settled(vm, incremental_parent) if incremental_parent is not None else None
        manifest, node, agent_uri = self.plan_export(vm, snapshot, incremental_parent)
        pool = next(iter(manifest["volumes"])).split("/", 1)[0]
        ticket = self._storage._agent(node, agent_uri, "open_export_download", pool, manifest)
        sent = {"vm": vm, "snapshot": snapshot, "created": record["created"], "parent": incremental_parent,
                "parent_created": parent["created"] if parent else None, "spec": manifest["spec"],
                "volumes": ticket.pop("volumes")}
        return {**ticket, "manifest": sent, "node": node}

    def _export_where_it_can_be(self, manifest: dict[str, Any], destination: str) -> tuple[str, dict[str, Any]]:
        """Written by a node that has `destination` under its roots and, for an incremental export, its parent's
        export beside it (`_on_a_node_with_the_backup`)."""
        pool = next(iter(manifest["volumes"])).split("/", 1)[0]
        node, _agent_uri, written = self._on_a_node_with_the_backup(pool, "export_snapshot", manifest, destination)
        return node, written

    def _on_a_node_with_the_backup(self, pool: str, method: str, *args: Any) -> tuple[str, str, Any]:
        """Backup roots are each node's own (local disks, or a store mounted on some nodes only), so the nodes
        serving `pool` are asked in turn until one can carry out `method` on the backup: node, agent URI, answer.
        A refusal every node gives is reported as the first node gave it, but "not found" (an export, or its
        directory) wins over "not under a backup root"."""
        refusals: list[PVCError] = []
        for node, agent_uri, _backend in self._storage._storage_nodes(pool):
            try:
                return node, agent_uri, self._storage._agent(node, agent_uri, method, *args)
            except (NotFound, InvalidInput) as error:
                refusals.append(error)
        raise next((error for error in refusals if isinstance(error, NotFound)), refusals[0])

    def plan_export(self, vm: str, snapshot: str, incremental_parent: str | None = None
                    ) -> tuple[dict[str, Any], str, str]:
        """What an export of `vm`'s `snapshot` writes (the manifest a node's export takes), and the storage node
        (name, agent URI) that writes it; refuses a snapshot being changed, or a parent that cannot be one."""
        record = self._settled(vm, snapshot)
        if incremental_parent is not None:
            parent = self._settled(vm, incremental_parent)
            if parent["created"] >= record["created"]:
                raise InvalidInput(f"snapshot '{incremental_parent}' is not older than '{snapshot}'")
            if sorted(parent["volumes"]) != sorted(record["volumes"]):
                raise Conflict(f"snapshots '{incremental_parent}' and '{snapshot}' of VM '{vm}' hold different "
                               "volumes: export this one whole")
        if not record["volumes"]:
            raise InvalidInput(f"snapshot '{snapshot}' of VM '{vm}' holds no volume to export")
        sizes = {}
        for volume in record["volumes"]:
            pool, name = volume.split("/", 1)
            facts = (self._storage._require_volume(pool, name).get("snapshots") or {}).get(snapshot) or {}
            sizes[volume] = facts.get("size_bytes")
        manifest = {"vm": vm, "snapshot": snapshot, "parent": incremental_parent, "spec": record["spec"],
                    "volumes": sizes}
        node, agent_uri = self._storage._storage_node(record["volumes"][0].split("/", 1)[0])[:2]
        return manifest, node, agent_uri

    def import_(self, source: str, name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Define a new, stopped VM from the chain of exports ending at `source`: as `name` (default the
        exported VM's) with its volumes in `pool` (default their own pools)."""
        if pool is not None:
            self._storage.volume_list(pool)
        node, agent_uri, links = self._on_a_node_with_the_backup(pool or self._any_pool(), "backup_chain", source)
        last = links[-1]
        _vm, targets, xml = self._import_targets(last, name, pool)
        sizes = {volume["volume"]: volume["size_bytes"] for volume in last["volumes"]}
        return self._restored(node, agent_uri, targets, xml, last["spec"], sizes,
                              lambda within_s: self._storage._agent(node, agent_uri, "restore_backup", source, targets,
                                                                    within_s))

    def _restored(self, node: str, agent_uri: str, targets: dict[str, str], xml: str,
                  spec: dict[str, Any], sizes: dict[str, int], restore: Callable[[float], dict[str, int]]
                  ) -> dict[str, Any]:
        """Record the new volumes `targets` first, have the node `restore` them within `RESTORE_WITHIN_S` (it
        removes what it made when it fails or runs out of time), then define the VM and settle the volumes in one
        transaction; a failure anywhere leaves neither volumes nor records, and a coordinator killed before that
        transaction leaves volumes the leader undoes once the node can no longer make one (settled one by one
        before the define, they had stayed behind with no VM; undone while the node wrote on, a later volume of
        the restore had come back with no record)."""
        pools = sorted({target.split("/", 1)[0] for target in targets.values()})
        store = self._context.store
        with self._storage._pools_locked(pools):
            for target in targets.values():
                if self._storage._taken(node, agent_uri, target):
                    raise AlreadyExists(f"volume '{target}' exists already (in the storage, if not in `pvc storage "
                                        "volume list`); nothing was imported")
            for old, target in targets.items():
                new_pool, new_name = target.split("/", 1)
                storage_intents.begin_new(store, storage_records.volume_record(new_pool, new_name, sizes[old]),
                                          "clone", self._context.name, for_s=STORAGE_ACTION_TIMEOUT_S)
            try:
                made = restore(RESTORE_WITHIN_S)
            except Unavailable as error:
                # No answer: the node may be restoring still, and would make a volume after any removal now.
                # The intents stay; a storage check resolves them once the node's time is up.
                raise Unavailable(f"{error}; no VM was defined, and the import's volumes are removed once the "
                                  f"node's time for them ends (within {STORAGE_ACTION_TIMEOUT_S:.0f} s)") from None
            except BaseException:
                self._remove_new(node, agent_uri, targets)
                raise
        settled = {target: {**storage_intents.settled(store.read(schema.volume(*target.split("/", 1)))),
                            "size_bytes": size_bytes} for target, size_bytes in made.items()}

        def settle(transaction: Transaction) -> None:
            for target, record in settled.items():
                transaction.set(schema.volume(*target.split("/", 1)), record)
        meta = {key: spec.get(key) for key in ("node_limit", "node_selector", "migration_method", "max_downtime")}
        try:
            defined = self._vms._define(xml, None, {**meta, "node_autostart": bool(spec.get("node_autostart"))},
                                        also=settle)
        except BaseException:
            with self._storage._pools_locked(pools):
                self._remove_new(node, agent_uri, targets)
            raise
        for target in settled:
            self._storage._refresh_volume(*target.split("/", 1))
        return defined

    def _remove_new(self, node: str, agent_uri: str, targets: dict[str, str]) -> None:
        for target in targets.values():
            self._storage._agent(node, agent_uri, "volume_remove", *target.split("/", 1))
            storage_intents.forget(self._context.store, *target.split("/", 1))
            self._storage._refresh_volume(*target.split("/", 1))

    def _import_targets(self, last: dict[str, Any], name: str | None, pool: str | None
                        ) -> tuple[str, dict[str, str], str]:
        """The new VM's name, its volumes' new names by their exported ones, and its domain document, for an
        import whose last export is `last`; refused if the VM or a volume exists already."""
        vm = schema.check_name("VM", name if name is not None else last["vm"])
        if self._context.store.read(schema.vm(vm)) is not None:
            raise AlreadyExists(f"a VM named '{vm}' exists already")
        targets = {}
        for index, volume in enumerate(last["volumes"]):
            old_pool, old_name = volume["volume"].split("/", 1)
            new_pool = pool or old_pool
            new_name = old_name if name is None else f"{vm}_disk{index}"
            self._storage.volume_list(new_pool)
            if self._context.store.read(schema.volume(new_pool, new_name)) is not None:
                raise AlreadyExists(f"volume '{new_pool}/{new_name}' exists already")
            targets[volume["volume"]] = f"{new_pool}/{new_name}"
        xml = _renamed(last["spec"]["xml"], vm, targets, keep_uuid=name is None)
        # Checked as the define will check it, before any data comes: a document this cluster refuses (a host
        # device, where they are not allowed) had been refused only after the whole stream was restored.
        domain_xml.parse(xml, allow_host_devices=self._vms._allow_host_devices())
        return vm, targets, xml

    def import_stream_begin(self, links: list[dict[str, Any]], size_bytes: int, checksum: str,
                            name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Check a chain of streamed exports (`pvc.mirror_manifest.checked_chain`) and the new names, and have a
        storage node issue the ticket under which the client streams the chain's data into a stage of that node
        (`pvc.node.mirror_transfer.receive_stage`); `import_stream_end` then imports from it. Nothing is
        recorded yet: a stream that never comes, or breaks off, leaves nothing."""
        links = mirror_manifest.checked_chain(links)
        if size_bytes != sum(volume["bytes"] for link in links for volume in link["volumes"]):
            raise InvalidInput("the import's size is not the sum of its volumes' streams")
        if pool is not None:
            self._storage.volume_list(pool)
        vm, targets, _xml = self._import_targets(links[-1], name, pool)
        node, agent_uri = self._storage._storage_node(next(iter(targets.values())).split("/", 1)[0])[:2]
        ticket = self._storage._agent(node, agent_uri, "open_stream_stage",
                                      next(iter(targets.values())).split("/", 1)[0], vm, size_bytes, checksum)
        return {**ticket, "node": node, "vm": vm}

    def import_stream_end(self, links: list[dict[str, Any]], node: str, stage: str, name: str | None = None,
                          pool: str | None = None) -> dict[str, Any]:
        """Define a new, stopped VM from the chain `links` staged on `node` (`import_stream_begin`), as `import_`
        does from a backup root: the new volumes recorded first, made by the node from the stage (checking
        every volume's stream against its manifest), settled, then the VM defined; any failure removes them."""
        links = mirror_manifest.checked_chain(links)
        _vm, targets, xml = self._import_targets(links[-1], name, pool)
        pools = sorted({target.split("/", 1)[0] for target in targets.values()})
        agent_uri = next((uri for name_, uri, _backend in self._storage._storage_nodes(pools[0]) if name_ == node),
                         None)
        if agent_uri is None:
            raise NotFound(f"node '{node}', which holds the streamed import, serves pool '{pools[0]}' no longer")
        renamed = [{**link, "volumes": [{**volume, "volume": targets[volume["volume"]], "source": volume["volume"]}
                                        for volume in link["volumes"]]} for link in links]
        sizes = {volume["volume"]: volume["size_bytes"] for volume in links[-1]["volumes"]}
        try:
            return self._restored(node, agent_uri, targets, xml, links[-1]["spec"], sizes,
                                  lambda within_s: self._storage._agent(node, agent_uri, "restore_stream", stage,
                                                                        renamed, within_s))
        except BaseException:
            # Refused before the node used it (a name taken meanwhile): the stage goes now, not in an hour. A
            # discard that fails must not hide why the import failed; the node drops the stage itself later.
            try:
                self._storage._agent(node, agent_uri, "import_discard", stage)
            except Exception as error:
                log.warning("the stage %s of a failed import stays on node %s until it expires: %s", stage, node,
                            error)
            raise

    def _settled(self, vm: str, snapshot: str) -> dict[str, Any]:
        record = self._context.store.read(schema.vm_snapshot(vm, schema.check_name("snapshot", snapshot)))
        if record is None:
            raise NotFound(f"VM '{vm}' has no snapshot named '{snapshot}'")
        if record.get("intent"):
            raise Conflict(f"snapshot '{vm}@{snapshot}' is being changed ({record['intent']['action']}); try again")
        return record

    def _any_pool(self) -> str:
        pools = [view["name"] for view in self._storage.pool_list()]
        if not pools:
            raise NotFound("this cluster has no storage pool to import into")
        return pools[0]


def _renamed(xml: str, vm: str, targets: dict[str, str], keep_uuid: bool) -> str:
    """The exported domain document with its new name, its disks on the new volumes, and (as a copy) without
    its UUID, so that a new one is given."""
    root = domain_xml.parse_root(xml)
    root.find("name").text = vm
    if not keep_uuid:
        for element in root.findall("uuid"):
            root.remove(element)
    for source in root.iterfind("devices/disk/source"):
        old = f"{source.get('pool')}/{source.get('volume')}"
        if old in targets:
            new_pool, new_name = targets[old].split("/", 1)
            source.set("pool", new_pool)
            source.set("volume", new_name)
    return etree.tostring(root, encoding="unicode")
