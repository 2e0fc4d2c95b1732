"""`pvc network`: client networks, bridged (a VLAN on every node's uplink) and managed (a VXLAN overlay with
PVC's gateway, DHCP and DNS). Options carry upstream PVC's names beside the issue's (``--ipnet`` is ``--ipv4``)."""
from typing import Any, Callable

import click

from pvc.cli import output, upstream
from pvc.cli.confirm import confirm_option

_COLUMNS = [
    output.column("VNI", "vni"),
    output.column("DESCRIPTION", "description"),
    output.column("TYPE", "type"),
    output.column("MTU", "mtu"),
    output.column("DOMAIN", "domain"),
    output.column("IPV4", "ipv4_network"),
    output.column("GATEWAY4", "ipv4_gateway"),
    output.column("DHCP4", "dhcp4_range"),
    output.column("IPV6", "ipv6_network"),
    output.column("USED BY", "used_by"),
]


def _dhcp4(network: dict[str, Any]) -> str:
    return f"{network['dhcp4_start']}-{network['dhcp4_end']}" if network.get("dhcp4_start") else "-"


def _rows(networks: list[dict[str, Any]]) -> str:
    return output.table([{**network, "dhcp4_range": _dhcp4(network)} for network in networks], _COLUMNS)


def _details(network: dict[str, Any]) -> str:
    return output.details([
        ("VNI", str(network["vni"])),
        ("Description", network["description"]),
        ("Type", network["type"]),
        ("MTU", str(network["mtu"])),
        ("Domain", network["domain"] or "-"),
        ("IPv4 network", network["ipv4_network"] or "-"),
        ("IPv4 gateway", network["ipv4_gateway"] or "-"),
        ("DHCPv4 range", _dhcp4(network)),
        ("IPv6 network", network["ipv6_network"] or "-"),
        ("IPv6 gateway", network["ipv6_gateway"] or "-"),
        ("ACLs", str(network["acls"])),
        ("Reservations", str(network["reservations"])),
        ("Router", network["router"] or "-"),
        ("Used by", output.plain(network["used_by"])),
    ])


