"""The leader's choice of the router node: which node runs managed networks' services (`pvc.node.network.router`).

The role stays where it is while that node runs and is ready. When it no longer is (flushed, stopped, no longer
a router, or fenced), the leader first records that no node routes, so the old router stops its services; only
once no node still reports routing, other than one fenced (off), does it give the role to another: the first
ready ``router: true`` node by name. A router that is merely dead, not yet fenced, keeps the role: it may only be
cut off, still answering on its side of a partition, so nothing starts beside it until the fence confirms it
off. Each write checks the leader's own election node, so a deposed leader changes nothing.
"""
import logging
import time
from typing import Any

from pvc import schema
from pvc.cache import OWN_VALUE
from pvc.rpc.context import CoordinatorContext

log = logging.getLogger(__name__)


def choose_router(context: CoordinatorContext, leader_node: str) -> None:
    """One step towards a router that runs: keep it, release it, or give the role to a ready router node."""
    nodes = {name: raw for name, raw in context.cache.nodes.snapshot().items() if raw.get(OWN_VALUE)}
    data, stat = context.store.zk.get(schema.NETWORK_ROUTER) if context.store.zk.exists(schema.NETWORK_ROUTER) \
        else (None, None)
    current = (schema.decode(data) or {}).get("node") if data else None
    if current is not None:
        raw = nodes.get(current)
        if raw is not None and (_ready(raw) or raw.get("daemon_state") == "dead"):
            return
        log.info("router node %s is %s: its services are to stop", current,
                 raw.get("daemon_state") if raw else "gone")
        _record(context, leader_node, stat, {"node": None, "previous": current, "since": time.time()})
        return
    still = [name for name, raw in nodes.items()
             if (raw.get("networks") or {}).get("routing") and raw.get("daemon_state") != "fenced"]
    if still:
        return
    candidates = sorted(name for name, raw in nodes.items() if _ready(raw))
    if candidates:
        log.info("router node is now %s", candidates[0])
        _record(context, leader_node, stat, {"node": candidates[0], "since": time.time()})


def _ready(raw: dict[str, Any]) -> bool:
    return bool(raw[OWN_VALUE].get("router")) and raw.get("daemon_state") == "run" and \
        raw.get("domain_state") == "ready"


def _record(context: CoordinatorContext, leader_node: str, stat: Any, value: dict[str, Any]) -> None:
    transaction = context.store.transaction(leader_node)
    if stat is None:
        transaction.create(schema.NETWORK_ROUTER, value)
    else:
        transaction.set(schema.NETWORK_ROUTER, value, version=stat.version)
    transaction.commit()
