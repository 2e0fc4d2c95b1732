"""VMs made from an OVA on Ceph get linked clones of its volumes (RBD clones of a protected snapshot, instant and
thin). Removing the OVA is refused naming those VMs; forced, it flattens each clone first (the VM keeps its data,
no longer tied to the OVA) and then removes the OVA whole, never leaving it stuck in ``removing``."""
import json
import subprocess

import pytest

from pvc.errors import Conflict, NotFound
from pvc.ova_client import upload_ova

from ova_support import DiskSpec, appliance_ova, images, same_image
from storage_support import unique

MiB = 1 << 20


def rbd_info(conf: str, image: str) -> dict | None:
    result = subprocess.run(["rbd", "-c", conf, "info", "--format", "json", image], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.mark.parametrize("storage_cluster", ["ceph"], indirect=True)
def test_forced_removal_of_an_ova_flattens_the_clones_of_the_vms_made_from_it(storage_cluster, private_ceph,
                                                                                tmp_path):
    client, conf = storage_cluster.client, private_ceph.conf
    pool = unique("ovaclone")
    client.storage.pool_add(pool)
    (raw, vmdk), = images(tmp_path, 1, 8 * MiB, seed=5)
    upload_ova(client, "base", pool, str(appliance_ova(tmp_path, "base", [DiskSpec(vmdk, 8 * MiB)])))
    client.provisioner.create("cloned", "base", define_only=True, wait=True)
    disk = f"{pool}/cloned_disk0"
    try:
        assert rbd_info(conf, disk)["parent"]["image"] == "ova_base_disk0", "the VM's disk is a linked clone"

        with pytest.raises(Conflict, match="VM\\(s\\) made from it: cloned"):
            client.provisioner.ova_remove("base")
        assert client.provisioner.ova_info("base")["state"] == "ready"

        client.provisioner.ova_remove("base", force=True)

        with pytest.raises(NotFound):
            client.provisioner.ova_info("base")
        assert rbd_info(conf, f"{pool}/ova_base_disk0") is None
        assert "parent" not in rbd_info(conf, disk), "the clone was flattened"
        assert same_image(f"rbd:{disk}:conf={conf}", str(raw))
        assert client.vms.info("cloned")["made_from"] == {"ova": "base"}
    finally:
        client.vms.remove("cloned", wait=True)
        for volume in client.storage.volume_list(pool):
            client.storage.volume_remove(pool, volume["name"])
        client.storage.pool_remove(pool, True)