def _range(_context: click.Context, _parameter: click.Parameter, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    start, separator, end = value.partition("-")
    if not separator or not start.strip() or not end.strip():
        raise click.BadParameter(f"expected START-END, not {value!r}")
    return start.strip(), end.strip()


def _field_options(function: Callable) -> Callable:
    options = [
        click.option("-d", "--description", help="a unique name for the network, starting with a letter "
                     "(default: netVNI); a NIC may name the network by it"),
        click.option("-n", "--domain", help="managed: the DNS domain of the network's guests"),
        click.option("-m", "--mtu", type=int, help="MTU (default and most: the underlay's, minus 50 for "
                     "managed networks' VXLAN)"),
        click.option("--ipv4", "-i", "--ipnet", "ipv4_network", metavar="CIDR", help="managed: IPv4 subnet"),
        click.option("--gateway4", "-g", "--gateway", "ipv4_gateway", metavar="IP",
                     help="managed: the router's IPv4 address in the subnet"),
        click.option("--dhcp4", "dhcp4", callback=_range, metavar="START-END",
                     help="managed: IPv4 DHCP range, inside the subnet and clear of the gateway"),
        upstream.option("--dhcp-start", "-s", "dhcp4_start", metavar="IP", upstream=("--dhcp-start", "-s"),
                        help="the DHCP range's start"),
        upstream.option("--dhcp-end", "-e", "dhcp4_end", metavar="IP", upstream=("--dhcp-end", "-e"),
                        help="the DHCP range's end"),
        click.option("--ipv6", "-i6", "--ipnet6", "ipv6_network", metavar="CIDR", help="managed: IPv6 subnet"),
        click.option("--gateway6", "-g6", "ipv6_gateway", metavar="IP", help="managed: the router's IPv6 address"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _fields(dhcp4: tuple[str, str] | None, **given: Any) -> dict[str, Any]:
    if dhcp4 is not None:
        if given.get("dhcp4_start") or given.get("dhcp4_end"):
            raise click.UsageError("give the DHCP range once: --dhcp4 START-END or --dhcp-start/--dhcp-end")
        given["dhcp4_start"], given["dhcp4_end"] = dhcp4
    return {key: value for key, value in given.items() if value is not None}


@click.group("network")
def group() -> None:
    """Client networks: bridged VLANs and managed VXLAN networks."""


@group.command("add")
@click.argument("vni")
@click.option("-p", "--type", "network_type", type=click.Choice(["bridged", "managed"]), required=True,
              help="bridged: a VLAN on every node's uplink; managed: a VXLAN overlay PVC serves")
@_field_options
@output.format_option
@click.pass_obj
def add(session, vni: str, network_type: str, dhcp4, output_format: str, **given: Any) -> None:
    """Add network VNI (a bridged network's VLAN id, a managed network's VXLAN id)."""
    output.show(session.client.networks.add(vni, network_type, **_fields(dhcp4, **given)), output_format,
                _details)


@group.command("modify")
@click.argument("vni")
@_field_options
@click.option("--no-dhcp4", is_flag=True, help="remove the IPv4 DHCP range")
@output.format_option
@click.pass_obj
def modify(session, vni: str, dhcp4, no_dhcp4: bool, output_format: str, **given: Any) -> None:
    """Change network VNI (by VNI or description); its type stays."""
    changes = _fields(dhcp4, **given)
    if no_dhcp4:
        if dhcp4 or "dhcp4_start" in changes:
            raise click.UsageError("--no-dhcp4 and a DHCP range together")
        changes.update(dhcp4_start=None, dhcp4_end=None)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    output.show(session.client.networks.modify(vni, **changes), output_format, _details)


@group.command("remove")
@click.argument("vni")
@confirm_option("Remove network {vni}")
@click.pass_obj
def remove(session, vni: str) -> None:
    """Remove network VNI; refused while a VM uses it."""
    session.client.networks.remove(vni)
    click.echo(f"Removed network {vni}")


@group.command("list")
@click.argument("limit", metavar="[REGEX]", required=False)
@output.list_format_option
@click.pass_obj
def list_networks(session, limit: str | None, output_format: str) -> None:
    """Every network; with REGEX, those whose VNI or description it matches."""
    networks = session.client.networks.list()
    matching = {id(row) for key in ("name", "description") for row in output.matching(networks, limit, key)}
    output.show([row for row in networks if id(row) in matching], output_format, _rows)


@group.command("info")
@click.argument("vni")
@output.format_option
@click.pass_obj
def info(session, vni: str, output_format: str) -> None:
    """Network VNI (by VNI or description)."""
    output.show(session.client.networks.info(vni), output_format, _details)


_ACL_COLUMNS = [
    output.column("NAME", "name"),
    output.column("DIRECTION", "direction"),
    output.column("ORDER", "order"),
    output.column("RULE", "rule"),
]

_DHCP_COLUMNS = [
    output.column("MAC", "mac"),
    output.column("IP", "ip"),
    output.column("HOSTNAME", "hostname"),
    output.column("RESERVED", "reserved", lambda reserved: "yes" if reserved else "no"),
    output.column("EXPIRES", "expires", lambda stamp: output.clock_time(stamp) if stamp else "-"),
]


@group.group("acl")
def acl() -> None:
    """Firewall rules of a managed network, applied by its router: one nftables rule each."""


@acl.command("add")
@click.argument("vni")
@click.argument("name")
@click.option("--direction", type=click.Choice(["in", "out"]), required=True,
              help="in: traffic forwarded to the network's guests; out: traffic forwarded from them")
@click.option("--order", type=int, default=0, show_default=True, help="place among the direction's rules")
@click.option("--rule", required=True, help="one nftables rule, such as 'tcp dport 22 drop'")
@output.format_option
@click.pass_obj
def acl_add(session, vni: str, name: str, direction: str, order: int, rule: str, output_format: str) -> None:
    """Add rule NAME to network VNI; nft checks it first, and anything but one rule is refused."""
    output.show(session.client.networks.acl_add(vni, name, direction, order, rule), output_format,
                lambda row: output.table([row], _ACL_COLUMNS))


@acl.command("remove")
@click.argument("vni")
@click.argument("name")
@click.pass_obj
def acl_remove(session, vni: str, name: str) -> None:
    """Remove rule NAME from network VNI."""
    session.client.networks.acl_remove(vni, name)
    click.echo(f"Removed ACL {name} from network {vni}")


@acl.command("list")
@click.argument("vni")
@click.option("--direction", type=click.Choice(["in", "out"]), help="only the rules of one direction")
@output.list_format_option
@click.pass_obj
def acl_list(session, vni: str, direction: str | None, output_format: str) -> None:
    """The rules of network VNI in the order the router applies them."""
    output.show(session.client.networks.acl_list(vni, direction), output_format,
                lambda rows: output.table(rows, _ACL_COLUMNS))


@group.group("dhcp")
def dhcp() -> None:
    """DHCP leases and reservations of a managed network."""


@dhcp.command("add")
@click.argument("vni")
@click.argument("ip")
@click.argument("mac")
@click.argument("hostname", required=False)
@output.format_option
@click.pass_obj
def dhcp_add(session, vni: str, ip: str, mac: str, hostname: str | None, output_format: str) -> None:
    """Reserve IP for MAC on network VNI (upstream's order), named HOSTNAME in the network's DNS."""
    output.show(session.client.networks.dhcp_add(vni, mac, ip, hostname), output_format,
                lambda row: output.table([{**row, "reserved": True}], _DHCP_COLUMNS))


@dhcp.command("remove")
@click.argument("vni")
@click.argument("mac")
@click.pass_obj
def dhcp_remove(session, vni: str, mac: str) -> None:
    """Remove the reservation for MAC on network VNI."""
    session.client.networks.dhcp_remove(vni, mac)
    click.echo(f"Removed the reservation for {mac} on network {vni}")


@dhcp.command("list")
@click.argument("vni")
@output.list_format_option
@click.pass_obj
def dhcp_list(session, vni: str, output_format: str) -> None:
    """Reservations and the leases the router recorded on network VNI."""
    output.show(session.client.networks.dhcp_list(vni), output_format,
                lambda rows: output.table(rows, _DHCP_COLUMNS))
