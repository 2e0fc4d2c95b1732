"""`pvc`: the command-line client. Each command group lives in its own module; this is the root."""
import sys

import click

from pvc import wire
from pvc.cli import cluster as cluster_commands
from pvc.cli import node as node_commands
from pvc.cli import plugin as plugin_commands
from pvc.cli import storage as storage_commands
from pvc.cli import vm as vm_commands
from pvc.errors import PVCError


class Session:
    """The root's shared state: a client connected on first use, so `--help` needs no cluster."""

    def __init__(self, debug: bool):
        self.debug = debug
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import pvc
            self._client = pvc.connect()
        return self._client


class PVCGroup(click.Group):
    """Turns a PVC error into one line on stderr and exit 1; `--debug` adds the remote traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PVCError as error:
            session = ctx.obj
            if session is not None and session.debug:
                click.echo(wire.remote_traceback(error), err=True, nl=False)
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)


@click.group(cls=PVCGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show the remote traceback of an error")
@click.version_option(package_name="pvc")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Manage a PVC cluster. Connection settings come from ~/.config/pvc/pvc.yaml or the file PVC_CONFIG
    names; PVC_URI and PVC_API_KEY override them."""
    ctx.obj = Session(debug)


cli.add_command(cluster_commands.group)
cli.add_command(node_commands.group)
cli.add_command(plugin_commands.group)
cli.add_command(storage_commands.group)
cli.add_command(vm_commands.group)
