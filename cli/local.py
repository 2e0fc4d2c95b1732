"""`pvc-local`: a whole PVC cluster on this machine's loopback, for trying PVC and for its tests."""
import os
import sys
from pathlib import Path

import click

from pvc.cli.localcluster import guest
from pvc.cli.localcluster.cluster import HYPERVISORS, ZOOKEEPER_ENSEMBLE_SIZES, LocalCluster
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
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 128), help="simulated hosts")
@click.option("--coordinators", default=1, show_default=True, type=click.IntRange(1, 9), help="pvcapid daemons")
@click.option("--storage", default="file", show_default=True, metavar="file|ceph|BACKEND",
              help="storage backend: a directory in the state dir, a private single-node Ceph, or a plugin's "
                   "backend (given the same directory as file)")
@click.option("--tls", is_flag=True, help="every Pyro5 connection over TLS, with a certificate made for 127.0.0.1")
@click.option("--hypervisor", type=click.Choice(HYPERVISORS), default="test", show_default=True,
              help="simulated hosts: libvirt's test driver (cheap, for hundreds of VMs) or QEMU running real guests")
@click.option("--zookeepers", default="1", show_default=True,
              type=click.Choice([str(size) for size in ZOOKEEPER_ENSEMBLE_SIZES]),
              help="ZooKeeper servers: 3 or 5 form a real ensemble that outlives the loss of a minority")
@click.option("--lab", is_flag=True,
              help="every host, coordinator and ZooKeeper server in a network namespace of its own on a lab "
                   "network of link-local addresses, whose links `cut`, `isolate` and `heal` break and mend")
@click.option("--monitoring", is_flag=True,
              help="also start a Prometheus scraping every coordinator's /metrics, with PVC's alert rules loaded")
@click.option("--provisioner-scripts", "scripts", is_flag=True,
              help="every node runs provisioner install scripts (provisioner_scripts in its pvcnoded.yaml)")
@click.option("--production-intervals", "production", is_flag=True,
              help="every daemon at the intervals of the sample configs in contrib/ (keepalive 5 s, a node dead "
                   "after 30 s) instead of the fast ones that make failures show within seconds")
@state_dir_option
def up(nodes: int, coordinators: int, storage: str, tls: bool, hypervisor: str, zookeepers: str, lab: bool,
       monitoring: bool, scripts: bool, production: bool, state_dir: Path) -> None:
    """Start the cluster; returns when every node is running and ready and a coordinator leads."""
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(nodes=nodes, coordinators=coordinators, storage=storage, tls=tls, hypervisor=hypervisor,
                   zookeepers=int(zookeepers), lab=lab, monitoring=monitoring, scripts=scripts,
                   timeout=60 + nodes, timings="production" if production else "fast")
    except PVCError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    kind = f"QEMU ({cluster.state['accelerator']})" if hypervisor == "qemu" else "test driver"
    network = f", lab {cluster.lab.prefix} on {cluster.lab.subnet}" if cluster.lab else ""
    click.echo(f"PVC local cluster up: {nodes} {kind} nodes, {coordinators} coordinator(s), {zookeepers} "
               f"ZooKeeper server(s){network}, state in {cluster.state_dir}", err=True)
    click.echo(f"export PVC_CONFIG={cluster.client_config}")
    if monitoring:
        click.echo(f"Prometheus at {cluster.prometheus.url} scrapes /metrics of "
                   f"{', '.join(cluster.metrics_targets)}", err=True)
        click.echo(f"export PVC_PROMETHEUS={cluster.prometheus.url}")


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
    lab = cluster.lab
    if lab:
        click.echo(f"lab                  {lab.prefix} on {lab.subnet} (gateway {lab.gateway})")
    for role, pid in running.items():
        member = cluster.zookeeper_names[0] if role == "zookeeper" else role.split()[-1]
        link = f", link {cluster.link_state(member)}" if lab and not role.startswith(("bmc", "ceph")) else ""
        click.echo(f"{role:<20} pid {pid}{link}")
    click.echo(f"export PVC_CONFIG={cluster.client_config}")


