"""A migration whose target cannot start the VM leaves it running where it was, with the error in `vm info`."""
import pytest

from pvc.errors import OperationFailed

from vm_support import assert_no_vm_on_two_hosts, vm_xml, wait_running_on


@pytest.mark.cluster(nodes=2)
def test_a_migration_the_target_cannot_carry_out_returns_the_vm_to_its_node(fresh_cluster):
    client = fresh_cluster.client
    client.vms.define(vm_xml("steady"), target="hv1")
    client.vms.start("steady", wait=True)
    wait_running_on(fresh_cluster, "steady", "hv1")

    fresh_cluster.local.host("hv2").power_off()
    with pytest.raises(OperationFailed) as failure:
        client.vms.migrate("steady", target="hv2", wait=True)
    assert "steady" in str(failure.value)

    wait_running_on(fresh_cluster, "steady", "hv1")
    info = client.vms.info("steady")
    assert (info["node"], info["state"]) == ("hv1", "start")
    assert info["last_error"], "the failed migration's reason stays visible in vm info"
    assert_no_vm_on_two_hosts(fresh_cluster)
