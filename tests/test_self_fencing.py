"""A node cut off from ZooKeeper stops its own VMs before the leader may start them elsewhere, and only then.

The cut is a real one: the node's pvcnoded reaches ZooKeeper through a loopback TCP proxy the test cuts like
a cable (bytes dropped both ways, no reset), while its agent still talks to its peers. "Running" is read from
each host's own libvirtd; when the leader marked a node dead is ZooKeeper's own timestamp of that write.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import libvirt
import pytest
import yaml

from pvc import schema
from pvc.cli.localcluster.cluster import FENCE_INTERVALS, KEEPALIVE_INTERVAL, LIBVIRT_TIMEOUT, SUICIDE_INTERVALS
from pvc.cli.localcluster.processes import pid_alive
from pvc.cli.localcluster.qemuhost import QemuHost
from pvc.cli.localcluster.zookeeper import ZooKeeperServer
from pvc.errors import InvalidInput, Unavailable
from pvc.fencing_settings import FencingSettings, resolve, violation
from pvc.handshake import AuthenticatingDaemon
from pvc.node.agent import AGENT_OBJECT_ID, NodeAgent
from pvc.node.guest_processes import GuestProcesses
from pvc.node.host_xml import METADATA_NAMESPACE
from pvc.node.hypervisor import DomainActions, Hypervisor
from pvc.node.peer_directory import PeerDirectory
from pvc.node.self_fence import SelfFence
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER, started_cluster
from guest_support import boot_guests, wait_heartbeat
from helpers import cluster_store, eventually
from tcp_relay import Pair, TcpRelay, close_socket
from vm_support import assert_no_vm_on_two_hosts, pvc, running_hosts, vm_xml, wait_running_on

FENCE_DEADLINE_S = FENCE_INTERVALS * KEEPALIVE_INTERVAL
SELF_FENCE_DEADLINE_S = FencingSettings(KEEPALIVE_INTERVAL, FENCE_INTERVALS, SUICIDE_INTERVALS,
                                        "migrate").self_fence_deadline_s


class ZooKeeperLink(TcpRelay):
    """A loopback TCP proxy to ZooKeeper that can be cut like a cable: while cut, bytes in both directions are
    dropped and new connections are accepted and left unanswered; restoring closes the connections that lost
    bytes, so the client connects afresh."""

    def __init__(self, upstream_port: int):
        self._cut = threading.Event()
        self._damaged: list[socket.socket] = []
        super().__init__(("127.0.0.1", upstream_port))

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        with self._lock:
            self._cut.clear()
            damaged, self._damaged = self._damaged, []
        for sock in damaged:
            close_socket(sock)

    def admit(self, client: socket.socket) -> bool:
        with self._lock:
            if self._cut.is_set():
                self._damaged.append(client)
                return False
        return True

    def forward(self, data: bytes, pair: Pair, upstream: bool) -> bool:
        if not self._cut.is_set():
            return True
        with self._lock:
            if self._cut.is_set():
                self._damaged.extend(pair)
                return False
        return True


@pytest.fixture
def cut_off_node(fresh_cluster):
    """hv1 with its pvcnoded reaching ZooKeeper through a `ZooKeeperLink`: (cluster, link)."""
    local = fresh_cluster.local
    link = ZooKeeperLink(local.state["zookeeper_port"])
    local.stop_daemon("pvcnoded", "hv1")
    local.start_node_daemon("hv1", zookeeper_hosts=link.hosts)
    assert eventually(lambda: fresh_cluster.client.nodes.info("hv1")["daemon_state"] == "run", 30)
    try:
        yield fresh_cluster, link
    finally:
        link.restore()
        local.stop_daemon("pvcnoded", "hv1")  # while it can still reach ZooKeeper to say so
        link.close()


class DaemonStates:
    """Every value a node's daemon state takes, with ZooKeeper's own time of the write (epoch seconds)."""

    def __init__(self, store: Store, node: str):
        self.seen: list[tuple[str, float]] = []
        store.zk.DataWatch(schema.node_key(node, "daemon_state"), self._on_change)

    def _on_change(self, data, stat, _event=None) -> None:
        if data is not None:
            self.seen.append((schema.decode(data), stat.mtime / 1000))

    def when(self, state: str) -> float | None:
        return next((at for value, at in self.seen if value == state), None)


def _nodes(client) -> list[dict]:
    """The nodes as the coordinators say, or none while they have yet to find ZooKeeper again (their sessions
    may have expired during its outage)."""
    try:
        return client.nodes.list()
    except Unavailable:
        return []


def _self_fence_log(local, node: str) -> list[str]:
    """What the node's self-fence logged: every decision, with its numbers."""
    log_path = local.state_dir / "nodes" / node / "pvcnoded.log"
    return [line for line in log_path.read_text().splitlines() if "pvc.node.self_fence" in line]


