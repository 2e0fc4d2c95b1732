"""The router's nftables table: forwarding, NAT to the upstream, and each managed network's ACL chains.

The whole table (`TABLE`) is rendered from the records and replaced in one `nft -f` transaction, so a rule set
is never half-applied, and the table is PVC's alone: nothing else in the ruleset is touched. Forwarded packets
from a network's guests pass its ``out`` chain, those to them its ``in`` chain (`pvc.network_acl`); what the
guests send out of the upstream interface leaves with the router's upstream address (masquerade).
"""
import subprocess
from typing import Any, Iterable, Mapping

from pvc.errors import OperationFailed
from pvc.node.network.devices import bridge_name

TABLE = "pvc_router"
NFT_TIMEOUT_S = 10


def render(networks: Iterable[Mapping[str, Any]], upstream: str | None) -> str:
    forward, chains, nat = [], [], []
    for record in sorted(networks, key=lambda record: record["vni"]):
        vni, bridge = record["vni"], bridge_name(record["vni"])
        forward += [f'iifname "{bridge}" jump vni{vni}_out', f'oifname "{bridge}" jump vni{vni}_in']
        for direction in ("in", "out"):
            rules = [acl["rule"] for acl in sorted(record.get("acls") or [], key=lambda acl: (acl["order"],
                                                                                           acl["name"]))
                     if acl["direction"] == direction]
            chains.append(f"\tchain vni{vni}_{direction} {{\n" + "".join(f"\t\t{rule}\n" for rule in rules) + "\t}\n")
        if upstream and record.get("ipv4_network"):
            nat.append(f'ip saddr {record["ipv4_network"]} oifname "{upstream}" masquerade')
    body = "\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n" + \
        "".join(f"\t\t{line}\n" for line in forward) + "\t}\n" + "".join(chains) + \
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n" + \
        "".join(f"\t\t{line}\n" for line in nat) + "\t}\n"
    return f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{body}}}\n"


def apply(ruleset: str) -> None:
    _nft(["-f", "-"], ruleset)


def remove() -> None:
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    if f"table inet {TABLE}" in listed.stdout:
        _nft(["delete", "table", "inet", TABLE])


def _nft(arguments: list[str], stdin: str | None = None) -> None:
    try:
        result = subprocess.run(["nft", *arguments], input=stdin, capture_output=True, text=True,
                                timeout=NFT_TIMEOUT_S)
    except FileNotFoundError:
        raise OperationFailed("nft is not installed (Debian nftables)") from None
    if result.returncode != 0:
        raise OperationFailed(f"nft {' '.join(arguments)}: {result.stderr.strip()}")
