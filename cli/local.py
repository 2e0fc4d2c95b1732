"""`pvc-local`: a whole PVC cluster on this machine's loopback, for trying PVC and for its tests."""
import os
import sys
from pathlib import Path

import click

from pvc.cli.localcluster import guest
from pvc.cli.localcluster.cluster import HYPERVISORS, LocalCluster
from pvc.cli.localcluster.qemuhost import QemuHost
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
@click.option("--hypervisor", type=click.Choice(HYPERVISORS), default="test", show_default=True,
              help="simulated hosts: libvirt's test driver (cheap, for hundreds of VMs) or QEMU running real guests")
@state_dir_option
def up(nodes: int, coordinators: int, storage: str, tls: bool, hypervisor: str, state_dir: Path) -> None:
    """Start the cluster; returns when every node is running and ready and a coordinator leads."""
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(nodes=nodes, coordinators=coordinators, storage=storage, tls=tls, hypervisor=hypervisor)
    except PVCError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    kind = f"QEMU ({cluster.state['accelerator']})" if hypervisor == "qemu" else "test driver"
    click.echo(f"PVC local cluster up: {nodes} {kind} nodes, {coordinators} coordinator(s), state in "
               f"{cluster.state_dir}", err=True)
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
    kind = f"QEMU, {cluster.state.get('accelerator')}" if cluster.hypervisor == "qemu" else "test driver"
    click.echo(f"hypervisor           {kind}")
    for role, pid in running.items():
        click.echo(f"{role:<20} pid {pid}")
    click.echo(f"export PVC_CONFIG={cluster.client_config}")


def _host(state_dir: Path, node: str):
    cluster = LocalCluster(state_dir)
    if node not in cluster.node_names:
        raise click.UsageError(f"no node {node!r} in the local cluster in {cluster.state_dir}")
    return cluster.host(node)


@cli.command("power-off")
@click.argument("node")
@state_dir_option
def power_off(node: str, state_dir: Path) -> None:
    """Cut a simulated host's power: every guest on it dies at once (its pvcnoded keeps running)."""
    _host(state_dir, node).power_off()
    click.echo(f"host {node} is off")


@cli.command("power-on")
@click.argument("node")
@state_dir_option
def power_on(node: str, state_dir: Path) -> None:
    """Power a node on as its BMC does: its host starts empty (no VM running), then its pvcnoded."""
    cluster = LocalCluster(state_dir)
    if node not in cluster.node_names:
        raise click.UsageError(f"no node {node!r} in the local cluster in {cluster.state_dir}")
    cluster.bmc(node).power_on()
    click.echo(f"host {node} is on")


@cli.command("restart-libvirtd")
@click.argument("node")
@state_dir_option
def restart_libvirtd(node: str, state_dir: Path) -> None:
    """Kill a QEMU host's libvirtd and let it start again; the host's guests keep running."""
    host = _host(state_dir, node)
    if not isinstance(host, QemuHost):
        raise click.UsageError("only QEMU hosts outlive their libvirtd (pvc-local up --hypervisor qemu)")
    host.restart_libvirtd()
    click.echo(f"libvirtd of {node} restarted (pid {host.libvirtd_pid})")


@cli.command("build-guest")
@click.option("--boot-dir", type=click.Path(file_okay=False, path_type=Path), default=guest.DEFAULT_BOOT_DIR,
              show_default=True, help="boot-image directory to write the kernel and initrd to")
def build_guest(boot_dir: Path) -> None:
    """Build the tiny real guest (kernel and initramfs) from the installed Debian packages, and find out
    (once per kernel and QEMU version) whether it runs under KVM here or needs TCG."""
    try:
        guest.build(boot_dir)
        accelerator = guest.probe_accelerator(boot_dir)
    except PVCError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    click.echo(f"guest image in {boot_dir}; guests run under {accelerator} here")


@cli.command("guest-xml")
@click.argument("name")
@click.option("--disk", metavar="POOL/VOLUME", help="a PVC volume the guest gets as its virtio disk")
@click.option("--memory", default=128, show_default=True, type=click.IntRange(64, 65536), help="MiB")
@state_dir_option
def guest_xml(name: str, disk: str | None, memory: int, state_dir: Path) -> None:
    """Print a domain XML for the tiny real guest that `pvc vm define` accepts."""
    accelerator = LocalCluster(state_dir).state.get("accelerator") or "tcg"
    click.echo(guest.domain_xml(name, memory_mib=memory, disk=disk,
                                domain_type="kvm" if accelerator == "kvm" else "qemu"))
