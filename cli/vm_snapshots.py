"""`pvc vm snapshot`: whole-VM snapshots, its document, metadata and every disk taken at one moment
(`pvc.rpc.vm_snapshots`)."""
import click

from pvc import connections
from pvc.cli import output
from pvc.cli.confirm import confirm_option

_COLUMNS = [
    output.column("VM", "vm"),
    output.column("NAME", "name"),
    output.column("CREATED", "created", output.clock_time),
    output.column("VOLUMES", "volumes"),
    output.column("CONSISTENCY", "consistency"),
    output.column("HELD", "paused_ms", lambda held: "-" if held is None else f"{held:.1f} ms"),
    output.column("PENDING", "pending"),
]


@click.group("snapshot")
def snapshot() -> None:
    """Snapshots of a whole VM: its definition, metadata and every volume at one moment."""


@snapshot.command("create")
@click.argument("vm")
@click.argument("name", required=False)
@click.option("--crash-consistent", is_flag=True,
              help="neither freeze (through its agent) nor pause a running guest: each disk as after a power cut")
@click.option("--max-pause", "max_pause_ms", type=click.IntRange(1, 60000), default=None,
              help="abandon the snapshot (and thaw or resume the guest) if it would stay frozen or paused longer than "
                   "this many milliseconds (default and upper bound: each node's snapshot_max_pause)")
@output.format_option
@click.pass_obj
def snapshot_create(session, vm, name, crash_consistent, max_pause_ms, output_format) -> None:
    """Snapshot VM as NAME (default: the time, YYYYMMDDHHMMSS)."""
    output.show(session.client.vms.snapshot_create(vm, name, crash_consistent=crash_consistent,
                                                   max_pause_ms=max_pause_ms),
                output_format, lambda view: output.table([view], _COLUMNS))


@snapshot.command("list")
@click.argument("vm", required=False)
@output.list_format_option
@click.pass_obj
def snapshot_list(session, vm, output_format) -> None:
    """The snapshots of VM, or of every VM."""
    output.show(session.client.vms.snapshot_list(vm), output_format, lambda rows: output.table(rows, _COLUMNS),
                lambda rows: [f"{row['vm']}@{row['name']}" for row in rows])


@snapshot.command("remove")
@click.argument("vm")
@click.argument("name")
@confirm_option("Remove snapshot {name} of VM {vm} and every volume snapshot it holds")
@click.pass_obj
def snapshot_remove(session, vm, name) -> None:
    """Remove snapshot NAME of VM, with its volume snapshots."""
    session.client.vms.snapshot_remove(vm, name)
    click.echo(f"Removed snapshot {vm}@{name}")


@snapshot.command("rollback")
@click.argument("vm")
@click.argument("name")
@confirm_option("Roll VM {vm} back to snapshot {name}: its disks, definition and metadata now are lost")
@click.pass_obj
def snapshot_rollback(session, vm, name) -> None:
    """Return a stopped VM's disks, definition and metadata to snapshot NAME."""
    session.client.vms.snapshot_rollback(vm, name)
    click.echo(f"Rolled VM {vm} back to snapshot {name}")


@snapshot.command("export")
@click.argument("vm")
@click.argument("name", metavar="SNAPSHOT")
@click.argument("destination")
@click.option("-i", "--incremental-parent", metavar="SNAPSHOT",
              help="write only what changed since this older snapshot, whose export lies beside DESTINATION")
@output.format_option
@click.pass_obj
def snapshot_export(session, vm, name, destination, incremental_parent, output_format) -> None:
    """Export snapshot SNAPSHOT of VM to DESTINATION, a new directory under a backup root of the node that
    writes it (backup_roots in its pvcnoded.yaml)."""
    written = session.client.vms.snapshot_export(vm, name, destination, incremental_parent=incremental_parent)
    output.show(written, output_format, lambda shown: output.details([
        ("Exported", f"{shown['vm']}@{shown['snapshot']}"),
        ("Parent", output.plain(shown["parent"])),
        ("To", f"{shown['destination']} (node {shown['node']})"),
        ("Bytes", str(shown["bytes"]))]))


@snapshot.command("import")
@click.argument("source")
@click.option("-n", "--name", help="the new VM's name (default: the exported VM's); its volumes become NAME_diskN")
@click.option("-p", "--pool", help="the pool its volumes go to (default: the pools they were exported from)")
@output.format_option
@click.pass_obj
def snapshot_import(session, source, name, pool, output_format) -> None:
    """Define a new, stopped VM from the export in SOURCE (under a backup root) and the exports it builds on."""
    vm = session.client.vms.snapshot_import(source, name=name, pool=pool)
    output.show(vm, output_format, lambda shown: f"Imported VM {shown['name']} (stopped) on node {shown['node']}")


@snapshot.command("send")
@click.argument("vm")
@click.argument("name", metavar="SNAPSHOT")
@click.option("--to", "destination", required=True, metavar="CONNECTION",
              help="the PVC cluster to send it to: a saved connection (pvc connection list), whose URIs and API key "
                   "this cluster then keeps, the key sealed, for later sends")
@output.format_option
@click.pass_obj
def snapshot_send(session, vm, name, destination, output_format) -> None:
    """Send snapshot SNAPSHOT of VM to another PVC cluster, where it is kept as a mirror (state mirror, never
    started until promoted): whole the first time, then as the changes since the newest snapshot it holds."""
    sent = session.client.vms.snapshot_send(vm, name, destination, connection=mirror_connection(destination))
    output.show(sent, output_format, lambda shown: output.details([
        ("Sent", f"{shown['vm']}@{shown['snapshot']} ({shown['kind']})"),
        ("Parent", output.plain(shown["parent"])),
        ("To", shown["destination"]),
        ("Bytes", str(shown["bytes"]))]))


def mirror_connection(name: str) -> dict:
    """What a coordinator needs of saved connection `name` to reach that cluster itself."""
    saved = connections.get(name)
    return {"uris": saved["uris"], "api_key": saved["api_key"], "tls_ca": saved.get("tls_ca")}
