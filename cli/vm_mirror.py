"""`pvc vm mirror`: the VMs another PVC cluster keeps here as mirrors (`pvc.rpc.mirror`), turned into this
cluster's own."""
import click

from pvc.cli import output
from pvc.cli.confirm import confirm_option
from pvc.cli.vm_snapshots import mirror_connection


@click.group("mirror")
def mirror() -> None:
    """Mirrors of VMs that another PVC cluster sends here (pvc vm snapshot send)."""


@mirror.command("promote")
@click.argument("vm")
@click.option("--from", "source", metavar="CONNECTION",
              help="the cluster that sends the mirror (a saved connection): the VM is stopped there and its last "
                   "state sent here first; without it the mirror is promoted as the last send left it")
@click.option("--remove-source", is_flag=True, help="then remove the VM on the source cluster (its volumes stay)")
@confirm_option("Promote mirror {vm} into a VM of this cluster")
@output.format_option
@click.pass_obj
def mirror_promote(session, vm, source, remove_source, output_format) -> None:
    """Turn mirror VM into an ordinary, stopped VM of this cluster."""
    promoted = session.client.vms.mirror_promote(vm, source=mirror_connection(source) if source else None,
                                                 remove_source=remove_source)
    output.show(promoted, output_format,
                lambda shown: f"Promoted VM {shown['name']} (stopped)" +
                              (", removed on the source cluster" if shown["source_removed"] else ""))


@mirror.group("destination")
def destination() -> None:
    """The PVC clusters this one sends mirrors to, kept by name with their API keys sealed."""


@destination.command("add")
@click.argument("name", metavar="CONNECTION")
@output.format_option
@click.pass_obj
def destination_add(session, name, output_format) -> None:
    """Keep saved connection CONNECTION (pvc connection list) as a mirror destination, so that automirror can
    send to it before any manual send; it must answer with its API key first."""
    shown = session.client.vms.mirror_destination_add(name, mirror_connection(name))
    output.show(shown, output_format, lambda added: f"Mirror destination {added['name']} kept "
                                                    f"({', '.join(added['uris'])})")


@destination.command("list")
@output.format_option
@click.pass_obj
def destination_list(session, output_format) -> None:
    """The mirror destinations this cluster keeps (their keys are never shown)."""
    output.show(session.client.vms.mirror_destination_list(), output_format,
                lambda rows: output.table(rows, _DESTINATION_COLUMNS))


_DESTINATION_COLUMNS = [output.column("Name", "name"), output.column("URIs", "uris", " ".join),
                        output.column("TLS CA", "tls_ca", lambda ca: "yes" if ca else "no")]


@destination.command("remove")
@click.argument("name")
@confirm_option("Forget mirror destination {name}")
@click.pass_obj
def destination_remove(session, name) -> None:
    """Forget mirror destination NAME; its mirrors there stay as they are (not automirror's destination)."""
    session.client.vms.mirror_destination_remove(name)
    click.echo(f"Forgot mirror destination {name}")
