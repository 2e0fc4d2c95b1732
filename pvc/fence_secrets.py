"""Where fencing keeps passwords in ZooKeeper, sealed (`pvc.secrets_box`), and how each is opened or shown.

Two places hold one: a node's record (``bmc.password``, sealed by its pvcnoded from ``bmc_password``) and
the cluster config's ``fence_options`` (``{POLICY: {"password": ...}}``, sealed by the coordinator that
stores them). The leader opens them only in memory, just before a fencing policy runs, so a policy (a
third party's too) still receives a plain password. A plain password found there (written by an older PVC)
still works, with a warning each time it is used. Listings show `SHOWN` in place of any password.
"""
import logging
from typing import Any, Mapping

from pvc.errors import InvalidInput
from pvc.secrets_box import SHOWN, SecretError, SecretsBox, is_sealed, shown

log = logging.getLogger(__name__)


def node_context(node: str) -> str:
    return f"node {node} bmc password"


def options_context(policy: str) -> str:
    return f"fence_options {policy} password"


def sealed_bmc(box: SecretsBox, node: str, bmc: Mapping[str, Any]) -> dict[str, Any]:
    """A node's BMC settings as its record stores them: the password sealed."""
    password = bmc.get("password")
    return {**bmc, "password": box.seal(password, node_context(node)) if password else None}


def sealed_options(box: SecretsBox, options: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """New ``fence_options`` as the cluster config stores them: each policy's ``password`` sealed.

    A password given as `SHOWN` (what `pvc cluster config` printed) keeps the one stored in `current`; one
    already sealed is kept if it opens here."""
    if not isinstance(options, Mapping) or not all(isinstance(name, str) and isinstance(values, Mapping)
                                                   for name, values in options.items()):
        raise InvalidInput(f"fence_options must map fencing policy names to mappings of options, not {options!r}")
    stored = {}
    for policy, values in options.items():
        values = dict(values)
        password = values.get("password")
        if password == SHOWN:
            kept = (current.get(policy) or {}).get("password")
            if not kept:
                raise InvalidInput(f"fence_options {policy}: password {SHOWN!r} keeps the stored one, but none "
                                   f"is stored: give the password itself")
            values["password"] = kept
        elif is_sealed(password):
            try:
                box.open(password, options_context(policy))
            except SecretError as error:
                raise InvalidInput(str(error)) from None
        elif password is not None:
            if not isinstance(password, str) or not password:
                raise InvalidInput(f"fence_options {policy}: password must be a non-empty string")
            values["password"] = box.seal(password, options_context(policy))
        stored[policy] = values
    return stored


def opened_node(box: SecretsBox, node: Mapping[str, Any]) -> dict[str, Any]:
    """The node record a fencing policy receives: its BMC password in plain text, in memory only."""
    bmc = node.get("bmc") or {}
    password = bmc.get("password")
    if not password:
        return dict(node)
    return {**node, "bmc": {**bmc, "password": _opened(box, password, node_context(node["name"]),
                                                       "restart its pvcnoded to seal it")}}


def opened_options(box: SecretsBox, policy: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """One policy's fence options as it receives them: ``password`` in plain text, in memory only."""
    password = options.get("password")
    if not password:
        return dict(options)
    return {**options, "password": _opened(box, password, options_context(policy),
                                           "set it again with pvc cluster config --fence-options to seal it")}


def _opened(box: SecretsBox, password: str, context: str, remedy: str) -> str:
    if is_sealed(password):
        return box.open(password, context)
    log.warning("%s is stored in plain text in ZooKeeper (an older record): %s", context, remedy)
    return password


def shown_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``fence_options`` as listings show them: every password `SHOWN`."""
    return {policy: {**values, **({"password": shown(values["password"])} if "password" in values else {})}
            for policy, values in options.items()}


def shown_bmc(bmc: Mapping[str, Any] | None) -> dict[str, Any]:
    """A node's BMC as `node info` shows it, in flat keys: address and user, the password `SHOWN`."""
    bmc = bmc or {}
    return {"bmc_host": bmc.get("host"), "bmc_port": bmc.get("port"), "bmc_user": bmc.get("user"),
            "bmc_password": shown(bmc.get("password"))}
