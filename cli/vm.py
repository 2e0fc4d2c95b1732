"""`pvc vm`: define, change, run and move virtual machines."""
import time

import click

from pvc.cli import (output, upstream, vm_autobackup, vm_automirror, vm_editor, vm_mirror, vm_parts, vm_snapshots,
                     vm_tags)
from pvc.cli.confirm import confirm, confirm_option
from pvc.cli.text_file import TextFile
from pvc.domain_xml import MAX_XML_BYTES

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
    output.column("TAGS", "tags"),
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
        ("Profile", vm.get("profile") or "-"),
        ("Made from", f"OVA {vm['made_from']['ova']}" if (vm.get("made_from") or {}).get("ova") else "-"),
        ("Disks", output.plain(disks)),
        ("NICs", output.plain(nics)),
        ("Last error", output.plain(vm["last_error"])),
        ("Migration note", output.plain(vm["migration_note"])),
        ("Tags", output.plain([tag + (" (protected)" if tag in vm["protected_tags"] else "")
                               for tag in vm["tags"]])),
    ])


def _running_note(vm: dict) -> str:
    if vm["running"] is None:
        return f" (unknown: {vm['unknown']})"
    return " (starting)" if vm["state"] == "start" and not vm["running"] else ""


def _node_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _upstream_none(_context: click.Context, _parameter: click.Parameter, value: str | None) -> str | None:
    """Upstream's `none` for a selector is the cluster's default (no selector of the VM's own), and for a
    migration method our `auto`."""
    if value != "none":
        return value
    return "auto" if _parameter.name == "migration_method" else ""


