"""OVA uploads against a real local cluster: `pvc provisioner ova upload` streams real OVAs (qemu-img made their
disks) to the node, which imports them as they arrive; list and info show what the descriptor declared; the
volumes hold the source images' bytes; a hostile or broken upload changes nothing anywhere; remove takes
everything away."""
import json
import socket
import tempfile
import threading

import libvirt
import pytest

from pvc import bulk, schema
from pvc.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from pvc.ova_client import upload_ova

from conftest import started_cluster
from helpers import cluster_store, eventually
from ova_support import (DiskSpec, appliance_ova, build_ova, disk_members, images, manifest, same_image,
                         vmware_descriptor)
from storage_support import leftovers, pvc, stored_names, unique
from vm_support import restart_node_daemon

MiB = 1 << 20
DISK_BYTES = 8 * MiB


@pytest.fixture(scope="module")
def ova_cluster(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("ova"), nodes=1, coordinators=1, storage="file")
    cluster = next(running)
    cluster.backend = "file"
    yield cluster
    next(running, None)


@pytest.fixture(scope="module")
def pool(ova_cluster):
    name = unique("ova")
    ova_cluster.client.storage.pool_add(name)
    return name


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    return images(tmp_path_factory.mktemp("ova-images"), 2, DISK_BYTES, seed=3)


def volume_file(cluster, pool: str, volume: str) -> str:
    return str(cluster.local.storage_dir / pool / volume)


def zookeeper_tree(store, path: str) -> dict:
    """Every znode below `path` with its value, read from ZooKeeper itself."""
    tree = {path: store.read(path)}
    for child in store.children(path):
        tree.update(zookeeper_tree(store, f"{path}/{child}"))
    return tree


def everything(cluster, pool: str) -> dict:
    """What a user, an administrator looking at the storage, and ZooKeeper itself show of OVAs, their templates
    and profiles, and volumes."""
    client = cluster.client
    with cluster_store(cluster.local) as store:
        znodes = {**zookeeper_tree(store, schema.OVAS), **zookeeper_tree(store, schema.VOLUMES),
                  **zookeeper_tree(store, schema.TEMPLATES), **zookeeper_tree(store, schema.PROFILES)}
    return {"ovas": client.provisioner.ova_list(), "volumes": client.storage.volume_list(pool),
            "templates": client.provisioner.template_list(), "profiles": client.provisioner.profile_list(),
            "stored": stored_names(cluster, pool), "leftovers": leftovers(cluster, pool), "znodes": znodes}


def test_upload_of_a_two_disk_vmware_ova_shows_its_hardware_and_holds_its_disks(ova_cluster, pool, disks,
                                                                                tmp_path):
    specs = [DiskSpec(disks[0][1], 16, "byte * 2^20"), DiskSpec(disks[1][1], DISK_BYTES, gzip=True)]
    archive = appliance_ova(tmp_path, "web", specs, vcpus=4, memory="2048")

    result = pvc(ova_cluster, "provisioner", "ova", "upload", "web", str(archive), "--pool", pool, "--format", "json")

    assert result.exit_code == 0, result.stderr + result.stdout
    assert [line.split()[0] for line in result.stderr.splitlines() if line.strip()] == ["Uploading", "Importing"], \
        "no checksum pass before sending: the checksum follows the data"
    uploaded = json.loads(result.stdout)
    assert (uploaded["name"], uploaded["state"], uploaded["vcpus"], uploaded["memory_mib"], uploaded["firmware"],
            uploaded["manifest"]) == ("web", "ready", 4, 2048, "efi", "verified (SHA256)")
    assert [(volume["name"], volume["size_bytes"]) for volume in uploaded["volumes"]] == \
        [("ova_web_disk0", 16 * MiB), ("ova_web_disk1", DISK_BYTES)]
    assert [disk["bus"] for disk in uploaded["hardware_disks"]] == ["scsi", "scsi"]
    for index, (raw, _vmdk) in enumerate(disks):
        assert same_image(volume_file(ova_cluster, pool, f"ova_web_disk{index}"), str(raw))

    listed = pvc(ova_cluster, "provisioner", "ova", "list", "--format", "json")
    assert [(row["name"], row["disks"], row["manifest"]) for row in json.loads(listed.stdout)] == \
        [("web", 2, "verified (SHA256)")]
    info = pvc(ova_cluster, "provisioner", "ova", "info", "web")
    assert info.exit_code == 0, info.stderr
    assert "vmxnet3 on VM Network" in info.stdout and "verified (SHA256)" in info.stdout
    assert f"{pool}/ova_web_disk1" in info.stdout
    names = [volume["name"] for volume in ova_cluster.client.storage.volume_list(pool)]
    assert {"ova_web_disk0", "ova_web_disk1"} <= set(names)
    assert leftovers(ova_cluster, pool) == []

    removed = pvc(ova_cluster, "provisioner", "ova", "remove", "web", "--yes")
    assert removed.exit_code == 0, removed.stderr
    with pytest.raises(NotFound):
        ova_cluster.client.provisioner.ova_info("web")
    assert not {"ova_web_disk0", "ova_web_disk1"} & set(stored_names(ova_cluster, pool))
    assert not {"ova_web_disk0", "ova_web_disk1"} & {v["name"] for v in ova_cluster.client.storage.volume_list(pool)}


