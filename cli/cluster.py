"""`pvc cluster`: status and maintenance mode."""
import click

from pvc.cli import output



def _status_table(status: dict) -> str:
    states = ", ".join(f"{count} {state}" for state, count in sorted(status["nodes_by_daemon_state"].items()))
    banner = click.style("MAINTENANCE MODE: fencing is off", fg="yellow", bold=True) + "\n" \
        if status["maintenance"] else ""
    return banner + output.details([
        ("Maintenance", "on" if status["maintenance"] else "off"),
        ("Leader", output.plain(status["leader"])),
        ("Coordinators", output.plain([c["name"] for c in status["coordinators"]])),
        ("Nodes", f"{status['nodes_total']} ({states or 'none'}), {status['nodes_ready']} ready"),
    ])


@click.group("cluster")
def group() -> None:
    """The cluster as a whole."""


@group.command("status")
@output.format_option
@click.pass_obj
def status(session, output_format: str) -> None:
    """Leader, coordinators, node counts, and whether maintenance mode is on."""
    output.show(session.client.cluster.status(), output_format, _status_table)


@group.command("maintenance")
@click.argument("mode", type=click.Choice(["on", "off"]))
@output.format_option
@click.pass_obj
def maintenance(session, mode: str, output_format: str) -> None:
    """Turn maintenance mode on or off (while on, dead nodes are not fenced)."""
    output.show(session.client.cluster.maintenance(mode == "on"), output_format, _status_table)


@group.command("config")
@click.option("--default-selector", help="migration selector for VMs that name none")
@click.option("--migration-method", type=click.Choice(["live", "shutdown", "auto"]),
              help="how VMs migrate unless they say otherwise")
@click.option("--allow-host-devices/--no-allow-host-devices", default=None,
              help="whether VM definitions may pass host devices (<hostdev>) and disks naming host paths")
@click.option("--fence-chain", metavar="POLICY[,POLICY...]",
              help="fencing policies tried in order on a dead node until one confirms it is off (e.g. ipmi)")
@output.format_option
@click.pass_obj
def cluster_config(session, default_selector, migration_method, allow_host_devices, fence_chain,
                   output_format) -> None:
    """Show the cluster configuration, or change the keys given."""
    chain = [name.strip() for name in fence_chain.split(",") if name.strip()] if fence_chain is not None else None
    changes = {key: value for key, value in {"default_selector": default_selector,
                                             "migration_method": migration_method,
                                             "allow_host_devices": allow_host_devices,
                                             "fence_chain": chain}.items()
               if value is not None}
    settings = session.client.cluster.config(**changes)
    output.show(settings, output_format,
                lambda value: output.details([(key, output.plain(item)) for key, item in sorted(value.items())]))
