"""Resource checks as upstream has them, on a real two-node cluster of test-driver hosts: a VM bigger than the
largest node it may run on is refused with the figures (define, modify, per-part edits), nothing recorded; a
node whose memory (times the cluster's overcommit ratio) cannot hold one more VM is never picked: a start or
migration there is refused saying why, and a flush that cannot place a VM by memory shuts it down and says
why."""
import pytest

from pvc.errors import Conflict, InvalidInput

from conftest import started_cluster
from vm_support import pvc, vm_xml, wait_for_task, wait_running_on

GiB_MIB = 1024


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    yield from started_cluster(tmp_path_factory.mktemp("resources"), nodes=2, coordinators=1)


def node_figures(cluster) -> dict[str, tuple[int, int]]:
    return {node["name"]: (node["cpus"], node["memory_total_mib"]) for node in cluster.client.nodes.list()}


def test_a_vm_bigger_than_any_node_it_may_run_on_is_refused_with_the_figures(small_cluster):
    client = small_cluster.client
    figures = node_figures(small_cluster)
    cpus, memory = figures["hv1"]
    before = client.vms.list()

    with pytest.raises(InvalidInput, match=f"has 100000 vCPUs, more than the {cpus} CPUs of the largest node "
                                           "in its cluster"):
        client.vms.define(vm_xml("huge", vcpus=100000))
    with pytest.raises(InvalidInput, match=f"has {4 << 20} MiB of memory, more than the {memory} MiB of the largest "
                                           "node in its node limit hv2 \\(hv2\\)"):
        client.vms.define(vm_xml("huge", memory_mib=4 << 20), node_limit=["hv2"])
    assert client.vms.list() == before

    client.vms.define(vm_xml("grower"))
    try:
        refused = pvc(small_cluster, "vm", "vcpu", "set", "grower", str(cpus + 1))
        assert refused.exit_code == 1 and f"has {cpus + 1} vCPUs, more than the {cpus} CPUs" in refused.stderr
        with pytest.raises(InvalidInput, match=f"more than the {memory} MiB"):
            client.vms.modify("grower", vm_xml("grower", memory_mib=memory + 1, uuid=client.vms.info("grower")["uuid"]))
        assert (client.vms.info("grower")["vcpus"], client.vms.info("grower")["memory_mib"]) == (1, 512)
    finally:
        client.vms.remove("grower", wait=True)

    template = pvc(small_cluster, "provisioner", "template", "system", "add", "toobig", "--vcpus", str(cpus + 1),
                   "--memory", "1G")
    assert template.exit_code == 1
    assert f"the system template has {cpus + 1} vCPUs, more than the {cpus} CPUs of the largest node" in \
        template.stderr
    assert "toobig" not in {row["name"] for row in client.provisioner.template_list("system")}


def test_memory_placement_refuses_starts_and_moves_and_a_flush_stops_what_fits_nowhere(small_cluster):
    client = small_cluster.client
    memory = min(each for _cpus, each in node_figures(small_cluster).values())
    big = memory * 6 // 10
    client.vms.define(vm_xml("big1", memory_mib=big), target="hv1")
    client.vms.define(vm_xml("big2", memory_mib=big), target="hv2")
    client.vms.define(vm_xml("late", memory_mib=big), target="hv2")
    try:
        client.vms.start("big1", wait=True)
        client.vms.start("big2", wait=True)
        wait_running_on(small_cluster, "big1", "hv1")

        refused = pvc(small_cluster, "vm", "start", "late")
        assert refused.exit_code == 1
        assert f"VM 'late' cannot start: node hv2 has {memory - big} MiB of memory left for VMs" in refused.stderr
        assert f"less than the VM's {big} MiB" in refused.stderr
        with pytest.raises(Conflict, match=f"node hv2 has {memory - big} MiB of memory left"):
            client.vms.migrate("big1", "hv2")

        task = wait_for_task(client, client.nodes.flush("hv1"))
        assert (task["moved"], task["shut_down"]) == ([], ["big1"])
        assert f"hv2 has {memory - big} MiB of memory left for VMs" in task["shut_down_reasons"]["big1"]
        assert client.vms.info("big1")["state"] == "shutdown"

        client.cluster.config(memory_overcommit=2.0)
        wait_for_task(client, client.nodes.ready("hv1"))
        client.vms.start("late", wait=True)
        wait_running_on(small_cluster, "late", "hv2")
    finally:
        client.cluster.config(memory_overcommit=1.0)
        for vm in ("big1", "big2", "late"):
            client.vms.remove(vm, wait=True)
        if client.nodes.info("hv1")["domain_state"] != "ready":
            wait_for_task(client, client.nodes.ready("hv1"))


def test_ready_leaves_a_vm_where_it_is_when_its_node_has_no_room_for_it(small_cluster):
    client = small_cluster.client
    memory = min(each for _cpus, each in node_figures(small_cluster).values())
    client.vms.define(vm_xml("homing", memory_mib=memory * 3 // 10), target="hv1")
    try:
        client.vms.start("homing", wait=True)
        flushed = wait_for_task(client, client.nodes.flush("hv1"))
        assert flushed["moved"] == ["homing"]
        wait_running_on(small_cluster, "homing", "hv2")

        client.cluster.config(memory_overcommit=0.2)
        readied = pvc(small_cluster, "node", "ready", "hv1", "--wait")

        assert f"homing: node hv1 has {int(memory * 0.2)} MiB of memory left for VMs" in readied.stdout, \
            readied.output
        assert client.vms.info("homing")["node"] == "hv2"
        wait_running_on(small_cluster, "homing", "hv2")
    finally:
        client.cluster.config(memory_overcommit=1.0)
        client.vms.remove("homing", wait=True)
        if client.nodes.info("hv1")["domain_state"] != "ready":
            wait_for_task(client, client.nodes.ready("hv1"))
