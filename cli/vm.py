"""`pvc vm`: define, change, run and move virtual machines."""
import click

from pvc.cli import output

_COLUMNS = [
    output.column("NAME", "name"),
    output.column("STATE", "state"),
    output.column("NODE", "node"),
    output.column("RUNNING", "running", lambda running: "unknown" if running is None else output.plain(running)),
    output.column("LAST NODE", "last_node"),
    output.column("VCPUS", "vcpus"),
    output.column("MEMORY", "memory_mib", output.mib),
    output.column("LIMIT", "node_limit"),
    output.column("SELECTOR", "node_selector"),
    output.column("AUTOSTART", "node_autostart"),
    output.column("ERROR", "last_error"),
]


def _info_table(vm: dict) -> str:
    disks = [f"{disk['target']}={disk['source']}" for disk in vm["disks"]]
    nics = [f"{nic['mac']}@{nic['source']}" for nic in vm["nics"]]
    return output.details([
        ("Name", vm["name"]),
        ("UUID", vm["uuid"]),
        ("State", vm["state"] + _running_note(vm)),
        ("Node", output.plain(vm["node"])),
        ("Last node", output.plain(vm["last_node"])),
        ("vCPUs", output.plain(vm["vcpus"])),
        ("Memory", output.mib(vm["memory_mib"])),
        ("Node limit", output.plain(vm["node_limit"])),
        ("Node selector", output.plain(vm["node_selector"]) + ("" if vm["node_selector"] else " (cluster default)")),
        ("Node autostart", output.plain(vm["node_autostart"])),
        ("Migration method", output.plain(vm["migration_method"])),
        ("Max downtime", f"{vm['max_downtime_ms']} ms" if vm["max_downtime_ms"] else "-"),
        ("Disks", output.plain(disks)),
        ("NICs", output.plain(nics)),
        ("Last error", output.plain(vm["last_error"])),
        ("Migration note", output.plain(vm["migration_note"])),
    ])


def _running_note(vm: dict) -> str:
    if vm["running"] is None:
        return f" (unknown: {vm['unknown']})"
    return " (starting)" if vm["state"] == "start" and not vm["running"] else ""