def test_chunked_disk_without_manifest_is_imported_and_reported_unverified(ova_cluster, pool, disks, tmp_path):
    specs = [DiskSpec(disks[1][1], DISK_BYTES, chunk_size=3 * MiB)]
    archive = appliance_ova(tmp_path, "vbox", specs, style="virtualbox", checksum=None)

    uploaded = upload_ova(ova_cluster.client, "vbox", pool, str(archive))

    assert (uploaded["manifest"], uploaded["memory_mib"], uploaded["hardware_disks"][0]["bus"]) == \
        ("absent", 512, "sata")
    assert same_image(volume_file(ova_cluster, pool, "ova_vbox_disk0"), str(disks[1][0]))
    with pytest.raises(AlreadyExists):
        upload_ova(ova_cluster.client, "vbox", pool, str(archive))
    ova_cluster.client.provisioner.ova_remove("vbox")


def test_virtualbox_manifest_listing_only_the_disks_is_imported_as_partial(ova_cluster, pool, disks, tmp_path):
    """VirtualBox's BSD-style lines (``SHA256 (f) = hex``) covering the disks but not the descriptor."""
    archive = appliance_ova(tmp_path, "vbp", [DiskSpec(disks[0][1], DISK_BYTES)], style="virtualbox",
                            covers="disks")

    uploaded = pvc(ova_cluster, "provisioner", "ova", "upload", "vbp", str(archive), "--pool", pool)

    assert uploaded.exit_code == 0, uploaded.stderr
    info = pvc(ova_cluster, "provisioner", "ova", "info", "vbp")
    details = dict(line.split(":", 1) for line in info.stdout.splitlines() if ":" in line)
    assert (details["Manifest"].strip(), details["Unverified"].strip()) == ("partial (SHA256)", "vbp.ovf")
    assert same_image(volume_file(ova_cluster, pool, "ova_vbp_disk0"), str(disks[0][0]))
    ova_cluster.client.provisioner.ova_remove("vbp")


def _hostile(tmp_path, disks, case: str):
    specs = [DiskSpec(disks[0][1], DISK_BYTES)]
    descriptor = ("h.ovf", vmware_descriptor("h", specs))
    disk = disk_members("h", specs)[0]
    members = {
        "not a tar": None,
        "manifest mismatch": [descriptor, ("h.mf", manifest([descriptor, (disk[0], b"other")])), disk],
        "manifest mismatch, disks only, BSD style": [
            descriptor, ("h.mf", manifest([(disk[0], b"other")], style="virtualbox")), disk],
        "manifest with an unknown algorithm": [descriptor, ("h.mf", manifest([disk], "md5", "virtualbox")), disk],
        "capacity too small": [(descriptor[0], descriptor[1].replace(
            f'ovf:capacity="{DISK_BYTES}"'.encode(), b'ovf:capacity="1" ovf:capacityAllocationUnits="MB"')), disk],
        "dot-dot member": [descriptor, ("../h-disk1.vmdk", disk[1])],
        "entity": [(descriptor[0], b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + descriptor[1][38:]),
                   disk],
        "missing disk": [descriptor],
        "too big for the pool": [("h.ovf", vmware_descriptor("h", [DiskSpec(None, 64, "byte * 2^50")]))],
        "more vCPUs than any node": [("h.ovf", vmware_descriptor("h", specs, vcpus=100000)), disk],
    }[case]
    path = tmp_path / "hostile.ova"
    if members is None:
        path.write_bytes(b"\x7fELF" + bytes(10000))
        return path
    return build_ova(path, members)


