"""`pvc vm tag`: user tags on VMs, to find and group them (`pvc vm list --tag`), as upstream PVC has them.

A protected tag is what upstream makes of it: a tag that `vm tag remove` refuses, so that it stays as long as
the VM does. Neither upstream nor PVC lets a tag change what a flush, a migration or `vm remove` does.
"""
import click

from pvc.cli import output

PROTECTED_HELP = "protected: 'vm tag remove' refuses it, so it stays as long as the VM does"

_COLUMNS = [output.column("TAG", "name"), output.column("PROTECTED", "protected")]


@click.group("tag")
def tag() -> None:
    """The VM's user tags (find VMs by one with 'vm list --tag'). A protected tag is upstream PVC's: 'vm tag
    remove' refuses it, so it stays as long as the VM does; no tag, protected or not, stops a flush, a
    migration or 'vm remove'."""


@tag.command("get")
@click.argument("vm")
@output.format_option
@click.pass_obj
def tag_get(session, vm, output_format) -> None:
    """List the VM's tags."""
    output.show(session.client.vms.tags(vm), output_format, lambda tags: output.table(tags["tags"], _COLUMNS))


@tag.command("add")
@click.argument("vm")
@click.argument("name", metavar="TAG")
@click.option("-p", "--protected", is_flag=True, help=f"make the tag {PROTECTED_HELP}")
@click.pass_obj
def tag_add(session, vm, name, protected) -> None:
    """Add TAG to the VM (adding a tag it has changes nothing, except that --protected protects it)."""
    session.client.vms.add_tag(vm, name, protected=protected)
    click.echo(f"VM {vm}: tag {name} added" + (" (protected)" if protected else ""))


@tag.command("remove")
@click.argument("vm")
@click.argument("name", metavar="TAG")
@click.pass_obj
def tag_remove(session, vm, name) -> None:
    """Remove TAG from the VM; a protected tag is refused."""
    session.client.vms.remove_tag(vm, name)
    click.echo(f"VM {vm}: tag {name} removed")
