"""What each built-in health check tells an administrator, for the situations a cluster test cannot easily make
(a full disk, a node running another PVC version, a ZooKeeper server down in a one-server test cluster, a VM
unknown for over a minute): the checks as `pvc plugin list` loads them, given the view a node daemon or the
leader hands every check (`pvc.hookspecs.NodeHealthContext`, `ClusterHealthContext`), here made by the test.
The cluster tests (`test_health_cluster.py`, `test_health_storage.py`) show the same checks on real nodes."""
from __future__ import annotations

import shutil
import time
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import pytest

import pvc
from pvc import plugin_manager
from pvc.plugins import health_cluster

Usage = namedtuple("Usage", "total used free")


def checks(hook: str) -> dict[str, Any]:
    return plugin_manager.load().registry(hook)


@dataclass
class NodeView:
    """A node daemon's view, as `pvc.node.health` hands it to every check."""
    figures_: dict[str, Any] = field(default_factory=dict)
    leader: str | None = None
    latency_s: float = 0.01
    name: str = "hv1"
    settings: dict[str, Any] = field(default_factory=dict)
    deadline: float = field(default_factory=lambda: time.monotonic() + 5)

    def deadline_left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.1)

    def libvirt_lost_s(self) -> float | None:
        return None

    def libvirt_lost_settings(self) -> dict[str, Any]:
        return {"libvirt_lost_action": "none", "libvirt_lost_after": 60}

    def figures(self) -> dict[str, Any]:
        return self.figures_

    def zookeeper_latency_s(self) -> float:
        return self.latency_s

    def storage_health(self) -> tuple[int, str]:
        return 0, "ok"

    def leader_version(self) -> str | None:
        return self.leader


@pytest.mark.parametrize("check, view, delta, message", [
    ("load", NodeView({"load": 20.5, "cpus": 16}), 10, "load 20.5 over 16 CPUs"),
    ("load", NodeView({"load": 3, "cpus": 16}), 0, "load 3 on 16 CPUs"),
    ("memory", NodeView({"memory_total_mib": 1024, "memory_allocated_mib": 2048, "memory_provisioned_mib": 2048}),
     25, "running VMs hold 2048 MiB of 1024 MiB"),
    ("memory", NodeView({"memory_total_mib": 1024, "memory_allocated_mib": 512, "memory_provisioned_mib": 4096}),
     5, "4096 MiB provisioned on 1024 MiB: not all VMs can run here"),
    ("version", NodeView(leader="0.0.1"), 10, f"this node runs PVC {pvc.__version__}, the leader 0.0.1"),
    ("version", NodeView(leader=pvc.__version__), 0, f"PVC {pvc.__version__}"),
    ("zookeeper", NodeView(latency_s=1.5), 10, "a ZooKeeper round trip took 1500 ms"),
])
def test_a_node_check_says_what_is_wrong_and_how_much_it_matters(check, view, delta, message):
    result = checks("pvc_node_health_checks")[check].check(view)
    assert (result.delta, result.message) == (delta, message)


@pytest.mark.parametrize("free, delta, level", [(0.30, 0, "warning"), (0.08, 10, "warning"), (0.03, 50, "critical")])
def test_the_disk_space_check_names_the_fullest_of_the_nodes_directories(tmp_path, mocker, free, delta, level):
    """The fullest of the node's own directories counts (a log file's directory among them); a directory not
    made yet is judged by the one it will be made in."""
    full, roomy = tmp_path / "logs", tmp_path / "staging"
    full.mkdir()
    roomy.mkdir()
    real = shutil.disk_usage
    mocker.patch("shutil.disk_usage", side_effect=lambda path: Usage(1000, int(1000 * (1 - free)), int(1000 * free))
                 if str(path) == str(full) else Usage(1000, 100, 900) if str(path) == str(roomy) else real(path))
    view = NodeView(settings={"log_file": str(full / "pvcnoded.log"),
                              "upload_staging_directory": str(roomy / "not-yet-made")})

    result = checks("pvc_node_health_checks")["disk-space"].check(view)

    assert (result.delta, result.level) == (delta, level)
    assert result.message == f"{full}: {free:.0%} free"


