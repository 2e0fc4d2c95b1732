"""Remote object `cluster`: status, maintenance mode, plugins."""
import time
from typing import Any

import Pyro5.server
from kazoo.exceptions import BadVersionError, NoNodeError

from pvc import (autobackup_settings, automirror_settings, cluster_config, fence_secrets, fencing_settings,
                 network_records, schema)
from pvc.cache import OWN_VALUE
from pvc.errors import InvalidInput, NotFound
from pvc.health import libvirt_lost
from pvc.health.faults import health as fault_health
from pvc.hookspecs import SEVERITIES
from pvc.rpc import network_use
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.retries import retry_safe
from pvc.secrets_box import SecretsBox
from pvc.store import Transaction


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"status", "plugins", "faults"})
class ClusterArea:
    """``client.cluster``: the cluster at a glance, maintenance mode, the cluster config and the loaded plugins."""

    def __init__(self, context: CoordinatorContext):
        self._context = context

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if method.startswith("fault_"):
            return self.faults(all=True)
        return self.config() if method == "config" else self.status()

    def status(self) -> dict[str, Any]:
        """The cluster at a glance: maintenance flag, leader, coordinators, node counts by state.

        :raises Unavailable: the coordinator cannot read ZooKeeper
        """
        context = self._context
        nodes = context.node_views()
        by_state: dict[str, int] = {}
        for node in nodes:
            by_state[node["daemon_state"]] = by_state.get(node["daemon_state"], 0) + 1
        faults = context.fault_views()
        active = [fault for fault in faults if fault["active"]]
        vms = context.cache.vms.snapshot()
        vms_by_state: dict[str, int] = {}
        for raw in vms.values():
            if raw.get(OWN_VALUE) is not None:
                vms_by_state[raw.get("state") or "stop"] = vms_by_state.get(raw.get("state") or "stop", 0) + 1
        return {
            "health": fault_health(faults),
            "faults_active": len(active),
            "faults_unacknowledged": sum(1 for fault in active if fault["counts"]),
            "faults_by_severity": {severity: sum(1 for fault in active if fault["severity"] == severity)
                                   for severity in SEVERITIES},
            "resources": {"cpus": sum(node["cpus"] or 0 for node in nodes),
                          "memory_total_mib": sum(node["memory_total_mib"] or 0 for node in nodes),
                          "memory_allocated_mib": sum(node["memory_allocated_mib"] or 0 for node in nodes),
                          "memory_provisioned_mib": sum(node["memory_provisioned_mib"] or 0 for node in nodes),
                          "vcpus_allocated": sum(node["vcpus_allocated"] or 0 for node in nodes),
                          "vms_total": sum(vms_by_state.values()), "vms_by_state": vms_by_state},
            "maintenance": bool(context.cache.config.get().get("maintenance")),
            "leader": context.leadership.current_leader(),
            "coordinators": context.live_coordinators(),
            "nodes_total": len(nodes),
            "nodes_by_daemon_state": by_state,
            "nodes_ready": sum(1 for node in nodes if node["domain_state"] == "ready"),
            "schema_version": schema.SCHEMA_VERSION,
            "answered_by": context.name,
        }

    def maintenance(self, enabled: bool) -> dict[str, Any]:
        """Turn maintenance mode on or off; while on, the leader fences no node.

        :raises Unavailable: the coordinator cannot write ZooKeeper
        """
        self._update_config({"maintenance": bool(enabled)})
        return self.status()

    def config(self, node: str | None = None, **changes: Any) -> dict[str, Any]:
        """The cluster configuration; given keyword arguments, change those keys first.

        Every key, its default and what it does is declared in `pvc.cluster_config` (the manual's cluster
        config reference). A ``password`` in ``fence_options`` is stored sealed and shown as "(set)"; "(set)"
        given back keeps the stored one. With `node`, the fencing and libvirt-lost settings given set that
        node's overrides instead (None removes an override).

        :raises InvalidInput: an unknown key or a bad value (an autobackup schedule that is neither ``Nh`` nor
            ``HH:MM``, say), or fencing settings that would let a node cut off
            from ZooKeeper run its VMs past the leader's fence deadline (the message gives the numbers).
        """
        for overrides_key in (fencing_settings.OVERRIDES_KEY, libvirt_lost.OVERRIDES_KEY):
            if overrides_key in changes:
                raise InvalidInput(f"{overrides_key} is set one node at a time: give node=NAME and the settings "
                                   "to override")
        lost = {key: changes.pop(key) for key in libvirt_lost.KEYS if key in changes}
        if node is not None and (set(changes) & set(fencing_settings.KEYS) or not lost):
            changes = self._fencing_changes(node, changes)
        elif set(changes) & set(fencing_settings.KEYS):
            changes = self._fencing_changes(None, changes)
        if lost:
            changes.update(self._libvirt_lost_changes(node, lost))
        known = (*cluster_config.SETTABLE_KEYS, fencing_settings.OVERRIDES_KEY, libvirt_lost.OVERRIDES_KEY)
        unknown = set(changes) - set(known)
        if unknown:
            raise InvalidInput(f"unknown cluster config key(s): {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(known)})")
        changes.update(autobackup_settings.check(changes))
        changes.update(automirror_settings.check(changes))
        if "allow_host_devices" in changes and not isinstance(changes["allow_host_devices"], bool):
            raise InvalidInput(f"allow_host_devices must be true or false, not {changes['allow_host_devices']!r}")
        if "memory_overcommit" in changes:
            ratio = changes["memory_overcommit"]
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.1 <= ratio <= 100:
                raise InvalidInput(f"memory_overcommit must be a number from 0.1 to 100, not {ratio!r}")
            changes["memory_overcommit"] = float(ratio)
        if "accept_io_fence" in changes and not isinstance(changes["accept_io_fence"], bool):
            raise InvalidInput(f"accept_io_fence must be true or false, not {changes['accept_io_fence']!r}")
        if "fence_chain" in changes:
            chain = changes["fence_chain"]
            policies = self._context.plugins.registry("pvc_fencing_policies")
            if not isinstance(chain, list) or not chain or not all(isinstance(name, str) for name in chain):
                raise InvalidInput(f"fence_chain must be a non-empty list of fencing policy names, not {chain!r}")
            unknown_policies = [name for name in chain if name not in policies]
            if unknown_policies:
                raise InvalidInput(f"unknown fencing policy {', '.join(unknown_policies)} "
                                   f"(loaded: {', '.join(sorted(policies)) or 'none'})")
        if "fence_options" in changes:
            shared_address = sorted(set((changes["fence_options"] or {}).get("ipmi") or {}) & {"host", "port"}) \
                if isinstance(changes["fence_options"], dict) else []
            if shared_address:
                raise InvalidInput(f"fence_options ipmi: {' and '.join(shared_address)} would name one BMC for every "
                                   "node; each node's BMC address is its own (bmc_host, bmc_port in its "
                                   "pvcnoded.yaml)")
            changes["fence_options"] = fence_secrets.sealed_options(
                SecretsBox(self._context.settings["cluster_secret"]), changes["fence_options"],
                self._context.cache.config.get().get("fence_options") or {})
        if "underlay_mtu" in changes:
            network_records.check_underlay_mtu(changes["underlay_mtu"],
                                               network_use.stored_networks(self._context.store))
        if "default_selector" in changes:
            self._context.selector({"node_selector": changes["default_selector"]})
        if "migration_method" in changes and changes["migration_method"] not in schema.MIGRATION_METHODS:
            raise InvalidInput(f"unknown migration method '{changes['migration_method']}' "
                               f"(one of: {', '.join(schema.MIGRATION_METHODS)})")
        if changes:
            self._update_config(changes)
        settings = {**schema.DEFAULT_CLUSTER_CONFIG, **fencing_settings.DEFAULTS, **libvirt_lost.DEFAULTS,
                    **self._context.cache.config.get()}
        settings.update(autobackup_settings.resolve(settings))
        settings.update(automirror_settings.resolve(settings))
        return {**settings, "fence_options": fence_secrets.shown_options(settings.get("fence_options") or {})}

    def _libvirt_lost_changes(self, node: str | None, lost: dict[str, Any]) -> dict[str, Any]:
        """`libvirt_lost_action`/`libvirt_lost_after` checked; with `node`, folded into its overrides (None
        removes one)."""
        if node is None:
            libvirt_lost.check(lost)
            return lost
        schema.check_name("node", node)
        libvirt_lost.check({key: value for key, value in lost.items() if value is not None}, f"of node {node}")
        overrides = {name: dict(values) for name, values in
                     (self._context.cache.config.get().get(libvirt_lost.OVERRIDES_KEY) or {}).items()}
        mine = {key: value for key, value in {**overrides.get(node, {}), **lost}.items() if value is not None}
        if mine:
            overrides[node] = mine
        else:
            overrides.pop(node, None)
        return {libvirt_lost.OVERRIDES_KEY: overrides}

    def _fencing_changes(self, node: str | None, changes: dict[str, Any]) -> dict[str, Any]:
        """`changes` with the fencing settings checked, alone and against every node's negotiated ZooKeeper
        session timeout; with `node`, folded into that node's overrides."""
        fencing = {key: value for key, value in changes.items() if key in fencing_settings.KEYS}
        others = {key: value for key, value in changes.items() if key not in fencing_settings.KEYS}
        current = self._context.cache.config.get()
        if node is None:
            fencing_settings.check(fencing)
            proposed = {**current, **fencing}
        else:
            schema.check_name("node", node)
            if others:
                raise InvalidInput(f"only fencing settings can be set for one node, not {', '.join(sorted(others))}")
            fencing_settings.check({key: value for key, value in fencing.items() if value is not None},
                                   f"fencing setting of node {node}")
            overrides = {name: dict(values) for name, values in
                         (current.get(fencing_settings.OVERRIDES_KEY) or {}).items()}
            mine = {**overrides.get(node, {}), **fencing}
            overrides[node] = {key: value for key, value in mine.items() if value is not None}
            if not overrides[node]:
                del overrides[node]
            proposed = {**current, fencing_settings.OVERRIDES_KEY: overrides}
            fencing = {fencing_settings.OVERRIDES_KEY: overrides}
        nodes = {name: raw.get(OWN_VALUE) or {} for name, raw in self._context.cache.nodes.snapshot().items()}
        for name in sorted(set(nodes) | ({node} if node else set())):
            record = nodes.get(name, {})
            problem = fencing_settings.violation(fencing_settings.resolve(proposed, name),
                                                 record.get("zookeeper_session_timeout_s"))
            if problem:
                raise InvalidInput(f"refused for node {name}: {problem}")
        problem = fencing_settings.violation(fencing_settings.resolve(proposed))
        if problem:
            raise InvalidInput(f"refused: {problem}")
        return {**others, **fencing}

    def faults(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - the CLI's --all
        """Active faults (with `all`, cleared ones too, until their raiser prunes them), active first, newest
        first. `counts`: whether the fault takes its `delta` off health now (active and not acknowledged).

        :raises Unavailable: ZooKeeper did not answer the sync that brings this coordinator's view up to date
        """
        self._context.cache.catch_up()
        return [fault for fault in self._context.fault_views() if all or fault["active"]]

    def fault_ack(self, ids: list[str]) -> list[dict[str, Any]]:
        """Acknowledge faults: each stops counting against health until it clears and happens again.

        The acknowledgement names the occurrence it saw (the fault's ``first_seen``), so a fault that clears and
        is raised again counts again without anyone removing the acknowledgement.

        :raises InvalidInput: no ids given, or a malformed id (ids look like ``node.NODE.CHECK`` or
            ``cluster.CHECK``)
        :raises NotFound: no fault of a given id (nothing is acknowledged then)
        :raises Conflict: a fault's raiser renewed it while it was being acknowledged; try again
        :raises Unavailable: ZooKeeper did not answer
        """
        return self._acknowledge(self._existing_faults(ids))

    def fault_ack_all(self) -> list[dict[str, Any]]:
        """Acknowledge every active fault not yet acknowledged.

        :raises Conflict: a fault's raiser renewed it while it was being acknowledged; try again
        :raises Unavailable: ZooKeeper did not answer
        """
        self._context.cache.catch_up()
        return self._acknowledge([fault["id"] for fault in self._context.fault_views()
                                  if fault["active"] and not fault["acknowledged"]])

    def fault_delete(self, ids: list[str]) -> list[dict[str, Any]]:
        """Forget faults now, with their acknowledgements (a raiser still seeing the problem raises it again,
        counting from one).

        :raises InvalidInput: no ids given, or a malformed id
        :raises NotFound: no fault of a given id (nothing is deleted then)
        :raises Conflict: a fault's raiser renewed it while it was being deleted; try again
        :raises Unavailable: ZooKeeper did not answer
        """
        zk = self._context.store.zk
        transaction = self._context.store.transaction()
        checked = self._existing_faults(ids)
        for fault_id in checked:
            stat = zk.exists(schema.fault(fault_id))
            if stat is None:
                continue
            if zk.exists(schema.fault_ack(fault_id)):
                transaction.delete(schema.fault_ack(fault_id))
            transaction.delete(schema.fault(fault_id), stat.version)
        self._commit_unless_vanished(transaction, checked)
        return self.faults(all=True)

    def _existing_faults(self, ids: list[str]) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, list) or not ids:
            raise InvalidInput("give one or more fault ids")
        checked = [schema.check_fault_id(fault_id) for fault_id in ids]
        self._context.cache.catch_up()
        known = {fault["id"] for fault in self._context.fault_views()}
        missing = [fault_id for fault_id in checked if fault_id not in known]
        if missing:
            raise NotFound(f"no fault {', '.join(missing)} (see pvc cluster fault list --all)")
        return checked

    def _acknowledge(self, ids: list[str]) -> list[dict[str, Any]]:
        zk = self._context.store.zk
        transaction = self._context.store.transaction()
        now = time.time()
        for fault_id in ids:
            try:
                data, stat = zk.get(schema.fault(fault_id))
            except NoNodeError:
                raise self._vanished([fault_id]) from None
            record = schema.decode(data) or {}
            transaction.check(schema.fault(fault_id), stat.version)
            ack = {"time": now, "occurrence": record.get("first_seen")}
            if zk.exists(schema.fault_ack(fault_id)):
                transaction.set(schema.fault_ack(fault_id), ack)
            else:
                transaction.create(schema.fault_ack(fault_id), ack)
        if ids:
            self._commit_unless_vanished(transaction, ids)
        return self.faults(all=True)

    def _commit_unless_vanished(self, transaction: Transaction, ids: list[str]) -> None:
        """Commit a change to faults `ids`; a fault its raiser pruned (or another caller deleted) since it was
        read is `NotFound` naming it, not ZooKeeper's path."""
        try:
            transaction.commit()
        except NotFound:
            raise self._vanished(ids) from None

    def _vanished(self, ids: list[str]) -> NotFound:
        """The faults of `ids` read a moment ago that are gone now: pruned by their raiser or deleted by another
        caller, which is no failure of ZooKeeper's."""
        gone = [fault_id for fault_id in ids if not self._context.store.zk.exists(schema.fault(fault_id))]
        return NotFound(f"no fault {', '.join(gone or ids)} (deleted or pruned meanwhile; see pvc cluster fault "
                        "list --all)")

    def plugins(self) -> list[dict[str, Any]]:
        """Every plugin this coordinator loaded, what it registers, and where it came from.

        :raises Unavailable: no coordinator answered (nothing else: it refuses nothing)
        """
        return self._context.plugins.describe()

    def _update_config(self, changes: dict[str, Any]) -> None:
        zk = self._context.store.zk
        while True:
            data, stat = zk.get(schema.CONFIG)
            value = {**schema.DEFAULT_CLUSTER_CONFIG, **(schema.decode(data) or {}), **changes}
            try:
                zk.set(schema.CONFIG, schema.encode(value), version=stat.version)
                break
            except BadVersionError:
                continue
        self._context.cache.config.refresh()
