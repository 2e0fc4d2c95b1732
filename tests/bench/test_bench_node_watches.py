"""Benchmark of what one node daemon watches and holds in memory: prints figures, asserts no timings. Run with
`pytest -m bench -s`.

A one-node cluster; 30 VMs are defined on hv1 through the API and started, and 2,970 more are recorded on nodes
that do not exist (written into ZooKeeper as a coordinator's define writes them, index entries included), so
that 3,000 VMs are on record. hv1's pvcnoded is then started twice: as before the node index (its root marked
incomplete, so the daemon watches every VM, as a node of a cluster without the index does), and with it. Each
time, after its start-up converge pass and a few more passes, the bench prints the watches ZooKeeper holds for
the daemon's session (``wchc``), their number per kind of znode, and the daemon's memory (RSS and PSS).
"""
import time
import uuid
from collections import Counter

import pytest

from pvc import schema
from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL

from helpers import cluster_store, eventually
from scale_support import memory_mib
from vm_support import vm_xml

pytestmark = pytest.mark.bench

OWN, ON_RECORD = 30, 3000
ELSEWHERE = [f"far{index:02d}" for index in range(99)]


def record_elsewhere(store, template: dict, count: int) -> None:
    """`count` VMs recorded on nodes that do not exist, like `define` records them (one transaction each)."""
    pending = []
    for node in ELSEWHERE:
        store.zk.ensure_path(schema.node_vms(node))
    for index in range(count):
        name, node = f"far{index:05d}", ELSEWHERE[index % len(ELSEWHERE)]
        spec = {**template, "name": name, "uuid": str(uuid.uuid4()),
                "xml": template["xml"].replace(template["name"], name)}
        transaction = store.zk.transaction()
        transaction.create(schema.vm(name), schema.encode(spec))
        transaction.create(schema.vm_key(name, "state"), schema.encode("stop"))
        transaction.create(schema.vm_key(name, "placement"), schema.encode({"node": node, "last_node": None}))
        transaction.create(schema.node_vm(node, name), schema.encode(None))
        pending.append(transaction.commit_async())
    for result in pending:
        assert not any(isinstance(outcome, Exception) for outcome in result.get())


def session_watches(local, session: int) -> list[str]:
    answer = local.zookeeper(local.zookeeper_names[0]).ask("wchc", timeout=30)
    paths, current = [], None
    for line in answer.splitlines():
        if line.startswith("0x"):
            current = int(line.strip(), 16)
        elif current == session and line.strip():
            paths.append(line.strip())
    return paths


def kind(path: str) -> str:
    if path.startswith(schema.VMS + "/"):
        parts = path[len(schema.VMS) + 1:].split("/")
        return "VM " + (parts[1] if len(parts) > 1 else "record")
    return path.rsplit("/", 1)[0] if path.count("/") > 2 else path


def measure(cluster, store) -> tuple[list[str], float, float, float]:
    """Start hv1's pvcnoded, let it converge a few passes, and read its watches and memory."""
    local = cluster.local
    began = time.monotonic()
    local.start_node_daemon("hv1")
    local.wait_ready(120)
    started = time.monotonic() - began
    time.sleep(5 * KEEPALIVE_INTERVAL)
    owner = store.children(schema.node_owners("hv1"))[0]
    session = store.zk.exists(f"{schema.node_owners('hv1')}/{owner}").ephemeralOwner
    rss, pss = memory_mib(local.daemon_pid("pvcnoded", "hv1"))
    return session_watches(local, session), rss, pss, started


@pytest.mark.cluster(nodes=1)
def test_bench_watches_and_memory_of_one_node_daemon(fresh_cluster):
    local, client = fresh_cluster.local, fresh_cluster.client
    for index in range(OWN):
        client.vms.define(vm_xml(f"own{index:02d}", memory_mib=64), target="hv1")
        client.vms.start(f"own{index:02d}")
    assert eventually(lambda: sum(vm["running"] is True for vm in client.vms.list()) == OWN, 60, 0.5)
    print()
    with cluster_store(local) as store:
        record_elsewhere(store, store.read(schema.vm("own00")), ON_RECORD - OWN)
        assert len(store.children(schema.VMS)) == ON_RECORD
        figures = {}
        for label, complete in (("before (every VM watched)", False), ("after (node index)", True)):
            local.stop_daemon("pvcnoded", "hv1")
            store.zk.set(schema.NODE_VMS, schema.encode({"complete": complete}))
            figures[label] = measure(fresh_cluster, store)
        for label, (watches, rss, pss, started) in figures.items():
            vms = {path.split("/")[3] for path in watches if path.startswith(schema.VMS + "/")}
            kinds = ", ".join(f"{name} {count}" for name, count in Counter(map(kind, watches)).most_common(6))
            print(f"hv1 with {OWN} of {ON_RECORD} VMs on record, {label}: {len(watches)} watches of its session "
                  f"on {len(vms)} VMs ({kinds}); pvcnoded RSS {rss:.1f} MiB, PSS {pss:.1f} MiB; started "
                  f"(to run) in {started:.1f} s")
        mntr = dict(line.split("\t", 1) for line in
                    local.zookeeper(local.zookeeper_names[0]).ask("mntr").splitlines() if "\t" in line)
        print(f"ZooKeeper now: {mntr.get('zk_watch_count')} watches in all (the first daemon's session is closed), "
              f"{mntr.get('zk_znode_count')} znodes")