@cli.command("add-node")
@state_dir_option
def add_node(state_dir: Path) -> None:
    """Add a node to the running cluster, as an administrator adds a hypervisor: a host (in the lab, on a lab
    cluster), its BMC and its pvcnoded."""
    _fault(lambda: click.echo(f"node {_cluster(state_dir).add_node()} is running and ready"))


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


def _cluster(state_dir: Path) -> LocalCluster:
    cluster = LocalCluster(state_dir)
    if not cluster.state:
        raise click.UsageError(f"no local cluster in {cluster.state_dir}")
    return cluster


def _fault(action) -> None:
    try:
        action()
    except PVCError as error:
        raise click.UsageError(str(error)) from error


@cli.command()
@click.argument("member")
@state_dir_option
def cut(member: str, state_dir: Path) -> None:
    """Pull a lab member's cable: a node (hv1), a coordinator (pvcapid1) or a ZooKeeper server (zk1)."""
    _fault(lambda: _cluster(state_dir).cut_link(member))
    click.echo(f"{member} is cut off")


@cli.command()
@click.argument("members", nargs=-1, required=True)
@state_dir_option
def isolate(members: tuple[str, ...], state_dir: Path) -> None:
    """Cut lab members off from the rest together: they still reach each other, nothing else."""
    _fault(lambda: _cluster(state_dir).isolate(list(members)))
    click.echo(f"{', '.join(members)} are cut off together")


@cli.command()
@click.argument("member")
@click.argument("peers", nargs=-1, required=True)
@state_dir_option
def sever(member: str, peers: tuple[str, ...], state_dir: Path) -> None:
    """Cut a lab member off from some members only (pvcapid1 from zk1 zk2 zk3): both still reach the rest."""
    _fault(lambda: _cluster(state_dir).sever(member, list(peers)))
    click.echo(f"{member} is cut off from {', '.join(peers)}")


@cli.command()
@click.argument("member", required=False)
@state_dir_option
def heal(member: str | None, state_dir: Path) -> None:
    """Plug one lab member back in (after cut, isolate or sever), or, without MEMBER, every one."""
    cluster = _cluster(state_dir)
    _fault(lambda: cluster.heal_link(member) if member else cluster.heal_all())
    click.echo(f"{member or 'every member'} is back on the lab")


@cli.command("zookeeper-kill")
@click.argument("server")
@state_dir_option
def zookeeper_kill(server: str, state_dir: Path) -> None:
    """SIGKILL one ZooKeeper server (zk1, zk2, ...)."""
    _fault(lambda: _cluster(state_dir).kill_zookeeper(server))
    click.echo(f"{server} is killed")


@cli.command("zookeeper-start")
@click.argument("server")
@state_dir_option
def zookeeper_start(server: str, state_dir: Path) -> None:
    """Start one ZooKeeper server again; returns once it serves."""
    _fault(lambda: _cluster(state_dir).start_zookeeper(server))
    click.echo(f"{server} serves")


@cli.command("zookeeper-leader")
@state_dir_option
def zookeeper_leader(state_dir: Path) -> None:
    """Each ZooKeeper server's mode (srvr, asked from its own namespace); exits 3 while none leads."""
    cluster = _cluster(state_dir)
    for name, mode in cluster.zookeeper_modes().items():
        click.echo(f"{name:<6} {mode or 'not serving'}")
    if cluster.zookeeper_leader() is None:
        sys.exit(3)


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
@click.option("--network", "networks", metavar="VNI", multiple=True,
              help="a PVC network (VNI or description) the guest gets a virtio NIC on, taking a DHCP lease on it "
                   "(repeatable)")
@state_dir_option
def guest_xml(name: str, disk: str | None, memory: int, networks: tuple[str, ...], state_dir: Path) -> None:
    """Print a domain XML for the tiny real guest that `pvc vm define` accepts."""
    accelerator = LocalCluster(state_dir).state.get("accelerator") or "tcg"
    click.echo(guest.domain_xml(name, memory_mib=memory, disk=disk,
                                domain_type="kvm" if accelerator == "kvm" else "qemu", networks=networks))
