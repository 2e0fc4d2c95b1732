"""`pvc-local`: up prints the one line that points `pvc` at the cluster, refuses a second up, and down leaves
nothing behind; clusters in different state directories run side by side, at the fast intervals or the sample
configs'."""
import json
import os
import subprocess
import sys
from pathlib import Path

from pvc.cli.localcluster.cluster import LocalCluster
from pvc.cli.localcluster.pidfiles import read_pid
from pvc.cli.localcluster.processes import pid_alive


def run(program: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name(program)), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def every_pid(state_dir: Path) -> dict[str, int]:
    """Every process the cluster recorded, from its pid files (ZooKeeper, coordinators, nodes, libvirtds, holders)."""
    return {str(path.relative_to(state_dir)): read_pid(path) for path in sorted(state_dir.rglob("*.pid"))}


def nodes_seen_through(config_line: str) -> list[dict]:
    config_path = config_line.removeprefix("export PVC_CONFIG=")
    listed = run("pvc", "node", "list", "--format", "json", env={"PVC_CONFIG": config_path})
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_two_local_clusters_side_by_side_from_up_to_down(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    try:
        up = run("pvc-local", "up", "--nodes", "1", "--state-dir", str(first))
        assert up.returncode == 0, up.stderr
        assert up.stdout == f"export PVC_CONFIG={first / 'pvc.yaml'}\n"
        assert Path(up.stdout.split("=", 1)[1].strip()).is_absolute()
        first_pids = every_pid(first)
        assert {"zookeeper/zookeeper.pid", "coordinators/pvcapid1/pvcapid.pid", "nodes/hv1/pvcnoded.pid",
                "hosts/hv1/libvirtd.pid", "hosts/hv1/holder.pid"} <= set(first_pids)
        assert all(pid_alive(pid) for pid in first_pids.values())

        again = run("pvc-local", "up", "--nodes", "1", "--state-dir", str(first))
        assert again.returncode != 0
        assert again.stdout == ""
        assert again.stderr.startswith(f"Error: a local cluster is already running in {first}")
        assert again.stderr.count("\n") == 1
        assert every_pid(first) == first_pids, "the refused up started or stopped nothing"
        assert all(pid_alive(pid) for pid in first_pids.values())

        beside = run("pvc-local", "up", "--nodes", "2", "--production-intervals", "--state-dir", str(second))
        assert beside.returncode == 0, beside.stderr
        assert [(node["name"], node["keepalive_interval_s"]) for node in nodes_seen_through(up.stdout.strip())] \
            == [("hv1", 1)]
        assert [(node["name"], node["keepalive_interval_s"]) for node in nodes_seen_through(beside.stdout.strip())] \
            == [("hv1", 5), ("hv2", 5)], "the sample configs' keepalive interval"
        assert LocalCluster(first).state["zookeeper_port"] != LocalCluster(second).state["zookeeper_port"]
        assert set(LocalCluster(first).uris).isdisjoint(LocalCluster(second).uris)

        down = run("pvc-local", "down", "--state-dir", str(first))
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(pid) for pid in first_pids.values())
        status = run("pvc-local", "status", "--state-dir", str(first))
        assert status.returncode != 0 and "no local cluster is running" in status.stdout
        assert [node["daemon_state"] for node in nodes_seen_through(beside.stdout.strip())] == ["run", "run"]
    finally:
        second_pids = every_pid(second) if second.exists() else {}
        for state_dir in (first, second):
            run("pvc-local", "down", "--state-dir", str(state_dir))
    assert not any(pid_alive(pid) for pid in second_pids.values())


def test_the_default_state_dir_is_stated_in_help():
    result = run("pvc-local", "up", "--help")
    assert result.returncode == 0
    assert "--state-dir" in result.stdout and "pvc-local" in result.stdout.split("--state-dir", 1)[1]
