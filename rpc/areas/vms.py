"""Remote object `vms`: defining, changing, starting, stopping and moving virtual machines."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import Pyro5.server

from pvc import domain_xml, models, node_index, placement, schema
from pvc.cache import OWN_VALUE, Views
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PVCError, Unavailable
from pvc.rpc import network_use, removal
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.mirror import automirror, destinations
from pvc.rpc.retries import retry_safe
from pvc.rpc.vm_control import VMControl, refuse_mirror
from pvc.rpc.backup import run as backup_run, status as backup_status
from pvc.rpc.vm_edits import VMEditor, initial_tags
from pvc.rpc.vm_snapshots import VMSnapshots
from pvc.store import Transaction

META_KEYS = ("node_limit", "node_selector", "node_autostart", "migration_method", "max_downtime", "profile")


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"list", "info", "info_long", "dump", "log", "tags", "snapshot_list", "snapshot_info",
                   "autobackup_status", "automirror_status", "mirror_state"})
class VMsArea:
    """``client.vms``: defining, changing, starting, stopping and moving virtual machines, and their whole-VM
    snapshots. Every change is recorded in ZooKeeper first and carried out by the VM's node at once;
    ``wait=True`` waits for the outcome."""

    def __init__(self, context: CoordinatorContext, control: VMControl, snapshots: VMSnapshots | None = None):
        self._context = context
        self._control = control
        self._snapshots = snapshots
        self.backups = None
        """`pvc.rpc.vm_backups.VMBackups`, set once the storage area exists."""
        self.storage = None
        """`pvc.rpc.areas.storage.StorageArea`, set as `backups` is: a removal's volumes go through it."""
        self.mirror_sender = None
        self.mirror_receiver = None
        """`pvc.rpc.mirror.send.MirrorSender` and `pvc.rpc.mirror.receive.MirrorReceiver`, set with `backups`."""
        self._editor = VMEditor(context, control, self._spec, self._allow_host_devices)
        self._views = Views(context.cache.vms, _list_view)

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The VM as it now is, for a call whose coordinator died before answering; None once it is gone."""
        if method.startswith(("snapshot_", "autobackup_", "automirror_", "mirror_")):
            return None
        if method == "define":
            name = domain_xml.parse(args[0] if args else kwargs["xml"], allow_host_devices=True).name
        else:
            arguments = {**dict(zip(("vm", "new_name") if method == "rename" else ("vm",), args)), **kwargs}
            name = arguments.get("new_name") or arguments["vm"]
        try:
            return self.info(name)
        except NotFound:
            return None

    # -- reading ---------------------------------------------------------------------------------------

    def list(self, node: str | None = None, state: str | None = None,
             tag: str | None = None) -> list[dict[str, Any]]:
        """Every VM (optionally only those on `node`, in `state`, or with `tag`), sorted by name.

        :raises InvalidInput: an unknown `state`
        """
        if state is not None and state not in schema.VM_STATES:
            raise InvalidInput(f"unknown state '{state}' (one of: {', '.join(schema.VM_STATES)})")
        self._context.cache.catch_up()
        views = self._views.current()
        if node is None and state is None and tag is None:
            return views
        return [view for view in views
                if (node is None or view["node"] == node) and (state is None or view["state"] == state)
                and (tag is None or tag in view["tags"])]

    def info(self, vm: str) -> dict[str, Any]:
        """The VM: its desired state, where it is and was, what its node last reported (``running``: true, false or
        None for unknown, with why), its metadata, tags and hardware.

        :raises NotFound: no VM of that name
        """
        return self._control.view(vm)

    def info_long(self, vm: str) -> dict[str, Any]:
        """Everything `info` knows, plus the node's view (upstream's ``vm info --format long``): its last report
        on the VM in full (``node_report``: running, error, migration note, when), the desired placement as
        recorded, and where the node writes the VM's console log (``console_log``: path and size, or why the
        node could not say).

        :raises InvalidInput: a malformed name
        :raises NotFound: no VM of that name
        :raises Unavailable: never to the caller: a node without an agent, or whose agent did not answer, shows
            as ``console_log["unavailable"]`` instead
        """
        raw = self._control.raw(vm)
        view = self._control.view(vm)
        node = (raw.get("placement") or {}).get("node")
        try:
            agent_uri = self._node(node).get("agent_uri") if node else None
            if not agent_uri:
                raise Unavailable(f"node {node} has no agent")
            console_log = self._context.agents.call(node, agent_uri, "console_log_file", vm)
        except PVCError as error:
            console_log = {"path": None, "size_bytes": None, "unavailable": str(error)}
        return {**view, "node_report": raw.get("status") or {}, "placement": raw.get("placement") or {},
                "console_log": console_log}

    def dump(self, vm: str) -> str:
        """The VM's libvirt domain XML as PVC stores it.

        :raises NotFound: no VM of that name
        """
        return self._control.raw(vm)[OWN_VALUE]["xml"]

    def log(self, vm: str, lines: int = 50) -> list[str]:
        """The last `lines` lines of the VM's serial console, from the node it is on.

        :raises NotFound: no VM of that name
        :raises Unavailable: its node has no agent, or the agent did not answer
        """
        node = self._control.raw(vm)["placement"]["node"]
        agent_uri = (self._node(node) or {}).get("agent_uri")
        if not agent_uri:
            raise Unavailable(f"node {node} has no agent to read VM '{vm}''s console from")
        return self._context.agents.call(node, agent_uri, "console", vm, lines)

    # -- defining --------------------------------------------------------------------------------------

    def define(self, xml: str, target: str | None = None, node_limit: list[str] | None = None,
               node_selector: str | None = None, node_autostart: bool = False,
               migration_method: str | None = None, max_downtime: int | None = None,
               tags: list[str] | None = None, protected_tags: list[str] | None = None,
               profile: str | None = None) -> dict[str, Any]:
        """Record a new VM and define it on its node (chosen by its selector unless `target` is given), with
        user `tags` and `protected_tags` (which `remove_tag` refuses).

        :raises InvalidInput: the XML is malformed, or has an element PVC refuses (named), or bad metadata
        :raises AlreadyExists: a VM of that name or UUID exists
        :raises NotFound: a `target` or `node_limit` node does not exist
        :raises Conflict: `target` is outside `node_limit`, or no node can take the VM
        """
        return self._define(xml, target, {"node_limit": node_limit, "node_selector": node_selector,
                                          "node_autostart": node_autostart, "migration_method": migration_method,
                                          "max_downtime": max_downtime, "profile": profile}, tags, protected_tags)

    def _define(self, xml: str, target: str | None, meta: dict[str, Any], tags: list[str] | None = None,
                protected_tags: list[str] | None = None,
                also: Callable[[Transaction], None] | None = None) -> dict[str, Any]:
        """`define`; `also` adds its own writes to the define's transaction, so that they are made exactly
        when the VM is (an import settles the volumes it restored in it)."""
        domain = domain_xml.parse(xml, allow_host_devices=self._allow_host_devices())
        meta = self._checked_meta(meta)
        if self._context.cache.vms.get(domain.name) is not None:
            raise AlreadyExists(f"a VM named '{domain.name}' exists already")
        with self._networks_held(domain):
            spec = {**self._spec(domain), **meta, "tags": initial_tags(tags, protected_tags), "generation": 1}
            placement.check_fits_a_node(self._context.node_views(), spec)
            node = self._initial_node(spec, target)
            store = self._context.store
            values = {OWN_VALUE: spec, "state": "stop", "placement": {"node": node, "last_node": None}}
            try:
                transaction = store.transaction().create(schema.vm_uuid(domain.uuid), domain.name)
                for key, value in values.items():
                    transaction.create(schema.vm(domain.name) if key == OWN_VALUE else
                                       schema.vm_key(domain.name, key), value)
                node_index.place(store, transaction, domain.name, None, node)
                if also is not None:
                    also(transaction)
                transaction.commit()
            except AlreadyExists:
                raise self._taken(domain) from None
        self._context.cache.vms.written(domain.name, values, transaction.zxid)
        return self._control.converge(domain.name, [node], wait=False)

    def modify(self, vm: str, xml: str, restart: bool = False) -> dict[str, Any]:
        """Replace the VM's definition (same name and UUID); with `restart`, restart it to apply it now.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: the XML is malformed or names another VM or UUID
        """
        with self._networks_held(domain_xml.parse(xml, allow_host_devices=True)), self._control.locked(vm):
            current = self._control.desired(vm)
            spec = current.spec
            domain = domain_xml.parse(xml, default_uuid=spec["uuid"], allow_host_devices=self._allow_host_devices())
            if domain.name != vm:
                raise InvalidInput(f"the XML names VM '{domain.name}', not '{vm}' (use rename to rename it)")
            if domain.uuid != spec["uuid"]:
                raise InvalidInput(f"the XML has UUID {domain.uuid}, but VM '{vm}' has {spec['uuid']}")
            new_spec = {**spec, **self._spec(domain), "generation": spec.get("generation", 1) + 1}
            placement.check_fits_a_node(self._context.node_views(), new_spec)
            running = current.state == "start"
            self._control.record(vm, current, spec=new_spec, state="restart" if restart and running else None)
        return self._control.converge(vm, [current.placement["node"]], wait=False)

    def rename(self, vm: str, new_name: str) -> dict[str, Any]:
        """Give a stopped VM, that its node has reported off, a new name. The new name's record takes the UUID at
        once; the old name's record is marked removed and goes (the name becomes free) once its node has
        undefined the old domain, as `remove` does; the node defines the new name after the old one is gone
        (libvirt refuses two domains with one UUID).

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises InvalidInput: a malformed name
        :raises Conflict: the VM is running or may be (its node has not reported it off), or is a mirror
            (`pvc.rpc.mirror`), which keeps its sender's name
        :raises AlreadyExists: the new name is taken
        """
        schema.check_name("VM", new_name)
        with self._control.locked(vm):
            raw = self._control.raw(vm)
            current = self._control.desired(vm)
            refuse_mirror(vm, current)
            self._refuse_unless_reported_off(vm, current.state, raw.get("status") or {}, "renamed")
            if self._context.cache.vms.get(new_name) is not None:
                raise AlreadyExists(f"a VM named '{new_name}' exists already")
            spec = current.spec
            new_spec = {**spec, "name": new_name, "xml": domain_xml.renamed(spec["xml"], new_name),
                        "generation": spec.get("generation", 1) + 1}
            try:
                transaction = self._context.store.transaction() \
                    .create(schema.vm(new_name), new_spec) \
                    .create(schema.vm_key(new_name, "state"), current.state) \
                    .create(schema.vm_key(new_name, "placement"), current.placement) \
                    .set(schema.vm_uuid(spec["uuid"]), new_name) \
                    .check(schema.vm(vm), current.versions["spec"]) \
                    .check(schema.vm_key(vm, "placement"), current.versions["placement"]) \
                    .set(schema.vm_key(vm, "state"), removal.REMOVE, version=current.versions["state"])
                node_index.place(self._context.store, transaction, new_name, None, current.placement.get("node"))
                transaction.commit()
            except AlreadyExists:
                raise AlreadyExists(f"a VM named '{new_name}' exists already") from None
            self._context.cache.vms.refresh(vm)
            self._context.cache.vms.refresh(new_name)
        nodes = [(raw.get("placement") or {}).get("node"), (raw.get("status") or {}).get("node")]
        self._control.poke(vm, nodes)
        if removal.finish(self._context.store, vm, self._volume_users):
            self._control.forget_lock(vm)
        self._context.cache.vms.refresh(vm)
        return self._control.converge(new_name, [raw["placement"]["node"]], wait=False)

    def remove(self, vm: str, wait: bool = False, force: bool = False, timeout: float = 120.0,
               volumes: bool = False) -> dict[str, Any]:
        """Remove the VM, in order: its state becomes ``remove``; its node stops and undefines the domain and
        reports so; only then do the record and its UUID go. A node that is down does this when it is back
        (the leader then forgets the record); a node that is fenced or no longer exists cannot report, so the
        record goes without it. With `wait`, return once the record is gone (`Unavailable` after `timeout`
        seconds, the removal still recorded). With `force`, the record goes now, unconfirmed: a node still
        holding the domain undefines it when it next converges (PVC's metadata in the domain marks it).

        With `volumes`, the PVC volumes its disks use go with the record, each unless another VM uses it
        (`pvc.rpc.removal`); the answer then names the volumes removed and those kept, with why.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Unavailable: with `wait`, the node has not undefined it after `timeout` seconds
        """
        def decide() -> dict[str, Any]:
            raw = self._control.raw(vm)
            if force:
                spec = raw[OWN_VALUE]
                removal.delete(self._context.store, vm, spec["uuid"], users=self._volume_users,
                               volumes=(spec.get("volumes") or []) if volumes else [])
                return raw
            desired = self._control.desired(vm)
            spec = {key: value for key, value in desired.spec.items() if key != "remove_volumes"}
            if volumes:
                spec["remove_volumes"] = spec.get("volumes") or []
            # A later `vm undefine` withdraws the volumes' removal, as a `vm remove` adds it.
            changed = spec if spec != desired.spec else None
            if desired.state != removal.REMOVE or changed is not None:
                self._control.record(vm, desired, state=removal.REMOVE, spec=changed)
            return raw

        # A move just answered may still be recorded as done by the leader under the removal's read: it decides
        # again rather than answer Busy.
        raw = self._control.decided(vm, decide, removing=True)
        self._context.cache.vms.refresh(vm)
        node = (raw.get("placement") or {}).get("node")
        # A removal the node confirms at once ends now (`removed: true` without `wait`), so the node is asked
        # in this thread; a forced one is settled already, and a frozen node's agent must not hold its answer.
        (self._control.poke_soon if force else self._control.poke)(vm, [node, (raw.get("status") or {}).get("node")])
        deadline = time.monotonic() + timeout
        while not removal.finish(self._context.store, vm, self._volume_users):
            if not wait:
                self._context.cache.vms.refresh(vm)
                return {"name": vm, "removed": False, "waiting_for": node}
            if time.monotonic() > deadline:
                raise Unavailable(f"VM '{vm}' is marked removed, but node {node} has not undefined it after "
                                  f"{timeout:g} s; its record goes once it does")
            time.sleep(0.2)
        self._context.cache.vms.refresh(vm)
        self._control.forget_lock(vm)
        if not volumes:
            return {"name": vm, "removed": True}
        return {"name": vm, "removed": True, **self.storage._removed_with(vm, raw[OWN_VALUE].get("volumes") or [])}

    def _volume_users(self, volume: str) -> list[str]:
        pool, _, name = volume.partition("/")
        return self._context.volume_users(pool, name)

    def set_meta(self, vm: str, **changes: Any) -> dict[str, Any]:
        """Change only the metadata named: node_limit, node_selector, node_autostart, migration_method,
        max_downtime. An empty node_limit clears the limit.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: an unknown key or bad value (unknown selector, migration method, profile)
        :raises NotFound: a `node_limit` node does not exist
        """
        unknown = set(changes) - set(META_KEYS)
        if unknown:
            raise InvalidInput(f"unknown VM metadata: {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(META_KEYS)})")
        with self._control.locked(vm):
            current = self._control.desired(vm)
            meta = self._checked_meta({**{key: current.spec.get(key) for key in META_KEYS}, **changes})
            self._control.record(vm, current, spec={**current.spec, **meta})
        return self._control.view(vm)

    # -- editing parts (`pvc.rpc.vm_edits`): each returns {"name", "change", "applied", "reason"} ----------

    def set_vcpus(self, vm: str, vcpus: int, restart: bool = False, live: bool = True) -> dict[str, Any]:
        """Give the VM `vcpus` virtual CPUs; with `live`, on the running guest too when libvirt can; with `restart`,
        restart it to apply the rest. Returns ``{name, change, applied, reason}``.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        """
        return self._editor.set_vcpus(vm, vcpus, restart, live)

    def set_memory(self, vm: str, memory_mib: int, restart: bool = False, live: bool = True) -> dict[str, Any]:
        """Give the VM `memory_mib` MiB; live, libvirt can shrink a running guest's memory but not grow it past its
        maximum; `restart` applies the rest. Returns ``{name, change, applied, reason}``.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        """
        return self._editor.set_memory(vm, memory_mib, restart, live)

    def add_volume(self, vm: str, volume: str, target: str | None = None, bus: str = "scsi",
                   restart: bool = False, live: bool = True, kind: str = "rbd") -> dict[str, Any]:
        """Attach PVC volume ``POOL/VOLUME`` as a disk (at `target`, or the next free name for `bus`); with
        `kind` ``file`` (upstream's ``--type file``), the host path `volume` instead, which the cluster's
        ``allow_host_devices`` must allow.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        :raises NotFound: no such PVC volume
        :raises Conflict: another VM uses the volume
        """
        return self._editor.add_volume(vm, volume, target, bus, restart, live, kind)

    def remove_volume(self, vm: str, volume: str, restart: bool = False, live: bool = True) -> dict[str, Any]:
        """Detach PVC volume ``POOL/VOLUME`` (or host file ``/PATH``); the volume itself stays.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        """
        return self._editor.remove_volume(vm, volume, restart, live)

    def add_nic(self, vm: str, source: str, kind: str = "bridge", model: str = "virtio", mac: str | None = None,
                restart: bool = False, live: bool = True) -> dict[str, Any]:
        """Add an interface on bridge `source` (or libvirt network, `kind` ``network``); a MAC is generated
        unless `mac` is given.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        """
        with self._networks_held(None) if kind == "network" else nullcontext():
            return self._editor.add_nic(vm, source, kind, model, mac, restart, live)

    def remove_nic(self, vm: str, source: str | None = None, mac: str | None = None, restart: bool = False,
                   live: bool = True) -> dict[str, Any]:
        """Remove the interface with `mac`, or every interface on `source`.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises InvalidInput: a bad value
        :raises Conflict: a live change the node cannot make (no agent)
        :raises OperationFailed: the node failed to apply it live
        """
        return self._editor.remove_nic(vm, source, mac, restart, live)

    # -- tags ------------------------------------------------------------------------------------------

    def tags(self, vm: str) -> dict[str, Any]:
        """{"name", "tags": [{"name", "protected"}]}.

        :raises NotFound: no VM of that name
        """
        return self._editor.tags(vm)

    def add_tag(self, vm: str, tag: str, protected: bool = False) -> dict[str, Any]:
        """Tag the VM (`protected`: `remove_tag` refuses it); returns the VM's tags.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises InvalidInput: a malformed tag
        """
        return self._editor.add_tag(vm, tag, protected)

    def remove_tag(self, vm: str, tag: str) -> dict[str, Any]:
        """Remove one of the VM's tags; returns the VM's tags.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises NotFound: the VM has no such tag
        :raises Conflict: the tag is protected
        """
        return self._editor.remove_tag(vm, tag)

    # -- state -----------------------------------------------------------------------------------------

    def start(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Start the VM on its node; with `wait`, return once the node reports it running.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._set_state(vm, "start", wait)

    def restart(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Restart the VM (a guest shutdown, then a start) on its node; with `wait`, once it runs again.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._set_state(vm, "restart", wait)

    def shutdown(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Shut the VM down through its guest (ACPI), destroyed after the node's ``shutdown_timeout``; with `wait`,
        return once it is off.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._set_state(vm, "shutdown", wait)

    def stop(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Stop the VM at once (destroy, no guest shutdown); with `wait`, return once it is off.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._set_state(vm, "stop", wait)

    def disable(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Stop the VM at once, as `stop` does, under upstream PVC's word for a VM taken out of service: flushes
        and recoveries leave it alone, as they leave a stopped VM; with `wait`, return once it is off.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._set_state(vm, "disable", wait)

    @staticmethod
    def _refuse_unless_reported_off(vm: str, state: str, status: dict[str, Any], doing: str) -> None:
        """Only a VM asked to be stopped whose node has said it is off (or that no node ever reported, so never
        ran) may change what claims it: a VM renamed while its node could not say whether it still ran (a stop
        that timed out), or while it was moving back, carried no report under its new name, so another node
        could claim and start it while the old copy ran on."""
        if state in schema.RUNNING_STATES or state in ("provision", "remove"):
            raise Conflict(f"VM '{vm}' must be stopped before it is {doing} (it is {state})")
        if status and (status.get("running") is not False or status.get("migrating_to")):
            said = "may still run" if status.get("running") is None else "runs"
            raise Conflict(f"VM '{vm}' {said} on node {status.get('node')} by its last report: it must be "
                           f"reported off before it is {doing}")

    def _refuse_half_rolled_back(self, vm: str) -> None:
        snapshot = self._snapshots.rollback_pending(vm) if self._snapshots is not None else None
        if snapshot is not None:
            raise Conflict(f"VM '{vm}' has an unfinished rollback to snapshot '{snapshot}' (its volumes may be "
                           f"part rolled back): finish it with 'pvc vm snapshot rollback {vm} {snapshot}' first")

    def _set_state(self, vm: str, state: str, wait: bool) -> dict[str, Any]:
        def decide() -> str:
            current = self._control.desired(vm)
            node = current.placement["node"]
            refuse_mirror(vm, current)
            if state in ("start", "restart") and current.state not in schema.RUNNING_STATES:
                self._refuse_half_rolled_back(vm)
                self._check_room_to_start(vm, current.spec, node)
            if state == "start" and current.placement.get("autostart"):
                # The task that parked it (its mark) has no part in this start.
                kept = {key: value for key, value in current.placement.items() if key != "task"}
                self._control.record(vm, current, state=state, placement={**kept, "autostart": False})
            else:
                self._control.record(vm, current, state=state)
            return node

        return self._control.converge(vm, [self._control.decided(vm, decide)], wait)

    # -- moving ----------------------------------------------------------------------------------------

    def migrate(self, vm: str, target: str | None = None, force: bool = False, wait: bool = False,
                force_live: bool = False) -> dict[str, Any]:
        """Move a running VM to `target` (or its selector's choice), remembering where it was, so that
        `unmigrate` returns it. A target outside its node limit needs `force`. With `force_live` (upstream's
        ``--force-live``) this move is live or not at all: a live migration that fails, or a node that cannot
        migrate live, keeps the VM where it runs, with the error, instead of shutting it down to move it.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises NotFound: no node of that name
        :raises Conflict: the target is its node already, outside its node limit (without `force`) or cannot take
            it, or no node can
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._move(vm, target, force, wait, remember=True, force_live=force_live)

    def move(self, vm: str, target: str | None = None, force: bool = False, wait: bool = False) -> dict[str, Any]:
        """Move a VM to `target` for good: no way back is remembered.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises NotFound: no node of that name
        :raises Conflict: the target is its node already, outside its node limit (without `force`) or cannot take
            it, or no node can
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        return self._move(vm, target, force, wait, remember=False)

    def unmigrate(self, vm: str, wait: bool = False) -> dict[str, Any]:
        """Return a migrated VM to the node it came from.

        :raises NotFound: no VM of that name
        :raises Busy: another command holds the VM's lock
        :raises Conflict: the VM is being removed
        :raises Conflict: the VM was not migrated, or its previous node cannot take it
        :raises OperationFailed: with `wait`, the node reported an error (the message is the node's)
        :raises Unavailable: with `wait`, the node did not report the outcome in time
        """
        def decide() -> list[str | None]:
            current = self._control.desired(vm)
            refuse_mirror(vm, current)
            where = current.placement
            if not where.get("last_node"):
                raise Conflict(f"VM '{vm}' has not been migrated: there is nowhere to return it to")
            self._check_node_takes(where["last_node"])
            self._control.record(vm, current, state=_moving_state(current.state, "unmigrate"),
                                 placement={"node": where["last_node"], "last_node": None})
            return [where["node"], where["last_node"]]

        return self._control.converge(vm, self._control.decided(vm, decide), wait)

    def _move(self, vm: str, target: str | None, force: bool, wait: bool, remember: bool,
              force_live: bool = False) -> dict[str, Any]:
        def decide() -> list[str | None]:
            desired = self._control.desired(vm)
            refuse_mirror(vm, desired)
            spec, where = desired.spec, desired.placement
            current = where["node"]
            view = models.vm_view(vm, {**self._control.raw(vm), OWN_VALUE: spec, "state": desired.state,
                                       "placement": where})
            chosen = target
            if chosen is None:
                chosen = placement.choose(self._context.placement_views(), view, self._context.selector(spec), current)
            else:
                self._check_target(chosen, view, current, force)
            last_node = (where.get("last_node") or current) if remember else None
            self._control.record(vm, desired, state=_moving_state(desired.state, "migrate"),
                                 placement={"node": chosen, "last_node": last_node,
                                            **({"force_live": True} if force_live else {})})
            return [current, chosen]

        return self._control.converge(vm, self._control.decided(vm, decide), wait)

    # -- checks ----------------------------------------------------------------------------------------

    def _check_target(self, target: str, vm: dict[str, Any], current: str | None, force: bool) -> None:
        self._node(target)
        node = next(each for each in self._context.placement_views() if each["name"] == target)
        if target == current:
            raise Conflict(f"VM '{vm['name']}' is already on node {target}")
        if vm["node_limit"] and target not in vm["node_limit"] and not force:
            raise Conflict(f"node {target} is outside VM '{vm['name']}''s node limit "
                           f"({', '.join(vm['node_limit'])}); use --ignore-limit to override")
        reason = placement.rejection(node, {**vm, "node_limit": []}, current)
        if reason:
            raise Conflict(f"node {target} {reason}: it cannot take VM '{vm['name']}'")

    def _check_room_to_start(self, vm: str, spec: dict[str, Any], node: str) -> None:
        """Refuse to start a VM its node has no memory left for (`placement.memory_rejection`)."""
        view = next((each for each in self._context.placement_views() if each["name"] == node), None)
        reason = placement.memory_rejection(view, spec) if view is not None else None
        if reason:
            raise Conflict(f"VM '{vm}' cannot start: node {node} {reason}; migrate it to a node with room "
                           "(pvc vm migrate) or raise the cluster's memory_overcommit")

    def _check_node_takes(self, name: str) -> None:
        reason = placement.rejection(self._node(name), {}, None)
        if reason:
            raise Conflict(f"node {name} {reason}")

    # -- whole-VM snapshots (`pvc.rpc.vm_snapshots`) -------------------------------------------------

    def snapshot_list(self, vm: str | None = None) -> list[dict[str, Any]]:
        """The whole-VM snapshots of `vm`, or of every VM, oldest first within each VM.

        :raises InvalidInput: a malformed name
        """
        return self._vm_snapshots().list(vm)

    def snapshot_info(self, vm: str, name: str) -> dict[str, Any]:
        """One whole-VM snapshot: when, its volumes, how consistent it is and how long the guest was paused.

        :raises InvalidInput: a malformed VM or snapshot name
        :raises NotFound: the VM has no snapshot of that name
        """
        return self._vm_snapshots().info(vm, name)

    def snapshot_create(self, vm: str, name: str | None = None, crash_consistent: bool = False,
                        max_pause_ms: int | None = None) -> dict[str, Any]:
        """Snapshot the VM's document, metadata and every volume at one moment; a running guest is paused
        around the volume snapshots (for at most `max_pause_ms`) unless `crash_consistent`. The snapshot is
        recorded as an intent first, so a coordinator that dies midway leaves all of it or none, and never a
        paused guest.

        :raises InvalidInput: a malformed name, or a maximum pause out of range
        :raises NotFound: no VM of that name
        :raises AlreadyExists: the VM, or one of its volumes, has a snapshot of that name
        :raises Busy: another command holds the VM's lock, or a change holds a pool's lock
        :raises Unavailable: the VM's state is unknown, or its node has no agent or did not answer
        :raises OperationFailed: the storage or the node refused (its reason); the snapshot is undone
        """
        return self._vm_snapshots().create(vm, name, crash_consistent is True, max_pause_ms)

    def snapshot_remove(self, vm: str, name: str) -> None:
        """Remove a whole-VM snapshot: every volume snapshot it made, then its record.

        :raises InvalidInput: a malformed VM or snapshot name
        :raises NotFound: the VM has no snapshot of that name
        :raises Busy: a change holds a pool's lock
        :raises OperationFailed: the storage refused (its reason)
        """
        self._vm_snapshots().remove(vm, name)

    def snapshot_rollback(self, vm: str, name: str) -> dict[str, Any]:
        """Return a stopped VM's volumes, document and metadata to the snapshot's.

        :raises InvalidInput: a malformed VM or snapshot name
        :raises NotFound: no VM of that name, or no snapshot of that name
        :raises Conflict: the VM is not stopped (or its node cannot say), or the snapshot is being changed
        :raises Busy: another command holds the VM's lock, or a change holds a pool's lock
        :raises OperationFailed: the storage refused (its reason)
        """
        return self._vm_snapshots().rollback(vm, name)

    def snapshot_export(self, vm: str, snapshot: str, destination: str,
                        incremental_parent: str | None = None) -> dict[str, Any]:
        """Write a snapshot to the new directory `destination` under a storage node's backup root, whole or as
        the changes since `incremental_parent` (`pvc.rpc.vm_backups`).

        :raises NotFound: no such VM snapshot (or parent), or no export of the parent beside `destination`
        :raises InvalidInput: a parent not older than the snapshot, a snapshot holding no volume, or a
            destination outside the node's backup roots (or reached through a link)
        :raises AlreadyExists: `destination` exists (nothing is overwritten)
        :raises Conflict: the snapshot is being changed, or it and its parent hold different volumes
        :raises Unavailable: this coordinator exports no snapshots, or no storage node answered
        :raises OperationFailed: the storage or the node refused (its reason)
        """
        return self._vm_backups().export(vm, snapshot, destination, incremental_parent)

    def snapshot_export_stream(self, vm: str, snapshot: str, incremental_parent: str | None = None
                               ) -> dict[str, Any]:
        """Stage a snapshot (whole, or the changes since `incremental_parent`) on a storage node for the caller
        to fetch over the bulk channel (`pvc.vms_client.VMsClient.snapshot_export_to` does both): its manifest
        and the single-use ticket of the download.

        :raises NotFound: no such VM snapshot (or parent)
        :raises InvalidInput: a parent not older than the snapshot, or a snapshot holding no volume
        :raises Conflict: the snapshot is being changed, or it and its parent hold different volumes
        :raises Unavailable: this coordinator exports no snapshots, or no storage node answered
        :raises OperationFailed: the storage or the node refused (its reason)
        """
        return self._vm_backups().export_stream(vm, snapshot, incremental_parent)

    def snapshot_import(self, source: str, name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Define a new, stopped VM from the chain of exports ending at `source`, checking the chain's order
        and every checksum first.

        :raises InvalidInput: a source outside the node's backup roots, or a broken, reordered or corrupted
            chain (the message names what)
        :raises AlreadyExists: a VM, or a volume, of the new names exists
        :raises NotFound: no such pool, or no pool at all
        :raises Unavailable: this coordinator imports no snapshots, or no storage node answered
        :raises OperationFailed: the storage or the node refused (its reason)
        """
        return self._vm_backups().import_(source, name, pool)

    def snapshot_import_stream_begin(self, links: list[dict[str, Any]], size_bytes: int, checksum: str,
                                     name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """For an import streamed from the caller (`pvc.vms_client.VMsClient.snapshot_import_from` makes both
        calls): check the chain of manifests `links` (a full export, then its incrementals in order) and the new
        names, and issue the ticket under which the chain's data (`size_bytes` with `checksum`, `pvc.bulk`) is
        streamed into a stage of a storage node (``node``, ``stage`` in the answer). Nothing is recorded yet.

        :raises InvalidInput: a malformed manifest, or a broken, reordered or incomplete chain (named)
        :raises AlreadyExists: a VM, or a volume, of the new names exists
        :raises NotFound: no such pool
        :raises Unavailable: this coordinator imports no snapshots, or no storage node answered
        """
        return self._vm_backups().import_stream_begin(links, size_bytes, checksum, name, pool)

    def snapshot_import_stream_end(self, links: list[dict[str, Any]], node: str, stage: str,
                                   name: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Define the new, stopped VM from the chain staged on `node`: the volumes recorded first, made from the
        stage with every volume's stream checked against its manifest, settled; any failure removes them.

        :raises InvalidInput: the staged data does not match the manifests (named)
        :raises NotFound: the stage is not on the node (used already, or abandoned), or the node is gone
        :raises AlreadyExists: a VM, or a volume, of the new names exists (made meanwhile)
        """
        return self._vm_backups().import_stream_end(links, node, stage, name, pool)

    # -- mirrors on another cluster (`pvc.rpc.mirror`) -------------------------------------------------

    def snapshot_send(self, vm: str, snapshot: str, destination: str,
                      connection: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a snapshot to the PVC cluster `destination`, whole or as the changes since the newest snapshot
        the mirror there holds; with `connection` (a saved connection's ``uris``, ``api_key``, ``tls_ca``) the
        destination is stored first, its key sealed, for this and later sends.

        :raises NotFound: no such VM snapshot, no stored destination of that name, or the destination lacks a
            pool the VM's volumes are in
        :raises Conflict: the destination holds a VM of that name that is not a mirror, or a mirror that has
            diverged (its newest snapshot is not one this cluster holds)
        :raises AlreadyExists: the destination holds that snapshot already
        :raises Busy: another send to that mirror is under way
        :raises Unavailable: this coordinator sends no mirrors, or the destination or a storage node did not answer
        """
        return self._mirrors("sender").send(vm, snapshot, destination, connection)

    def mirror_destination_add(self, name: str, connection: dict[str, Any]) -> dict[str, Any]:
        """Store (or replace) the PVC cluster sends and automirror reach as `name`, from a saved connection's
        ``uris``, ``api_key`` and ``tls_ca``, once it has answered with that key; the key is stored sealed.

        :raises InvalidInput: a malformed name or connection
        :raises AuthenticationError: the destination refused the key
        :raises Unavailable: the destination did not answer, or this coordinator sends no mirrors
        """
        return self._mirrors("sender").destination_add(name, connection)

    def mirror_destination_list(self) -> list[dict[str, Any]]:
        """The stored destinations: ``name``, ``uris``, ``tls_ca`` (the key is never shown).

        :raises Unavailable: this coordinator sends no mirrors
        """
        return self._mirrors("sender").destination_list()

    def mirror_destination_remove(self, name: str) -> None:
        """Forget a stored destination (its mirrors there stay as they are).

        :raises NotFound: no stored destination of that name
        :raises Conflict: automirror sends to it
        :raises Unavailable: this coordinator sends no mirrors
        """
        self._mirrors("sender").destination_remove(name)

    def mirror_state(self, vm: str) -> dict[str, Any]:
        """What this cluster holds of VM `vm` for a sender: ``exists``, ``mirror``, ``newest`` snapshot.

        :raises InvalidInput: a malformed VM name
        :raises Unavailable: this coordinator receives no mirrors
        """
        return self._mirrors("receiver").state(vm)

    def mirror_receive(self, manifest: dict[str, Any], size_bytes: int, checksum: str,
                       source: dict[str, Any]) -> dict[str, Any]:
        """For a sending cluster: check a send, record its intent and issue the ticket its stream goes under.

        :raises InvalidInput: a malformed manifest
        :raises NotFound: this cluster lacks a pool the volumes are in, or holds no mirror to send incrementally to
        :raises Conflict: a VM of that name that is not a mirror, or a mirror that has diverged from the sender
        :raises AlreadyExists: a volume of that name, or the mirror holds the snapshot already
        :raises Busy: another send to the mirror is under way
        :raises Unavailable: this coordinator receives no mirrors, or no storage node answered
        """
        return self._mirrors("receiver").begin(manifest, size_bytes, checksum, source)

    def mirror_receive_end(self, vm: str, send_id: str, manifest: dict[str, Any],
                           received: dict[str, Any]) -> dict[str, Any]:
        """For a sending cluster: record a send whose stream was applied.

        :raises Conflict: the send was undone meanwhile (past its deadline, or replaced)
        :raises Busy: another change holds the mirror
        :raises Unavailable: this coordinator receives no mirrors
        """
        return self._mirrors("receiver").end(vm, send_id, manifest, received)

    def mirror_receive_abort(self, vm: str, send_id: str) -> None:
        """For a sending cluster: undo a send it gave up on.

        :raises Busy: another change holds the mirror
        :raises Unavailable: this coordinator receives no mirrors, or no storage node answered
        """
        self._mirrors("receiver").abort(vm, send_id)

    def mirror_prune(self, vm: str, keep: int, prefix: str) -> list[str]:
        """For a sending cluster's automirror: remove the mirror's snapshots whose names begin with `prefix`, but
        the newest `keep` of them (never the newest snapshot); the names removed.

        :raises InvalidInput: `keep` is not a whole number of at least 1
        :raises Conflict: the VM is not a mirror
        :raises Busy: a send to the mirror is under way
        :raises Unavailable: this coordinator receives no mirrors
        """
        return self._mirrors("receiver").prune(vm, keep, prefix)

    def mirror_handover(self, vm: str, destination: str) -> dict[str, Any]:
        """For a destination promoting its mirror: stop the VM here and hold it as a mirror of the destination's
        copy (it refuses to start from then on), snapshot it and send that last snapshot.

        :raises NotFound: no VM of that name, or no stored destination of that name
        :raises Conflict: the destination's mirror has diverged
        :raises Unavailable: this coordinator sends no mirrors, or the VM did not stop in time
        """
        return self._mirrors("sender").handover(vm, destination)

    def mirror_promote(self, vm: str, source: dict[str, Any] | None = None,
                       remove_source: bool = False) -> dict[str, Any]:
        """Turn mirror `vm` into an ordinary stopped VM of this cluster. With `source` (the sending cluster's
        saved connection) the VM is first stopped there and its last state sent here; with `remove_source` it
        is then removed there (its volumes stay).

        :raises Conflict: the VM is not a mirror
        :raises Busy: a send to it is under way
        :raises InvalidInput: `remove_source` without `source`
        :raises Unavailable: this coordinator receives no mirrors, or the source cluster did not answer
        """
        if remove_source and source is None:
            raise InvalidInput("removing the source VM needs the source cluster's connection (--from)")
        origin = self._mirrors("receiver").source(vm)
        client = destinations.client(source) if source is not None else None
        try:
            last = client.vms.mirror_handover(vm, origin["destination"])["snapshot"] if client is not None else None
            promoted = self._mirrors("receiver").promote(vm, expected=last)
            if remove_source:
                client.vms.remove(vm, wait=True)
        finally:
            if client is not None:
                client.close()
        return {**promoted, "source_removed": bool(remove_source)}

    def automirror_run(self, vms: list[str] | None = None) -> dict[str, Any]:
        """Start an automirror run now, of `vms` or (none given) of every VM carrying the cluster's
        ``automirror_tag``: each is snapshotted and sent to ``automirror_destination``; the leader runs it as task
        ``automirror-...`` (`pvc cluster task list`).

        :raises InvalidInput: ``automirror_destination`` is not set, or neither VMs nor ``automirror_tag`` are
            given
        :raises NotFound: a VM named does not exist, or the destination was never stored
        :raises Conflict: an automirror run is in progress
        """
        return automirror.record_run(self._context, vms, "command")

    def automirror_status(self) -> dict[str, Any]:
        """The automirror settings, the run in progress and the last run's outcome.

        :raises Unavailable: the coordinator cannot read ZooKeeper
        """
        return automirror.status(self._context)

    def _mirrors(self, end: str) -> Any:
        found = getattr(self, f"mirror_{end}")
        if found is None:
            raise Unavailable("this coordinator sends and receives no mirrors")
        return found

    # -- scheduled backups (`pvc.rpc.backup`) ------------------------------------------------------------

    def autobackup_run(self, vms: list[str] | None = None, force_full: bool = False) -> dict[str, Any]:
        """Start an autobackup run now, of `vms` or (none given) of every VM carrying the cluster's
        ``autobackup_tag``; the leader runs it as task ``autobackup-...`` (`pvc cluster task list`). With
        `force_full`, each VM's backup is a full export, beginning a new chain.

        :raises InvalidInput: ``autobackup_destination`` is not set, or neither VMs nor ``autobackup_tag`` are
            given, or a malformed VM name
        :raises NotFound: a named VM does not exist
        :raises Conflict: a run is in progress already (its task id is named)
        """
        if vms is not None and (isinstance(vms, str) or not isinstance(vms, list)):
            raise InvalidInput("give a list of VM names")
        return backup_run.record_run(self._context, vms, "command", force_full=force_full is True)

    def autobackup_status(self) -> dict[str, Any]:
        """The autobackup settings, the run in progress, the last run's outcome and each VM's chains.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return backup_status.status(self._context)

    def _vm_backups(self):
        if self.backups is None:
            raise Unavailable("this coordinator exports and imports no VM snapshots")
        return self.backups

    def _vm_snapshots(self) -> VMSnapshots:
        if self._snapshots is None:
            raise Unavailable("this coordinator takes no VM snapshots")
        return self._snapshots

    def _node(self, name: str) -> dict[str, Any]:
        node = self._context.node_view(schema.check_name("node", name))
        if node is None:
            raise NotFound(f"no node named '{name}'")
        return node

    def _initial_node(self, spec: dict[str, Any], target: str | None) -> str:
        vm = {"name": spec["name"], **spec}
        if target is not None:
            self._node(target)
            if spec["node_limit"] and target not in spec["node_limit"]:
                raise Conflict(f"target node {target} is outside the node limit ({', '.join(spec['node_limit'])})")
            return target
        return placement.choose(self._context.placement_views(), vm, self._context.selector(spec))

    def _checked_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        limit = meta.get("node_limit") or []
        if isinstance(limit, str):
            limit = [part for part in limit.split(",") if part]
        for node in limit:
            self._node(node)
        if meta.get("node_selector"):
            self._context.selector(meta)
        method = meta.get("migration_method")
        if method is not None and method not in schema.MIGRATION_METHODS:
            raise InvalidInput(f"unknown migration method '{method}' (one of: {', '.join(schema.MIGRATION_METHODS)})")
        downtime = meta.get("max_downtime")
        if downtime is not None and (not isinstance(downtime, int) or isinstance(downtime, bool) or downtime < 1):
            raise InvalidInput(f"max downtime must be a positive number of milliseconds, not {downtime!r}")
        profile = meta.get("profile") or None
        if profile is not None and self._context.store.zk.exists(schema.profile(profile)) is None:
            raise InvalidInput(f"no provisioner profile named '{profile}'")
        return {"node_limit": sorted(set(limit)), "node_selector": meta.get("node_selector") or None,
                "node_autostart": bool(meta.get("node_autostart")), "migration_method": method,
                "max_downtime": downtime, "profile": profile}

    def _allow_host_devices(self) -> bool:
        return bool((self._context.cache.config.get() or {}).get("allow_host_devices"))

    def _taken(self, domain: domain_xml.Domain) -> AlreadyExists:
        """Which of a define's name and UUID is taken, asked once its transaction has failed on one: asking
        before was a round trip of every define."""
        zk = self._context.store.zk
        if zk.exists(schema.vm(domain.name)):
            return AlreadyExists(f"a VM named '{domain.name}' exists already")
        if zk.exists(schema.vm_uuid(domain.uuid)):
            return AlreadyExists(f"a VM with UUID {domain.uuid} exists already")
        return AlreadyExists(f"a VM named '{domain.name}' or with UUID {domain.uuid} exists already")

    def _networks_held(self, domain: domain_xml.Domain | None) -> ContextManager[None]:
        """The network lock, for a change that may name networks (`domain` None: always), so that `_spec`
        resolves them against networks that stay until the change is recorded."""
        if domain is not None and not network_use.names_networks(domain):
            return nullcontext()
        return network_use.locked(self._context.store, self._context.name)

    def _spec(self, domain: domain_xml.Domain) -> dict[str, Any]:
        """The VM's record from its document; NICs naming networks are resolved to their VNIs (under the
        network lock, `_networks_held`)."""
        networks: list[int] = []
        if network_use.names_networks(domain):
            domain, networks = network_use.resolve(domain, network_use.stored_networks(self._context.store),
                                                   self._allow_host_devices())
        return {"name": domain.name, "uuid": domain.uuid, "xml": domain.xml, "memory_mib": domain.memory_mib,
                "vcpus": domain.vcpus, "disks": domain.disks, "nics": domain.nics, "volumes": domain.volumes,
                "networks": networks, "defined_at": time.time()}


def _moving_state(state: str, moving: str) -> str:
    """A running VM migrates; a stopped one just changes node and stays stopped."""
    return moving if state in schema.RUNNING_STATES else state


def _list_view(name: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """A VM as `list` shows it; None for one whose own record is not read yet."""
    return models.vm_view(name, raw, detail=False) if raw.get(OWN_VALUE) is not None else None
