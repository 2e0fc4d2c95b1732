"""pvcnoded: registers this node, keeps it alive in ZooKeeper, and serves its node agent.

Stopping the daemon (SIGTERM) records ``stop`` and leaves running VMs running, as stopping a service on a
real hypervisor would; when it starts again it finds them in libvirt and carries on.

A node the leader holds (``dead`` or ``fenced``, or under recovery) runs its daemon but claims and starts no VM
until `node ready` releases it (`pvc.node.fence_hold`); every write it makes as the node checks that it still
owns the node (`pvc.node.ownership`).

Its keepalive interval and its self-fence (`pvc.node.self_fence`) follow the fencing settings of the cluster
config (`pvc.fencing_settings`), watched; it refuses to start with settings under which, cut off from
ZooKeeper, it could still run its VMs when the leader starts them elsewhere.
"""
import logging
import threading
import time
from pathlib import Path
from typing import Any

from kazoo.client import KazooState

from pvc import config, fence_secrets, fencing_settings, node_index, plugin_manager, schema
from pvc.cache import WatchedCollection
from pvc.handshake import AuthenticatingDaemon, use_tls
from pvc.health import libvirt_lost
from pvc.node.agent import AGENT_OBJECT_ID, NodeAgent
from pvc.errors import ConfigError, Conflict, PVCError
from pvc.node.fence_hold import FenceHold
from pvc.node.guest_processes import GuestProcesses
from pvc.node import vm_stats
from pvc.node.health import NODE_CHECKS, NodeHealth
from pvc.node.guest_snapshots import GuestSnapshots
from pvc.node.host_xml import HostPaths
from pvc.node.hypervisor import DomainActions, Hypervisor
from pvc.node.network.node_networks import NodeNetworks
from pvc.node.network.router import RouterServices
from pvc.node.ownership import NodeOwnership
from pvc.node.peer_directory import PeerDirectory
from pvc.node.reconcile import Reconciler
from pvc.node.self_fence import SelfFence
from pvc.node.storage_agent import STORAGE_OBJECT_ID, NodeStorage
from pvc.node.zookeeper_session import NegotiatedSessionTimeout
from pvc.secrets_box import SecretsBox
from pvc.service import SignalQueue, daemon_command
from pvc.store import Store

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 5.0
"""Longest wait before a failed pass of a daemon loop is tried again: a converge pass that failed (libvirt or
ZooKeeper did not answer) is what stands between a VM and its node's report of it."""
HOLD_AUDIT_INTERVALS = 6
"""Keepalive intervals between looks at the hold of a node that is not held, when nothing prompted one: a hold
begins only with the leader writing the node's daemon state (``dead``, or ``fenced`` by a confirmation), which
its watch reports at once, so the look only catches a missed watch. It read ZooKeeper three times each interval:
a third of an idle node's requests."""


