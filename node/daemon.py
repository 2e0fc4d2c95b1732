"""pvcnoded: registers this node, keeps it alive in ZooKeeper, and serves its node agent.

Stopping the daemon (SIGTERM) records ``stop`` and leaves running VMs running, as stopping a service on a
real hypervisor would; when it starts again it finds them in libvirt and carries on.
"""
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pvc import config, schema
from pvc.cache import WatchedCollection
from pvc.handshake import AuthenticatingDaemon, use_tls
from pvc.node.agent import AGENT_OBJECT_ID, NodeAgent
from pvc.errors import Conflict
from pvc.node.host_xml import HostPaths
from pvc.node.hypervisor import DomainActions, Hypervisor
from pvc.node.ownership import NodeOwnership
from pvc.node.reconcile import Reconciler
from pvc.node.storage_agent import STORAGE_OBJECT_ID, NodeStorage
from pvc.service import SignalQueue, daemon_command
from pvc.store import Store

log = logging.getLogger(__name__)


class NodeDaemon:
    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.name = schema.check_name("node", settings["node_name"])
        self.store = Store(settings["zookeeper_hosts"], settings["zookeeper_user"],
                           settings["zookeeper_password"], settings["zookeeper_session_timeout"])
        self.hypervisor = Hypervisor(settings["libvirt_uri"], settings["simulated_cpus"],
                                     settings["simulated_memory_mib"], settings["accelerator"],
                                     settings["libvirt_timeout"])
        self.ownership = NodeOwnership(self.store, self.name, settings["zookeeper_session_timeout"] + 2)
        self.vms = WatchedCollection(self.store, schema.VMS, schema.vm, schema.VM_KEYS)
        self.storage = NodeStorage(self.name, settings, self.store)
        self.paths = HostPaths(str(Path(settings["boot_image_directory"]).absolute()),
                               str(Path(settings["console_log_directory"]).absolute()))
        self.reconciler = Reconciler(self.name, self.store, self.vms,
                                     DomainActions(self.hypervisor, settings["shutdown_timeout"]),
                                     self.hypervisor.domains, self.paths, self.storage.backend,
                                     settings["migration_timeout"], self.ownership)
        self.facts: dict[str, Any] = {}
        self._figures: dict[str, Any] = {}
        self._figures_taken = 0.0
        """When (this process's monotonic clock) `_figures` were read from libvirt."""
        self._agent_daemon: AuthenticatingDaemon | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Connect, serve the agent, and register in ZooKeeper; the node is ``run`` when this returns."""
        use_tls(self.settings["tls_cert"], self.settings["tls_key"])
        self.facts = self.hypervisor.facts()
        Path(self.paths.console_log_directory).mkdir(parents=True, exist_ok=True)
        self.store.start(self.settings["zookeeper_connect_timeout"])
        try:
            self.ownership.acquire()
            self.vms.start()
            self.reconciler.converge_all()
            self._serve_agent()
            self._register()
            self._read_figures()
            self.write_keepalive()
            if self._marked_dead():
                log.warning("node %s was marked dead: it stays dead until it is fenced (then `node ready`)",
                            self.name)
            else:
                self.store.write(schema.node_key(self.name, "daemon_state"), "run")
            threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True).start()
            threading.Thread(target=self._figures_loop, name="figures", daemon=True).start()
        except BaseException:
            self._shutdown_services()
            raise
        log.info("node %s is running; agent at %s", self.name, self.facts["agent_uri"])

    def _serve_agent(self) -> None:
        host, port = config.split_address(self.settings["listen_address"])
        self._agent_daemon = AuthenticatingDaemon([self.settings["cluster_secret"]], "cluster secret", host, port)
        uri = self._agent_daemon.register(NodeAgent(self.name, self.hypervisor, self.reconciler, self.paths),
                                          AGENT_OBJECT_ID)
        self.facts["agent_uri"] = str(uri)
        self.storage.start()
        storage_uri = self._agent_daemon.register(self.storage.agent, STORAGE_OBJECT_ID)
        self.facts.update(self.storage.facts(str(storage_uri)))
        threading.Thread(target=self._agent_daemon.requestLoop, name="node-agent", daemon=True).start()

    def _register(self) -> None:
        """Create the node or update its facts; an existing node keeps its domain state across restarts."""
        listen_host, _port = config.split_address(self.settings["listen_address"])
        record = {**self.facts, "keepalive_interval": self.settings["keepalive_interval"],
                  "libvirt_uri": self.hypervisor.uri,
                  "migration_uri": self.settings["migration_uri"] or f"qemu+tcp://{_uri_host(listen_host)}/system",
                  "migration_stream_uri": f"tcp://{_uri_host(self.settings['migration_address'] or listen_host)}",
                  "host_paths": vars(self.paths),
                  "bmc": {"host": self.settings["bmc_host"], "port": self.settings["bmc_port"],
                          "user": self.settings["bmc_user"], "password": self.settings["bmc_password"]}}
        if self.store.zk.exists(schema.node(self.name)):
            transaction = self.store.transaction().set(schema.node(self.name), record)
            if not self._marked_dead():
                transaction.set(schema.node_key(self.name, "daemon_state"), "init")
            transaction.commit()
            if self.store.zk.exists(schema.node_key(self.name, "domain_state")) is None:
                self.store.write(schema.node_key(self.name, "domain_state"), "ready")
            return
        self.store.transaction() \
            .create(schema.node(self.name), record) \
            .create(schema.node_key(self.name, "daemon_state"), "init") \
            .create(schema.node_key(self.name, "domain_state"), "ready") \
            .commit()

    def _marked_dead(self) -> bool:
        """A node the leader marked dead is fenced even if it comes back: it must not claim to run."""
        return self.store.read(schema.node_key(self.name, "daemon_state")) == "dead"

    def write_keepalive(self) -> None:
        """Write the latest figures; never asks libvirt itself, so a hung libvirtd makes the figures stale
        (`figures_stale`), not the node silent."""
        stale = time.monotonic() - self._figures_taken > 2 * self.settings["keepalive_interval"]
        self.store.write(schema.node_key(self.name, "keepalive"),
                         {"time": time.time(), **self._figures, "figures_stale": stale})

    def _read_figures(self) -> None:
        self._figures = self.hypervisor.figures(self.facts["memory_total_mib"])
        self._figures_taken = time.monotonic()

    def _figures_loop(self) -> None:
        self._every_interval(self._read_figures, "reading the host's figures")

    def _reconcile_loop(self) -> None:
        """Converge every VM each interval, so that a lost coordinator call delays an action, never loses it."""
        def converge() -> None:
            if self.store.connected:
                self.reconciler.converge_all()
        self._every_interval(converge, "converging")

    def _every_interval(self, work, what: str) -> None:
        """Run `work` every keepalive interval until the daemon stops; a failure is logged and retried with
        backoff (up to 30 s), never the end of the loop."""
        interval = self.settings["keepalive_interval"]
        delay = interval
        while not self._stopping.wait(delay):
            try:
                work()
                delay = interval
            except Exception as error:
                delay = min(delay * 2, max(30.0, interval))
                log.warning("%s failed (retrying in %g s): %s", what, delay, error)

    def run(self) -> None:
        """Write a keepalive every interval until SIGTERM or SIGINT."""
        signals = SignalQueue()
        interval = self.settings["keepalive_interval"]
        next_beat = time.monotonic() + interval
        while signals.wait(next_beat - time.monotonic()) is None:
            next_beat += interval
            try:
                self.write_keepalive()
                self._keep_ownership()
            except Conflict as error:
                log.error("%s", error)
                break
            except Exception as error:
                log.warning("keepalive not written: %s", error)
            if next_beat < time.monotonic():
                next_beat = time.monotonic() + interval
        self.stop()

    def _keep_ownership(self) -> None:
        """After a lost ZooKeeper session our owner znode is gone: own the node again, or stop if another
        daemon took the name meanwhile."""
        if self.store.connected and not self.ownership.held:
            log.warning("the ZooKeeper session that owned node %s ended: owning it again", self.name)
            self.ownership.acquire()

    def stop(self) -> None:
        """Record ``stop`` and leave; the VMs in libvirt keep running."""
        try:
            if self.ownership.held:
                self.store.write(schema.node_key(self.name, "daemon_state"), "stop")
        except Exception as error:
            log.warning("could not record daemon state stop: %s", error)
        self._shutdown_services()
        log.info("node %s stopped", self.name)

    def _shutdown_services(self) -> None:
        self._stopping.set()
        if self._agent_daemon is not None:
            self._agent_daemon.shutdown()
        self.storage.stop()
        self.store.stop()
        self.hypervisor.close()


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _run(settings: dict[str, Any]) -> None:
    daemon = NodeDaemon(settings)
    daemon.start()
    daemon.run()


main = daemon_command("pvcnoded", config.NODED_SETTINGS, "/etc/pvc/pvcnoded.yaml", _run)
