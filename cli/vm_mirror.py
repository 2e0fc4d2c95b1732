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
