"""The sending end of a mirror: a VM snapshot streamed to another PVC cluster's upload channel.

The coordinator asks the destination (`pvc.rpc.mirror.destinations`) what it holds of the VM: nothing (the
snapshot goes whole), a mirror whose newest snapshot this cluster holds too, taken at the same moment (it goes
as the changes since that one), or anything else, which is refused before any data moves. A storage node here
writes the streams into its staging space (`pvc.node.mirror_transfer`), the destination checks the send and
records its intent, the node streams it to the destination's storage node, and the destination records it; a
failure anywhere after the destination's intent has the destination undo it, so nothing is left half-made on
either side (the staged file here always goes).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from kazoo.exceptions import NoNodeError

from pvc import automirror_settings, schema
from pvc.errors import AlreadyExists, Busy, Conflict, InvalidInput, NotFound
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.mirror import destinations
from pvc.rpc.vm_backups import VMBackups
from pvc.secrets_box import SecretsBox

log = logging.getLogger(__name__)


class MirrorSender:
    def __init__(self, context: CoordinatorContext, backups: VMBackups, vms: Any):
        self._context = context
        self._backups = backups
        self._vms = vms

    def _box(self) -> SecretsBox:
        return SecretsBox(self._context.settings["cluster_secret"])

    def send(self, vm: str, snapshot: str, destination: str, connection: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        """Send `vm`'s `snapshot` to `destination` (stored from `connection` first, when given)."""
        schema.check_name("VM", vm)
        schema.check_name("snapshot", snapshot)
        schema.check_name("mirror destination", destination)
        if connection is not None:
            destinations.save(self._context.store, self._box(), destination, connection)
        client = destinations.connect(self._context.store, self._box(), destination)
        try:
            return self._send(client, vm, snapshot, destination)
        finally:
            client.close()

    def destination_add(self, name: str, connection: dict[str, Any]) -> dict[str, Any]:
        """Store destination `name`, its key sealed, after checking that it answers with that key."""
        schema.check_name("mirror destination", name)
        client = destinations.client(connection)
        try:
            client.cluster.status()
        finally:
            client.close()
        return destinations.save(self._context.store, self._box(), name, connection)

    def destination_list(self) -> list[dict[str, Any]]:
        return destinations.listed(self._context.store)

    def destination_remove(self, name: str) -> None:
        settings = automirror_settings.resolve(self._context.cache.config.get())
        destinations.remove(self._context.store, name, settings["automirror_destination"])

    def prune(self, vm: str, destination: str, keep: int, prefix: str) -> list[str]:
        """Have `destination` remove its mirror's older snapshots named `prefix`... beyond `keep`."""
        client = destinations.connect(self._context.store, self._box(), destination)
        try:
            return client.vms.mirror_prune(vm, keep, prefix)
        finally:
            client.close()

    def newest(self, vm: str, destination: str) -> str | None:
        """The newest snapshot `destination`'s mirror of `vm` holds, None when it holds no mirror of it."""
        client = destinations.connect(self._context.store, self._box(), destination)
        try:
            held = client.vms.mirror_state(vm)
        finally:
            client.close()
        return (held.get("newest") or {}).get("name") if held.get("mirror") else None

    def handover(self, vm: str, destination: str, snapshot: str | None = None) -> dict[str, Any]:
        """For a promotion on the destination: stop the VM here and hold it (`_hold`), snapshot it and send that
        snapshot, so that the mirror there holds the VM's last state and is the only copy that may run."""
        if self._vms._control.desired(vm).state != schema.MIRROR_STATE:
            self._vms.stop(vm, wait=True)
            self._hold(vm, destination)
        taken = self._vms.snapshot_create(vm, snapshot or time.strftime("mirror-final-%Y%m%d%H%M%S"))
        return self.send(vm, taken["name"], destination)

    def _hold(self, vm: str, destination: str) -> None:
        """Make the stopped VM a mirror of its copy on `destination`, in one version-checked transaction: from
        then on it refuses to start, whoever asks (a command, a node's ready, its autostart), so that once the
        destination promotes its copy the VM runs on one cluster only. A VM started again since its stop was
        confirmed is not held, and nothing is promoted. `pvc vm mirror promote` here makes it an ordinary VM
        again; `pvc vm remove` removes it (a second handover finds it held)."""
        control, store = self._vms._control, self._context.store
        with control.locked(vm):
            desired = control.desired(vm)
            if desired.state != "stop" or control.view(vm)["running"] is not False:
                raise Conflict(f"VM '{vm}' was started again during its handover; nothing was sent or promoted")
            store.transaction() \
                .set(schema.vm_key(vm, "state"), schema.MIRROR_STATE, version=desired.versions["state"]) \
                .set(schema.vm_key(vm, "placement"), {**desired.placement, "autostart": False},
                     version=desired.versions["placement"]) \
                .check(schema.vm(vm), desired.versions["spec"]) \
                .put(schema.mirror_vm(vm), {"source": {"handed_over_to": destination}, "snapshots": []}) \
                .commit()
            self._context.cache.vms.refresh(vm)

    def _send(self, client: Any, vm: str, snapshot: str, destination: str) -> dict[str, Any]:
        self._undo_abandoned_send(vm)
        held = client.vms.mirror_state(vm)
        if held["exists"] and not held["mirror"]:
            raise Conflict(f"destination '{destination}' has a VM named '{vm}' that is not a mirror; nothing was sent")
        record = self._backups._settled(vm, snapshot)
        parent = self._parent(vm, snapshot, record, held, destination)
        manifest, node, agent_uri = self._backups.plan_export(vm, snapshot, parent["name"] if parent else None)
        agent, store = self._backups._storage._agent, self._context.store
        staged = agent(node, agent_uri, "mirror_stage", manifest)
        try:
            sent = {"vm": vm, "snapshot": snapshot, "created": record["created"],
                    "parent": parent["name"] if parent else None,
                    "parent_created": parent["created"] if parent else None,
                    "spec": manifest["spec"], "volumes": staged["volumes"]}
            source = {"cluster": self._context.settings.get("cluster_name"), "destination": destination}
            ticket = client.vms.mirror_receive(sent, staged["size_bytes"], staged["checksum"], source)
            store.write(schema.mirror_outgoing(vm), {"send_id": ticket["send_id"], "destination": destination,
                                                     "snapshot": snapshot, "coordinator": self._context.name,
                                                     "session": store.zk.client_id[0]})
            try:
                answer = agent(node, agent_uri, "mirror_push", staged["stage"],
                               {**ticket, "checksum": staged["checksum"]}, client.connection.tls_ca)
                client.vms.mirror_receive_end(vm, ticket["send_id"], sent, answer["mirror"])
            except BaseException:
                try:
                    client.vms.mirror_receive_abort(vm, ticket["send_id"])
                    self._forget_outgoing(vm)
                except Exception as error:
                    log.warning("the send of %s@%s to %s failed and could not be undone there (the next send "
                                "of it, or its deadline, will): %s", vm, snapshot, destination, error)
                raise
            self._forget_outgoing(vm)
        finally:
            agent(node, agent_uri, "mirror_discard", staged["stage"])
        return {"vm": vm, "snapshot": snapshot, "parent": sent["parent"], "destination": destination,
                "kind": "incremental" if parent else "full", "bytes": staged["size_bytes"], "node": node}

    def _undo_abandoned_send(self, vm: str) -> None:
        """A send of `vm` whose coordinator died before settling it stays unsettled on its destination, which
        refuses every other send of the VM until its deadline (ten minutes) undoes it: a leader resuming an
        automirror run would wait that long. Its record here names the session that made it; once that session
        is gone, the destination is asked to undo it now (`Busy` while its node still writes the stream)."""
        store = self._context.store
        record = store.read(schema.mirror_outgoing(vm))
        if record is None:
            return
        live = store.zk.exists(schema.live_coordinator(record["coordinator"]))
        if live is not None and live.ephemeralOwner == record["session"]:
            raise Busy(f"a send of VM '{vm}' (snapshot '{record['snapshot']}') to '{record['destination']}' is "
                       f"under way from coordinator {record['coordinator']}")
        client = destinations.connect(store, self._box(), record["destination"])
        try:
            client.vms.mirror_receive_abort(vm, record["send_id"])
        finally:
            client.close()
        log.info("the send of %s@%s to %s left by coordinator %s is undone there", vm, record["snapshot"],
                 record["destination"], record["coordinator"])
        self._forget_outgoing(vm)

    def _forget_outgoing(self, vm: str) -> None:
        try:
            self._context.store.zk.delete(schema.mirror_outgoing(vm))
        except NoNodeError:
            pass

    def _parent(self, vm: str, snapshot: str, record: dict[str, Any], held: dict[str, Any],
                destination: str) -> dict[str, Any] | None:
        """The snapshot the destination's mirror ends at, as this cluster holds it; None for a whole send."""
        newest = held["newest"]
        if newest is None:
            return None
        if newest["name"] == snapshot:
            raise AlreadyExists(f"destination '{destination}' holds snapshot '{snapshot}' of VM '{vm}' already")
        try:
            parent = self._backups._settled(vm, newest["name"])
        except NotFound:
            parent = None
        if parent is None or parent["created"] != newest["source_created"]:
            raise Conflict(f"the mirror of VM '{vm}' on destination '{destination}' has diverged: its newest "
                           f"snapshot '{newest['name']}' is not one this cluster holds; nothing was sent")
        if parent["created"] >= record["created"]:
            raise InvalidInput(f"snapshot '{snapshot}' is not newer than '{newest['name']}', which destination "
                               f"'{destination}' holds already")
        return parent