HOSTILE = {"not a tar": "not a tar archive", "manifest mismatch": "does not match its content",
           "manifest mismatch, disks only, BSD style": "checksum of 'h-disk1.vmdk' does not match",
           "manifest with an unknown algorithm": "gives 'h-disk1.vmdk' a MD5 digest",
           "capacity too small": "more than its declared capacity", "dot-dot member": "outside the archive",
           "entity": "DTD or entities", "missing disk": "does not contain it",
           "too big for the pool": "can still hold",
           "more vCPUs than any node": "the appliance has 100000 vCPUs, more than the 16 CPUs of the largest node"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_upload_is_refused_and_leaves_everything_as_it_was(ova_cluster, pool, disks, tmp_path, case):
    before = everything(ova_cluster, pool)

    result = pvc(ova_cluster, "provisioner", "ova", "upload", "bad", str(_hostile(tmp_path, disks, case)),
                 "--pool", pool)

    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and HOSTILE[case] in error[0], result.stderr
    assert everything(ova_cluster, pool) == before


def test_an_upload_cut_off_midway_is_cleared_by_the_next_pass(ova_cluster, pool, disks, tmp_path):
    """The client dies mid-stream: the node drops what it had imported; the coordinator, still holding the
    upload's intent, clears it the next time the OVA is looked at."""
    before = everything(ova_cluster, pool)
    archive = appliance_ova(tmp_path, "cut", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)])
    data = archive.read_bytes()
    checksum = bulk.checksum_of_bytes(data)
    ticket = ova_cluster.client.provisioner.ova_upload("cut", pool, len(data), checksum)
    assert ova_cluster.client.provisioner.ova_info("cut")["state"] == "importing"
    host, port = ticket["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        bulk.send_message(connection, {"token": ticket["token"], "size_bytes": len(data), "checksum": checksum})
        connection.makefile("rb").readline()
        connection.sendall(data[:len(data) * 3 // 4])
        assert eventually(lambda: leftovers(ova_cluster, pool), timeout=30), "the import had begun when cut off"
        assert ova_cluster.client.provisioner.ova_info("cut")["state"] == "importing"

    def settled() -> bool:
        try:
            ova_cluster.client.provisioner.ova_upload_end("cut")
        except NotFound:
            return True
        return False
    assert eventually(settled, timeout=60, interval=0.5)
    assert everything(ova_cluster, pool) == before


@pytest.mark.parametrize("forged", ["another checksum", "another key"])
def test_a_trailer_that_does_not_match_removes_every_volume_the_upload_imported(ova_cluster, pool, disks, tmp_path,
                                                                                 forged):
    """The checksum follows the data: both disks are imported by the time it arrives, and a wrong one (or one
    not signed with the declared key) removes them all."""
    before = everything(ova_cluster, pool)
    archive = appliance_ova(tmp_path, "tr", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)])
    data = archive.read_bytes()
    declared, key = bulk.trailer_key()
    ticket = ova_cluster.client.provisioner.ova_upload("tr", pool, len(data), declared)
    host, port = ticket["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection, \
            connection.makefile("rb") as answers:
        bulk.send_message(connection, {"token": ticket["token"], "size_bytes": len(data), "checksum": "trailer"})
        assert json.loads(answers.readline()) == {"ready": True}
        connection.sendall(data)
        assert eventually(lambda: len(leftovers(ova_cluster, pool)) == 2, timeout=30), \
            "both disks were imported before the trailer came"
        right, wrong = bulk.checksum_of_bytes(data), bulk.checksum_of_bytes(data[:-1])
        bulk.send_message(connection, {"checksum": wrong, "mac": bulk.trailer_mac(key, wrong)}
                          if forged == "another checksum" else
                          {"checksum": right, "mac": bulk.trailer_mac(bulk.trailer_key()[1], right)})
        answer = json.loads(answers.readline())

    assert answer["error"] == "InvalidInput"
    assert ("does not match" if forged == "another checksum" else "not signed with the key") in answer["message"]
    with pytest.raises(NotFound):
        ova_cluster.client.provisioner.ova_upload_end("tr")
    assert everything(ova_cluster, pool) == before


def test_unknown_pool_and_bad_names_are_refused(ova_cluster, pool, tmp_path, disks):
    archive = appliance_ova(tmp_path, "p", [DiskSpec(disks[0][1], DISK_BYTES)])
    with pytest.raises(NotFound, match="no storage pool named 'nowhere'"):
        upload_ova(ova_cluster.client, "p", "nowhere", str(archive))
    with pytest.raises(InvalidInput, match="invalid OVA name"):
        upload_ova(ova_cluster.client, "../p", pool, str(archive))
    assert ova_cluster.client.provisioner.ova_list() == []


def _stream_in_background(ticket: dict, data: bytes, checksum: str) -> tuple[threading.Thread, dict]:
    """Send the archive under `ticket` from a thread; the node's answer (or the error) lands in the dict."""
    outcome: dict = {}

    def send() -> None:
        with tempfile.NamedTemporaryFile() as file:
            file.write(data)
            file.flush()
            with bulk.SpooledSource(file.name) as source:
                try:
                    outcome["answer"] = bulk.stream_upload(ticket["address"], ticket["token"], source, checksum, 30)
                except Exception as error:
                    outcome["error"] = error
    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def test_a_coordinator_killed_during_an_import_leaves_the_whole_ova(ova_cluster, pool, disks, tmp_path):
    """The node finishes the import on its own; the restarted coordinator settles the OVA from its report."""
    local = ova_cluster.local
    archive = appliance_ova(tmp_path, "crash", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)])
    data = archive.read_bytes()
    checksum = bulk.checksum_of_bytes(data)
    ticket = ova_cluster.client.provisioner.ova_upload("crash", pool, len(data), checksum)
    coordinator = local.coordinator_names[0]

    thread, outcome = _stream_in_background(ticket, data, checksum)
    local.stop_daemon("pvcapid", coordinator, kill=True)
    thread.join()
    local.start_coordinator(coordinator)

    assert "appliance" in outcome.get("answer", {}), outcome
    ova = eventually(lambda: _info_or_none(ova_cluster, "crash"), timeout=60, interval=0.5)
    assert (ova["state"], ova["disks"]) == ("ready", 2)
    assert ova_cluster.client.provisioner.template_info("system", "crash")["vcpus"] == ova["vcpus"]
    assert ova_cluster.client.provisioner.profile_info("crash")["complete"]
    for index, (raw, _vmdk) in enumerate(disks):
        assert same_image(volume_file(ova_cluster, pool, f"ova_crash_disk{index}"), str(raw))
    ova_cluster.client.provisioner.ova_remove("crash")
    assert "crash" not in {row["name"] for row in ova_cluster.client.provisioner.profile_list()}