def _node_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _meta_options(function):
    options = [
        click.option("--node-limit", help="comma-separated nodes the VM may run on ('' clears the limit)"),
        click.option("--node-selector", help="migration selector choosing the VM's node (mem, memprov, load, "
                                             "vcpus, vms, or a plugin's)"),
        click.option("--node-autostart/--no-node-autostart", default=None,
                     help="start the VM again when its node returns after a flush shut it down"),
        click.option("--migration-method", type=click.Choice(["live", "shutdown", "auto"]),
                     help="how the VM migrates (default: the cluster's)"),
        click.option("--max-downtime", type=click.IntRange(min=1), help="live migration downtime limit, ms"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _wait_option(function):
    return click.option("--wait", is_flag=True, help="return when the VM has reached the outcome")(function)


def _show_vm(vm: dict, output_format: str) -> None:
    output.show(vm, output_format, _info_table)


@click.group("vm")
def group() -> None:
    """Virtual machines."""


@group.command("define")
@click.argument("xml_file", type=click.File("r"))
@click.option("--target", help="node to define the VM on (default: its selector's choice)")
@_meta_options
@output.format_option
@click.pass_obj
def define(session, xml_file, target, node_limit, node_selector, node_autostart, migration_method, max_downtime,
           output_format) -> None:
    """Define a VM from a libvirt domain XML file."""
    vm = session.client.vms.define(xml_file.read(), target=target, node_limit=_node_list(node_limit),
                                   node_selector=node_selector, node_autostart=bool(node_autostart),
                                   migration_method=migration_method, max_downtime=max_downtime)
    _show_vm(vm, output_format)


@group.command("meta")
@click.argument("vm")
@_meta_options
@output.format_option
@click.pass_obj
def meta(session, vm, node_limit, node_selector, node_autostart, migration_method, max_downtime,
         output_format) -> None:
    """Change the VM's metadata; only the options given change."""
    changes = {key: value for key, value in {
        "node_limit": _node_list(node_limit), "node_selector": node_selector, "node_autostart": node_autostart,
        "migration_method": migration_method, "max_downtime": max_downtime}.items() if value is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    _show_vm(session.client.vms.set_meta(vm, **changes), output_format)


def _state_command(name: str, help_text: str, destructive: bool = False):
    @group.command(name, help=help_text)
    @click.argument("vm")
    @_wait_option
    @output.format_option
    @click.pass_obj
    def command(session, vm, wait, output_format) -> None:
        _show_vm(getattr(session.client.vms, name)(vm, wait=wait), output_format)
    if destructive:
        command = click.confirmation_option(prompt=f"Really {name} the VM?")(command)
    return command


_state_command("start", "Start the VM.")
_state_command("restart", "Restart the VM (shut down, then start).")
_state_command("shutdown", "Shut the VM down gracefully (destroyed after the node's shutdown timeout).")
_state_command("stop", "Stop the VM at once (power off).", destructive=True)
_state_command("disable", "Stop the VM and keep it stopped through flushes and recoveries.")


@group.command("remove")
@click.argument("vm")
@click.option("--wait", is_flag=True, help="return when its node has undefined it and its record is gone")
@click.option("--force", is_flag=True,
              help="forget the record now, without its node's confirmation (the node undefines the domain "
                   "when it next converges)")
@click.confirmation_option("--yes", "-y", prompt="Really remove the VM? It is stopped and undefined")
@click.pass_obj
def remove(session, vm, wait, force) -> None:
    """Stop the VM, undefine it, and remove it from the cluster. The removal is recorded first; the record
    goes once its node has undefined it (a node that is down does so when it is back)."""
    result = session.client.vms.remove(vm, wait=wait, force=force)
    if result.get("removed"):
        click.echo(f"removed VM {vm}")
    else:
        click.echo(f"removal of VM {vm} recorded; it is forgotten once node {result.get('waiting_for')} "
                   "has undefined it")


@group.command("list")
@click.option("--node", help="only VMs on this node")
@click.option("--state", help="only VMs in this state")
@output.format_option
@click.pass_obj
def list_vms(session, node, state, output_format) -> None:
    """Every VM with its state, node and metadata."""
    output.show(session.client.vms.list(node=node, state=state), output_format,
                lambda rows: output.table(rows, _COLUMNS))


@group.command("info")
@click.argument("vm")
@output.format_option
@click.pass_obj
def info(session, vm, output_format) -> None:
    """One VM in detail."""
    _show_vm(session.client.vms.info(vm), output_format)


@group.command("dump")
@click.argument("vm")
@click.pass_obj
def dump(session, vm) -> None:
    """Print the VM's domain XML."""
    click.echo(session.client.vms.dump(vm))


@group.command("log")
@click.argument("vm")
@click.option("--lines", "-l", default=50, show_default=True, type=click.IntRange(1, 10000),
              help="how many of the last lines to show")
@click.pass_obj
def console_log(session, vm, lines) -> None:
    """Show the end of the VM's serial console log, read on the node it runs on."""
    for line in session.client.vms.log(vm, lines):
        click.echo(line)


@group.command("modify")
@click.argument("vm")
@click.argument("xml_file", type=click.File("r"))
@click.option("--restart", is_flag=True, help="restart the VM so the change applies now")
@output.format_option
@click.pass_obj
def modify(session, vm, xml_file, restart, output_format) -> None:
    """Replace the VM's domain XML."""
    _show_vm(session.client.vms.modify(vm, xml_file.read(), restart=restart), output_format)


@group.command("rename")
@click.argument("vm")
@click.argument("new_name")
@output.format_option
@click.pass_obj
def rename(session, vm, new_name, output_format) -> None:
    """Rename a stopped VM."""
    _show_vm(session.client.vms.rename(vm, new_name), output_format)


def _move_command(name: str, help_text: str):
    @group.command(name, help=help_text)
    @click.argument("vm")
    @click.option("--target", help="destination node (default: the VM's selector's choice)")
    @click.option("--force", is_flag=True, help="allow a target outside the VM's node limit")
    @_wait_option
    @output.format_option
    @click.pass_obj
    def command(session, vm, target, force, wait, output_format) -> None:
        _show_vm(getattr(session.client.vms, name)(vm, target=target, force=force, wait=wait), output_format)
    return command


_move_command("migrate", "Move the VM to another node, remembering where it was (see unmigrate).")
_move_command("move", "Move the VM to another node for good.")


@group.command("unmigrate")
@click.argument("vm")
@_wait_option
@output.format_option
@click.pass_obj
def unmigrate(session, vm, wait, output_format) -> None:
    """Return a migrated VM to the node it came from."""
    _show_vm(session.client.vms.unmigrate(vm, wait=wait), output_format)
