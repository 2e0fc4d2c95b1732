"""pvcapid: the coordinator daemon.

It serves one Pyro5 object per area under stable ids (`pvc.cluster`, `pvc.nodes`, ...), answers reads from its
watched cache, and contends for leadership; the leader runs the cluster-wide loops. Several coordinators run
against one ZooKeeper; clients fail over between them.
"""
import gc
import logging
import threading
import time
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import NoNodeError

import pvc
from pvc import config, fencing_settings, node_index, plugin_manager, schema
from pvc.cache import ClusterCache
from pvc.client import object_id
from pvc.errors import ConfigError
from pvc.handshake import AuthenticatingDaemon, use_tls
from pvc.rpc.agents import NodeAgents
from pvc.rpc.backup import run as autobackup_run
from pvc.rpc.areas.cluster import ClusterArea
from pvc.rpc.areas.networks import NetworksArea
from pvc.rpc.areas.nodes import NodesArea
from pvc.rpc.areas.provisioner import ProvisionerArea
from pvc.rpc.areas.storage import StorageArea
from pvc.rpc.areas.vms import VMsArea
from pvc.rpc.cluster_health import LeaderHealth
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.leadership import Leadership
from pvc.rpc.metrics import instruments
from pvc.rpc.metrics.collector import ClusterCollector
from pvc.rpc.metrics.pool_usage import PoolUsagePoller
from pvc.rpc.metrics.server import MetricsServer, registry_renderer
from pvc.rpc.metrics.zookeeper import MntrPoller
from pvc.rpc.monitor import NodeMonitor
from pvc.rpc.network_router import choose_router
from pvc.rpc.node_requests import NodeRequests
from pvc.rpc.provisioning import KIND as PROVISION, executor as provision_executor
from pvc.rpc.recovery import ReadyExecution, RecoveryExecution, record_missing_recoveries, retry_due_recoveries
from pvc.rpc.retries import RequestPruner
from pvc.rpc.tasks import TaskRunner
from pvc.rpc.vm_control import VMControl
from pvc.rpc.mirror import automirror
from pvc.rpc.mirror.receive import MirrorReceiver
from pvc.rpc.mirror.send import MirrorSender
from pvc.rpc.vm_backups import VMBackups
from pvc.rpc.vm_snapshots import VMSnapshots
from pvc.service import SignalQueue, daemon_command
from pvc.store import Store

log = logging.getLogger(__name__)

STORAGE_CHECK_INTERVAL_S = 5.0
"""How often the leader looks for volume changes whose coordinator died midway (`pvc.rpc.storage_intents`)."""


CONNECTION_CHECK_INTERVAL = 5.0
"""Seconds between two checks that the coordinator's ZooKeeper client can still connect."""


