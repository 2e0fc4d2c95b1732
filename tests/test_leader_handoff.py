"""A graceful leadership handoff (`pvc node primary|secondary`) on a real local cluster of three coordinators,
each beside a node: the target is not next in line; ZooKeeper orders the old leader's last write before the
new leader's first; a client issuing commands throughout sees no error; a creation the old leader was running
(its install script still going) is finished by the new one."""
import threading
import time

import pytest

from pvc import schema

from conftest import started_cluster
from helpers import cluster_store, eventually
from vm_support import pvc, vm_xml

SLOW = """#!/usr/bin/python3
import json, sys, time
marker = json.load(sys.stdin)["args"][0]
open(marker, "w").write("started")
time.sleep(4)
"""


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("handoff"), nodes=3, coordinators=3, storage="file",
                              scripts=True)
    cluster = next(running)
    client = cluster.client
    client.storage.pool_add("hand", {})
    client.provisioner.template_add("system", "tiny", {"vcpus": 1, "memory_mib": 64})
    client.provisioner.template_add("network", "nonet", {"nics": []})
    client.provisioner.template_add("storage", "disk", {"disks": [{"pool": "hand", "size": "4M"}]})
    client.provisioner.script_add("slow", SLOW)
    yield cluster
    next(running, None)


def election_order(cluster) -> list[str]:
    """The coordinators in the election's queue, leader first, as ZooKeeper holds it."""
    with cluster_store(cluster.local) as store:
        children = store.zk.get_children(schema.ELECTION)
        ordered = sorted(children, key=lambda child: child[-10:])
        return [store.zk.get(f"{schema.ELECTION}/{child}")[0].decode() for child in ordered]


class BusyClient:
    """A user issuing commands the whole time: lists, infos, defines and removals; every error kept."""

    def __init__(self, cluster):
        self._cluster, self.errors, self.commands = cluster, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import pvc as api
        client = api.connect(list(self._cluster.client.connection.uris), self._cluster.local.state["api_key"])
        index = 0
        while not self._stop.is_set():
            try:
                name = f"busy{index % 3}"
                client.vms.define(vm_xml(name, memory_mib=32))
                client.nodes.list()
                client.vms.info(name)
                client.vms.remove(name, wait=True)
                self.commands += 4
            except Exception as error:  # everything a user would see
                self.errors.append(repr(error))
            index += 1


def test_primary_hands_leadership_to_a_coordinator_not_next_in_line(three, tmp_path):
    client = three.client
    order = eventually(lambda: (lambda names: names if len(names) == 3 else None)(election_order(three)), 20)
    old, target = order[0], order[-1]
    target_node = f"hv{target.removeprefix('pvcapid')}"
    marker = tmp_path / "script-started"
    client.provisioner.profile_add("slowprof", system_template="tiny", network_template="nonet",
                                   storage_template="disk", script="slow", script_args=[str(marker)])

    with BusyClient(three) as busy:
        task = client.provisioner.create("handed", "slowprof")
        assert eventually(marker.exists, 20), "the old leader is running the creation's install script"
        handed = pvc(three, "node", "primary", target_node, "--wait")
        assert handed.exit_code == 0, handed.output
        assert f"Leadership: {old} -> {target}" in handed.stdout
        assert eventually(lambda: client.provisioner.creation(task["id"])["state"] == "done", 60)
        time.sleep(1)

    assert busy.errors == [] and busy.commands > 0, busy.errors[:3]
    assert client.cluster.status()["leader"] == target
    with cluster_store(three.local) as store:
        data, stat = store.zk.get(schema.LEADER_HANDOFF)
    handoff = schema.decode(data)
    assert (handoff["to"], handoff["released_by"], handoff["taken_by"]) == (target, old, target)
    assert stat.mzxid > handoff["released_zxid"], "ZooKeeper ordered the old leader's last write first"
    print(f"handoff gap: {handoff['taken'] - handoff['released']:.3f} s from letting go to taking over "
          f"({busy.commands} client commands, none failed)")
    logs = {name: (three.local.state_dir / "coordinators" / name / "pvcapid.log").read_text()
            for name in (old, target)}
    assert f"{target} took over leadership from {old}" in logs[target]
    assert "VM handed created" in logs[target], "the new leader finished the creation the old one had begun"
    assert client.provisioner.creation(task["id"])["script"]["runs"] == 1

    away = pvc(three, "node", "secondary", target_node, "--wait")
    assert away.exit_code == 0, away.output
    assert client.cluster.status()["leader"] not in (None, target)
