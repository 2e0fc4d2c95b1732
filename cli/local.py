"""`pvc-local`: a whole PVC cluster on this machine's loopback, for trying PVC and for its tests."""
import os
import sys
from pathlib import Path

import click

from pvc.cli.localcluster.cluster import LocalCluster
from pvc.errors import PVCError

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser() / "pvc-local"

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE_DIR,
    show_default=True, help="where the cluster's configs, data, sockets, logs and PID files live")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run a PVC cluster on loopback: ZooKeeper, coordinators and simulated hypervisors."""


@cli.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 64), help="simulated hosts")
@click.option("--coordinators", default=1, show_default=True, type=click.IntRange(1, 9), help="pvcapid daemons")
@click.option("--storage", type=click.Choice(["file", "ceph"]), default="file", show_default=True,
              help="storage backend: a directory in the state dir, or a private single-node Ceph")
@click.option("--tls", is_flag=True, help="every Pyro5 connection over TLS, with a certificate made for 127.0.0.1")
@state_dir_option
def up(nodes: int, coordinators: int, storage: str, tls: bool, state_dir: Path) -> None:
    """Start the cluster; returns when every node is running and ready and a coordinator leads."""
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(nodes=nodes, coordinators=coordinators, storage=storage, tls=tls)
    except PVCError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    click.echo(f"PVC local cluster up: {nodes} nodes, {coordinators} coordinator(s), state in {cluster.state_dir}",
               err=True)
    click.echo(f"export PVC_CONFIG={cluster.client_config}")


@cli.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop every process the cluster started."""
    stopped = LocalCluster(state_dir).down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cli.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """Which of the cluster's processes are running."""
    cluster = LocalCluster(state_dir)
    running = cluster.running_processes()
    if not running:
        click.echo(f"no local cluster is running in {cluster.state_dir}")
        sys.exit(3)
    for role, pid in running.items():
        click.echo(f"{role:<20} pid {pid}")
    click.echo(f"export PVC_CONFIG={cluster.client_config}")