def _meta_options(function):
    options = [
        upstream.option("-l", "--limit", "--node-limit", "node_limit", upstream=("-l", "--limit"),
                     help="comma-separated nodes the VM may run on ('' clears the limit)"),
        upstream.option("-s", "--node-selector", callback=_upstream_none, upstream=("-s", "--node-selector"),
                     help="migration selector choosing the VM's node (mem, memprov, load, vcpus, vms, or a "
                          "plugin's; none: the cluster's default)"),
        upstream.option("-a/-A", "--autostart/--no-autostart", "--node-autostart/--no-node-autostart",
                        "node_autostart", default=None, upstream=("-a", "-A", "--autostart", "--no-autostart"),
                     help="start the VM again when its node returns after a flush shut it down"),
        upstream.option("-m", "--method", "--migration-method", "migration_method", callback=_upstream_none,
                        upstream=("-m", "--method"),
                     type=click.Choice(["live", "shutdown", "auto", "none"]),
                     help="how the VM migrates (default: the cluster's; none, upstream's name, is auto)"),
        upstream.option("-d", "--max-downtime", type=click.IntRange(min=1), upstream=("-d", "--max-downtime"),
                        help="live migration downtime limit, ms"),
        click.option("--profile", help="the provisioner profile the VM belongs to ('' clears it)"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _wait_option(function):
    return click.option("-w", "--wait", is_flag=True, help="return when the VM has reached the outcome")(function)


def _show_vm(vm: dict, output_format: str) -> None:
    output.show(vm, output_format, _info_table)


@click.group("vm")
def group() -> None:
    """Virtual machines."""


@group.command("define")
@click.argument("xml_file", type=TextFile("the domain XML file", MAX_XML_BYTES))
@click.option("-t", "--target", help="node to define the VM on (default: its selector's choice)")
@_meta_options
@click.option("-g", "--tag", "tags", multiple=True, help="a user tag for the VM (repeatable)")
@click.option("-G", "--protected-tag", "protected_tags", multiple=True,
              help=f"a user tag, {vm_tags.PROTECTED_HELP} (repeatable)")
@output.format_option
@click.pass_obj
def define(session, xml_file, target, node_limit, node_selector, node_autostart, migration_method, max_downtime,
           profile, tags, protected_tags, output_format) -> None:
    """Define a VM from a libvirt domain XML file."""
    vm = session.client.vms.define(xml_file, target=target, node_limit=_node_list(node_limit),
                                   node_selector=node_selector, node_autostart=bool(node_autostart),
                                   migration_method=migration_method, max_downtime=max_downtime,
                                   tags=list(tags), protected_tags=list(protected_tags), profile=profile or None)
    _show_vm(vm, output_format)


@group.command("meta")
@click.argument("vm")
@_meta_options
@output.format_option
@click.pass_obj
def meta(session, vm, node_limit, node_selector, node_autostart, migration_method, max_downtime, profile,
         output_format) -> None:
    """Change the VM's metadata; only the options given change."""
    changes = {key: value for key, value in {
        "node_limit": _node_list(node_limit), "node_selector": node_selector, "node_autostart": node_autostart,
        "migration_method": migration_method, "max_downtime": max_downtime, "profile": profile}.items()
        if value is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    _show_vm(session.client.vms.set_meta(vm, **changes), output_format)


def _state_command(name: str, help_text: str, question: str | None = None):
    """A state change; `question`, asked first, for one that interrupts a running VM."""
    def change(session, vm, wait, output_format) -> None:
        _show_vm(getattr(session.client.vms, name)(vm, wait=wait), output_format)
    if question:
        change = confirm_option(question)(change)
    return group.command(name, help=help_text)(click.argument("vm")(_wait_option(output.format_option(
        click.pass_obj(change)))))


_state_command("start", "Start the VM.")
_state_command("restart", "Restart the VM (shut down, then start).", "Restart VM {vm}")
_state_command("shutdown", "Shut the VM down gracefully (destroyed after the node's shutdown timeout).",
               "Shut down VM {vm}")
_state_command("stop", "Stop the VM at once (power off).", "Forcibly stop VM {vm}")
_state_command("disable", "Stop the VM and keep it stopped through flushes and recoveries.",
               "Shut down and disable VM {vm}")


def _removal_options(function):
    options = [
        click.argument("vm"),
        click.option("--wait", is_flag=True, help="return when its node has undefined it and its record is gone"),
        click.option("--force", is_flag=True,
                     help="forget the record now, without its node's confirmation (the node undefines the domain "
                          "when it next converges)"),
        click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation"),
        click.pass_obj,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _forget(session, vm: str, wait: bool, force: bool) -> bool:
    """Record the VM's removal; whether its record is gone already."""
    result = session.client.vms.remove(vm, wait=wait, force=force)
    if result.get("removed"):
        click.echo(f"removed VM {vm}")
    else:
        click.echo(f"removal of VM {vm} recorded; it is forgotten once node {result.get('waiting_for')} "
                   "has undefined it")
    return bool(result.get("removed"))


@group.command("undefine")
@_removal_options
def undefine(session, vm, wait, force, yes) -> None:
    """Stop the VM, undefine it, and remove it from the cluster, keeping its volumes (see remove). The
    removal is recorded first; the record goes once its node has undefined it (a node that is down does so
    when it is back)."""
    confirm(f"Undefine VM {vm} (it is stopped and forgotten; its volumes are kept)", yes)
    _forget(session, vm, wait, force)


@group.command("remove")
@_removal_options
def remove(session, vm, wait, force, yes) -> None:
    """Stop the VM, undefine it, remove it from the cluster, and remove the PVC volumes its disks use (undefine
    keeps them). The volumes go with its record, once its node has undefined it (a node that is down does so
    when it is back); a volume another VM also uses is kept, and said so."""
    volumes = session.client.vms.info(vm)["volumes"]
    confirm(f"Remove VM {vm} (it is stopped and forgotten) and its volumes ({', '.join(volumes) or 'none'})",
            yes)
    result = session.client.vms.remove(vm, wait=wait, force=force, volumes=True)
    if not result.get("removed"):
        click.echo(f"removal of VM {vm} recorded; it is forgotten once node {result.get('waiting_for')} "
                   "has undefined it, and its volumes are removed then")
        return
    click.echo(f"removed VM {vm}")
    for volume in result["volumes_removed"]:
        click.echo(f"removed volume {volume}")
    if result["volumes_kept"]:
        kept = "; ".join(f"{each['volume']} ({each['why']})" for each in result["volumes_kept"])
        raise click.ClickException(f"VM {vm} is removed, but these volumes are kept: {kept}")


@group.command("list")
@click.argument("limit", metavar="[REGEX]", required=False)
@click.option("-t", "--target", "--node", "node", help="only VMs on this node")
@click.option("-s", "--state", help="only VMs in this state")
@click.option("-g", "--tag", help="only VMs with this tag")
@click.option("-n", "--negate", is_flag=True, help="the VMs NOT on that node, in that state or with that tag")
@output.list_format_option
@click.pass_obj
def list_vms(session, limit, node, state, tag, negate, output_format) -> None:
    """Every VM with its state, node and metadata; with REGEX, those whose name it matches (anywhere in the
    name, as upstream's LIMIT)."""
    rows = session.client.vms.list(node=node, state=state, tag=tag)
    if negate and (node, state, tag) != (None, None, None):
        excluded = {row["name"] for row in rows}
        rows = [row for row in session.client.vms.list() if row["name"] not in excluded]
    output.show(output.matching(rows, limit), output_format, lambda shown: output.table(shown, _COLUMNS))



@group.command("info")
@click.argument("vm")
@output.info_format_option
@click.pass_obj
def info(session, vm, output_format) -> None:
    """One VM in detail; --format long adds the node's view (its last report in full, the console log)."""
    if output_format == output.LONG:
        click.echo(_long_table(session.client.vms.info_long(vm)))
        return
    _show_vm(session.client.vms.info(vm), output_format)


def _long_table(vm: dict) -> str:
    report, log = vm["node_report"], vm["console_log"]
    log_text = (f"{log['path']} on {vm['node']} ({log['size_bytes']} bytes)" if log.get("size_bytes") is not None
                else f"{log['path']} on {vm['node']} (not written yet)" if log.get("path")
                else f"unknown: {log.get('unavailable')}")
    return _info_table(vm) + "\n" + output.details([
        ("Node report", f"from {report.get('node') or '-'}: "
                        + ("running" if report.get("running") else "unknown" if report.get("unknown") else
                           "not running")
                        + (f", at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report['time']))}"
                           if report.get("time") else "")),
        ("Node error", output.plain(report.get("error"))),
        ("Migration error", output.plain(vm["placement"].get("migration_error"))),
        ("Unknown because", output.plain(report.get("unknown"))),
        ("Console log", log_text),
        ("Volumes", output.plain([f"{volume.get('pool')}/{volume.get('name')}" if isinstance(volume, dict)
                                  else volume for volume in vm.get("volumes") or []])),
    ])


@group.command("dump")
@click.argument("vm")
@click.option("-f", "--file", "xml_file", type=click.File("w", atomic=True), help="write the XML to this file")
@click.pass_obj
def dump(session, vm, xml_file) -> None:
    """Print the VM's domain XML (or write it to a file)."""
    click.echo(session.client.vms.dump(vm), file=xml_file)


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
@click.argument("xml_file", type=TextFile("the domain XML file", MAX_XML_BYTES), required=False)
@click.option("-r", "--restart", is_flag=True, help="restart the VM so the change applies now")
@click.option("-e", "--editor", is_flag=True,
              help="edit the VM's XML in $EDITOR instead; the change is shown as a diff and applied once confirmed")
@upstream.option("-d", "--confirm-diff", is_flag=True, upstream=("-d", "--confirm-diff"),
                 help="do not ask before replacing the XML (with --editor: apply the diff)")
@upstream.option("-c", "--confirm-restart", is_flag=True, upstream=("-c", "--confirm-restart"),
                 help="do not ask before restarting (with -r)")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation at all (-d and -c)")
@output.format_option
@click.pass_obj
def modify(session, vm, xml_file, restart, editor, confirm_diff, confirm_restart, yes, output_format) -> None:
    """Replace the VM's domain XML with XML_FILE, or edit it in $EDITOR (--editor)."""
    if (xml_file is None) == (not editor):
        raise click.UsageError("give either XML_FILE or --editor")
    replace_confirmed, restart_confirmed = yes or confirm_diff, yes or confirm_restart or not restart
    if not editor:
        asked = [f"Replace the domain XML of VM {vm}"] if not replace_confirmed else []
        if not restart_confirmed:
            asked.append("restart it" if asked else f"Restart VM {vm}")
        if asked:
            confirm(" and ".join(asked))
    xml = vm_editor.edited_xml(vm, session.client.vms.dump(vm), replace_confirmed) if editor else xml_file
    if editor and xml is not None and not restart_confirmed:
        confirm(f"Restart VM {vm} to apply the change")
    if xml is not None:
        _show_vm(session.client.vms.modify(vm, xml, restart=restart), output_format)


@group.command("rename")
@click.argument("vm")
@click.argument("new_name")
@output.format_option
@click.pass_obj
def rename(session, vm, new_name, output_format) -> None:
    """Rename a stopped VM (its node must have reported it off)."""
    _show_vm(session.client.vms.rename(vm, new_name), output_format)


def _move_options(function):
    options = [
        click.argument("vm"),
        click.option("-t", "--target", help="destination node (default: the VM's selector's choice)"),
        click.option("--ignore-limit", is_flag=True, help="allow a target outside the VM's node limit"),
        _wait_option,
        output.long_format_option,
        click.pass_obj,
    ]
    for option in reversed(options):
        function = option(function)
    return function


@group.command("migrate")
@_move_options
@click.option("-f", "--force", is_flag=True,
              help="migrate a VM that is migrated already; unmigrate still returns it to the node it first came "
                   "from")
@click.option("--force-live", is_flag=True,
              help="migrate live or not at all: never fall back to shutting the VM down (upstream's option)")
def migrate(session, vm, target, ignore_limit, wait, output_format, force, force_live) -> None:
    """Move the VM to another node, remembering where it was (see unmigrate). As upstream PVC, a VM migrated
    already is moved again only with --force (--ignore-limit is what --force once meant here)."""
    if not force:
        last_node = session.client.vms.info(vm)["last_node"]
        if last_node:
            raise click.ClickException(f"VM {vm} is migrated already (from {last_node}): --force migrates it "
                                       "again, or unmigrate it first")
    _show_vm(session.client.vms.migrate(vm, target=target, force=ignore_limit, wait=wait, force_live=force_live),
             output_format)


@group.command("move")
@_move_options
def move(session, vm, target, ignore_limit, wait, output_format) -> None:
    """Move the VM to another node for good."""
    _show_vm(session.client.vms.move(vm, target=target, force=ignore_limit, wait=wait), output_format)


@group.command("unmigrate")
@click.argument("vm")
@_wait_option
@output.format_option
@click.pass_obj
def unmigrate(session, vm, wait, output_format) -> None:
    """Return a migrated VM to the node it came from."""
    _show_vm(session.client.vms.unmigrate(vm, wait=wait), output_format)


for part_group in (*vm_parts.COMMANDS, vm_tags.tag, vm_snapshots.snapshot, vm_autobackup.autobackup,
                   vm_automirror.automirror, vm_mirror.mirror):
    group.add_command(part_group)