class Coordinator:
    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.name = schema.check_name("coordinator", settings["coordinator_name"])
        for key in ("flush_parallelism", "recovery_starts_per_node", "leader_audit_interval"):
            if settings[key] <= 0:
                raise ConfigError(f"{key} must be more than 0, not {settings[key]!r}")
        self.store = Store(settings["zookeeper_hosts"], settings["zookeeper_user"],
                           settings["zookeeper_password"], settings["zookeeper_session_timeout"])
        self.cache = ClusterCache(self.store)
        self.monitor = NodeMonitor(self.store, self.cache, settings["fence_intervals"])
        self.requests = NodeRequests(self.store, self.cache.vms, settings["leader_audit_interval"],
                                     catch_up=self.cache.catch_up)
        self.request_records = RequestPruner()
        self.storage: StorageArea | None = None
        self.vm_snapshots: VMSnapshots | None = None
        self.mirror_receiver: MirrorReceiver | None = None
        self._next_storage_check = 0.0
        self._storage_check: threading.Thread | None = None
        self.daemon: AuthenticatingDaemon | None = None
        self.context: CoordinatorContext | None = None
        self.tasks: TaskRunner | None = None
        self.health: LeaderHealth | None = None
        self.metrics: MetricsServer | None = None
        self.mntr: MntrPoller | None = None
        self.pool_usage: PoolUsagePoller | None = None
        self.collector: ClusterCollector | None = None
        self._session_lost = False

    def start(self) -> None:
        began = time.monotonic()
        loaded_plugins = plugin_manager.load()
        loaded_plugins.check()
        use_tls(self.settings["tls_cert"], self.settings["tls_key"], self.settings["tls_ca"])
        host, port = config.split_address(self.settings["listen_address"])
        self.store.start(self.settings["zookeeper_connect_timeout"])
        connected = time.monotonic()
        try:
            self._seed_fencing_settings()
            threading.Thread(target=self._build_node_index, name="node-index", daemon=True).start()
            self._load_cache()
            loaded = time.monotonic()
            leadership = Leadership(self.store, self.name, self.settings["leader_tick"], self._lead)
            self.context = CoordinatorContext(self.name, self.settings, self.store, self.cache, loaded_plugins,
                                              NodeAgents(self.settings["cluster_secret"]), leadership)
            control = VMControl(self.context)
            storage = StorageArea(self.context)
            self.vm_snapshots = VMSnapshots(self.context, control, storage)
            vms = VMsArea(self.context, control, self.vm_snapshots)
            vms.backups = VMBackups(self.context, storage, vms)
            vms.storage = storage
            vms.mirror_sender = MirrorSender(self.context, vms.backups, vms)
            vms.mirror_receiver = self.mirror_receiver = MirrorReceiver(self.context, control, storage, vms)
            self.storage = storage
            self.tasks = TaskRunner(self.context, control, self.settings["flush_parallelism"],
                                    {"recover": RecoveryExecution, "ready": ReadyExecution,
                                     PROVISION: provision_executor(self.context, storage, vms),
                                     autobackup_run.KIND: autobackup_run.executor(self.vm_snapshots, vms.backups),
                                     automirror.KIND: automirror.executor(self.vm_snapshots, vms.mirror_sender)},
                                    self.settings["leader_audit_interval"])
            self.daemon = AuthenticatingDaemon(self.settings["api_keys"], "API key", host, port)
            areas = {"cluster": ClusterArea(self.context), "nodes": NodesArea(self.context),
                     "vms": vms, "storage": storage, "provisioner": ProvisionerArea(self.context, storage, vms),
                     "networks": NetworksArea(self.context)}
            for area, remote_object in areas.items():
                self.daemon.register(instruments.instrument(area, remote_object), object_id(area))
            threading.Thread(target=self.daemon.requestLoop, name="pyro", daemon=True).start()
            self._publish()
            self.store.add_state_listener(self._on_session_state)
            leadership.start()
            self.health = LeaderHealth(self.context, self.settings["health_interval"])
            self.health.start()
            if self.settings["metrics_listen"]:
                self._serve_metrics(areas["nodes"])
        except BaseException:
            self._shutdown()
            raise
        log.info("coordinator %s serving at %s; start-up: plugins and ZooKeeper session %.2f s, cache of %d VMs "
                 "and %d nodes loaded in %.2f s, serving %.2f s later", self.name, self.uri, connected - began,
                 len(self.cache.vms.names()), len(self.cache.nodes.names()), loaded - connected,
                 time.monotonic() - loaded)

    def _load_cache(self) -> None:
        """Load the cache with Python's cyclic garbage collector held off: the load makes some 400,000 objects
        that live as long as the coordinator, and the 667 collections it set off over a growing heap were 40 %
        of a 10,000-VM load's 1.0 s of CPU. Freed objects still go at once (reference counting), and the
        collector runs again when the load is done."""
        gc.disable()
        try:
            self.cache.start()
        finally:
            gc.enable()

    def _serve_metrics(self, nodes: NodesArea) -> None:
        settings = self.settings
        if settings["metrics_tls"] and not settings["tls_cert"]:
            raise ConfigError("metrics_tls needs tls_cert and tls_key")
        self.mntr = MntrPoller(settings["zookeeper_hosts"], settings["metrics_poll_interval"])
        self.mntr.start()
        self.pool_usage = PoolUsagePoller(self.storage, settings["metrics_poll_interval"])
        self.pool_usage.start()
        self.collector = ClusterCollector(self.context, nodes._keepalive_age, self.storage._pool_figures,
                                          lambda: self.pool_usage.latest, lambda: self.mntr.latest,
                                          lambda: self.pool_usage.backends)
        self.collector.start()
        self.metrics = MetricsServer(settings["metrics_listen"],
                                     [lambda: self.collector.render().encode(),
                                      registry_renderer(instruments.REGISTRY)],
                                     settings["metrics_token_file"],
                                     settings["tls_cert"] if settings["metrics_tls"] else None,
                                     settings["tls_key"] if settings["metrics_tls"] else None)
        self.metrics.start()

    def _seed_fencing_settings(self) -> None:
        """Write this coordinator's fencing settings where the cluster config has none; refuse to serve a
        cluster whose settings let a cut-off node run its VMs past the leader's fence deadline."""
        cluster_config = fencing_settings.seed(self.store.zk, {key: self.settings[key]
                                                              for key in fencing_settings.KEYS})
        problem = fencing_settings.violation(fencing_settings.resolve(cluster_config))
        if problem:
            raise ConfigError(f"the cluster's fencing settings are unsafe: {problem}")

    def _build_node_index(self) -> None:
        """Build the node index of a cluster made before it (`pvc.node_index`), once: until then its nodes
        watch every VM. Off the start-up path; any coordinator may, several at once."""
        try:
            if not node_index.complete(self.store):
                node_index.build(self.store)
        except Exception as error:
            log.warning("the node index was not built (the next coordinator start tries again): %s", error)

    @property
    def uri(self) -> str:
        advertised = self.settings["advertise_host"] or self.daemon.locationStr.rsplit(":", 1)[0]
        return f"pvc://{advertised}:{self.daemon.locationStr.rsplit(':', 1)[1]}"

    def _publish(self) -> None:
        """Announce this coordinator for `cluster status`; the znode goes with the session, so it is made
        again whenever a new session begins (a restart, or an expired session)."""
        path = schema.live_coordinator(self.name)
        try:
            self.store.zk.delete(path)
        except NoNodeError:
            pass
        self.store.zk.create(path, schema.encode({"uri": self.uri, "version": pvc.__version__,
                                                  "node": self.settings["node"]}), ephemeral=True)

    def _on_session_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._session_lost = True
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            self.store.zk.handler.spawn(self._publish)

    def _resolve_storage_intents(self) -> None:
        """In a thread of its own, one at a time: resolving asks storage nodes to remove volumes (every VM
        removal that takes its volumes leaves marks here), which may take minutes, while this tick watches
        for dead nodes and fences them."""
        if self._storage_check is not None and self._storage_check.is_alive():
            return
        def check() -> None:
            try:
                self.storage.resolve_orphaned_intents()
            except Exception as error:
                log.warning("the storage check did not finish; it runs again within %.0f s: %s",
                            STORAGE_CHECK_INTERVAL_S, error)
        self._storage_check = threading.Thread(target=check, daemon=True, name="storage-check")
        self._storage_check.start()

    def _lead(self, leader_node: str) -> None:
        for node in self.monitor.check(leader_node):
            if self.cache.config.get().get("maintenance"):
                log.warning("node %s is dead; maintenance mode is on, so it is not fenced", node)
        record_missing_recoveries(self.context, leader_node, self.monitor.half_silent())
        retry_due_recoveries(self.context, leader_node, time.time())
        self.requests.handle(leader_node)
        self.request_records.tick(self.store, leader_node)
        self.tasks.tick(leader_node)
        choose_router(self.context, leader_node)
        if time.monotonic() >= self._next_storage_check:
            self._next_storage_check = time.monotonic() + STORAGE_CHECK_INTERVAL_S
            self._resolve_storage_intents()
            self.vm_snapshots.resolve_orphaned()
            self.mirror_receiver.resolve_expired()
        autobackup_run.start_when_due(self.context, leader_node)
        automirror.start_when_due(self.context, leader_node)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; exit with an error once the ZooKeeper client can never connect again
        (`Store.connection_thread_alive`), so that the service manager starts the coordinator afresh
        (Restart=on-failure) instead of leaving it cut off from the cluster."""
        signals = SignalQueue()
        while signals.wait(CONNECTION_CHECK_INTERVAL) is None:
            if not self.store.connection_thread_alive:
                log.critical("coordinator %s: the ZooKeeper client's connection thread has died, so it can never "
                             "connect again; exiting to be started afresh", self.name)
                self._shutdown()
                raise SystemExit(1)
        self._shutdown()

    def _shutdown(self) -> None:
        if self.health is not None:
            self.health.stop()
        for poller in (self.mntr, self.pool_usage, self.collector):
            if poller is not None:
                poller.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.context is not None:
            self.context.leadership.stop()
        if self.daemon is not None:
            self.daemon.shutdown()
        self.store.stop()
        log.info("coordinator %s stopped", self.name)


def _run(settings: dict[str, Any]) -> None:
    coordinator = Coordinator(settings)
    coordinator.start()
    # What start-up made (the loaded cache above all) lives as long as the process: frozen out of the
    # collector's passes, a full collection no longer walks it again. The process's own decision, so that a
    # coordinator run inside a test process does not freeze that process's heap.
    gc.freeze()
    coordinator.run()


main = daemon_command("pvcapid", config.APID_SETTINGS, "/etc/pvc/pvcapid.yaml", _run)