def _vms_on(client, node: str, names: list[str]) -> None:
    for name in names:
        client.vms.define(vm_xml(name), target=node)
        client.vms.start(name, wait=True)


def _running_on(cluster, node: str) -> set[str] | None:
    """What `node`'s own libvirtd runs; None once the host is off (a fence powers it off at any moment)."""
    try:
        return {name for name, running in cluster.host_domains(node).items() if running}
    except libvirt.libvirtError:
        if cluster.local.host(node).running:
            raise
        return None


def _active_on(cluster, node: str) -> set[str]:
    """The domains `node`'s own libvirtd has not shut off: running, paused, or anything in between."""
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        return {domain.name() for domain in connection.listAllDomains() if domain.isActive()}
    finally:
        connection.close()


HV1_OFF = "(hv1 was powered off by its fence before its VMs were seen shut off)"


def _still_active(cluster, names: list[str]) -> set[str]:
    """Those of `names` hv1's libvirtd has not shut off; while hv1 is off (fenced), that it is off."""
    try:
        return _active_on(cluster, "hv1") & set(names)
    except libvirt.libvirtError:
        if cluster.local.host("hv1").running:
            raise
        return {HV1_OFF}


def _pause(cluster, node: str, name: str) -> None:
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        connection.lookupByName(name).suspend()
    finally:
        connection.close()


def cut_and_watch(cluster, link, names: list[str]) -> tuple[float, float, float, dict]:
    """Cut hv1's `link`; once hv1's own libvirtd shows `names` shut off (not running, not paused), restore it
    and watch that hv1 resumes nothing; wait for hv1's recovery. Asserts that the VMs stopped before the leader
    marked hv1 dead (ZooKeeper's time of that write) and within the fence deadline of the cut; returns the cut's
    time, when the VMs were seen stopped, when hv1 was marked dead, and the recovery."""
    client = cluster.client
    with cluster_store(cluster.local) as store:
        states = DaemonStates(store, "hv1")

        link.cut()
        cut_at = time.time()
        seen: list[set[str]] = []
        assert eventually(lambda: not seen.append(_still_active(cluster, names)) and not seen[-1], 15, 0.05), \
            f"{seen[-1]}; last seen on hv1, running or paused: " \
            f"{next((found for found in reversed(seen) if HV1_OFF not in found), None)}"
        stopped_seen_at = time.time()
        link.restore()

        resumed: set[str] = set()
        while (running := _running_on(cluster, "hv1")) is not None and time.time() < stopped_seen_at + 15:
            resumed |= running
            time.sleep(0.05)
        assert not resumed, f"hv1 started {resumed} again after its link came back"
        recovery = eventually(lambda: (lambda found: found if found and found["state"] == "done" else None)(
            client.nodes.info("hv1")["recovery"]), 30, 0.2)
        assert recovery, client.nodes.info("hv1")
        dead_at = states.when("dead")
    assert dead_at is not None, states.seen
    assert stopped_seen_at < dead_at, \
        f"hv1's VMs were seen stopped {stopped_seen_at - dead_at:.2f} s after the leader marked it dead"
    assert stopped_seen_at - cut_at < FENCE_DEADLINE_S, f"stopped {stopped_seen_at - cut_at:.2f} s after the cut"
    return cut_at, stopped_seen_at, dead_at, recovery


