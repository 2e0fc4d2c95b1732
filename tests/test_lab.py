"""The lab network: members in namespaces of their own on a per-cluster bridge, links that are cut, isolated,
severed and healed, two labs side by side, and nothing left behind, not even by a crashed run."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pvc.cli.localcluster.cluster import LocalCluster
from pvc.cli.localcluster.lab import Lab, ip

from helpers import eventually

# A listener that accepts and closes connections for as long as it runs: "can A reach B" is a TCP connect.
LISTENER = ("import socket; s = socket.create_server(('0.0.0.0', 7999)); print('ready', flush=True)\n"
            "while True: s.accept()[0].close()")


def reaches(lab: Lab, source: str, target_address: str) -> bool:
    probe = f"exec 3<>/dev/tcp/{target_address}/7999"
    return subprocess.run(["ip", "netns", "exec", lab.netns(source), "timeout", "0.5", "bash", "-c", probe],
                          capture_output=True).returncode == 0


def lab_names() -> str:
    return ip("netns", "list") + ip("-o", "link", "show") + ip("route", "show", "table", "all")


@pytest.fixture
def two_labs(tmp_path):
    """Two labs of three hosts each, every host listening on port 7999; removed whatever happens."""
    labs, listeners = [], []
    try:
        for _lab in range(2):
            lab = Lab.create(tmp_path)  # an owner that exists: neither lab is taken for an orphan
            labs.append(lab)
            for name in ("hv1", "hv2", "hv3"):
                lab.add(name)
                listener = subprocess.Popen(lab.command(name, [sys.executable, "-c", LISTENER]),
                                            stdout=subprocess.PIPE, text=True)
                listeners.append(listener)
                assert listener.stdout.readline().strip() == "ready"
        yield labs
    finally:
        for listener in listeners:
            listener.kill()
            listener.wait()
        for lab in labs:
            lab.remove()


def test_two_labs_side_by_side_and_their_links_cut_isolated_and_healed(two_labs):
    first, second = two_labs
    assert first.prefix != second.prefix and first.octet != second.octet
    for lab in (first, second):
        network = ipaddress.ip_network(lab.subnet)
        assert network.subnet_of(ipaddress.ip_network("169.254.0.0/16")) and network.prefixlen == 24
        assert lab.octet != 169
        assert all(len(name) <= 15 for name in (lab.bridge, lab.island, lab.member("hv99").veth,
                                                lab.member("pvcapid9").veth, lab.member("zk19").veth))
        assert reaches(lab, "hv1", lab.address("hv2")) and reaches(lab, "hv2", lab.address("hv3"))
    assert not reaches(first, "hv1", second.address("hv1")), "one lab's host reaches another lab's"

    first.cut("hv1")
    assert first.link_state("hv1") == "cut"
    assert not reaches(first, "hv1", first.address("hv2")) and not reaches(first, "hv2", first.address("hv1"))
    assert reaches(first, "hv2", first.address("hv3")) and reaches(second, "hv1", second.address("hv2"))
    first.heal("hv1")
    assert eventually(lambda: reaches(first, "hv1", first.address("hv2")), 3)

    first.isolate(["hv1", "hv2"])
    assert [first.link_state(name) for name in ("hv1", "hv2", "hv3")] == ["isolated", "isolated", "up"]
    assert reaches(first, "hv1", first.address("hv2")) and reaches(first, "hv2", first.address("hv1"))
    assert not reaches(first, "hv1", first.address("hv3")) and not reaches(first, "hv3", first.address("hv2"))
    first.cut("hv3")
    first.heal_all()
    assert [first.link_state(name) for name in ("hv1", "hv2", "hv3")] == ["up"] * 3
    assert eventually(lambda: reaches(first, "hv1", first.address("hv3")) and
                      reaches(first, "hv3", first.address("hv2")), 3)

    first.sever("hv1", ["hv2"])
    assert first.link_state("hv1") == f"severed from {first.address('hv2')}"
    assert not reaches(first, "hv1", first.address("hv2")) and not reaches(first, "hv2", first.address("hv1"))
    assert reaches(first, "hv1", first.address("hv3")) and reaches(first, "hv3", first.address("hv2"))
    first.heal("hv1")
    assert first.link_state("hv1") == "up" and reaches(first, "hv2", first.address("hv1"))

    assert second.release(Path("/another/state/dir")) == [], "a lab is removed for its own cluster only"
    first.remove()
    assert first.prefix not in lab_names() and f"169.254.{first.octet}." not in lab_names()
    assert second.prefix in lab_names(), "removing one lab leaves the other alone"


def pvc_local(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("pvc-local")), *args], capture_output=True,
                          text=True, timeout=180)


def test_up_removes_what_a_crashed_lab_cluster_left_and_down_leaves_nothing(tmp_path):
    state_dir = str(tmp_path / "lab")
    second = None
    try:
        assert pvc_local("up", "--lab", "--nodes", "1", "--state-dir", state_dir).returncode == 0
        crashed = LocalCluster(Path(state_dir))
        first = crashed.lab
        assert crashed.uris == [f"pvc://{first.address('pvcapid1')}:7370"]
        assert crashed.zookeeper_hosts == f"{first.address('zk1')}:2181"
        assert json.loads(Path(state_dir, "cluster.json").read_text())["lab"] == first.state
        for pid in crashed.running_processes().values():
            os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: not crashed.running_processes(), 10)
        assert first.prefix in lab_names(), "a crashed run leaves its lab behind"

        assert pvc_local("up", "--lab", "--nodes", "1", "--state-dir", state_dir).returncode == 0
        second = LocalCluster(Path(state_dir)).lab
        assert first.prefix not in lab_names() and f"169.254.{first.octet}.1/" not in lab_names()
        assert second.prefix in lab_names()
        status = pvc_local("status", "--state-dir", state_dir)
        assert f"lab                  {second.prefix} on {second.subnet}" in status.stdout
        assert "pvcnoded hv1" in status.stdout and "link up" in status.stdout
    finally:
        down = pvc_local("down", "--state-dir", state_dir)
    assert down.returncode == 0 and second and f"lab {second.prefix}" in down.stdout, down.stdout
    assert second.prefix not in lab_names() and f"169.254.{second.octet}." not in lab_names()
