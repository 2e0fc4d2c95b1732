"""What the VM tests share: domain XML, the CLI, and where VMs really run (each host's own libvirtd)."""
from __future__ import annotations

import time
import uuid as uuidlib
from collections import defaultdict

from click.testing import CliRunner, Result

from pvc.cli.localcluster.cluster import KEEPALIVE_INTERVAL
from pvc.cli.main import cli

from helpers import eventually


def vm_xml(name: str, memory_mib: int = 512, vcpus: int = 1, uuid: str | None = None) -> str:
    uuid_element = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<domain type='test'><name>{name}</name>{uuid_element}<memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>")


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def pvc(cluster, *args: str, input: str | None = None) -> Result:
    """Run `pvc ARGS` in-process, configured as a user would be (PVC_CONFIG)."""
    return CliRunner().invoke(cli, list(args), input=input,
                              env={"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None,
                                   "PVC_API_KEY": None})


def running_hosts(cluster) -> dict[str, list[str]]:
    """VM name → the hosts whose libvirtd runs it, read from every host."""
    where = defaultdict(list)
    for node in cluster.local.node_names:
        if not cluster.local.host(node).running:
            continue
        for name, running in cluster.host_domains(node).items():
            if running:
                where[name].append(node)
    return dict(where)


def assert_no_vm_on_two_hosts(cluster) -> dict[str, list[str]]:
    where = running_hosts(cluster)
    doubled = {name: nodes for name, nodes in where.items() if len(nodes) > 1}
    assert not doubled, f"VMs running on more than one host: {doubled}"
    return where


def wait_running_on(cluster, vm: str, node: str | None, timeout: float = 15.0) -> None:
    """Until `vm` runs on `node` alone (None: nowhere), checking at every step that no VM runs twice."""
    def settled():
        return assert_no_vm_on_two_hosts(cluster).get(vm, []) == ([node] if node else [])
    assert eventually(settled, timeout, interval=0.1), \
        f"{vm} should run on {node or 'no host'}; it runs on {running_hosts(cluster).get(vm, [])}"


def wait_host_has(cluster, node: str, domains: dict[str, bool], timeout: float = 10.0) -> None:
    """Until `node`'s libvirtd holds exactly `domains` (name → running)."""
    assert eventually(lambda: cluster.host_domains(node) == domains, timeout, interval=0.1), \
        f"{node} holds {cluster.host_domains(node)}, not {domains}"


def wait_gone(cluster, vm: str, timeout: float = 10.0) -> None:
    """Until no host holds `vm` at all."""
    assert eventually(lambda: all(vm not in cluster.host_domains(node) for node in cluster.local.node_names),
                      timeout, interval=0.1), {node: cluster.host_domains(node) for node in cluster.local.node_names}


def every_node_ready(cluster) -> None:
    """Return each node a test left flushed or flushing to service (`node ready`, waited for)."""
    for node in cluster.local.node_names:
        if cluster.client.nodes.info(node)["domain_state"] != "ready":
            wait_for_task(cluster.client, cluster.client.nodes.ready(node))


def wait_for_task(client, task: dict, timeout: float = 60.0) -> dict:
    """Until the task has finished, done or failed."""
    deadline = time.monotonic() + timeout
    while task["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"task not finished after {timeout} s: {task}"
        time.sleep(0.2)
        task = client.nodes.task(task["id"])
    return task


def remove_all_vms(cluster) -> None:
    client = cluster.client
    for vm in client.vms.list():
        client.vms.remove(vm["name"])
    assert eventually(lambda: not any(cluster.host_domains(node) for node in cluster.local.node_names), 15), \
        {node: cluster.host_domains(node) for node in cluster.local.node_names}


def return_to_service(cluster, node: str, start_daemon=None) -> None:
    """Bring back a node the leader marked dead, the only way the fencing rules allow: its host is powered off
    (as a fence would), an administrator confirms it, the host boots (empty) with its pvcnoded, and `node
    ready` returns it to service. `start_daemon(node)` starts its pvcnoded (default: the local cluster's)."""
    local, client = cluster.local, cluster.client
    local.stop_daemon("pvcnoded", node, kill=True)
    host = local.host(node)
    host.power_off()
    if client.nodes.info(node)["daemon_state"] == "dead":
        client.nodes.fence_confirm(node, force=True)  # its keepalives may have resumed; it is off now
    assert eventually(lambda: (client.nodes.info(node)["recovery"] or {}).get("state") in ("done", "failed"), 60)
    host.start()
    (start_daemon or local.start_node_daemon)(node)
    wait_runs_again(client, node)
    wait_for_task(client, client.nodes.ready(node))
    assert eventually(lambda: client.nodes.info(node)["daemon_state"] == "run", 10), client.nodes.info(node)


def wait_runs_again(client, node: str, timeout: float = 30) -> dict:
    """Until a fenced node's daemon runs again (it stays ``fenced``, starting nothing, until `node ready`)."""
    info = eventually(lambda: (lambda found: found if found["daemon_state"] == "fenced" and found["daemon_note"]
                               else None)(client.nodes.info(node)), timeout, 0.2)
    assert info, client.nodes.info(node)
    return info


RESTART_FENCE_INTERVALS = 30
"""The fence deadline, in keepalive intervals, of a node whose pvcnoded a test kills and starts again: a restart
waits for the old ZooKeeper session to end and converges every VM before its first keepalive, which under load
takes longer than the local cluster's 4 s, and a fenced host is powered off for every later test of the module."""


def fence_deadline_beyond_restarts(cluster) -> None:
    """Give every node of a cluster a test module shares a fence deadline no restart of its pvcnoded reaches (a
    per-node `fence_intervals` override; the leader reads it at once, the self-fence rule still holds)."""
    for node in cluster.local.node_names:
        cluster.client.cluster.config(node=node, fence_intervals=RESTART_FENCE_INTERVALS)


def restart_node_daemon(cluster, node: str, timeout: float = 30.0, **options) -> None:
    """Start the stopped pvcnoded of `node` and return once it runs: its record names the new daemon's agent, its
    state is ``run`` and its keepalive is current. A test that went on before that would race its start."""
    old_agent = cluster.client.nodes.info(node)["agent_uri"]
    cluster.local.start_node_daemon(node, **options)

    def running():
        info = cluster.client.nodes.info(node)
        age = info["keepalive_age_s"]
        return (info["agent_uri"] != old_agent and info["daemon_state"] == "run" and age is not None
                and age < 2 * KEEPALIVE_INTERVAL)
    assert eventually(running, timeout, interval=0.1), f"pvcnoded of {node} does not run: {cluster.client.nodes.info(node)}"


def every_daemon_running_and_no_vms_left(cluster) -> None:
    """After a test that stops node daemons: start them again, wait until ready, and remove every VM."""
    for node in cluster.local.node_names:
        if cluster.local.daemon_pid("pvcnoded", node) is None:
            restart_node_daemon(cluster, node)
    cluster.local.wait_ready(30)
    remove_all_vms(cluster)
