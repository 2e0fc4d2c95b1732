"""`pvc vm vcpu|memory|volume|network`: change one part of a VM without writing its XML by hand.

Upstream PVC's spellings. Each change is recorded in the VM's definition; a running VM gets it live where
libvirt on its node can (`--live`, the default), at once with `--restart`, or else at its next restart, and
the command says which happened.
"""
import click

from pvc import sizes
from pvc.cli import output, upstream
from pvc.cli.confirm import confirm
from pvc.errors import InvalidInput

_APPLIED = {
    "live": "applied live",
    "restarting": "the VM is restarting to apply it",
    "at next start": "it takes effect when the VM starts",
    "at next restart": "it takes effect when the VM restarts",
}


def _apply_options(function):
    options = [
        upstream.option("-r", "--restart/--no-restart", default=False, upstream=("-r", "--restart", "--no-restart"),
                        help="restart the VM now to apply the change (default: --no-restart, as upstream's)"),
        click.option("-l/-L", "--live/--no-live", default=True,
                     help="change the running VM too, where libvirt can (default: --live)"),
        click.option("-y", "--yes", is_flag=True, help="do not ask before restarting the VM"),
        output.format_option,
        click.pass_obj,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _report(result: dict, output_format: str) -> None:
    def sentence(outcome: dict) -> str:
        text = f"VM {outcome['name']}: {outcome['change']}; {_APPLIED[outcome['applied']]}"
        return text + (f" ({outcome['reason']})" if outcome["reason"] else "")
    output.show(result, output_format, sentence)


def _change(vm: str, restart: bool, live: bool, yes: bool, output_format: str, call, *args, **kwargs) -> None:
    if restart:
        confirm(f"Restart VM {vm} to apply the change", yes)
    _report(call(vm, *args, **kwargs, restart=restart, live=live and not restart), output_format)


# -- vcpu -----------------------------------------------------------------------------------------------

@click.group("vcpu")
def vcpu() -> None:
    """The VM's vCPU count."""


@vcpu.command("get")
@click.argument("vm")
@output.format_option
@click.pass_obj
def vcpu_get(session, vm, output_format) -> None:
    """Show the VM's vCPU count."""
    info = session.client.vms.info(vm)
    output.show({"name": info["name"], "vcpus": info["vcpus"]}, output_format, lambda row: str(row["vcpus"]))


@vcpu.command("set")
@click.argument("vm")
@click.argument("vcpus", type=int)
@_apply_options
def vcpu_set(session, vm, vcpus, restart, live, yes, output_format) -> None:
    """Give the VM VCPUS vCPUs. Live, libvirt can take vCPUs away from a running guest, or add them up to
    the count it started with; more than that waits for a restart."""
    _change(vm, restart, live, yes, output_format, session.client.vms.set_vcpus, vcpus)


# -- memory ---------------------------------------------------------------------------------------------

def _memory_mib(text: str) -> int:
    """A bare number is MiB, as upstream reads it; 512M, 4G are too."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    size = sizes.parse_size(text, "memory")
    if size % (1 << 20):
        raise InvalidInput(f"invalid memory {text!r}: use whole MiB (a bare number is MiB, or 512M, 4G)")
    return size >> 20


@click.group("memory")
def memory() -> None:
    """The VM's memory."""


@memory.command("get")
@click.argument("vm")
@output.format_option
@click.pass_obj
def memory_get(session, vm, output_format) -> None:
    """Show the VM's memory."""
    info = session.client.vms.info(vm)
    output.show({"name": info["name"], "memory_mib": info["memory_mib"]}, output_format,
                lambda row: output.mib(row["memory_mib"]))


@memory.command("set")
@click.argument("vm")
@click.argument("memory_size", metavar="MEMORY")
@_apply_options
def memory_set(session, vm, memory_size, restart, live, yes, output_format) -> None:
    """Give the VM MEMORY: a bare number is MiB (as upstream), or 512M, 4G. Live, libvirt can shrink a
    running guest's memory (through its balloon) or grow it up to what it started with."""
    memory_mib = _memory_mib(memory_size)
    _change(vm, restart, live, yes, output_format, session.client.vms.set_memory, memory_mib)


# -- volume ---------------------------------------------------------------------------------------------

_VOLUME_COLUMNS = [output.column("TARGET", "target"), output.column("VOLUME", "volume"),
                   output.column("DEVICE", "device")]


@click.group("volume")
def volume() -> None:
    """The PVC volumes the VM's disks use."""


@volume.command("get")
@click.argument("vm")
@output.format_option
@click.pass_obj
def volume_get(session, vm, output_format) -> None:
    """List the VM's disks on PVC volumes."""
    disks = [{"target": disk["target"], "volume": disk["volume"], "device": disk["device"]}
             for disk in session.client.vms.info(vm)["disks"] if disk.get("volume")]
    output.show(disks, output_format, lambda rows: output.table(rows, _VOLUME_COLUMNS))


@volume.command("add")
@click.argument("vm")
@click.argument("volume_name", metavar="POOL/VOLUME|PATH")
@click.option("-t", "--type", "kind", type=click.Choice(["rbd", "file"]), default="rbd", show_default=True,
              help="rbd: a PVC volume POOL/VOLUME; file: a host path (only where the cluster allows host "
                   "devices: pvc cluster config --allow-host-devices)")
@click.option("-d", "--disk-id", help="the disk's target (sdX, vdX, hdX); default: the next free one")
@click.option("-b", "--bus", type=click.Choice(["scsi", "virtio", "sata", "ide"]), default="scsi",
              show_default=True, help="the bus the disk is on")
@_apply_options
def volume_add(session, vm, volume_name, kind, disk_id, bus, restart, live, yes, output_format) -> None:
    """Attach PVC volume POOL/VOLUME (it must exist in PVC storage), or with --type file the host file PATH,
    to the VM as a disk. PVC attaches a volume when the VM starts: a running VM gets it at its next restart,
    or now with --restart."""
    _change(vm, restart, live, yes, output_format, session.client.vms.add_volume, volume_name, target=disk_id,
            bus=bus, kind=kind)


@volume.command("remove")
@click.argument("vm")
@click.argument("volume_name", metavar="POOL/VOLUME|PATH")
@_apply_options
def volume_remove(session, vm, volume_name, restart, live, yes, output_format) -> None:
    """Detach PVC volume POOL/VOLUME from the VM; the volume itself is kept. A running VM loses it at its
    next restart, or now with --restart."""
    _change(vm, restart, live, yes, output_format, session.client.vms.remove_volume, volume_name)


# -- network --------------------------------------------------------------------------------------------

_NIC_COLUMNS = [output.column("MAC", "mac"), output.column("TYPE", "type"), output.column("SOURCE", "source"),
                output.column("MODEL", "model")]


@click.group("network")
def network() -> None:
    """The VM's network interfaces."""


@network.command("get")
@click.argument("vm")
@output.format_option
@click.pass_obj
def network_get(session, vm, output_format) -> None:
    """List the VM's network interfaces."""
    output.show(session.client.vms.info(vm)["nics"], output_format,
                lambda rows: output.table(rows, _NIC_COLUMNS))


@network.command("add")
@click.argument("vm")
@click.argument("net")
@click.option("-t", "--type", "kind", type=click.Choice(["bridge", "network"]), default="bridge",
              show_default=True, help="NET is a host bridge, or a libvirt managed network")
@click.option("-m", "--model", default="virtio", show_default=True,
              type=click.Choice(["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"]), help="the NIC's model")
@click.option("-a", "--macaddr", help="the NIC's MAC address (default: a new one, 52:54:00:xx:xx:xx)")
@_apply_options
def network_add(session, vm, net, kind, model, macaddr, restart, live, yes, output_format) -> None:
    """Add a network interface on NET to the VM, after its other interfaces."""
    _change(vm, restart, live, yes, output_format, session.client.vms.add_nic, net, kind=kind, model=model,
            mac=macaddr)


@network.command("remove")
@click.argument("vm")
@click.argument("net", required=False)
@click.option("-m", "--mac-address", help="remove the interface with this MAC address (then NET is optional)")
@_apply_options
def network_remove(session, vm, net, mac_address, restart, live, yes, output_format) -> None:
    """Remove the VM's interface with the given MAC address, or every interface on NET."""
    if net is None and mac_address is None:
        raise click.UsageError("give NET, or --mac-address, of the interface to remove")
    _change(vm, restart, live, yes, output_format, session.client.vms.remove_nic, source=net, mac=mac_address)


COMMANDS = (vcpu, memory, volume, network)
