"""Several coordinators: leadership moves when the leader dies, clients fail over, a deposed leader cannot write."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kazoo.client import KazooState

from pvc import schema
from pvc.cli.localcluster.cluster import SESSION_TIMEOUT
from pvc.errors import NotLeader, Unavailable
from pvc.rpc.leadership import Leadership
from pvc.store import Store

from conftest import ZK_PASSWORD, ZK_USER
from helpers import cluster_store, eventually
from tcp_relay import Blackhole

LEADER_TICK = 0.5


def pvc_cli(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("pvc")), *args], capture_output=True, text=True,
                          env={**os.environ, "PVC_CONFIG": str(config)}, timeout=30)


def leader_seen_by(client) -> str | None:
    try:
        return client.cluster.status()["leader"]
    except Unavailable:
        return None


@pytest.mark.cluster(nodes=1, coordinators=2)
def test_killing_the_leader_moves_leadership_within_the_session_timeout_and_the_cli_keeps_working(fresh_cluster):
    local, client = fresh_cluster.local, fresh_cluster.client
    leader = client.cluster.status()["leader"]
    assert leader in ("pvcapid1", "pvcapid2")
    survivor = next(name for name in local.coordinator_names if name != leader)
    assert pvc_cli("node", "list", config=local.client_config).returncode == 0

    local.stop_daemon("pvcapid", leader, kill=True)
    killed_at = time.monotonic()
    assert eventually(lambda: leader_seen_by(client) == survivor, timeout=SESSION_TIMEOUT + 5, interval=0.05)
    took = time.monotonic() - killed_at

    bound = SESSION_TIMEOUT + LEADER_TICK + 1
    print(f"leadership moved {took:.2f} s after kill -9 (bound {bound} s)")
    assert took <= bound, f"leadership moved after {took:.1f} s, more than {bound} s"
    listed = pvc_cli("node", "list", config=local.client_config)
    assert listed.returncode == 0, listed.stderr
    assert "hv1" in listed.stdout and "run" in listed.stdout
    status = client.cluster.status()
    assert status["answered_by"] == survivor
    assert [coordinator["name"] for coordinator in status["coordinators"]] == [survivor]


@pytest.mark.cluster(nodes=1, coordinators=2)
def test_a_leader_frozen_past_its_session_resumes_without_acting_as_leader(fresh_cluster):
    """While frozen, every node's keepalive in its cache goes stale; on waking it must not mark them dead."""
    local, client = fresh_cluster.local, fresh_cluster.client
    leader = client.cluster.status()["leader"]
    survivor = next(name for name in local.coordinator_names if name != leader)
    pid = local.daemon_pid("pvcapid", leader)

    os.kill(pid, signal.SIGSTOP)
    try:
        assert eventually(lambda: leader_seen_by(client) == survivor, timeout=SESSION_TIMEOUT + 5)
        time.sleep(3)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(3)

    with cluster_store(local) as store:
        assert store.read(schema.node_key("hv1", "daemon_state")) == "run"
    assert client.cluster.status()["leader"] == survivor
    log = (local.state_dir / "coordinators" / leader / "pvcapid.log").read_text()
    assert "marked dead" not in log


def test_a_deposed_leader_cannot_write(zookeeper_hosts):
    stores = [Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=4) for _ in range(2)]
    for store in stores:
        store.start(connect_timeout=10)
    leaders = [Leadership(store, f"c{index}", 0.1, lambda node: None) for index, store in enumerate(stores)]
    try:
        leaders[0].start()
        assert eventually(lambda: leaders[0].is_leader)
        proof = leaders[0].leader_node
        stores[0].transaction(proof).set(schema.CONFIG, {"maintenance": True}).commit()
        leaders[1].start()

        stores[1].zk.delete(proof)

        with pytest.raises(NotLeader):
            stores[0].transaction(proof).set(schema.CONFIG, {"maintenance": False}).commit()
        assert stores[1].read(schema.CONFIG) == {"maintenance": True}
        assert eventually(lambda: leaders[0].leader_node != proof, timeout=1), "it stops believing within a tick"
        assert eventually(lambda: leaders[1].is_leader)
        assert not leaders[0].is_leader
    finally:
        for leadership, store in zip(leaders, stores):
            leadership.stop()
            store.stop()



def test_a_leader_whose_link_is_cut_for_less_than_its_session_leads_again(zookeeper_server, zookeeper_hosts):
    """The session outlives the cut, and with it the leader's election node: the leader must take it up again
    (or give it up), never leave it first in line with nobody leading behind it."""
    chroot = zookeeper_hosts.removeprefix(zookeeper_server.hosts)
    link = Blackhole(("127.0.0.1", zookeeper_server.port))
    stores = [Store(link.hosts + chroot, ZK_USER, ZK_PASSWORD, session_timeout=6),
              Store(zookeeper_hosts, ZK_USER, ZK_PASSWORD, session_timeout=6)]
    suspended = threading.Event()
    stores[0].zk.add_listener(lambda state: suspended.set() if state == KazooState.SUSPENDED else None)
    for store in stores:
        store.start(connect_timeout=10)
    session = stores[0].zk.client_id
    leaders = [Leadership(store, f"c{index}", 0.1, lambda node: None) for index, store in enumerate(stores)]
    try:
        leaders[0].start()
        assert eventually(lambda: leaders[0].is_leader)
        leaders[1].start()

        link.cut = True
        assert suspended.wait(10), "the cut leader's session never noticed the cut"
        link.cut = False
        assert eventually(lambda: stores[0].connected, timeout=5)
        assert stores[0].zk.client_id == session, "the session expired: this test needs it to survive the cut"

        assert eventually(lambda: any(leader.is_leader for leader in leaders), timeout=10), \
            "no coordinator leads after the cut healed: " + ", ".join(stores[1].zk.get_children(schema.ELECTION))
        assert sum(leader.is_leader for leader in leaders) == 1
    finally:
        for leadership, store in zip(leaders, stores):
            leadership.stop()
            store.stop()
        link.close()