@pytest.mark.cluster(nodes=3)
def test_a_node_cut_off_alone_stops_its_vms_before_the_leaders_deadline_and_they_run_elsewhere_once(cut_off_node):
    cluster, link = cut_off_node
    client = cluster.client
    names = ["cut1", "cut2", "cut3"]
    _vms_on(client, "hv1", names)
    _pause(cluster, "hv1", "cut3")  # a paused guest is a copy too: it resumes with one word
    cut_at, stopped_seen_at, dead_at, recovery = cut_and_watch(cluster, link, names)
    assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"]
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    for name in names:
        node = client.vms.info(name)["node"]
        assert node in ("hv2", "hv3")
        wait_running_on(cluster, name, node)
    assert_no_vm_on_two_hosts(cluster)
    decisions = _self_fence_log(cluster.local, "hv1")
    assert any("cut off from ZooKeeper: no keepalive acknowledged for" in line for line in decisions), decisions
    print("\n" + "\n".join(decisions))
    print(f"self-fenced (seen from hv1's libvirtd) {stopped_seen_at - cut_at:.2f} s after the cut; "
          f"marked dead {dead_at - cut_at:.2f} s after it (self-fence deadline {SELF_FENCE_DEADLINE_S:g} s, "
          f"fence deadline {FENCE_DEADLINE_S:g} s, both from the last acknowledged keepalive)")


@pytest.fixture
def qemu_cluster_with_a_cuttable_node(tmp_path_factory):
    for cluster in started_cluster(tmp_path_factory.mktemp("qemu-self-fence"), nodes=3, coordinators=1,
                                   hypervisor="qemu"):
        link = ZooKeeperLink(cluster.local.state["zookeeper_port"])
        cluster.local.stop_daemon("pvcnoded", "hv1")
        cluster.local.start_node_daemon("hv1", zookeeper_hosts=link.hosts)
        assert eventually(lambda: cluster.client.nodes.info("hv1")["daemon_state"] == "run", 60)
        try:
            yield cluster, link
        finally:
            link.restore()
            cluster.local.stop_daemon("pvcnoded", "hv1")
            link.close()


@pytest.mark.bench
@pytest.mark.parametrize("libvirtd", ["answering", "frozen"])
def test_a_cut_off_qemu_host_kills_its_real_guests_before_the_leaders_deadline(qemu_cluster_with_a_cuttable_node,
                                                                               libvirtd):
    """With libvirtd frozen at the cut, only the kill fallback (libvirtd's PID files) can stop the guests."""
    cluster, link = qemu_cluster_with_a_cuttable_node
    client, local = cluster.client, cluster.local
    names = ["isolated1", "isolated2", "isolated3"]
    boots = boot_guests(cluster, "hv1", names)
    pids = local.host("hv1").qemu_pids()
    with cluster_store(local) as store:
        states = DaemonStates(store, "hv1")

        if libvirtd == "frozen":
            local.host("hv1").freeze_libvirtd(True)
        link.cut()
        cut_at = time.time()
        try:
            assert eventually(lambda: not any(pid_alive(pid) for name, pid in pids.items() if name in names), 15,
                              0.05)
        finally:
            if libvirtd == "frozen" and local.host("hv1").running:
                local.host("hv1").freeze_libvirtd(False)
        gone_at = time.time()
        link.restore()
        recovery = eventually(lambda: (lambda found: found if found and found["state"] == "done" else None)(
            client.nodes.info("hv1")["recovery"]), 60, 0.2)
        assert recovery, client.nodes.info("hv1")
        dead_at = states.when("dead")
    assert dead_at is not None and gone_at < dead_at, (gone_at - cut_at, states.seen)
    for name in names:
        node = client.vms.info(name)["node"]
        assert node in ("hv2", "hv3")
        assert wait_heartbeat(cluster, name, node).boot_id != boots[name].boot_id, f"{name} booted again on {node}"
        wait_running_on(cluster, name, node)
    assert_no_vm_on_two_hosts(cluster)
    print(f"\nhv1's QEMU processes gone {gone_at - cut_at:.2f} s after the cut, marked dead "
          f"{dead_at - cut_at:.2f} s after it")