def test_a_node_killed_during_an_import_leaves_nothing_after_it_restarts(ova_cluster, pool, disks, tmp_path):
    """The node dies mid-stream: its restart sweeps the hidden volumes and staging files, its marker goes with
    its session, and the coordinator clears the upload's intent."""
    local = ova_cluster.local
    before = everything(ova_cluster, pool)
    archive = appliance_ova(tmp_path, "dies", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)])
    data = archive.read_bytes()
    checksum = bulk.checksum_of_bytes(data)
    ticket = ova_cluster.client.provisioner.ova_upload("dies", pool, len(data), checksum)
    node = local.node_names[0]
    host, port = ticket["address"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        bulk.send_message(connection, {"token": ticket["token"], "size_bytes": len(data), "checksum": checksum})
        connection.makefile("rb").readline()
        connection.sendall(data[:len(data) * 3 // 4])
        assert eventually(lambda: leftovers(ova_cluster, pool), timeout=30), "the import had begun when killed"
        local.stop_daemon("pvcnoded", node, kill=True)
    restart_node_daemon(ova_cluster, node, timeout=60)

    def settled() -> bool:
        try:
            ova_cluster.client.provisioner.ova_upload_end("dies")
        except NotFound:
            return True
        return False
    assert eventually(settled, timeout=60, interval=0.5)
    assert eventually(lambda: everything(ova_cluster, pool) == before, timeout=60, interval=0.5), \
        everything(ova_cluster, pool)


def _info_or_none(cluster, name: str):
    try:
        return cluster.client.provisioner.ova_info(name)
    except Exception:
        return None


def test_an_ova_brings_a_template_and_profile_that_make_a_vm_and_go_with_it(ova_cluster, pool, disks, tmp_path):
    """Upload → a system template with the descriptor's vCPUs and memory and a complete ova profile, both named
    after the OVA → `provisioner create` → a VM with those resources whose disks hold the source images. The OVA
    cannot go while that VM exists, even once the creation's task record is gone; after `vm remove` it goes
    with its volumes, template and profile."""
    client = ova_cluster.client
    archive = appliance_ova(tmp_path, "made", [DiskSpec(disks[0][1], DISK_BYTES), DiskSpec(disks[1][1], DISK_BYTES)],
                            vcpus=3, memory="768")
    uploaded = pvc(ova_cluster, "provisioner", "ova", "upload", "made", str(archive), "--pool", pool,
                   "--format", "json")
    assert uploaded.exit_code == 0, uploaded.stderr
    ova = json.loads(uploaded.stdout)
    assert (ova["template"], ova["profile"]) == ("made", "made")
    assert "Profile" in pvc(ova_cluster, "provisioner", "ova", "info", "made").stdout

    template = json.loads(pvc(ova_cluster, "provisioner", "template", "system", "info", "made", "--format",
                              "json").stdout)
    assert (template["vcpus"], template["memory_mib"], template["firmware"], template["used_by"]) == \
        (3, 768, "efi", ["made"])
    profile = json.loads(pvc(ova_cluster, "provisioner", "profile", "info", "made", "--format", "json").stdout)
    assert (profile["type"], profile["ova"], profile["system_template"], profile["missing"], profile["complete"]) == \
        ("ova", "made", "made", [], True)

    created = pvc(ova_cluster, "provisioner", "create", "madevm", "made", "--define-only", "--wait", "--format", "json")

    assert created.exit_code == 0, created.stderr
    vm = json.loads(created.stdout)
    assert (vm["vcpus"], vm["memory_mib"], len(vm["disks"])) == (3, 768, 2)
    assert eventually(lambda: _libvirt_resources(ova_cluster, vm["node"], "madevm") == (3, 768), timeout=30)
    for index, (raw, _vmdk) in enumerate(disks):
        assert same_image(volume_file(ova_cluster, pool, f"madevm_disk{index}"), str(raw))
    with cluster_store(ova_cluster.local) as store:
        for task in store.children(schema.TASKS):
            if task.startswith("provision-madevm-"):
                store.transaction().delete(schema.task(task)).commit()
    refused = pvc(ova_cluster, "provisioner", "ova", "remove", "made", "--yes")
    assert refused.exit_code == 1 and "VM(s) made from it: madevm" in refused.stderr, refused.stderr
    assert client.provisioner.ova_info("made")["state"] == "ready"

    client.vms.remove("madevm", wait=True)
    removed = pvc(ova_cluster, "provisioner", "ova", "remove", "made", "--yes")

    assert removed.exit_code == 0, removed.stderr
    for command in (("ova", "info"), ("template", "system", "info"), ("profile", "info")):
        gone = pvc(ova_cluster, "provisioner", *command, "made")
        assert gone.exit_code == 1 and "no " in gone.stderr, gone.stderr
    assert not {"ova_made_disk0", "ova_made_disk1"} & set(stored_names(ova_cluster, pool))
    assert not {"ova_made_disk0", "ova_made_disk1"} & {v["name"] for v in client.storage.volume_list(pool)}
    for index in range(2):
        client.storage.volume_remove(pool, f"madevm_disk{index}")


def _libvirt_resources(cluster, node: str, vm: str) -> tuple[int, int] | None:
    """(vCPUs, memory in MiB) of `vm` as the node's own libvirtd holds it, or None while it holds no such VM."""
    connection = libvirt.open(cluster.local.host(node).uri)
    try:
        _state, memory_kib, _used, vcpus, _cpu_time = connection.lookupByName(vm).info()
        return vcpus, memory_kib // 1024
    except libvirt.libvirtError:
        return None
    finally:
        connection.close()


def test_forced_removal_leaves_the_vm_and_takes_the_rest(ova_cluster, pool, disks, tmp_path):
    client = ova_cluster.client
    upload_ova(client, "forced", pool, str(appliance_ova(tmp_path, "forced", [DiskSpec(disks[0][1], DISK_BYTES)])))
    client.provisioner.create("forcedvm", "forced", define_only=True, wait=True)
    shown = pvc(ova_cluster, "vm", "info", "forcedvm")
    assert "Made from:" in shown.stdout and "OVA forced" in shown.stdout.split("Made from:")[1].splitlines()[0]
    assert json.loads(pvc(ova_cluster, "vm", "info", "forcedvm", "--format", "json").stdout)["made_from"] == \
        {"ova": "forced"}
    with pytest.raises(Conflict, match="VM\\(s\\) made from it: forcedvm"):
        client.provisioner.ova_remove("forced")
    client.provisioner.profile_add("borrower", profile_type="ova", system_template="forced")
    with pytest.raises(Conflict, match="system template 'forced' is used by profile\\(s\\) borrower"):
        client.provisioner.ova_remove("forced", force=True)
    assert client.provisioner.ova_info("forced")["state"] == "ready"
    client.provisioner.profile_remove("borrower")

    client.provisioner.ova_remove("forced", force=True)

    assert client.vms.info("forcedvm")["name"] == "forcedvm"
    assert "forced" not in {row["name"] for row in client.provisioner.template_list("system")}
    assert "forced" not in {row["name"] for row in client.provisioner.profile_list()}
    assert "ova_forced_disk0" not in set(stored_names(ova_cluster, pool))
    client.vms.remove("forcedvm", wait=True)
    client.storage.volume_remove(pool, "forcedvm_disk0")


@pytest.mark.parametrize("kind", ["system template", "profile"])
def test_a_name_taken_by_a_template_or_profile_is_refused_before_any_byte(ova_cluster, pool, disks, tmp_path, kind):
    client = ova_cluster.client
    client.provisioner.template_add("system", "taken-sys", {"vcpus": 1, "memory_mib": 64})
    if kind == "system template":
        client.provisioner.template_add("system", "taken", {"vcpus": 1, "memory_mib": 64})
    else:
        client.provisioner.profile_add("taken", system_template="taken-sys")
    before = everything(ova_cluster, pool)

    result = pvc(ova_cluster, "provisioner", "ova", "upload", "taken",
                 str(appliance_ova(tmp_path, "taken", [DiskSpec(disks[0][1], DISK_BYTES)])), "--pool", pool)

    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == \
        [f"Error: a {kind} named 'taken' exists already, and an OVA's template and profile take its name: remove "
         "it or upload the OVA under another name"]
    assert not any(line.startswith("Uploading") for line in result.stderr.splitlines())
    assert everything(ova_cluster, pool) == before
    if kind == "profile":
        client.provisioner.profile_remove("taken")
    else:
        client.provisioner.template_remove("system", "taken")
    client.provisioner.template_remove("system", "taken-sys")


def test_an_importing_ova_holds_its_template_and_profile_names(ova_cluster, pool):
    client = ova_cluster.client
    client.provisioner.ova_upload("held", pool, 1 << 20, bulk.checksum_of_bytes(b"held"))
    try:
        with pytest.raises(AlreadyExists, match="OVA 'held' is being imported"):
            client.provisioner.template_add("system", "held", {"vcpus": 1, "memory_mib": 64})
        with pytest.raises(AlreadyExists, match="OVA 'held' is being imported"):
            client.provisioner.profile_add("held", profile_type="ova")
    finally:
        with pytest.raises(NotFound):
            client.provisioner.ova_upload_end("held")