class NodeDaemon:
    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.name = schema.check_name("node", settings["node_name"])
        self.store = Store(settings["zookeeper_hosts"], settings["zookeeper_user"],
                           settings["zookeeper_password"], settings["zookeeper_session_timeout"])
        self.session_timeout = NegotiatedSessionTimeout.attach(self.store.zk)
        self.cluster_config: dict[str, Any] = {}
        """The cluster config as last seen (fencing settings, maintenance flag), kept by a watch, which replaces
        it whole on each change (so `fencing` may keep what it resolved from it)."""
        self._fencing_resolved: tuple[dict[str, Any], fencing_settings.FencingSettings] | None = None
        self.hypervisor = Hypervisor(settings["libvirt_uri"], settings["simulated_cpus"],
                                     settings["simulated_memory_mib"], settings["accelerator"],
                                     settings["libvirt_timeout"])
        self.ownership = NodeOwnership(self.store, self.name, settings["zookeeper_session_timeout"] + 2)
        self.hold = FenceHold(self.store, self.name, self.ownership)
        self._held: str | None = None
        """Why the leader holds this node (`FenceHold.reason`), as last read; None while it does not."""
        self._self_fenced: str | None = None
        self._hold_lock = threading.Lock()
        """Serialises this daemon's own daemon-state writes and its reading of the hold."""
        self._refusal_lock = threading.Lock()
        """Guards `Reconciler.starts_refused` against a lost self-fence; held for no I/O, so that the self-fence
        never waits for ZooKeeper."""
        self._daemon_state_changed = threading.Event()
        self.vms = WatchedCollection(self.store, schema.VMS, schema.vm, schema.VM_KEYS,
                                     index=None if settings["router"] else schema.node_vms(self.name))
        """The VMs this node's index names and those it is not done with yet (`Reconciler._release_settled`):
        its cost follows its own VMs. A router node needs every VM (its DNS names their leases), and on a
        cluster whose index is not built yet every VM is watched as before (`_watch_every_vm_until_indexed`)."""
        self.storage = NodeStorage(self.name, settings, self.store, self.ownership.transaction)
        self.paths = HostPaths(str(Path(settings["boot_image_directory"]).absolute()),
                               str(Path(settings["console_log_directory"]).absolute()))
        actions = DomainActions(self.hypervisor, settings["shutdown_timeout"])
        router = RouterServices(settings["network_run_directory"], settings["upstream_dev"]) \
            if settings["router"] else None
        self.networks = NodeNetworks(self.name, self.store, self.ownership, settings["bridge_dev"],
                                     settings["cluster_dev"], router, lambda: self._self_fenced is None) \
            if settings["bridge_dev"] or settings["cluster_dev"] else None
        self.reconciler = Reconciler(self.name, self.store, self.vms, actions, self.paths, self.storage.backend,
                                     settings["migration_timeout"], self.ownership, self.networks)
        self.guest_snapshots = GuestSnapshots(self.hypervisor, self.storage.backend,
                                              settings["snapshot_pause_directory"], settings["snapshot_max_pause"])
        self.peers = PeerDirectory(self.store, self.name)
        self.self_fence = SelfFence(self.name, self.store, self.peers, actions, lambda: self.fencing,
                                    lambda: bool(self.cluster_config.get("maintenance")),
                                    settings["cluster_secret"], self._refuse_starts,
                                    GuestProcesses(settings["libvirt_run_directory"],
                                                   settings["libvirt_namespace_pid_file"]))
        self._published_interval: float | None = None
        self.facts: dict[str, Any] = {}
        self._figures: dict[str, Any] = {}
        self._figures_taken = 0.0
        self._converged = time.monotonic()
        """When (monotonic) the last converge pass over every VM completed: the keepalive says how long ago."""
        """When (this process's monotonic clock) `_figures` were read from libvirt."""
        self._agent_daemon: AuthenticatingDaemon | None = None
        self._stopping = threading.Event()
        self.health = NodeHealth(self.name, settings, self.store, plugin_manager.load().registry(NODE_CHECKS),
                                 self.ownership.transaction, lambda: bool(self.cluster_config.get("maintenance")),
                                 lambda: {**self.facts, **self._figures}, self.libvirt_lost_s,
                                 self.storage.backend, lambda: self.cluster_config,
                                 lambda: float(settings["health_interval"]),
                                 lambda: self.store.connected and not self._stopping.is_set(),
                                 after_round=self._act_on_lost_libvirt)

    def start(self) -> None:
        """Connect, serve the agent, and register in ZooKeeper; the node is ``run`` when this returns."""
        use_tls(self.settings["tls_cert"], self.settings["tls_key"], self.settings["tls_ca"])
        self.facts = self.hypervisor.facts()
        Path(self.paths.console_log_directory).mkdir(parents=True, exist_ok=True)
        self.guest_snapshots.resume_left_paused()
        self.store.start(self.settings["zookeeper_connect_timeout"])
        try:
            self.store.zk.DataWatch(schema.CONFIG, self._on_cluster_config)
            self._check_fencing_settings()
            self.store.add_state_listener(self._on_session_state)
            self.ownership.acquire()
            # The watchdog watches from here: the guests that outlived the last daemon run already, and a cut
            # during the rest of the start (a converge of every VM, the first keepalive) must stop them in time.
            # Its silence counts from ZooKeeper's answer that this daemon owns the node: the time before it was
            # the start's own (a wait for the last daemon's session to end), and counting it had a slow start
            # ask its peers, and fence on a hiccup of ZooKeeper, before its first keepalive was due.
            self.self_fence.acknowledged(self.ownership.confirmed_at)
            self.peers.start()
            self.self_fence.start()
            self._follow_hold()
            self._watch_every_vm_until_indexed()
            self.vms.start()
            self.reconciler.watch_reported_here()
            if self.networks is not None:
                self.networks.start()
            self.reconciler.converge_all()  # before registering: other nodes rely on these reports from then on
            self._serve_agent()
            self._register()
            self._read_figures()
            self.write_keepalive()
            self._say_running()
            self.store.zk.DataWatch(schema.node_key(self.name, "daemon_state"), self._on_daemon_state)
            threading.Thread(target=self._hold_loop, name="hold", daemon=True).start()
            threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True).start()
            threading.Thread(target=self._figures_loop, name="figures", daemon=True).start()
            threading.Thread(target=self._vm_stats_loop, name="vm-stats", daemon=True).start()
            self.health.start()
        except BaseException as error:
            if isinstance(error, Exception):
                self._watch_on_until_decided(error)
            self._shutdown_services()
            raise
        log.info("node %s is running; agent at %s", self.name, self.facts["agent_uri"])

    def _watch_on_until_decided(self, error: Exception) -> None:
        """A start that failed once the watchdog watched (a request cut off from ZooKeeper fails as soon as
        kazoo notices, well before the self-fence's silence is over) leaves the guests that outlived the last
        daemon running: the process stays until ZooKeeper answers (the next daemon takes over from there) or
        the watchdog has fenced the node and seen every guest off. Leaving at once had left them unwatched."""
        if not self.self_fence.watching:
            return
        failure = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        told = False
        while self.self_fence.confirmed_at is None:
            reachable, why = self.self_fence.zookeeper_reachable(self.fencing.peer_check_s)
            if reachable and not self.self_fence.fenced:
                return
            if not told:
                log.warning("the start failed (%s) and %s: the self-fence watchdog watches on until ZooKeeper "
                            "answers or the node has fenced itself", failure, why)
                told = True
            time.sleep(self.fencing.watchdog_period_s)
        log.warning("the start failed (%s); the node has fenced itself: %s", failure, self.self_fence.fenced_reason)

    def _watch_every_vm_until_indexed(self) -> None:
        """Watch through this node's index only once the index names every VM's placement (`pvc.node_index`);
        until a coordinator has built it, watch every VM, as a node of a cluster without the index must."""
        if self.settings["router"]:
            return
        if node_index.complete(self.store):
            self.store.zk.ensure_path(schema.node_vms(self.name))
            return
        log.warning("node %s watches every VM: the cluster's node index is not built yet (a coordinator builds "
                    "it at start)", self.name)
        self.vms.mirror_every_child()

    def _serve_agent(self) -> None:
        host, port = config.split_address(self.settings["listen_address"])
        self._agent_daemon = AuthenticatingDaemon([self.settings["cluster_secret"]], "cluster secret", host, port)
        uri = self._agent_daemon.register(NodeAgent(self.name, self.hypervisor, self.reconciler, self.paths,
                                                    self.settings["log_file"],
                                                    zookeeper_probe=self.self_fence.zookeeper_reachable,
                                                    guest_snapshots=self.guest_snapshots),
                                          AGENT_OBJECT_ID)
        self.facts["agent_uri"] = str(uri)
        self.storage.start()
        storage_uri = self._agent_daemon.register(self.storage.agent, STORAGE_OBJECT_ID)
        self.facts.update(self.storage.facts(str(storage_uri)))
        threading.Thread(target=self._agent_daemon.requestLoop, name="node-agent", daemon=True).start()

    def _register(self) -> None:
        """Create the node or update its facts; an existing node keeps its domain state across restarts, and a
        node the leader holds its daemon state. A claim elsewhere that relies on this node being ``fenced``
        fails once this record is written (`Reconciler._fenced`)."""
        listen_host, _port = config.split_address(self.settings["listen_address"])
        self._published_interval = self.fencing.keepalive_interval
        record = {**self.facts, "keepalive_interval": self._published_interval,
                  "zookeeper_session_timeout_s": self.session_timeout.seconds,
                  "libvirt_uri": self.hypervisor.uri,
                  "migration_uri": self.settings["migration_uri"] or f"qemu+tcp://{_uri_host(listen_host)}/system",
                  "migration_stream_uri": f"tcp://{_uri_host(self.settings['migration_address'] or listen_host)}",
                  "host_paths": vars(self.paths),
                  "cluster_address": self.networks.cluster_address if self.networks is not None else None,
                  "router": bool(self.networks is not None and self.networks.router is not None),
                  "bmc": fence_secrets.sealed_bmc(SecretsBox(self.settings["cluster_secret"]), self.name, {
                      "host": self.settings["bmc_host"], "port": self.settings["bmc_port"],
                      "user": self.settings["bmc_user"], "password": self.settings["bmc_password"]})}
        if self.store.zk.exists(schema.node(self.name)):
            self.ownership.transaction().set(schema.node(self.name), record).commit()
            with self._hold_lock:
                self.hold.say("init")
            if self.store.zk.exists(schema.node_key(self.name, "domain_state")) is None:
                self.ownership.write(schema.node_key(self.name, "domain_state"), "ready")
            return
        self.ownership.transaction() \
            .create(schema.node(self.name), record) \
            .create(schema.node_key(self.name, "daemon_state"), "init") \
            .create(schema.node_key(self.name, "domain_state"), "ready") \
            .commit()

    def _say_running(self) -> None:
        """Say ``run`` unless the leader holds the node; then say why it stays as the leader left it."""
        with self._hold_lock:
            if self._stopping.is_set():
                return
            if self.hold.say("run"):
                return
        log.warning("%s; its daemon runs, reports what it finds and writes keepalives", self._held or
                    f"node {self.name} is held by the leader")

    def _follow_hold(self) -> None:
        """Read whether the leader holds this node, and refuse or allow starts accordingly."""
        with self._hold_lock:
            held = self.hold.reason()
            if held != self._held:
                log.log(logging.WARNING if held else logging.INFO, "%s", held or
                        f"node {self.name} is returned to service: it may start VMs again")
            with self._refusal_lock:
                self._held = held
                self.reconciler.starts_refused = self._self_fenced or held

    def _on_daemon_state(self, _data: bytes | None, _stat: Any, _event: Any = None) -> bool | None:
        if self._stopping.is_set():
            return False
        self._daemon_state_changed.set()
        return None

    def _hold_loop(self) -> None:
        """Follow the hold: at once when the daemon state changes (the leader marks the node dead, or `node
        ready` releases it), every keepalive interval while held (a recovery task ends without a change of the
        state), and every `HOLD_AUDIT_INTERVALS` otherwise; once released, say ``run`` and converge at once, so
        that the VMs the ready brings back start without waiting for the next pass."""
        while not self._stopping.is_set():
            interval = self.fencing.keepalive_interval
            self._daemon_state_changed.wait(interval if self._held else interval * HOLD_AUDIT_INTERVALS)
            self._daemon_state_changed.clear()
            if self._stopping.is_set() or not self.store.connected:
                continue
            try:
                was_held = self._held
                self._follow_hold()
                if self._held is None:
                    self._say_running()
                    if was_held:
                        self.reconciler.converge_all()
            except Exception as error:
                log.warning("following the hold of node %s failed: %s", self.name, error)

    @property
    def fencing(self) -> fencing_settings.FencingSettings:
        """This node's fencing settings: the cluster config's, with its overrides (this daemon's YAML
        keepalive_interval only while the cluster config has none). Resolved once per cluster config: every
        loop asks for it each interval (5% of an idle node's CPU)."""
        config, resolved = self.cluster_config, self._fencing_resolved
        if resolved is not None and resolved[0] is config:
            return resolved[1]
        settings = fencing_settings.resolve(config, self.name,
                                            {"keepalive_interval": self.settings["keepalive_interval"]})
        self._fencing_resolved = (config, settings)
        return settings

    def _on_cluster_config(self, data: bytes | None, _stat: Any, _event: Any = None) -> None:
        if data is None:
            return
        before = self.fencing
        self.cluster_config = schema.decode(data) or {}
        after = self.fencing
        if after != before:
            problem = fencing_settings.violation(after, self.session_timeout.seconds)
            log.log(logging.ERROR if problem else logging.INFO, "fencing settings of node %s now: %s; %s%s",
                    self.name, after.describe_self_fence(), after.describe_fence(),
                    f"; UNSAFE: {problem}" if problem else "")

    def _check_fencing_settings(self) -> None:
        """Refuse to run with settings under which this node, cut off from ZooKeeper, could still run its VMs
        when the leader starts them elsewhere (`pvc.fencing_settings.violation`), given the session timeout
        the ZooKeeper server granted."""
        granted = self.session_timeout.wait(5.0)
        settings = self.fencing
        problem = fencing_settings.violation(settings, granted)
        if problem:
            raise ConfigError(f"node {self.name}: unsafe fencing settings: {problem}")
        log.info("node %s: ZooKeeper session timeout %s s granted; %s ends before %s", self.name, granted,
                 settings.describe_self_fence() if settings.self_fence_enabled else "self-fencing off (0)",
                 settings.describe_fence())

    def _on_session_state(self, state: str) -> None:
        """Each new connection is a new handshake, maybe with another ZooKeeper server granting another session
        timeout: say at once if the settings no longer hold with it."""
        if state == KazooState.CONNECTED:
            problem = fencing_settings.violation(self.fencing, self.session_timeout.seconds)
            if problem:
                log.error("node %s: unsafe fencing settings with the session timeout now granted: %s", self.name,
                          problem)

    def _refuse_starts(self, reason: str) -> None:
        with self._refusal_lock:
            self._self_fenced = reason
            self.reconciler.starts_refused = reason
        if self.networks is not None and self.networks.router is not None:
            # Off the self-fence's thread: it stops the VMs first, and waits for nothing else.
            threading.Thread(target=self.networks.stop_routing_cut_off, name="router-stop", daemon=True).start()

    def write_keepalive(self) -> None:
        """Write the latest figures; never asks libvirt itself, so a hung libvirtd makes the figures stale
        (`figures_stale`, `figures_age_s`), not the node silent; and how long ago its last converge pass
        completed (`converge_age_s`: how far libvirt may lag the desired state). With them, the maintenance flag
        this node last saw, which its self-fence acts on (`maintenance_seen`). A node that has fenced itself
        writes none: the leader is to mark it dead and fence it."""
        if self.self_fence.fenced:
            return
        age = time.monotonic() - self._figures_taken
        stale = age > 2 * self.fencing.keepalive_interval
        started = time.monotonic()
        self.ownership.write(schema.node_key(self.name, "keepalive"),
                             {"time": time.time(), **self._figures, "figures_stale": stale,
                              "figures_age_s": round(age, 1),
                              "converge_age_s": round(time.monotonic() - self._converged, 1),
                              "maintenance_seen": bool(self.cluster_config.get("maintenance"))})
        self.self_fence.acknowledged(started)

    def _publish_interval(self, interval: float) -> None:
        """Say in the node record which keepalive interval this node now uses (after it uses it, so that the
        leader, which counts the longer of this and the cluster's, never judges a lowered one too early)."""
        if interval == self._published_interval or self.self_fence.fenced:
            return
        record = self.store.read(schema.node(self.name)) or {}
        self.ownership.write(schema.node(self.name), {**record, "keepalive_interval": interval})
        self._published_interval = interval
        self.self_fence.settings_changed()
        log.info("node %s now writes a keepalive every %g s", self.name, interval)

    def _read_figures(self) -> None:
        self._figures = self.hypervisor.figures(self.facts["memory_total_mib"])
        self._figures_taken = time.monotonic()

    def libvirt_lost_s(self) -> float | None:
        """Seconds since libvirt last gave this node its figures, once they are stale; None while it answers."""
        age = time.monotonic() - self._figures_taken
        return age if age > 2 * self.fencing.keepalive_interval else None

    def _act_on_lost_libvirt(self) -> None:
        """With ``libvirt_lost_action: fence``, a node whose libvirt has not answered for
        ``libvirt_lost_after`` seconds fences itself, unless more than half of the running nodes report
        stale figures too (a cluster-wide libvirt upgrade: the leader raises one fault instead)."""
        lost_s = self.libvirt_lost_s()
        settings = libvirt_lost.resolve(self.cluster_config, self.name)
        if lost_s is None or settings["libvirt_lost_action"] != "fence" or lost_s < settings["libvirt_lost_after"] \
                or self.self_fence.fenced:
            return
        running = stale = 0
        for node in self.store.children(schema.NODES):
            if self.store.read(schema.node_key(node, "daemon_state")) != "run":
                continue
            running += 1
            stale += bool((self.store.read(schema.node_key(node, "keepalive")) or {}).get("figures_stale"))
        if libvirt_lost.too_many_lost(stale, running):
            log.warning("libvirt has not answered for %.0f s, but %d of %d running nodes have lost theirs too: "
                        "a cluster-wide event, so this node does not fence itself", lost_s, stale, running)
            return
        self.self_fence.fence_now(f"libvirt has not answered for {lost_s:.0f} s (libvirt_lost_after "
                                  f"{settings['libvirt_lost_after']:g} s)")

    def _figures_loop(self) -> None:
        self._every_interval(self._read_figures, "reading the host's figures")

    def _vm_stats_loop(self) -> None:
        """Write the VMs' statistics every `vm_stats_interval`; a libvirt that does not answer leaves the last
        record as it was (its ``time`` says how old it is)."""
        interval = float(self.settings["vm_stats_interval"])
        while not self._stopping.wait(interval):
            if not self.store.connected or self.self_fence.fenced:
                continue
            try:
                self.ownership.write(schema.node_key(self.name, "vm_stats"), vm_stats.collect(self.hypervisor))
            except Exception as error:
                log.debug("VM statistics not written: %s", error)

    def _reconcile_loop(self) -> None:
        """Converge every VM each interval, so that a lost coordinator call delays an action, never loses it."""
        def converge() -> None:
            if self.store.connected:
                self.reconciler.converge_all()
                self._converged = time.monotonic()
        self._every_interval(converge, "converging")

    def _every_interval(self, work, what: str) -> None:
        """Run `work` every keepalive interval until the daemon stops; a failure is logged and retried with
        backoff (up to `BACKOFF_CAP_S`, or the interval if longer), never the end of the loop."""
        delay = self.fencing.keepalive_interval
        while not self._stopping.wait(delay):
            interval = self.fencing.keepalive_interval
            try:
                work()
                delay = interval
            except Exception as error:
                delay = min(delay * 2, max(BACKOFF_CAP_S, interval))
                log.warning("%s failed (retrying in %g s): %s", what, delay, error)

    def run(self) -> None:
        """Write a keepalive every interval until SIGTERM or SIGINT."""
        signals = SignalQueue()
        next_beat = time.monotonic() + self.fencing.keepalive_interval
        while signals.wait(next_beat - time.monotonic()) is None:
            interval = self.fencing.keepalive_interval
            next_beat += interval
            try:
                self._keep_ownership()
            except Conflict as error:
                log.error("%s", error)
                break
            except Exception as error:
                log.warning("ownership of node %s not checked: %s", self.name, error)
            try:
                self.write_keepalive()
                self._publish_interval(interval)
            except Conflict as error:
                self.ownership.suspect()
                log.warning("keepalive not written: %s", error)
            except Exception as error:
                log.warning("keepalive not written: %s", error)
            if next_beat < time.monotonic():
                next_beat = time.monotonic() + interval
        self.stop()

    def _keep_ownership(self) -> None:
        """After a lost ZooKeeper session our owner znode is gone: own the node again, or stop if another
        daemon took the name meanwhile."""
        if self.store.connected and self.ownership.maybe_lost and not self.ownership.held:
            log.warning("the ZooKeeper session that owned node %s ended: owning it again", self.name)
            self.ownership.acquire()

    def stop(self) -> None:
        """Record ``stop`` (unless the leader holds the node: its word stays) and leave; the VMs in libvirt keep
        running."""
        self._stopping.set()
        try:
            with self._hold_lock:
                self.hold.say("stop")
        except Exception as error:
            log.warning("could not record daemon state stop: %s", error)
        self._shutdown_services()
        log.info("node %s stopped", self.name)

    def _shutdown_services(self) -> None:
        self._stopping.set()
        self.health.stop()
        self.self_fence.stop()
        if self.networks is not None and self.store.connected:
            try:
                self.networks.stop_routing()
            except PVCError as error:
                log.warning("router services stopped, not reported: %s", error)
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