@dataclass
class LeaderView:
    """The leader's view, as `pvc.rpc.cluster_health` hands it to every cluster check."""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)
    recoveries_: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    deadline: float = field(default_factory=lambda: time.monotonic() + 5)

    def node_views(self) -> list[dict[str, Any]]:
        return self.nodes

    def vm_views(self) -> list[dict[str, Any]]:
        return self.vms

    def recoveries(self) -> list[dict[str, Any]]:
        return self.recoveries_

    def autobackup_outcome(self) -> dict[str, Any] | None:
        return None

    def zookeeper_members(self) -> list[dict[str, Any]]:
        return self.members


def _node(name: str, state: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "daemon_state": state, **more}


@pytest.mark.parametrize("check, view, delta, level, message", [
    ("nodes", LeaderView(nodes=[_node("hv1", "run"), _node("hv2", "dead"), _node("hv3", "fenced")]), 50, "critical",
     "nodes down: hv2 dead, hv3 fenced"),
    ("recoveries", LeaderView(recoveries_=[{"node": "hv2", "state": "failed", "reason": "no fence confirmed"},
                                           {"node": "hv3", "state": "done"}]), 50, "critical",
     "fence or recovery failed: hv2: no fence confirmed"),
    ("zookeeper-ensemble", LeaderView(members=[{"address": "zk1:2181", "answers": True},
                                               {"address": "zk2:2181", "answers": False},
                                               {"address": "zk3:2181", "answers": True}]), 25, "warning",
     "ZooKeeper servers not answering: zk2:2181 (of 3)"),
    ("zookeeper-ensemble", LeaderView(members=[{"address": "zk1:2181", "answers": False},
                                               {"address": "zk2:2181", "answers": False},
                                               {"address": "zk3:2181", "answers": True}]), 50, "critical",
     "ZooKeeper servers not answering: zk1:2181, zk2:2181 (of 3)"),
    ("libvirt", LeaderView(nodes=[_node("hv1", "run", figures_stale=True), _node("hv2", "run", figures_stale=True),
                                  _node("hv3", "run")]), 50, "critical",
     "libvirt lost on 2 of 3 running nodes at once (hv1, hv2): a cluster-wide event (an upgrade?), so no node "
     "fences itself for it"),
])
def test_a_cluster_check_says_what_is_wrong_and_how_much_it_matters(check, view, delta, level, message):
    result = checks("pvc_cluster_health_checks")[check].check(view)
    assert (result.delta, result.level, result.message) == (delta, level, message)


def test_a_vm_failed_or_unknown_is_a_fault_only_after_a_minute(mocker):
    """A migration or a libvirtd restart passes through such states briefly; a minute of them is a fault, and
    a VM stopped on purpose is not unknown."""
    now = [1000.0]
    mocker.patch.object(health_cluster.time, "monotonic", side_effect=lambda: now[0])
    check = checks("pvc_cluster_health_checks")["vms"]
    view = LeaderView(vms=[{"name": "lost", "state": "start", "running": None},
                           {"name": "broken", "state": "fail", "running": False},
                           {"name": "parked", "state": "stop", "running": None},
                           {"name": "fine", "state": "start", "running": True}])

    assert check.check(view).delta == 0
    now[0] += health_cluster.VM_GRACE_S - 1
    assert check.check(view).delta == 0
    now[0] += 1
    result = check.check(view)
    assert (result.delta, result.message) == (20, "VMs failed or unknown for over 60 s: broken fail, lost unknown")

    view.vms[0]["running"] = True
    assert check.check(view).message == "VMs failed or unknown for over 60 s: broken fail"
