"""`pvc node`: the cluster's hypervisors."""
import click

from pvc.cli import output

_COLUMNS = [
    output.column("NAME", "name"),
    output.column("DAEMON", "daemon_state"),
    output.column("DOMAIN", "domain_state"),
    output.column("CPUS", "cpus"),
    output.column("LOAD", "load"),
    output.column("VMS", "vms_running"),
    output.column("VCPUS", "vcpus_allocated"),
    output.column("MEM TOTAL", "memory_total_mib", output.mib),
    output.column("MEM FREE", "memory_free_mib", output.mib),
    output.column("MEM ALLOC", "memory_allocated_mib", output.mib),
    output.column("MEM PROV", "memory_provisioned_mib", output.mib),
]


def _info_table(node: dict) -> str:
    return output.details([
        ("Name", node["name"]),
        ("Daemon state", node["daemon_state"]),
        ("Domain state", node["domain_state"]),
        ("CPUs", output.plain(node["cpus"])),
        ("Load", output.plain(node["load"])),
        ("VMs running", output.plain(node["vms_running"])),
        ("VMs defined", output.plain(node["vms_defined"])),
        ("vCPUs allocated", output.plain(node["vcpus_allocated"])),
        ("Memory total", output.mib(node["memory_total_mib"])),
        ("Memory free", output.mib(node["memory_free_mib"])),
        ("Memory allocated", output.mib(node["memory_allocated_mib"])),
        ("Memory provisioned", output.mib(node["memory_provisioned_mib"])),
        ("Last keepalive", f"{output.plain(node['keepalive_age_s'])} s ago"),
        ("Hypervisor", f"{output.plain(node['hypervisor'])}, libvirt {output.plain(node['libvirt_version'])}"
                       + (" (simulated)" if node["simulated"] else "")),
        ("Agent", output.plain(node["agent_uri"])),
    ])


@click.group("node")
def group() -> None:
    """The cluster's hypervisor nodes."""


@group.command("list")
@output.format_option
@click.pass_obj
def list_nodes(session, output_format: str) -> None:
    """Every node with its states and live figures."""
    output.show(session.client.nodes.list(), output_format, lambda rows: output.table(rows, _COLUMNS))


@group.command("info")
@click.argument("name")
@output.format_option
@click.pass_obj
def info(session, name: str, output_format: str) -> None:
    """One node in detail."""
    output.show(session.client.nodes.info(name), output_format, _info_table)
