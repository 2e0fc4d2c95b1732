"""Firewall rules (ACLs) of a managed network: one nftables rule each, checked before it is accepted.

A rule is placed, as its user wrote it, in PVC's own chain for its network and direction on the router node
(``in``: forwarded to the network's guests, ``out``: forwarded from them), in the order of its ``order``. So a
rule must be exactly one rule: anything that could end the chain and start another statement is refused before
`nft` sees it (a ``;``, a line break, a brace closing what the rule did not open, a jump elsewhere), and what
is left must pass ``nft --check`` inside a chain of a scratch table, whose reason is the user's error.
"""
import re
import subprocess
from typing import Any, Mapping

from pvc import schema
from pvc.errors import InvalidInput

DIRECTIONS = ("in", "out")
MAX_RULE_LENGTH = 512
NFT_TIMEOUT_S = 10

_FORBIDDEN = {";": "a ';' (a rule is one statement)", "\n": "a line break", "\r": "a line break",
              "\\": "a backslash"}
_OTHER_CHAINS = re.compile(r"\b(jump|goto)\b")
_LEADING_COMMANDS = re.compile(r"^\s*(table|chain|flush|add|delete|insert|replace|create|list|reset|rename|"
                               r"define|include|destroy|monitor|export|import)\b")


def check_acl(name: Any, direction: Any, order: Any, rule: Any, check_with_nft: bool = True) -> dict[str, Any]:
    """An ACL record from what a user gave, or `InvalidInput` naming what is wrong (nft's own reason for a
    rule nft refuses)."""
    schema.check_name("ACL", name)
    if direction not in DIRECTIONS:
        raise InvalidInput(f"unknown ACL direction {direction!r} (one of: {', '.join(DIRECTIONS)})")
    if isinstance(order, str) and order.strip().isdigit():
        order = int(order)
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 65535:
        raise InvalidInput(f"invalid ACL order {order!r}: a whole number from 0 to 65535")
    return {"name": name, "direction": direction, "order": order, "rule": check_rule(rule, check_with_nft)}


def check_rule(rule: Any, check_with_nft: bool = True) -> str:
    if not isinstance(rule, str) or not rule.strip():
        raise InvalidInput("an ACL rule is one nftables rule, such as 'tcp dport 22 drop'")
    rule = rule.strip()
    if len(rule) > MAX_RULE_LENGTH:
        raise InvalidInput(f"an ACL rule has at most {MAX_RULE_LENGTH} characters, not {len(rule)}")
    for character, what in _FORBIDDEN.items():
        if character in rule:
            raise InvalidInput(f"ACL rule refused: it holds {what}; give exactly one rule")
    depth = 0
    for character in rule:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if depth < 0:
            raise InvalidInput("ACL rule refused: a '}' closes what the rule did not open; give exactly one rule")
    if depth:
        raise InvalidInput("ACL rule refused: a '{' is left open; give exactly one rule")
    if _LEADING_COMMANDS.match(rule):
        raise InvalidInput("ACL rule refused: it is an nft command, not a rule; give exactly one rule")
    if _OTHER_CHAINS.search(rule):
        raise InvalidInput("ACL rule refused: a rule may not jump to another chain")
    if check_with_nft:
        _nft_check(rule)
    return rule


def _nft_check(rule: str) -> None:
    ruleset = f"table inet pvc_acl_check {{\n\tchain check {{\n\t\t{rule}\n\t}}\n}}\n"
    try:
        result = subprocess.run(["nft", "--check", "-f", "-"], input=ruleset, capture_output=True, text=True,
                                timeout=NFT_TIMEOUT_S)
    except FileNotFoundError:
        raise InvalidInput("ACL rules cannot be checked here: nft (Debian nftables) is not installed") from None
    if result.returncode != 0:
        reasons = [line.split("Error: ", 1)[1] for line in result.stderr.splitlines() if "Error: " in line]
        raise InvalidInput(f"ACL rule refused by nft: {reasons[0] if reasons else result.stderr.strip()}")


def acl_view(vni: int, acl: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": acl["name"], "vni": vni, "direction": acl["direction"], "order": acl["order"],
            "rule": acl["rule"]}
