"""The manual's examples run: its example plugins (docs/examples/pvc-example-plugin), installed into a directory
of their own, are what a local cluster stores its volumes with (``example-dir``) and places and fences with;
the scripting guide's scripts (docs/examples/scripts) run against that cluster as a reader runs them, a Python
process whose PVC_CONFIG points at it."""
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvc import hookspecs
from pvc.cli.main import cli
from pvc.errors import InvalidInput
from pvc.plugin_manager import registered_key
from pvc.ova_client import upload_ova

from conftest import started_cluster
from helpers import eventually
from vm_support import vm_xml

SCRIPTS = Path(__file__).parent.parent / "docs" / "examples" / "scripts"


@pytest.fixture(scope="module")
def cluster(example_plugin_installed, tmp_path_factory):
    """Three nodes storing volumes with the example backend, the example plugins loaded by every daemon."""
    yield from started_cluster(tmp_path_factory.mktemp("examples"), nodes=3, coordinators=1, storage="example-dir")


@pytest.fixture(scope="module")
def run(cluster):
    def run_script(name: str, *args: str) -> str:
        environment = {**os.environ, "PVC_CONFIG": str(cluster.local.client_config)}
        for variable in ("PVC_URI", "PVC_API_KEY", "PVC_CONNECTION"):
            environment.pop(variable, None)
        result = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                                env=environment, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout
    return run_script


def test_every_script_in_the_guide_is_tested():
    tested = {"nodes.py", "start_vm.py", "flush_node.py", "upload_image.py"}
    assert {path.name for path in SCRIPTS.glob("*.py")} == tested


def test_the_node_list_script_prints_every_node(run, cluster):
    lines = run("nodes.py").splitlines()
    assert [line.split()[:3] for line in lines] == [[node, "run", "ready"] for node in cluster.local.node_names]


def test_the_start_script_defines_starts_and_can_be_run_again(run, cluster, tmp_path):
    xml = tmp_path / "script-vm.xml"
    xml.write_text(vm_xml("script-vm", memory_mib=128))
    first = run("start_vm.py", str(xml), "hv2,hv3").splitlines()
    assert first[0].startswith("script-vm is start on hv")
    assert first[0].split()[-1] in ("hv2", "hv3")
    assert first[1] == "as expected: no VM named 'no-such-vm'"
    assert cluster.host_domains(first[0].split()[-1]) == {**cluster.host_domains(first[0].split()[-1]),
                                                         "script-vm": True}
    again = run("start_vm.py", str(xml), "hv2,hv3").splitlines()
    assert again[0] == "note: a VM named 'script-vm' exists already"
    assert again[1] == first[0]


def test_the_flush_script_flushes_and_readies_a_node(run):
    assert run("flush_node.py", "hv1").splitlines() == ["flush of hv1: done, now flushed",
                                                         "ready of hv1: done, now ready"]


def test_the_upload_script_uploads_a_qcow2_image(run, tmp_path):
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "3M"], check=True)
    assert run("upload_image.py", "scripts", "disk0", str(image)).strip() == f"scripts/disk0: {3 << 20} bytes"


