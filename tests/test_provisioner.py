"""The provisioner against a real local cluster: templates, profiles built up in steps, VM creation with a
cloud-init config drive read back with isoinfo, bad input that leaves nothing, and a leader killed mid-creation.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from lxml import etree

from pvc import domain_builder, domain_xml, schema
from pvc.errors import AlreadyExists, InvalidInput, NotFound

from helpers import cluster_store, eventually
from vm_support import pvc

POOL = "vmpool"
MIB = 1 << 20


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def pool(cluster) -> str:
    cluster.client.storage.pool_add(POOL, {})
    return POOL


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _system(client, name: str, **fields) -> dict:
    return client.provisioner.template_add("system", name, {"vcpus": 2, "memory_mib": 768, **fields})


def _state(cluster) -> dict:
    """Everything a creation or a template change could leave: the provisioner's records, VMs, tasks and volumes
    in ZooKeeper, and the files of the storage itself."""
    with cluster_store(cluster.local) as store:
        def tree(path: str) -> dict:
            return {child: (store.read(f"{path}/{child}"), tree(f"{path}/{child}"))
                    for child in store.children(path)}
        recorded = {path: tree(path) for path in (schema.PROVISIONER, schema.VM_UUIDS, schema.TASKS, schema.VOLUMES)}
        recorded["vms"] = store.children(schema.VMS)
    files = sorted(str(path.relative_to(cluster.local.storage_dir)) for path in cluster.local.storage_dir.rglob("*"))
    return {"zookeeper": recorded, "storage files": files}


def _domain(client, vm: str) -> etree._Element:
    return etree.fromstring(client.vms.dump(vm).encode())


def _volume_file(cluster, volume: str) -> Path:
    return cluster.local.storage_dir / POOL / volume


def test_the_domain_xml_the_provisioner_builds_passes_the_safe_definition_allowlist_unchanged():
    disks = [domain_builder.Disk("p", "vm_disk0"), domain_builder.Disk("p", "vm_disk1", "scsi"),
             domain_builder.Disk("q", "vm_disk2", "ide"), domain_builder.Disk("p", "vm_cidata", "sata", "cdrom")]
    nics = [domain_builder.Nic("52:54:00:01:02:03", "virtio", bridge="vmbr0"),
            domain_builder.Nic("02:00:00:00:00:01", "e1000", network="default")]
    for hardware in (domain_builder.Hardware(1, 512), domain_builder.Hardware(4, 4096, "efi", False, True)):
        xml = domain_builder.build("vm", str(uuid.uuid4()), hardware, disks, nics)
        assert domain_xml.parse(xml).xml == xml
    assert [disk["target"] for disk in domain_xml.parse(xml).disks] == ["vda", "sda", "hda", "sdb"]


# -- templates --------------------------------------------------------------------------------------------


def test_templates_are_added_listed_changed_and_removed_unless_a_profile_uses_them(cluster, pool):
    client = cluster.client
    system, storage, network = unique("sys"), unique("disks"), unique("nets")

    added = pvc(cluster, "provisioner", "template", "system", "add", system, "--vcpus", "4", "--memory", "2G",
                "--firmware", "efi", "--vnc", "--node-limit", "hv1,hv2", "--node-selector", "vcpus",
                "--node-autostart", "--migration-method", "shutdown", "--format", "json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.output) == {
        "name": system, "kind": "system", "vcpus": 4, "memory_mib": 2048, "serial": True, "vnc": True,
        "vnc_bind": "127.0.0.1", "firmware": "efi", "node_limit": ["hv1", "hv2"], "node_selector": "vcpus", "node_autostart": True,
        "migration_method": "shutdown", "used_by": []}
    assert pvc(cluster, "provisioner", "template", "storage", "add", storage, "--disk", f"pool={POOL},size=64M",
               "--disk", f"pool={POOL},size=1G").exit_code == 0
    assert pvc(cluster, "provisioner", "template", "network", "add", network, "--nic", "bridge=vmbr0",
               "--nic", "network=default,model=e1000,mac-prefix=02:00:aa:bb").exit_code == 0

    assert client.provisioner.template_info("storage", storage)["disks"] == [
        {"pool": POOL, "size_bytes": 64 * MIB, "source_volume": None},
        {"pool": POOL, "size_bytes": 1 << 30, "source_volume": None}]
    assert client.provisioner.template_info("network", network)["nics"] == [
        {"bridge": "vmbr0", "network": None, "model": "virtio", "mac_prefix": "52:54:00", "dhcp_reservation": False},
        {"bridge": None, "network": "default", "model": "e1000", "mac_prefix": "02:00:aa:bb",
         "dhcp_reservation": False}]
    listed = pvc(cluster, "provisioner", "template", "system", "list", "--format", "json")
    assert system in [row["name"] for row in json.loads(listed.output)]
    assert {(row["kind"], row["name"]) for row in client.provisioner.template_list()} >= \
        {("system", system), ("storage", storage), ("network", network)}
    table = pvc(cluster, "provisioner", "template", "storage", "info", storage)
    assert "vmpool:64M, vmpool:1G" in table.output, table.output

    modified = pvc(cluster, "provisioner", "template", "system", "modify", system, "--memory", "1024",
                   "--no-vnc", "--format", "json")
    assert (json.loads(modified.output)["memory_mib"], json.loads(modified.output)["vnc"],
            json.loads(modified.output)["vcpus"]) == (1024, False, 4)
    assert pvc(cluster, "provisioner", "template", "storage", "modify", storage, "--disk",
               f"pool={POOL},size=32M").exit_code == 0
    assert client.provisioner.template_info("storage", storage)["disks"] == [
        {"pool": POOL, "size_bytes": 32 * MIB, "source_volume": None}]

    profile = unique("prof")
    client.provisioner.profile_add(profile, system_template=system, network_template=network)
    assert client.provisioner.template_info("system", system)["used_by"] == [profile]
    refused = _one_line_error(pvc(cluster, "provisioner", "template", "system", "remove", system))
    assert f"is used by profile(s) {profile}" in refused
    assert client.provisioner.template_info("system", system)["name"] == system

    client.provisioner.profile_remove(profile)
    for kind, name in (("system", system), ("storage", storage), ("network", network)):
        assert pvc(cluster, "provisioner", "template", kind, "remove", name).exit_code == 0
    with pytest.raises(NotFound, match=f"no system template named '{system}'"):
        client.provisioner.template_info("system", system)


@pytest.mark.parametrize("kind, spec, message", [
    ("system", {"vcpus": 0, "memory_mib": 512}, "vcpus must be a positive whole number, not 0"),
    ("system", {"memory_mib": 512}, "a system template needs vcpus"),
    ("system", {"vcpus": 1, "memory_mib": 512, "firmware": "uefi"}, "unknown firmware 'uefi'"),
    ("system", {"vcpus": 1, "memory_mib": 512, "node_selector": "fastest"}, "unknown migration selector 'fastest'"),
    ("system", {"vcpus": 1, "memory_mib": 512, "migration_method": "teleport"}, "unknown migration method"),
    ("system", {"vcpus": 1, "memory_mib": 512, "cpus": 3}, "unknown system template field(s): cpus"),
    ("storage", {"disks": "sda"}, "a storage template's disks are a list"),
    ("storage", {"disks": [{"pool": POOL, "size": "1G", "mountpoint": "/"}]}, "a mount point needs a filesystem"),
    ("storage", {"disks": [{"pool": POOL, "size": "1G", "filesystem": "ntfs"}]}, "unknown filesystem 'ntfs'"),
    ("storage", {"disks": [{"pool": POOL}]}, "disk 0 needs a size, or a source volume to clone"),
    ("storage", {"disks": [{"pool": POOL, "size": "-1G"}]}, "disk 0 size"),
    ("storage", {"disks": [{"pool": "../etc", "size": "1G"}]}, "invalid pool name '../etc'"),
    ("network", {"nics": [{"model": "virtio"}]}, "NIC 0 needs either a bridge or a network"),
    ("network", {"nics": [{"bridge": "br0", "network": "default"}]}, "NIC 0 needs either a bridge or a network"),
    ("network", {"nics": [{"bridge": "br0", "model": "ne2k"}]}, "NIC 0: unknown model 'ne2k'"),
    ("network", {"nics": [{"bridge": "br0", "mac_prefix": "01:00:5e"}]}, "is a multicast address"),
    ("network", {"nics": [{"bridge": "br0", "mac_prefix": "52:54:zz"}]}, "invalid MAC prefix '52:54:zz'"),
])
def test_a_bad_template_is_refused_with_one_line_and_nothing_written(cluster, pool, kind, spec, message):
    before = _state(cluster)
    with pytest.raises(InvalidInput if "selector" not in message else NotFound) as refused:
        cluster.client.provisioner.template_add(kind, unique("bad"), spec)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert _state(cluster) == before


# -- profiles and creation --------------------------------------------------------------------------------


def test_an_incomplete_profile_names_what_it_lacks_and_creates_once_filled(cluster, pool):
    client = cluster.client
    system, storage, network = unique("sys"), unique("disks"), unique("nets")
    _system(client, system, node_limit=["hv2", "hv3"], node_selector="vms", node_autostart=True,
            migration_method="live")
    source = unique("golden")
    client.storage.volume_add(POOL, source, 4 * MIB)
    golden = random.Random(3).randbytes(4 * MIB)
    _volume_file(cluster, source).write_bytes(golden)
    client.provisioner.template_add("storage", storage, {"disks": [
        {"pool": POOL, "source_volume": source, "size": "8M"}, {"pool": POOL, "size": "16M"}]})
    client.provisioner.template_add("network", network, {"nics": [{"bridge": "vmbr1", "mac_prefix": "02:aa"}]})
    profile, vm = unique("prof"), unique("vm")

    assert pvc(cluster, "provisioner", "profile", "add", profile, "--system-template", system).exit_code == 0
    info = pvc(cluster, "provisioner", "profile", "info", profile)
    assert "Creation needs:   storage template; network template\n" in info.output, info.output
    before = _state(cluster)
    refused = _one_line_error(pvc(cluster, "provisioner", "create", vm, profile, "--wait"))
    assert refused == (f"Error: profile '{profile}' is incomplete: a VM creation needs its storage template, "
                       "network template (add them with 'pvc provisioner profile modify')")
    assert _state(cluster) == before

    filled = pvc(cluster, "provisioner", "profile", "modify", profile, "--storage-template", storage,
                 "--network-template", network, "--format", "json")
    assert json.loads(filled.output)["missing"] == [] and json.loads(filled.output)["complete"] is True
    created = pvc(cluster, "provisioner", "create", vm, profile, "--wait", "--format", "json")
    assert created.exit_code == 0, created.output
    view = client.vms.info(vm)
    assert json.loads(created.output)["name"] == vm
    assert (view["vcpus"], view["memory_mib"], view["node_limit"], view["node_selector"], view["node_autostart"],
            view["migration_method"], view["state"]) == (2, 768, ["hv2", "hv3"], "vms", True, "live", "stop")
    assert view["node"] in ("hv2", "hv3")

    domain = _domain(client, vm)
    assert [(disk.get("device"), disk.find("source").get("volume"), disk.find("target").get("dev"))
            for disk in domain.iterfind("devices/disk")] == \
        [("disk", f"{vm}_disk0", "vda"), ("disk", f"{vm}_disk1", "vdb")]
    assert domain.find("devices/disk/source").get("pool") == POOL
    nics = domain.findall("devices/interface")
    assert len(nics) == 1 and nics[0].find("source").get("bridge") == "vmbr1"
    assert nics[0].find("mac").get("address").startswith("02:aa:")
    assert domain.find("devices/serial").get("type") == "pty" and domain.find("devices/graphics") is None
    volumes = {volume["name"]: volume for volume in client.storage.volume_list(POOL)}
    assert (volumes[f"{vm}_disk0"]["size_bytes"], volumes[f"{vm}_disk1"]["size_bytes"]) == (8 * MIB, 16 * MIB)
    assert volumes[f"{vm}_disk0"]["used_by"] == [vm]
    assert _volume_file(cluster, f"{vm}_disk0").read_bytes()[:4 * MIB] == golden
    assert f"{vm}_cidata" not in volumes

    assert pvc(cluster, "provisioner", "template", "storage", "remove", storage).exit_code == 1


def test_user_data_reaches_the_vm_on_a_config_drive_that_isoinfo_reads(cluster, pool, tmp_path):
    client = cluster.client
    system, storage, network, profile, vm = (unique("sys"), unique("disks"), unique("nets"), unique("prof"),
                                             unique("vm"))
    _system(client, system, firmware="efi", vnc=True)
    client.provisioner.template_add("storage", storage, {"disks": [{"pool": POOL, "size": "8M"}]})
    client.provisioner.template_add("network", network, {"nics": [{"bridge": "vmbr0"}]})
    user_data = "#cloud-config\nhostname: provisioned\nruncmd:\n  - [touch, /etc/made-by-pvc]\n"
    (tmp_path / "user-data").write_text(user_data)
    assert pvc(cluster, "provisioner", "profile", "add", profile, "--system-template", system, "--storage-template",
               storage, "--network-template", network, "--user-data", str(tmp_path / "user-data")).exit_code == 0
    assert client.provisioner.profile_info(profile)["user_data"] == user_data

    started = client.provisioner.create(vm, profile, start=True, wait=True)
    assert started["running"] is True and started["state"] == "start"

    domain = _domain(client, vm)
    cdrom = domain.find("devices/disk[@device='cdrom']")
    assert cdrom.get("type") == "volume" and cdrom.find("readonly") is not None
    assert (cdrom.find("source").get("pool"), cdrom.find("source").get("volume")) == (POOL, f"{vm}_cidata")
    assert domain.find("os").get("firmware") == "efi" and domain.find("devices/graphics").get("type") == "vnc"
    assert [volume["used_by"] for volume in client.storage.volume_list(POOL)
            if volume["name"] == f"{vm}_cidata"] == [[vm]]

    image = tmp_path / "cidata.iso"
    shutil.copyfile(_volume_file(cluster, f"{vm}_cidata"), image)
    description = subprocess.run(["isoinfo", "-d", "-i", str(image)], capture_output=True, text=True, check=True)
    assert "Volume id: cidata" in description.stdout.splitlines()
    for extension in ("-J", "-R"):
        listing = subprocess.run(["isoinfo", extension, "-f", "-i", str(image)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert sorted(listing) == ["/meta-data", "/user-data"], (extension, listing)
    read = subprocess.run(["isoinfo", "-J", "-i", str(image), "-x", "/user-data"], capture_output=True,
                          check=True).stdout
    assert read.decode() == user_data
    meta = subprocess.run(["isoinfo", "-R", "-i", str(image), "-x", "/meta-data"], capture_output=True,
                          text=True, check=True).stdout
    assert meta.splitlines() == [f'instance-id: "{vm}"', f'local-hostname: "{vm}"']


def test_an_ova_profile_clones_the_ova_volumes_onto_the_buses_its_descriptor_names(cluster, pool):
    """The OVA record is written as an import leaves it (its volumes and the hardware the descriptor
    declares); the creation clones each volume into VMNAME_diskN and builds the VM from that hardware."""
    client = cluster.client
    ova, system, profile, vm = unique("appliance"), unique("sys"), unique("prof"), unique("vm")
    contents = {}
    for index in range(2):
        volume = f"{ova}_disk{index}"
        client.storage.volume_add(POOL, volume, 2 * MIB)
        contents[index] = random.Random(index).randbytes(2 * MIB)
        _volume_file(cluster, volume).write_bytes(contents[index])
    record = {"name": ova, "pool": POOL, "state": "ready",
              "volumes": [{"pool": POOL, "name": f"{ova}_disk{index}", "size_bytes": 2 * MIB} for index in range(2)],
              "hardware": {"vcpus": 3, "memory_bytes": 1 << 30, "firmware": "efi",
                           "disks": [{"bus": "scsi"}, {"bus": "nvme"}],
                           "nics": [{"model": "vmxnet3"}, {"model": "AM79C973"}]}}
    with cluster_store(cluster.local) as store:
        store.transaction().create(schema.ova(ova), record).commit()
    _system(client, system, vcpus=3, memory_mib=1024)

    added = client.provisioner.profile_add(profile, profile_type="ova", ova=ova)
    assert added["missing"] == ["system template"]
    with pytest.raises(InvalidInput, match="needs its system template"):
        client.provisioner.create(vm, profile)
    client.provisioner.profile_modify(profile, system_template=system)
    view = client.provisioner.create(vm, profile, wait=True)
    assert (view["vcpus"], view["memory_mib"]) == (3, 1024)

    domain = _domain(client, vm)
    assert [(disk.find("source").get("volume"), disk.find("target").get("bus"))
            for disk in domain.iterfind("devices/disk")] == [(f"{vm}_disk0", "scsi"), (f"{vm}_disk1", "sata")]
    assert [nic.find("model").get("type") for nic in domain.iterfind("devices/interface")] == ["vmxnet3", "e1000"]
    assert domain.find("os").get("firmware") == "efi"
    for index in range(2):
        assert _volume_file(cluster, f"{vm}_disk{index}").read_bytes() == contents[index]


def test_bad_requests_are_refused_and_leave_zookeeper_and_storage_as_they_were(cluster, pool):
    client = cluster.client
    system, nowhere, fine, broken, network = (unique("sys"), unique("sys"), unique("disks"), unique("disks"),
                                              unique("nets"))
    _system(client, system)
    _system(client, nowhere, node_limit=["hv9"])
    client.provisioner.template_add("storage", fine, {"disks": [{"pool": POOL, "size": "4M"}]})
    client.provisioner.template_add("storage", broken, {"disks": [{"pool": POOL, "size": "4M"},
                                                                   {"pool": POOL, "source_volume": "missing"}]})
    client.provisioner.template_add("network", network, {"nics": [{"bridge": "vmbr0"}]})
    profile, broken_profile, stray_profile = unique("prof"), unique("prof"), unique("prof")
    client.provisioner.profile_add(profile, system_template=system, storage_template=fine, network_template=network,
                                   user_data="#cloud-config\n")
    client.provisioner.profile_add(broken_profile, system_template=system, storage_template=broken,
                                   network_template=network)
    client.provisioner.profile_add(stray_profile, system_template=nowhere, storage_template=fine,
                                   network_template=network)
    taken = unique("vm")
    client.storage.volume_add(POOL, f"{taken}_cidata", MIB)
    before = _state(cluster)

    refusals = [
        (lambda: client.provisioner.create(unique("vm"), broken_profile), NotFound,
         f"no volume 'missing' in storage pool '{POOL}'"),
        (lambda: client.provisioner.create(taken, profile), AlreadyExists, f"volume '{POOL}/{taken}_cidata' exists"),
        (lambda: client.provisioner.create(unique("vm"), stray_profile), NotFound,
         "limits the VM to node hv9, which does not exist"),
        (lambda: client.provisioner.create(unique("vm"), "nosuchprofile"), NotFound, "no profile named"),
        (lambda: client.provisioner.create("bad/name", profile), InvalidInput, "invalid VM name 'bad/name'"),
        (lambda: client.provisioner.create(unique("vm"), profile, define_only=True, start=True), InvalidInput,
         "cannot be combined with --start"),
        (lambda: client.provisioner.profile_add(unique("prof"), system_template="nosuch"), NotFound,
         "no system template named 'nosuch'"),
        (lambda: client.provisioner.profile_add(unique("prof"), profile_type="ova", storage_template=fine),
         InvalidInput, "an ova profile takes its disks from the OVA"),
        (lambda: client.provisioner.profile_add(unique("prof"), ova="appliance"), InvalidInput,
         "only an ova profile names an OVA"),
        (lambda: client.provisioner.profile_add(unique("prof"), profile_type="ova", ova="appliance"), NotFound,
         "no OVA named 'appliance'"),
        (lambda: client.provisioner.profile_add(unique("prof"), user_data="x" * (300 * 1024)), InvalidInput,
         "larger than 256 KiB"),
        (lambda: client.provisioner.profile_add(profile), AlreadyExists, "exists already"),
        (lambda: client.provisioner.profile_modify(profile, colour="blue"), InvalidInput,
         "unknown profile component(s): colour"),
        (lambda: client.provisioner.template_modify("system", system, {"vcpus": -2}), InvalidInput,
         "vcpus must be a positive whole number"),
        (lambda: client.provisioner.template_add("disks", "x", {}), InvalidInput, "unknown template kind 'disks'"),
    ]
    for attempt, error_class, message in refusals:
        with pytest.raises(error_class) as refused:
            attempt()
        assert message in str(refused.value) and "\n" not in str(refused.value)
        assert _state(cluster) == before, message

    cli_refusal = pvc(cluster, "provisioner", "template", "network", "add", unique("n"), "--nic", "colour=blue")
    assert cli_refusal.exit_code == 2 and "'colour=blue': use bridge=...,network=...,model=...,mac_prefix=..." \
        in cli_refusal.output, cli_refusal.output
    assert _state(cluster) == before


def test_a_creation_that_fails_midway_removes_what_it_made_and_says_why(cluster, pool):
    """The first disk's pool is held locked (as a slow storage change would) until the second disk's source
    volume is gone: the creation has made its first disk when the clone fails, and must take it away again."""
    client = cluster.client
    other = unique("pool")
    client.storage.pool_add(other, {})
    source = unique("src")
    client.storage.volume_add(other, source, MIB)
    system, storage, network, profile, vm = (unique("sys"), unique("disks"), unique("nets"), unique("prof"),
                                             unique("vm"))
    _system(client, system)
    client.provisioner.template_add("storage", storage, {"disks": [{"pool": POOL, "size": "4M"},
                                                                    {"pool": other, "source_volume": source}]})
    client.provisioner.template_add("network", network, {"nics": [{"bridge": "vmbr0"}]})
    client.provisioner.profile_add(profile, system_template=system, storage_template=storage,
                                   network_template=network, user_data="#cloud-config\n")

    with cluster_store(cluster.local) as store:
        lock = store.lock(schema.storage_lock(POOL), "test")
        assert lock.acquire(timeout=10)
        try:
            task = client.provisioner.create(vm, profile)
            assert eventually(lambda: client.provisioner.creation(task["id"])["volumes"] == [f"{POOL}/{vm}_disk0"],
                              10), client.provisioner.creation(task["id"])
            client.storage.volume_remove(other, source)
            before = {name: volume for name, volume in _state(cluster).items() if name != "zookeeper"}
            listed = client.storage.volume_list()
        finally:
            lock.release()

    failed = eventually(lambda: (lambda seen: seen if seen["state"] in ("done", "failed") else None)(
        client.provisioner.creation(task["id"])), 30, 0.1)
    assert failed["state"] == "failed" and failed["volumes"] == [], failed
    assert failed["error"] == f"no volume '{source}' in storage pool '{other}'"
    assert client.storage.volume_list() == listed
    assert {name: volume for name, volume in _state(cluster).items() if name != "zookeeper"} == before
    assert vm not in [each["name"] for each in client.vms.list()]


# -- a leader killed midway -------------------------------------------------------------------------------


@pytest.mark.cluster(nodes=2, coordinators=2)
def test_a_leader_killed_during_a_creation_leaves_the_whole_vm_after_the_next_leader(fresh_cluster, tmp_path):
    """The creation is held at a known point: the test holds the second pool's lock (as a slow storage change
    would), so the leader has made the three disks of the first pool and waits for the fourth when it is killed."""
    client, local = fresh_cluster.client, fresh_cluster.local
    held = "heldpool"
    client.storage.pool_add(POOL, {})
    client.storage.pool_add(held, {})
    golden = tmp_path / "golden.raw"
    golden.write_bytes(random.Random(5).randbytes(48 * MIB))
    client.storage.upload(POOL, "golden", str(golden))
    _system(client, "sys")
    client.provisioner.template_add("storage", "disks", {"disks": [
        *({"pool": POOL, "source_volume": "golden"} for _disk in range(3)),
        *({"pool": held, "size": "4M"} for _disk in range(3))]})
    client.provisioner.template_add("network", "nets", {"nics": [{"bridge": "vmbr0"}]})
    client.provisioner.profile_add("prof", system_template="sys", storage_template="disks", network_template="nets",
                                   user_data="#cloud-config\n")
    leader = client.cluster.status()["leader"]
    cloned = [f"phoenix_disk{index}" for index in range(3)]
    blank = [f"phoenix_disk{index}" for index in range(3, 6)]

    with cluster_store(local) as store:
        lock = store.lock(schema.storage_lock(held), "test")
        assert lock.acquire(timeout=10)
        try:
            task = client.provisioner.create("phoenix", "prof")
            begun = [*(f"{POOL}/{disk}" for disk in cloned), f"{held}/{blank[0]}"]
            killed_at = eventually(lambda: (lambda seen: seen if seen["volumes"] == begun else None)(
                client.provisioner.creation(task["id"])), 30, 0.05)
            assert killed_at and killed_at["state"] == "running", client.provisioner.creation(task["id"])
            assert sorted(volume["name"] for volume in client.storage.volume_list(POOL)) == ["golden", *cloned]
            assert client.storage.volume_list(held) == [], "held at the fourth disk: 3 of 7 volumes made"
            local.stop_daemon("pvcapid", leader, kill=True)
        finally:
            lock.release()

    assert eventually(lambda: client.cluster.status()["leader"] not in (None, leader), 20, 0.2)
    finished = eventually(lambda: (lambda seen: seen if seen["state"] in ("done", "failed") else None)(
        client.provisioner.creation(task["id"])), 60, 0.2)
    assert finished and finished["state"] == "done", (killed_at, finished)
    volumes = {volume["name"]: volume for volume in client.storage.volume_list(POOL)}
    assert set(volumes) == {"golden", "phoenix_cidata", *cloned}
    assert {volume["name"] for volume in client.storage.volume_list(held)} == set(blank)
    for pool, names in ((POOL, volumes), (held, blank)):
        assert sorted(path.name for path in (local.storage_dir / pool).iterdir() if path.is_file()) == sorted(names)
    source = golden.read_bytes()
    for disk in cloned:
        assert volumes[disk]["used_by"] == ["phoenix"]
        assert (local.storage_dir / POOL / disk).read_bytes() == source, disk
    assert [disk.find("source").get("volume") for disk in _domain(client, "phoenix").iterfind("devices/disk")] == \
        [*cloned, *blank, "phoenix_cidata"]
