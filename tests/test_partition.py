"""A partition, not just a kill: a host cut off from the rest of the cluster by its network link.

hv1's pvcnoded runs in a network namespace of its own, joined to the root namespace by a veth pair with
link-local addresses; ZooKeeper, the coordinators, the other nodes and every BMC stay in the root namespace,
hv1's libvirtd too (its unix socket is reached through the filesystem, as a host reaches its own hypervisor).
ZooKeeper listens on loopback only, so a relay in the test takes hv1's ZooKeeper traffic from the root side
of the link to it; the coordinators reach hv1's agent over the link. Cutting the link (the root side down)
drops every packet both ways, as a pulled cable does: hv1 reaches neither ZooKeeper nor its peers. A blackhole
route in the root namespace, behind the link's own route, keeps that traffic from leaving the machine while
the link is down.
"""
from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from typing import Iterator

import pytest

from faults.checker import double_runs, runs
from faults.history import History
from faults.monitor import HostGate, Monitor
from helpers import eventually
from tcp_relay import TcpRelay
from test_self_fencing import FENCE_DEADLINE_S, SELF_FENCE_DEADLINE_S, _self_fence_log, _vms_on, cut_and_watch
from vm_support import assert_no_vm_on_two_hosts, wait_running_on


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Link:
    """A veth pair between the root namespace (`outside`, address `root_address`) and the network namespace
    `netns` (`inside`, address `node_address`)."""
    netns: str
    outside: str
    inside: str
    subnet: str
    root_address: str
    node_address: str

    def cut(self) -> None:
        _ip("link", "set", self.outside, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outside, "up")


def _free_subnet() -> int:
    """A third octet for 169.254.X.0/30 that no address or route of the root namespace uses yet."""
    taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout + \
        subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    for _attempt in range(100):
        octet = secrets.randbelow(254) + 1
        if f"169.254.{octet}." not in taken:
            return octet
    raise RuntimeError("no free 169.254.X.0/30 subnet")


@pytest.fixture
def link() -> Iterator[Link]:
    """A fresh netns and veth pair; removed whatever happens (deleting the namespace deletes both ends)."""
    tag = secrets.token_hex(3)
    octet = _free_subnet()
    found = Link(f"pvc-part-{tag}", f"pp{tag}r", f"pp{tag}n", f"169.254.{octet}.0/30", f"169.254.{octet}.1",
                 f"169.254.{octet}.2")
    created: list[str] = []
    try:
        _ip("netns", "add", found.netns)
        created.append("netns")
        _ip("link", "add", found.outside, "type", "veth", "peer", "name", found.inside, "netns", found.netns)
        _ip("route", "add", "blackhole", found.subnet, "metric", "4000")
        created.append("route")
        _ip("addr", "add", f"{found.root_address}/30", "dev", found.outside)
        _ip("link", "set", found.outside, "up")
        _ip("-n", found.netns, "addr", "add", f"{found.node_address}/30", "dev", found.inside)
        _ip("-n", found.netns, "link", "set", found.inside, "up")
        _ip("-n", found.netns, "link", "set", "lo", "up")
        yield found
    finally:
        try:
            if "route" in created:
                _ip("route", "del", "blackhole", found.subnet, "metric", "4000")
        finally:
            if "netns" in created:
                _ip("netns", "del", found.netns)


@pytest.fixture
def partitioned_node(fresh_cluster, link):
    """hv1 with its pvcnoded in `link`'s namespace, reaching ZooKeeper over the link: (cluster, link)."""
    local = fresh_cluster.local
    relay = TcpRelay(("127.0.0.1", local.state["zookeeper_port"]), listen_host=link.root_address)
    local.stop_daemon("pvcnoded", "hv1")
    local.start_node_daemon("hv1", zookeeper_hosts=relay.hosts, netns=link.netns, address=link.node_address)
    try:
        assert eventually(lambda: fresh_cluster.client.nodes.info("hv1")["daemon_state"] == "run", 30)
        assert link.node_address in fresh_cluster.client.nodes.info("hv1")["agent_uri"]
        yield fresh_cluster, link
    finally:
        link.restore()
        local.stop_daemon("pvcnoded", "hv1")  # while it can still reach ZooKeeper to say so
        relay.close()


@pytest.mark.cluster(nodes=3)
def test_a_partitioned_host_stops_its_vms_before_the_leaders_deadline_is_fenced_and_resumes_nothing(
        partitioned_node):
    cluster, link = partitioned_node
    client, local = cluster.client, cluster.local
    names = ["part1", "part2", "part3"]
    _vms_on(client, "hv1", names)
    history = History()
    monitor = Monitor(local, history, {node: HostGate() for node in local.node_names}).start()
    try:
        cut_at, stopped_seen_at, dead_at, recovery = cut_and_watch(cluster, link, names)
        placed = {name: client.vms.info(name)["node"] for name in names}
        for name, node in placed.items():
            assert node in ("hv2", "hv3"), placed
            wait_running_on(cluster, name, node)
    finally:
        monitor.stop()
    assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"], recovery
    assert client.nodes.info("hv1")["daemon_state"] == "fenced"
    assert not double_runs(history), [str(violation) for violation in double_runs(history)]
    started_elsewhere = {name: [run.host for run in found if run.host != "hv1"]
                         for name, found in runs(history.samples).items() if name in names}
    assert started_elsewhere == {name: [node] for name, node in placed.items()}, \
        "each of hv1's VMs is started once elsewhere, on the node its record names"
    assert_no_vm_on_two_hosts(cluster)
    decisions = _self_fence_log(local, "hv1")
    assert any("cut off from ZooKeeper: no keepalive acknowledged for" in line and "no peer answered" in line
               for line in decisions), decisions
    print("\n" + "\n".join(decisions))
    print(f"partitioned hv1 self-fenced (seen from its libvirtd) {stopped_seen_at - cut_at:.2f} s after the cut; "
          f"marked dead {dead_at - cut_at:.2f} s after it (self-fence deadline {SELF_FENCE_DEADLINE_S:g} s, "
          f"fence deadline {FENCE_DEADLINE_S:g} s, both from the last acknowledged keepalive)")
