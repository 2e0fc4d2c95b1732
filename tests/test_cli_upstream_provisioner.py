"""Upstream PVC's provisioner command lines against a real local cluster: a system template with upstream's
options, network and storage templates built step by step (no NIC, no disk, then disks one by one), a named
user-data document a profile names, and a VM created from it all; beside our own spellings."""
import subprocess

import pytest
from lxml import etree

from conftest import started_cluster
from vm_support import pvc

POOL = "uppool"


@pytest.fixture(scope="module")
def up_cluster(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("upprov"), nodes=1, coordinators=1, storage="file")
    cluster = next(running)
    cluster.client.storage.pool_add(POOL, {})
    yield cluster
    next(running, None)


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr + result.stdout
    return result.stdout


def one_line_error(result, status: int = 1) -> str:
    assert result.exit_code == status, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_upstreams_provisioner_command_lines_build_a_profile_step_by_step(up_cluster, tmp_path):
    client = up_cluster.client
    ok(pvc(up_cluster, "provisioner", "template", "system", "add", "upsys", "--vcpus", "2", "--vram", "300",
           "--vnc", "--vnc-bind", "127.0.0.1", "--node-limit", "hv1", "--node-selector", "none",
           "--node-autostart", "--migration-method", "none"))
    system = client.provisioner.template_info("system", "upsys")
    assert (system["vcpus"], system["memory_mib"], system["vnc"], system["vnc_bind"], system["node_limit"],
            system["node_selector"], system["node_autostart"], system["migration_method"]) == \
        (2, 300, True, "127.0.0.1", ["hv1"], None, True, None)
    assert "loopback" in one_line_error(pvc(up_cluster, "provisioner", "template", "system", "add", "wide",
                                            "--vcpus", "1", "--vram", "64", "--vnc-bind", "0.0.0.0"))

    ok(pvc(up_cluster, "provisioner", "template", "network", "add", "upnet"))
    ok(pvc(up_cluster, "provisioner", "template", "storage", "add", "upsto"))
    assert client.provisioner.template_info("network", "upnet")["nics"] == []
    ok(pvc(up_cluster, "provisioner", "template", "storage", "disk", "add", "upsto", "sda", "--pool", POOL,
           "--size", "8M", "--filesystem", "ext4", "--mountpoint", "/"))
    ok(pvc(up_cluster, "provisioner", "template", "storage", "disk", "add", "upsto", "sdb", "--pool", POOL,
           "--size", "4M"))
    assert "sda already" in one_line_error(pvc(up_cluster, "provisioner", "template", "storage", "disk", "add",
                                               "upsto", "sda", "--pool", POOL, "--size", "1M"))
    assert [(disk["disk_id"], disk["size_bytes"], disk.get("filesystem"), disk.get("mountpoint"))
            for disk in client.provisioner.template_info("storage", "upsto")["disks"]] == \
        [("sda", 8 << 20, "ext4", "/"), ("sdb", 4 << 20, None, None)]

    document = tmp_path / "user-data"
    document.write_text("#cloud-config\nhostname: upvm\n")
    ok(pvc(up_cluster, "provisioner", "userdata", "add", "updoc", str(document)))
    assert "updoc" in ok(pvc(up_cluster, "provisioner", "userdata", "list", "up"))
    both = pvc(up_cluster, "provisioner", "profile", "add", "bad", "--userdata", "updoc", "--user-data",
               str(document))
    assert "--user-data FILE and --userdata DOC" in one_line_error(both, status=2)
    ok(pvc(up_cluster, "provisioner", "profile", "add", "upprof", "--profile-type", "provisioner",
           "--system-template", "upsys", "--network-template", "upnet", "--storage-template", "upsto",
           "--userdata", "updoc"))
    listed = ok(pvc(up_cluster, "provisioner", "profile", "list", "upp", "-f", "raw"))
    assert listed.split() == ["upprof"]
    assert "used by profile(s) upprof" in one_line_error(pvc(up_cluster, "provisioner", "userdata", "remove",
                                                             "updoc"))

    ok(pvc(up_cluster, "provisioner", "create", "upvm", "upprof", "--wait"))
    domain = etree.fromstring(client.vms.dump("upvm").encode())
    assert domain.find("devices/graphics").get("listen") == "127.0.0.1"
    assert [disk.get("device") for disk in domain.findall("devices/disk")] == ["disk", "disk", "cdrom"]
    assert domain.findall("devices/interface") == []
    drive = up_cluster.local.storage_dir / POOL / "upvm_cidata"
    read = subprocess.run(["isoinfo", "-J", "-i", str(drive), "-x", "/user-data"], capture_output=True,
                          check=True).stdout
    assert read.decode() == "#cloud-config\nhostname: upvm\n"

    client.vms.remove("upvm", wait=True)
    script = tmp_path / "install"
    script.write_text("#!/bin/sh\nexit 0\n")
    ok(pvc(up_cluster, "provisioner", "script", "add", "noop", str(script)))
    ok(pvc(up_cluster, "provisioner", "profile", "modify", "upprof", "--script", "noop", "--script-arg", "x"))
    volumes_before = client.storage.volume_list(POOL)
    refused = one_line_error(pvc(up_cluster, "provisioner", "create", "upvm2", "upprof"))
    assert "no node runs install scripts (provisioner_scripts in pvcnoded.yaml)" in refused
    assert client.storage.volume_list(POOL) == volumes_before
    assert "used by profile(s) upprof" in one_line_error(pvc(up_cluster, "provisioner", "script", "remove", "noop"))
    ok(pvc(up_cluster, "provisioner", "profile", "modify", "upprof", "--script", ""))
    ok(pvc(up_cluster, "provisioner", "script", "remove", "noop"))
    ok(pvc(up_cluster, "provisioner", "profile", "remove", "upprof"))
    ok(pvc(up_cluster, "provisioner", "userdata", "remove", "updoc"))
    assert client.provisioner.userdata_list() == []
