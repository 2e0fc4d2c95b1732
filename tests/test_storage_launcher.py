"""`pvc-local up --storage ceph` brings a private single-node Ceph up with the cluster, and `down` stops it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pvc
from pvc.cli.localcluster.cluster import LocalCluster
from pvc.cli.localcluster.processes import pid_alive


def pvc_local(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("pvc-local")), *args], capture_output=True,
                          text=True, timeout=180)


def test_local_cluster_on_a_private_ceph(tmp_path):
    state_dir = tmp_path / "local"
    started = pvc_local("up", "--nodes", "1", "--storage", "ceph", "--state-dir", str(state_dir))
    try:
        assert started.returncode == 0, started.stderr
        local = LocalCluster(state_dir)
        ceph_pids = {role: pid for role, pid in local.running_processes().items() if role.startswith("ceph ")}
        assert sorted(ceph_pids) == ["ceph mgr.x", "ceph mon.a", "ceph osd.0"]

        with pvc.connect(local.uris, local.state["api_key"]) as cluster:
            assert cluster.storage.pool_add("rbdpool")["backend"] == "ceph"
            cluster.storage.volume_add("rbdpool", "disk", "64M")
        listed = subprocess.run(["rbd", "-c", str(state_dir / "ceph" / "ceph.conf"), "ls", "--format", "json",
                                 "rbdpool"], capture_output=True, text=True, check=True)
        assert json.loads(listed.stdout) == ["disk"]
    finally:
        stopped = pvc_local("down", "--state-dir", str(state_dir))
    assert "ceph" in stopped.stdout
    assert not any(pid_alive(pid) for pid in ceph_pids.values())
