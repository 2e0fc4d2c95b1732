"""`pvc`: the command-line client. Each command group lives in its own module; this is the root."""
import contextlib
import os
import sys

import click

from pvc import wire
from pvc.cli import cluster as cluster_commands
from pvc.cli import connection as connection_commands
from pvc.cli import network as network_commands
from pvc.cli import node as node_commands
from pvc.cli import plugin as plugin_commands
from pvc.cli import provisioner as provisioner_commands
from pvc.cli import storage as storage_commands
from pvc.cli import vm as vm_commands
from pvc.errors import PVCError


class Session:
    """The root's shared state: a client connected on first use, so `--help` needs no cluster."""

    def __init__(self, debug: bool, connection: str | None = None, unsafe: bool = False):
        self.debug = debug
        self.connection = connection
        self.unsafe = unsafe
        self.terminal_stderr = sys.stderr
        """Standard error as it was before `--quiet` or `--silent` muted it: errors and questions go here."""
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import pvc
            self._client = pvc.connect(connection=self.connection)
        return self._client


class PVCGroup(click.Group):
    """Turns a PVC error into one line on stderr and exit 1; `--debug` adds the remote traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PVCError as error:
            session = ctx.obj
            stderr = session.terminal_stderr if session is not None else sys.stderr
            if session is not None and session.debug:
                click.echo(wire.remote_traceback(error), file=stderr, nl=False)
            click.echo(f"Error: {error}", file=stderr)
            sys.exit(1)


def _saved_connections(_context: click.Context, _parameter: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of `-c`: the names saved with `pvc connection add`."""
    from pvc import connections
    try:
        return sorted(name for name in connections.load()["connections"] if name.startswith(incomplete))
    except PVCError:
        return []


@click.group(cls=PVCGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--connection", metavar="NAME", envvar="PVC_CONNECTION", shell_complete=_saved_connections,
              help="the saved connection to use (see pvc connection); env PVC_CONNECTION")
@click.option("-v", "--debug", is_flag=True, help="show the remote traceback of an error")
@click.option("-q", "--quiet", is_flag=True, envvar="PVC_QUIET",
              help="no progress or notes on stderr (errors still show); env PVC_QUIET")
@click.option("-s", "--silent", is_flag=True, envvar="PVC_SILENT",
              help="nothing on stdout or stderr but errors; env PVC_SILENT")
@click.option("-u", "--unsafe", is_flag=True, envvar="PVC_UNSAFE",
              help="never ask for confirmation, as if every command had --yes; env PVC_UNSAFE")
@click.version_option(package_name="pvc")
@click.pass_context
def cli(ctx: click.Context, connection: str | None, debug: bool, quiet: bool, silent: bool,
        unsafe: bool) -> None:
    """Manage a PVC cluster.

    \b
    Which cluster, the most specific first:
      -c NAME / PVC_CONNECTION   a saved connection (pvc connection add), used whole
      PVC_CONFIG                 a client settings file
      the default connection     pvc connection default NAME
      ~/.config/pvc/pvc.yaml     the client settings file
    PVC_URI and PVC_API_KEY override the last three (not a connection named with -c).
    Connections are saved in PVC_CLIENT_DIR, else ~/.config/pvc."""
    ctx.obj = Session(debug, connection, unsafe)
    if quiet or silent:
        muted = ctx.with_resource(open(os.devnull, "w"))
        ctx.with_resource(contextlib.redirect_stderr(muted))
        if silent:
            ctx.with_resource(contextlib.redirect_stdout(muted))


cli.add_command(cluster_commands.group)
cli.add_command(connection_commands.group)
cli.add_command(network_commands.group)
cli.add_command(node_commands.group)
cli.add_command(plugin_commands.group)
cli.add_command(provisioner_commands.group)
cli.add_command(storage_commands.group)
cli.add_command(vm_commands.group)
