"""Provisioner install scripts on a real local cluster (file storage, two coordinators, nodes that enable
scripts): the shipped example writes a filesystem with the guest's hostname and user data onto its first disk,
read back with debugfs without mounting; a failing or overrunning script rolls the whole creation back (its
process group killed at the time limit); a leader killed while the script runs leaves it to the next leader,
which waits for that run and never starts a second one beside it."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pvc.errors import OperationFailed

from conftest import started_cluster
from helpers import eventually

POOL = "scripted"
EXAMPLE = Path(__file__).parent.parent / "contrib" / "provisioner-scripts" / "hostname-filesystem"
SCRIPT_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("scripts"), nodes=1, coordinators=2, storage="file",
                              scripts=True, script_timeout=SCRIPT_TIMEOUT_S)
    cluster = next(running)
    client = cluster.client
    client.storage.pool_add(POOL, {})
    client.provisioner.template_add("system", "tiny", {"vcpus": 1, "memory_mib": 64})
    client.provisioner.template_add("network", "nonet", {"nics": []})
    client.provisioner.template_add("storage", "onedisk", {"disks": []})
    client.provisioner.template_disk_add("onedisk", "sda", POOL, "16M", filesystem="ext4", mountpoint="/")
    yield cluster
    next(running, None)


def profile_with(client, name: str, script: str, args: list[str], user_data: str | None = None) -> None:
    client.provisioner.script_add(name, script)
    client.provisioner.profile_add(name, system_template="tiny", network_template="nonet",
                                   storage_template="onedisk", user_data=user_data, script=name, script_args=args)


def debugfs_cat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True,
                          check=True).stdout


def volume_file(cluster, volume: str) -> Path:
    return cluster.local.storage_dir / POOL / volume


def nothing_left(cluster, vm: str) -> bool:
    client = cluster.client
    return vm not in {row["name"] for row in client.vms.list()} and \
        not [row["name"] for row in client.storage.volume_list(POOL) if row["name"].startswith(f"{vm}_")] and \
        not [path.name for path in (cluster.local.storage_dir / POOL).iterdir() if path.name.startswith(vm)]


def test_the_example_script_writes_the_hostname_and_user_data_onto_the_first_disk(scripted):
    client = scripted.client
    user_data = "#cloud-config\npackages: [htop]\n"
    profile_with(client, "example", EXAMPLE.read_text(), ["--role", "web"], user_data)

    client.provisioner.create("web1", "example", wait=True)

    image = volume_file(scripted, "web1_disk0")
    assert debugfs_cat(image, "/etc/hostname") == "web1\n"
    assert debugfs_cat(image, "/var/lib/cloud/seed/nocloud/user-data") == user_data
    assert debugfs_cat(image, "/etc/pvc-install-args") == "--role\nweb\n"
    runs = list((scripted.local.state_dir / "nodes" / "hv1" / "scripts").iterdir())
    assert runs == [], "the node forgets a run once the leader has recorded it"
    client.vms.remove("web1", wait=True)


FAILING = "#!/bin/sh\necho preparing\necho 'no space for the root filesystem' >&2\nexit 3\n"
OVERRUNNING = """#!/usr/bin/python3
import json, subprocess, sys, time
marker = json.load(sys.stdin)["args"][0]
child = subprocess.Popen(["sleep", "1000"])
open(marker, "w").write(str(child.pid))
print("x" * (200 << 10), flush=True)
time.sleep(1000)
"""


def test_a_failing_script_rolls_the_creation_back(scripted):
    profile_with(scripted.client, "failing", FAILING, [])

    with pytest.raises(OperationFailed, match="install script 'failing' exited with status 3: no space for the "
                                              "root filesystem"):
        scripted.client.provisioner.create("broken", "failing", wait=True)

    assert nothing_left(scripted, "broken")


def test_an_overrunning_script_is_killed_with_its_process_group_and_rolled_back(scripted, tmp_path):
    marker = tmp_path / "child.pid"
    profile_with(scripted.client, "overrun", OVERRUNNING, [str(marker)])

    task = scripted.client.provisioner.create("slow", "overrun")
    assert eventually(lambda: scripted.client.provisioner.creation(task["id"])["state"] == "failed", 60)
    failed = scripted.client.provisioner.creation(task["id"])
    assert "install script 'overrun' was killed at its time limit" in failed["error"]
    assert len(failed["script"]["output"].encode()) == 64 << 10, "the output kept is capped at 64 KiB"

    child = int(marker.read_text())
    assert eventually(lambda: not Path(f"/proc/{child}").exists(), 5), "the script's own child was killed too"
    assert nothing_left(scripted, "slow")


RECORDING = """#!/usr/bin/python3
import json, os, sys, time
log = json.load(sys.stdin)["args"][0]
with open(log, "a") as file:
    file.write(f"start {os.getpid()} {time.time()}\\n")
time.sleep(5)
with open(log, "a") as file:
    file.write(f"end {os.getpid()} {time.time()}\\n")
"""


def test_a_leader_killed_while_the_script_runs_never_runs_it_twice_at_once(scripted, tmp_path):
    client, local = scripted.client, scripted.local
    log = tmp_path / "runs.log"
    profile_with(client, "recording", RECORDING, [str(log)])
    leader = client.cluster.status()["leader"]

    task = client.provisioner.create("steady", "recording")
    assert eventually(lambda: log.exists() and "start" in log.read_text(), 20)
    os.kill(local.daemon_pid("pvcapid", leader), signal.SIGKILL)

    assert eventually(lambda: client.provisioner.creation(task["id"])["state"] == "done", 60), \
        client.provisioner.creation(task["id"])
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [line[0] for line in lines] == ["start", "end"], lines
    assert client.provisioner.creation(task["id"])["script"]["runs"] == 1, "the next leader waited for that run"
    assert client.vms.info("steady")["name"] == "steady"
    local.start_coordinator(leader)
    client.vms.remove("steady", wait=True)


def test_a_wrapper_whose_run_names_another_runs_nothing(tmp_path):
    """A daemon cut off between starting a run's wrapper and renaming the run into place leaves that wrapper
    waiting; the run started again names its own wrapper, and the first one runs nothing (before, both ran
    the script at once)."""
    marker = tmp_path / "ran"
    run_dir = tmp_path / "run-1"
    run_dir.mkdir()
    (run_dir / "script").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (run_dir / "script").chmod(0o700)
    (run_dir / "input.json").write_text("{}")
    (run_dir / "wrapper.pid").write_text(f"{os.getpid()} 0")  # a later wrapper's, not this one's
    subprocess.run([sys.executable, "-m", "pvc.node.script_run", str(run_dir), "5"], check=True, timeout=30)
    assert not marker.exists() and not (run_dir / "result.json").exists()