def test_the_example_backend_stores_volumes_snapshots_and_a_vm_disk(run, cluster, tmp_path):
    storage, root = cluster.client.storage, cluster.local.storage_dir
    image = tmp_path / "raw.img"
    image.write_bytes(b"example data" + bytes(1 << 20))
    assert run("upload_image.py", "examples", "data", str(image)).strip() == f"examples/data: {(1 << 20) + 12} bytes"
    assert (root / "examples" / "data.img").read_bytes()[:12] == b"example data"

    storage.snapshot_add("examples", "data", "before")
    (root / "examples" / "data.img").write_bytes(b"changed")
    storage.snapshot_rollback("examples", "data", "before")
    assert (root / "examples" / "data.img").read_bytes()[:12] == b"example data"
    assert (root / "examples" / "data.snapshots" / "before").exists()
    storage.volume_clone("examples", "data", "copy")
    assert storage.volume_info("examples", "copy")["size_bytes"] == (1 << 20) + 12

    xml = ("<domain type='test'><name>example-disk-vm</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
           "<os><type>hvm</type></os><devices><disk type='volume' device='disk'>"
           "<source pool='examples' volume='copy'/><target dev='vda'/></disk></devices></domain>")
    cluster.client.vms.define(xml)
    vm = cluster.client.vms.start("example-disk-vm", wait=True)
    assert cluster.host_domains(vm["node"])["example-disk-vm"] is True
    assert storage.volume_info("examples", "copy")["used_by"] == ["example-disk-vm"]

    cluster.client.vms.stop("example-disk-vm", wait=True)
    storage.snapshot_remove("examples", "data", "before")
    storage.volume_remove("examples", "data")
    assert sorted(path.name for path in (root / "examples").iterdir()) == ["copy.img"]


def test_the_example_distribution_has_a_plugin_of_every_hook_kind(cluster):
    plugins = [plugin for plugin in cluster.client.cluster.plugins() if plugin["distribution"] == "pvc-example-plugin"]
    covered = {hook for hook in hookspecs.REGISTRATION_HOOKS for plugin in plugins
               if plugin.get(registered_key(hook))}
    assert covered == set(hookspecs.REGISTRATION_HOOKS), \
        "each hook kind needs an example plugin in docs/examples/pvc-example-plugin (the plugin guide shows it)"


def test_the_example_selector_and_fencing_policy_are_loaded(cluster):
    plugins = {plugin["name"]: plugin for plugin in cluster.client.cluster.plugins()}
    assert plugins["example"]["migration_selectors"] == ["example-fewest-defined"]
    assert plugins["example"]["fencing_policies"] == ["example-ipmitool"]
    assert plugins["example_storage"]["storage_backends"] == ["example-dir"]
    assert plugins["example_bundle"]["appliance_importers"] == ["example-bundle"]
    assert plugins["example_health"]["node_health_checks"] == ["example-hang"]
    assert plugins["example_health"]["cluster_health_checks"] == ["example-spare-node"]
    assert plugins["example_iso"]["image_importers"] == ["example-iso"]