@pytest.mark.cluster(nodes=3)
def test_a_self_fenced_node_whose_link_returns_resumes_nothing_and_reports_only_what_it_checked(cut_off_node):
    cluster, link = cut_off_node
    client = cluster.client
    client.cluster.config(fence_chain=["none"])
    names = ["back1", "back2"]
    _vms_on(client, "hv1", names)

    link.cut()
    assert eventually(lambda: all(cluster.host_domains("hv1").get(name) is False for name in names), 15, 0.05)
    link.restore()

    assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "dead", FENCE_DEADLINE_S + 10, 0.1), \
        "a node that fenced itself writes no keepalive even once ZooKeeper answers again"
    assert eventually(lambda: all(client.vms.info(name)["running"] is False for name in names), 10), \
        [client.vms.info(name) for name in names]
    assert all("self-fencing" in (client.vms.info(name)["last_error"] or "") for name in names), \
        [client.vms.info(name) for name in names]
    assert not eventually(lambda: any(cluster.host_domains("hv1").get(name) for name in names),
                          3 * KEEPALIVE_INTERVAL), "hv1 resumed VMs it had stopped"
    assert (client.nodes.info("hv1")["recovery"] or {}).get("state") == "failed"

    client.nodes.fence_confirm("hv1")
    for name in names:
        node = eventually(lambda: (lambda vm: vm["node"] if vm["node"] != "hv1" and vm["running"] else None)(
            client.vms.info(name)), 20)
        assert node, client.vms.info(name)
        wait_running_on(cluster, name, node)
    assert_no_vm_on_two_hosts(cluster)


