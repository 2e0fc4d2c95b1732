"""Placement without a cluster: the host's filter, each built-in selector against a hand calculation, and a
batch that spreads VMs instead of piling them onto one node."""
from collections import Counter

import pytest

from pvc import placement
from pvc.errors import Conflict
from pvc.plugins.selectors import pvc_migration_selectors

SELECTORS = pvc_migration_selectors()


def node(name, total=65536, free=65536, provisioned=0, load=0.0, vcpus=0, vms=0, daemon="run", domain="ready"):
    return {"name": name, "daemon_state": daemon, "domain_state": domain, "memory_total_mib": total,
            "memory_free_mib": free, "memory_allocated_mib": total - free, "memory_provisioned_mib": provisioned,
            "load": load, "vcpus_allocated": vcpus, "vms_running": vms}


VM = {"name": "web1", "memory_mib": 1024, "vcpus": 2, "node_limit": []}

# By hand:                 free     total-provisioned   load   vCPUs   VMs
#   hv1                    40000    65536-30000=35536   4.0    3       5
#   hv2                    30000    65536- 2000=63536   1.5    12      3
#   hv3                    20000   131072-120000=11072  8.0    20      1
#   hv4 (flushed)          99999    99999               0.0    0       0   best at everything, never a candidate
#   hv5 (daemon stopped)   99999    99999               0.0    0       0   likewise
NODES = [
    node("hv1", total=65536, free=40000, provisioned=30000, load=4.0, vcpus=3, vms=5),
    node("hv2", total=65536, free=30000, provisioned=2000, load=1.5, vcpus=12, vms=3),
    node("hv3", total=131072, free=20000, provisioned=120000, load=8.0, vcpus=20, vms=1),
    node("hv4", total=200000, free=99999, provisioned=0, domain="flushed"),
    node("hv5", total=200000, free=99999, provisioned=0, daemon="stop"),
]


@pytest.mark.parametrize("selector, expected", [
    ("mem", "hv1"),        # most free memory: 40000
    ("memprov", "hv2"),    # most left after provisioning: 63536
    ("load", "hv2"),       # lowest load: 1.5
    ("vcpus", "hv1"),      # fewest allocated vCPUs: 3
    ("vms", "hv3"),        # fewest running VMs: 1
])
def test_each_builtin_selector_picks_the_node_a_hand_calculation_picks(selector, expected):
    assert placement.choose(NODES, VM, SELECTORS[selector]) == expected


@pytest.mark.parametrize("selector, expected", [
    ("mem", "hv2"), ("memprov", "hv2"), ("load", "hv2"), ("vcpus", "hv2"), ("vms", "hv3")])
def test_within_a_node_limit_the_selector_ranks_only_the_limit(selector, expected):
    limited = {**VM, "node_limit": ["hv2", "hv3"]}

    assert placement.choose(NODES, limited, SELECTORS[selector]) == expected


def test_the_current_node_is_never_chosen():
    assert placement.choose(NODES, VM, SELECTORS["mem"], current_node="hv1") == "hv2"


def test_ties_break_by_node_name():
    equal = [node("hv-c"), node("hv-a"), node("hv-b")]
    for selector in SELECTORS.values():
        assert placement.choose(equal, VM, selector) == "hv-a"


def test_no_valid_target_names_why_each_node_was_refused():
    limited = {**VM, "node_limit": ["hv4", "hv5"]}

    with pytest.raises(Conflict) as refused:
        placement.choose(NODES, limited, SELECTORS["mem"])

    message = str(refused.value)
    assert "no valid target node for VM 'web1'" in message
    assert "hv4 is flushed" in message and "hv5 is stop" in message
    assert "hv1 is outside the VM's node limit" in message
    assert "\n" not in message


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_a_batch_spreads_vms_over_equal_nodes_instead_of_piling_onto_one(selector):
    batch = placement.Batch([node("hv1"), node("hv2"), node("hv3"), node("hv4")])
    vms = [{"name": f"vm{index}", "memory_mib": 2048, "vcpus": 2, "node_limit": []} for index in range(18)]

    targets = Counter(batch.place(vm, SELECTORS[selector], current_node="hv4") for vm in vms)

    assert targets == {"hv1": 6, "hv2": 6, "hv3": 6}


def test_a_batch_fills_the_emptier_node_first_then_alternates():
    batch = placement.Batch([node("hv1", free=10240), node("hv2", free=4096)])
    vms = [{"name": f"vm{index}", "memory_mib": 2048, "vcpus": 1, "node_limit": []} for index in range(5)]

    targets = [batch.place(vm, SELECTORS["mem"], current_node=None) for vm in vms]

    # free hv1/hv2: 10240/4096 → hv1 8192 → hv1 6144 → hv1 4096 (tie, hv1 wins by name) → hv2 4096 → hv1
    assert targets == ["hv1", "hv1", "hv1", "hv1", "hv2"]