def bundle(path: Path, descriptor: dict, disks: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in {"bundle.json": json.dumps(descriptor).encode(), **disks}.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture
def examples_pool(cluster) -> str:
    if "examples" not in [pool["name"] for pool in cluster.client.storage.pool_list()]:
        cluster.client.storage.pool_add("examples")
    return "examples"


def test_the_example_appliance_importer_makes_volumes_a_template_and_a_vm(cluster, examples_pool, tmp_path):
    client = cluster.client
    archive = bundle(tmp_path / "web.bundle", {"vcpus": 2, "memory_mib": 128, "disks": [2 << 20, 1 << 20]},
                     {"disk0.raw": b"boot sector", "disk1.raw": b"data"})
    recorded = upload_ova(client, "bundled", "examples", str(archive), importer="example-bundle")
    assert (recorded["state"], recorded["vcpus"], recorded["memory_mib"]) == ("ready", 2, 128)
    assert [(volume["size_bytes"], volume["source"]) for volume in recorded["volumes"]] == \
        [(2 << 20, "disk0.raw"), (1 << 20, "disk1.raw")]
    first = recorded["volumes"][0]
    assert (cluster.local.storage_dir / first["pool"] / f"{first['name']}.img").read_bytes()[:11] == b"boot sector"

    vm = client.provisioner.create("bundled-vm", "bundled", start=True, wait=True)
    assert client.vms.info("bundled-vm")["running"] is True, vm


def test_the_example_appliance_importer_refuses_a_disk_larger_than_declared(cluster, examples_pool, tmp_path):
    archive = bundle(tmp_path / "bad.bundle", {"vcpus": 1, "memory_mib": 64, "disks": [4]},
                     {"disk0.raw": b"more than four bytes"})
    with pytest.raises(InvalidInput, match="disk0.raw holds 20 bytes, more than its declared 4"):
        upload_ova(cluster.client, "oversized", "examples", str(archive), importer="example-bundle")
    assert "oversized" not in [ova["name"] for ova in cluster.client.provisioner.ova_list()]
    assert not [path for path in (cluster.local.storage_dir / "examples").iterdir() if "oversized" in path.name]


def iso_image(path: Path, sectors: int = 20, descriptor: bytes = b"\x01CD001\x01") -> Path:
    """The smallest image the example importer takes: a system area, a primary volume descriptor at sector 16,
    a terminator, and sectors of data."""
    data = bytearray(sectors * 2048)
    data[16 * 2048:16 * 2048 + len(descriptor)] = descriptor
    data[17 * 2048:17 * 2048 + 7] = b"\xffCD001\x01"
    data[-11:] = b"last sector"
    path.write_bytes(bytes(data))
    return path


def test_the_example_image_importer_takes_an_iso_named_as_such(cluster, examples_pool, tmp_path):
    """As the plugin guide says to use it: ``pvc storage volume upload POOL NAME FILE --format iso``."""
    image = iso_image(tmp_path / "tools.iso")
    runner = CliRunner(env={"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None})
    result = runner.invoke(cli, ["storage", "volume", "upload", examples_pool, "tools-cd", str(image), "--format",
                                 "iso", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["size_bytes"] == 20 * 2048
    assert (cluster.local.storage_dir / examples_pool / "tools-cd.img").read_bytes() == image.read_bytes()


@pytest.mark.parametrize("make, reason", [
    (lambda path: iso_image(path, descriptor=b"\x01XX001\x01"),
     "example-iso: not an ISO 9660 image (no primary volume descriptor at sector 16)"),
    (lambda path: path.write_bytes(b"\0" * 3000) and path, "an ISO 9660 image is whole 2048-byte sectors"),
    (lambda path: subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True) and path,
     "the upload is a qcow2 image, not iso as given"),
])
def test_the_example_image_importer_refuses_what_is_no_iso_and_leaves_no_volume(cluster, examples_pool, tmp_path,
                                                                                 make, reason):
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        cluster.client.storage.upload(examples_pool, "not-a-cd", str(make(tmp_path / "fake.iso")), "iso")
    assert "not-a-cd" not in [volume["name"] for volume in cluster.client.storage.volume_list(examples_pool)]
    assert not [path for path in (cluster.local.storage_dir / examples_pool).iterdir() if ".upload-" in path.name]


def test_the_example_cluster_check_raises_a_fault_while_no_node_is_spare_and_clears_it(cluster):
    """The leader runs the example's cluster check: two of three nodes flushed leave no spare node."""
    nodes = cluster.client.nodes
    fault_id = "cluster.example-spare-node"

    def active_fault():
        return next((fault for fault in cluster.client.cluster.faults() if fault["id"] == fault_id), None)

    assert active_fault() is None
    try:
        for node in ("hv2", "hv3"):
            assert finished(nodes, nodes.flush(node))["state"] == "done"
        fault = eventually(active_fault, timeout=20)
        assert fault and (fault["severity"], fault["delta"]) == ("warning", 20), fault
        assert fault["message"] == "only 1 of 3 nodes ready (hv1): no spare node to take a failed node's VMs"
    finally:
        for node in ("hv2", "hv3"):
            finished(nodes, nodes.ready(node))
    assert eventually(lambda: active_fault() is None, timeout=20)


def finished(nodes, task: dict) -> dict:
    """The flush or ready task once the leader has finished it."""
    return eventually(lambda: (current := nodes.task(task["id"]))["state"] in ("done", "failed") and current,
                      timeout=60, interval=0.2) or nodes.task(task["id"])