@pytest.mark.cluster(nodes=3)
def test_zookeeper_stopped_for_twice_the_self_fence_deadline_stops_no_vm_and_fences_nothing(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    expected = {"outage1": ["hv1"], "outage2": ["hv2"], "outage3": ["hv3"]}
    for name, (node,) in expected.items():
        _vms_on(client, node, [name])
    zookeeper = ZooKeeperServer.attach(local.state_dir / "zookeeper")

    zookeeper.stop()
    stopped_at = time.monotonic()
    while time.monotonic() < stopped_at + 2 * SELF_FENCE_DEADLINE_S:
        assert running_hosts(fresh_cluster) == expected
        time.sleep(0.2)
    zookeeper.start()

    assert not eventually(lambda: any(node["daemon_state"] in ("dead", "fenced") for node in _nodes(client)),
                          FENCE_DEADLINE_S + 4, 0.2), \
        (_nodes(client), {node: _self_fence_log(local, node)[-4:] for node in local.node_names})
    assert [node["daemon_state"] for node in eventually(lambda: _nodes(client), 30)] == ["run"] * 3
    assert running_hosts(fresh_cluster) == expected
    assert all(client.nodes.info(node)["recovery"] is None for node in local.node_names)
    for node in local.node_names:
        assert any("a ZooKeeper outage, not this node's isolation, so it keeps its VMs" in line
                   for line in _self_fence_log(local, node)), f"{node} never judged the outage"


@pytest.mark.cluster(nodes=3)
def test_in_maintenance_a_cut_off_node_keeps_its_vms(cut_off_node):
    cluster, link = cut_off_node
    client = cluster.client
    _vms_on(client, "hv1", ["kept1", "kept2"])
    client.cluster.maintenance(True)
    assert eventually(lambda: client.nodes.info("hv1")["maintenance_seen"] is True, 5 * KEEPALIVE_INTERVAL), \
        "hv1 saw maintenance mode before it was cut off"

    link.cut()

    assert eventually(lambda: client.nodes.info("hv1")["daemon_state"] == "dead", FENCE_DEADLINE_S + 10, 0.1)
    assert not eventually(lambda: not all(cluster.host_domains("hv1").get(name) for name in ("kept1", "kept2")),
                          2 * KEEPALIVE_INTERVAL), cluster.host_domains("hv1")
    assert client.nodes.info("hv1")["recovery"] is None
    assert running_hosts(cluster) == {"kept1": ["hv1"], "kept2": ["hv1"]}
    assert any("the last maintenance flag seen was on" in line for line in _self_fence_log(cluster.local, "hv1"))


@pytest.mark.cluster(nodes=2)
def test_fencing_settings_are_the_clusters_with_per_node_overrides_and_unsafe_ones_are_refused(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    refused = pvc(fresh_cluster, "cluster", "config", "--suicide-intervals", "3")
    assert refused.exit_code == 1
    assert "self-fence deadline 4.6 s (suicide_intervals 3 × keepalive_interval 1 s + watchdog period 0.1 s + " \
           "peer check 0.5 s + stopping VMs through libvirt 0.8 s + killing what libvirt did not stop 0.2 s)" \
           in refused.output
    assert "fence deadline 4 s (fence_intervals 4 × keepalive_interval 1 s)" in refused.output
    with pytest.raises(InvalidInput, match=r"kazoo's detection lag 1\.67 s .* session timeout 2\.5 s"):
        client.cluster.config(node="hv2", suicide_intervals=1)
    with pytest.raises(InvalidInput, match="suicide_intervals must be a whole number of at least 0, not 1.5"):
        client.cluster.config(suicide_intervals=1.5)
    assert client.cluster.config()["suicide_intervals"] == SUICIDE_INTERVALS

    shown = pvc(fresh_cluster, "cluster", "config", "--node", "hv2", "--fence-intervals", "8",
                "--successful-fence", "none", "--format", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["fencing_overrides"] == {"hv2": {"fence_intervals": 8, "successful_fence": "none"}}
    assert client.cluster.config()["fence_intervals"] == FENCE_INTERVALS
    _vms_on(client, "hv2", ["stays"])
    with cluster_store(local) as store:
        states = DaemonStates(store, "hv2")
        local.stop_daemon("pvcnoded", "hv2", kill=True)
        killed_at = time.time()
        recovery = eventually(lambda: (lambda found: found if found and found["state"] == "done" else None)(
            client.nodes.info("hv2")["recovery"]), 30, 0.2)
        dead_at = states.when("dead")
    assert recovery and recovery["reason"].startswith("successful_fence is none"), client.nodes.info("hv2")
    assert dead_at - killed_at > 8 * KEEPALIVE_INTERVAL - KEEPALIVE_INTERVAL - 1, \
        f"hv2 was marked dead {dead_at - killed_at:.2f} s after its daemon died, not after its own 8 intervals"
    assert client.vms.info("stays")["node"] == "hv2", "with successful_fence none, nothing moves"
    assert client.cluster.config(node="hv2", fence_intervals=None, successful_fence=None)["fencing_overrides"] == {}


def test_a_nodes_overrides_come_before_the_clusters_settings_and_those_before_its_own_yaml():
    cluster_config = {"keepalive_interval": 2, "fence_intervals": 5,
                      "fencing_overrides": {"hv1": {"suicide_intervals": 1, "successful_fence": "none"}}}
    assert resolve(cluster_config, "hv1", {"keepalive_interval": 9}) == FencingSettings(2, 5, 1, "none")
    assert resolve(cluster_config, "hv2") == FencingSettings(2, 5, 3, "migrate")
    assert resolve({}, "hv2", {"keepalive_interval": 9}).keepalive_interval == 9
    production = resolve({})
    assert (production.fence_deadline_s, production.self_fence_deadline_s) == (30, 22.75)
    assert violation(production, session_timeout_s=10) is None


def _start_pvcnoded(tmp_path: Path, zookeeper_hosts: str, node: str, **settings) -> subprocess.CompletedProcess:
    config_path = tmp_path / "pvcnoded.yaml"
    config_path.write_text(yaml.safe_dump({
        "node_name": node, "zookeeper_hosts": zookeeper_hosts, "zookeeper_user": ZK_USER,
        "zookeeper_password": ZK_PASSWORD, "libvirt_uri": "test:///default", "cluster_secret": "s3cret",
        "listen_address": "127.0.0.1:0", "keepalive_interval": 1, "zookeeper_session_timeout": 2.5,
        "storage_directory": str(tmp_path / "storage"), "upload_staging_directory": str(tmp_path / "staging"),
        "console_log_directory": str(tmp_path / "console"), "boot_image_directory": str(tmp_path / "boot"),
        "upload_listen_address": "127.0.0.1:0", **settings}))
    executable = Path(sys.executable).with_name("pvcnoded")
    return subprocess.run([str(executable), "--config", str(config_path)], capture_output=True, text=True,
                          timeout=60, env=os.environ)


def test_a_node_refuses_to_start_when_its_self_fence_would_end_after_the_fence_deadline(store, zookeeper_hosts,
                                                                                          tmp_path):
    store.write(schema.CONFIG, {**(store.read(schema.CONFIG) or {}), "keepalive_interval": 1,
                                "fence_intervals": 4, "suicide_intervals": 2,
                                "fencing_overrides": {"hv-late": {"suicide_intervals": 3}}})

    late = _start_pvcnoded(tmp_path, zookeeper_hosts, "hv-late")

    assert late.returncode == 1, late.stderr
    error = [line for line in late.stderr.splitlines() if "error:" in line]
    assert error == ["pvcnoded: error: node hv-late: unsafe fencing settings: self-fence deadline 4.6 s "
                     "(suicide_intervals 3 × keepalive_interval 1 s + watchdog period 0.1 s + peer check 0.5 s + "
                     "stopping VMs through libvirt 0.8 s + killing what libvirt did not stop 0.2 s) does not end "
                     "before the leader's fence deadline 4 s (fence_intervals 4 × keepalive_interval 1 s): a node "
                     "cut off from ZooKeeper could still run its VMs when they start elsewhere"], late.stderr
    assert store.zk.exists(schema.node("hv-late")) is None
    assert not store.children(schema.node_owners("hv-late"))

    slow = _start_pvcnoded(tmp_path, zookeeper_hosts, "hv-slow", zookeeper_session_timeout=6)

    assert slow.returncode == 1, slow.stderr
    assert "suicide_intervals 2 × keepalive_interval 1 s = 2 s is not longer than kazoo's detection lag 4.00 s " \
           "(2/3 of the negotiated ZooKeeper session timeout 6 s)" in slow.stderr
    assert store.zk.exists(schema.node("hv-slow")) is None


# -- the self-fence's parts against real components, without a cluster ----------------------------------------

LOCAL_SETTINGS = FencingSettings(KEEPALIVE_INTERVAL, FENCE_INTERVALS, SUICIDE_INTERVALS, "migrate")
SECRET = "s3cret"


class Peers:
    """Node records in a real ZooKeeper, read back by a real `PeerDirectory`; agents served by real Pyro5
    daemons (`serve`) or left unanswering (a URI where nothing listens)."""

    def __init__(self, store: Store, own_name: str):
        self._store = store
        self._daemons: list[AuthenticatingDaemon] = []
        self.directory = PeerDirectory(store, own_name)

    def serve(self, name: str, zookeeper_probe) -> None:
        daemon = AuthenticatingDaemon([SECRET], "cluster secret", "127.0.0.1", 0)
        uri = daemon.register(NodeAgent(name, None, None, None, zookeeper_probe=zookeeper_probe), AGENT_OBJECT_ID)
        threading.Thread(target=daemon.requestLoop, daemon=True).start()
        self._daemons.append(daemon)
        self._record(name, str(uri))

    def unanswering(self, name: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._record(name, f"PYRO:{AGENT_OBJECT_ID}@127.0.0.1:{port}")

    def _record(self, name: str, uri: str) -> None:
        self._store.write(schema.node(name), {"agent_uri": uri})

    def start(self, count: int) -> None:
        self.directory.start()
        assert eventually(lambda: len(self.directory.agent_uris()) == count, 5), self.directory.agent_uris()

    def close(self) -> None:
        for daemon in self._daemons:
            daemon.shutdown()


@pytest.fixture
def linked_store(zookeeper_server, zookeeper_hosts):
    """A factory of stores that reach the test's ZooKeeper chroot through links the test can cut."""
    made: list[tuple[Store, ZooKeeperLink]] = []

    def make() -> tuple[Store, ZooKeeperLink]:
        link = ZooKeeperLink(zookeeper_server.port)
        store = Store(link.hosts + zookeeper_hosts[len(zookeeper_server.hosts):], ZK_USER, ZK_PASSWORD,
                      session_timeout=4)
        store.start(connect_timeout=10)
        made.append((store, link))
        return store, link
    yield make
    for store, link in made:
        link.restore()
        store.stop()
        link.close()


def _self_fence(node: str, store: Store, peers: PeerDirectory, actions: DomainActions, **options) -> SelfFence:
    return SelfFence(node, store, peers, actions, lambda: LOCAL_SETTINGS, lambda: False, SECRET,
                     lambda _reason: None, **options)


@pytest.mark.parametrize("members, peer_reaches, expected", [
    (5, False, "cut off"),  # a minority of two: itself and a fellow node that cannot reach ZooKeeper either
    (3, False, "outage"),   # two of three answer: a majority, and nobody reaches ZooKeeper
    (3, True, "cut off"),   # a peer reaches ZooKeeper: this node is the one cut off
    (1, None, "outage"),    # no peer at all: nobody could run its VMs
])
def test_a_zookeeper_outage_needs_a_majority_answering_and_a_minority_fences_itself(linked_store, members,
                                                                                     peer_reaches, expected):
    own_store, own_link = linked_store()
    peer_store, peer_link = linked_store()
    own_store.zk.ensure_path(schema.NODES)
    peers = Peers(own_store, "hv1")
    try:
        if members > 1:
            peer = _self_fence("hv2", peer_store, None, None)
            peers.serve("hv2", peer.zookeeper_reachable)
            for index in range(3, members + 1):
                peers.unanswering(f"hv{index}")
        peers.start(members - 1)
        own_link.cut()
        if not peer_reaches:
            peer_link.cut()

        verdict, reason = _self_fence("hv1", own_store, peers.directory, None)._ask(LOCAL_SETTINGS)
    finally:
        peers.close()
    assert verdict == expected, reason
    if (members, expected) == (5, "cut off"):
        assert "only 2 of 5 nodes, this one included, answered" in reason, reason
    if (members, expected) == (3, "outage"):
        assert "a majority (2 of 3 nodes, this one included)" in reason, reason


def test_after_an_outage_a_node_still_cut_off_gives_itself_the_leaders_reconnection_grace_and_then_fences(
        linked_store, caplog):
    """Nodes come back from a ZooKeeper outage at different times: a peer that reaches ZooKeeper again does not
    stop this node's VMs at once, but only once the silence since the last question that found the outage is
    the grace the leader adds (`reconnect_grace_s`) longer than the one that starts a self-fence; and then in
    time for the leader's deadline counted from the end of the outage."""
    caplog.set_level(logging.INFO, logger="pvc.node.self_fence")
    own_store, own_link = linked_store()
    peer_store, peer_link = linked_store()
    own_store.zk.ensure_path(schema.NODES)
    peers = Peers(own_store, "hv1")
    hypervisor = Hypervisor("test:///default", call_timeout=LIBVIRT_TIMEOUT)
    fence = _self_fence("hv1", own_store, peers.directory, DomainActions(hypervisor, shutdown_timeout=1))

    def messages() -> list[str]:
        return [record.getMessage() for record in caplog.records]
    try:
        peers.serve("hv2", _self_fence("hv2", peer_store, None, None).zookeeper_reachable)
        peers.start(1)
        written = time.monotonic()
        own_store.write(schema.node_key("hv1", "keepalive"), {"time": time.time()})
        fence.acknowledged(written)
        own_link.cut()
        peer_link.cut()
        fence.start()
        assert eventually(lambda: any("a ZooKeeper outage" in message for message in messages()), 5), messages()
        time.sleep(LOCAL_SETTINGS.keepalive_interval)
        peer_link.restore()
        ended = time.monotonic()
        assert eventually(lambda: any("back for a peer" in message for message in messages()), 3), messages()
        limit = LOCAL_SETTINGS.reconnect_grace_s + LOCAL_SETTINGS.self_fence_deadline_s
        assert eventually(lambda: fence.fenced, limit, 0.05), messages()
        fenced_after = time.monotonic() - ended
    finally:
        fence.stop()
        peers.close()
        hypervisor.close()
    # The last question that found the outage began at most half an interval, a peer check and a watchdog period
    # before the peer reached ZooKeeper again.
    earliest = (LOCAL_SETTINGS.reconnect_grace_s + LOCAL_SETTINGS.silence_before_self_fence_s
                - LOCAL_SETTINGS.keepalive_interval / 2 - LOCAL_SETTINGS.peer_check_s - LOCAL_SETTINGS.watchdog_period_s)
    assert earliest <= fenced_after < LOCAL_SETTINGS.reconnect_grace_s + LOCAL_SETTINGS.fence_deadline_s, \
        (fenced_after, messages())
    print(f"\nstill cut off after an outage: stopping its VMs {fenced_after:.2f} s after a peer reached ZooKeeper "
          f"again (the leader's grace and deadline: {LOCAL_SETTINGS.reconnect_grace_s + LOCAL_SETTINGS.fence_deadline_s:g} s)")


def _guest_xml(name: str) -> str:
    """A PVC-managed QEMU guest with nothing to boot: its QEMU runs (in its firmware) until it is killed."""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os><metadata><pvc:vm xmlns:pvc='{METADATA_NAMESPACE}' name='{name}'/>"
            "</metadata></domain>")


@pytest.fixture
def qemu_host():
    host = QemuHost(Path(tempfile.mkdtemp(prefix="fence-")), "hvq")
    host.start()
    try:
        yield host
    finally:
        host.freeze_libvirtd(False)
        host.power_off()


def test_a_cut_off_node_whose_libvirtd_is_frozen_kills_its_guests_by_the_deadline(linked_store, qemu_host, caplog):
    """libvirtd frozen (SIGSTOP) and ZooKeeper cut off at once: the guests' QEMU processes (one running, one
    paused) are dead within the self-fence deadline the settings promise, found from libvirtd's PID files; the
    node never says it has fenced itself while one of them runs."""
    caplog.set_level(logging.INFO, logger="pvc.node.self_fence")
    store, link = linked_store()
    store.zk.ensure_path(schema.NODES)
    connection = libvirt.open(qemu_host.uri)
    try:
        for name in ("guest1", "guest2"):
            connection.defineXML(_guest_xml(name)).create()
        connection.lookupByName("guest2").suspend()
        connection.defineXML(_guest_xml("handmade").replace(f"<pvc:vm xmlns:pvc='{METADATA_NAMESPACE}' "
                                                             "name='handmade'/>", "")).create()
    finally:
        connection.close()
    pids = qemu_host.qemu_pids()
    handmade = pids.pop("handmade")
    assert set(pids) == {"guest1", "guest2"}, pids
    hypervisor = Hypervisor(qemu_host.uri, call_timeout=LIBVIRT_TIMEOUT)
    actions = DomainActions(hypervisor, shutdown_timeout=1)
    assert {domain.name for domain in hypervisor.domains() if domain.active} == {"guest1", "guest2", "handmade"}
    peers = Peers(store, "hv1")
    peers.unanswering("hv2")
    peers.unanswering("hv3")
    peers.start(2)
    fence = _self_fence("hv1", store, peers.directory, actions,
                        guest_processes=GuestProcesses(qemu_host.run_directory, qemu_host.init_pid_file))
    try:
        qemu_host.freeze_libvirtd(True)
        written = time.monotonic()
        store.write(schema.node_key("hv1", "keepalive"), {"time": time.time()})
        fence.acknowledged(written)
        link.cut()
        fence.start()
        believed_while_running: list[list[str]] = []

        def all_dead() -> bool:
            believed = any("self-fenced" in record.getMessage() for record in caplog.records)
            running = [name for name, pid in pids.items() if pid_alive(pid)]
            if believed and running:
                believed_while_running.append(running)
            return not running
        assert eventually(all_dead, LOCAL_SETTINGS.fence_deadline_s + 2, 0.01), \
            f"guests still running {time.monotonic() - written:.2f} s after the last keepalive"
        dead_after = time.monotonic() - written
        assert not believed_while_running, f"the node said it had fenced itself while {believed_while_running[0]} ran"
        qemu_host.freeze_libvirtd(False)
        assert eventually(lambda: any("self-fenced" in record.getMessage() for record in caplog.records), 10), \
            [record.getMessage() for record in caplog.records]
    finally:
        fence.stop()
        qemu_host.freeze_libvirtd(False)
        hypervisor.close()
    assert pid_alive(handmade), "a guest PVC does not manage (no PVC metadata) is not PVC's to kill"
    assert dead_after < LOCAL_SETTINGS.self_fence_deadline_s, \
        f"guests dead {dead_after:.2f} s after the last keepalive, past the {LOCAL_SETTINGS.describe_self_fence()}"
    print(f"\nguests' QEMU processes dead {dead_after:.2f} s after the last acknowledged keepalive "
          f"({LOCAL_SETTINGS.describe_self_fence()})")
