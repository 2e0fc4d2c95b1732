"""Remote object `cluster`: status, maintenance mode, plugins."""
from typing import Any

import Pyro5.server
from kazoo.exceptions import BadVersionError

from pvc import fence_secrets, fencing_settings, schema
from pvc.cache import OWN_VALUE
from pvc.errors import InvalidInput
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.retries import retry_safe
from pvc.secrets_box import SecretsBox


@Pyro5.server.expose
@Pyro5.server.behavior(instance_mode="single")
@retry_safe(reads={"status", "plugins"})
class ClusterArea:
    def __init__(self, context: CoordinatorContext):
        self._context = context

    def _replayed(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.config() if method == "config" else self.status()

    def status(self) -> dict[str, Any]:
        """The cluster at a glance: maintenance flag, leader, coordinators, node counts by state."""
        context = self._context
        nodes = context.node_views()
        by_state: dict[str, int] = {}
        for node in nodes:
            by_state[node["daemon_state"]] = by_state.get(node["daemon_state"], 0) + 1
        return {
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
        """Turn maintenance mode on or off; while on, the leader fences no node."""
        self._update_config({"maintenance": bool(enabled)})
        return self.status()

    def config(self, node: str | None = None, **changes: Any) -> dict[str, Any]:
        """The cluster configuration; given keyword arguments, change those keys first.
        Keys: default_selector (a migration selector's name), migration_method (live, shutdown, auto),
        allow_host_devices (bool: whether VM definitions may pass host devices and disks naming host paths),
        memory_overcommit (how many times its memory a node may give to the running VMs placed on it),
        fence_chain (fencing policy names, tried in order on a dead node until one confirms it is off),
        accept_io_fence (bool: whether an I/O fence alone, without proof the node is off, allows recovery),
        fence_options ({POLICY: {OPTION: VALUE}}: each level's options, replacing the stored ones; a
        ``password`` is stored sealed and shown as "(set)"; "(set)" given back keeps the stored one), and
        the fencing settings keepalive_interval, fence_intervals, suicide_intervals, successful_fence; with
        `node`, those set that node's overrides instead (None removes an override). Fencing settings that
        would let a node cut off from ZooKeeper run its VMs past the leader's fence deadline are refused."""
        if fencing_settings.OVERRIDES_KEY in changes:
            raise InvalidInput(f"{fencing_settings.OVERRIDES_KEY} is set one node at a time: give node=NAME "
                               "and the settings to override")
        if node is not None or set(changes) & set(fencing_settings.KEYS):
            changes = self._fencing_changes(node, changes)
        known = ("default_selector", "migration_method", "allow_host_devices", "memory_overcommit", "fence_chain",
                 "accept_io_fence",
                 "fence_options", *fencing_settings.KEYS, fencing_settings.OVERRIDES_KEY)
        unknown = set(changes) - set(known)
        if unknown:
            raise InvalidInput(f"unknown cluster config key(s): {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(known)})")
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
        if "default_selector" in changes:
            self._context.selector({"node_selector": changes["default_selector"]})
        if "migration_method" in changes and changes["migration_method"] not in schema.MIGRATION_METHODS:
            raise InvalidInput(f"unknown migration method '{changes['migration_method']}' "
                               f"(one of: {', '.join(schema.MIGRATION_METHODS)})")
        if changes:
            self._update_config(changes)
        settings = {**schema.DEFAULT_CLUSTER_CONFIG, **fencing_settings.DEFAULTS, **self._context.cache.config.get()}
        return {**settings, "fence_options": fence_secrets.shown_options(settings.get("fence_options") or {})}

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

    def plugins(self) -> list[dict[str, Any]]:
        """Every plugin this coordinator loaded, what it registers, and where it came from."""
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
