"""What a node does when its libvirt stops answering: `libvirt_lost_action` after `libvirt_lost_after` seconds.

Cluster config keys, with per-node overrides in ``libvirt_lost_overrides`` {NODE: {KEY: VALUE}}. ``fault``
(the default) raises a critical fault through the node's ``libvirt`` check; ``fence`` also has the node fence
itself through its self-fence (`pvc.node.self_fence`), never in maintenance mode and never while more than
half of the nodes have lost their libvirt at once (`too_many_lost`: a cluster-wide libvirt upgrade, which the
leader's ``libvirt`` cluster check raises as one fault)."""
from typing import Any

from pvc import cluster_config
from pvc.errors import InvalidInput

ACTIONS = cluster_config.LIBVIRT_LOST_ACTIONS
KEYS = ("libvirt_lost_action", "libvirt_lost_after")
OVERRIDES_KEY = "libvirt_lost_overrides"
DEFAULTS: dict[str, Any] = {key: cluster_config.BY_NAME[key].default for key in KEYS}
MINIMUM_AFTER_S = 5.0
"""`libvirt_lost_after` is never less than this: a libvirtd restarting (an upgrade) is not a lost libvirt."""


def resolve(cluster_config: dict[str, Any], node: str) -> dict[str, Any]:
    """`node`'s settings: the cluster's, with the node's overrides applied (`libvirt_lost_after` never under
    the minimum, whatever a hand-edited config says)."""
    settings = {**DEFAULTS, **{key: cluster_config[key] for key in KEYS if cluster_config.get(key) is not None},
                **((cluster_config.get(OVERRIDES_KEY) or {}).get(node) or {})}
    settings["libvirt_lost_after"] = max(float(settings["libvirt_lost_after"]), MINIMUM_AFTER_S)
    return settings


def check(settings: dict[str, Any], what: str = "setting") -> None:
    """Refuse (one line naming the key) an unknown action or a `libvirt_lost_after` under the minimum."""
    action = settings.get("libvirt_lost_action")
    if action is not None and action not in ACTIONS:
        raise InvalidInput(f"libvirt_lost_action {what} must be one of {', '.join(ACTIONS)}, not {action!r}")
    after = settings.get("libvirt_lost_after")
    if after is not None and (isinstance(after, bool) or not isinstance(after, (int, float))
                              or after < MINIMUM_AFTER_S):
        raise InvalidInput(f"libvirt_lost_after {what} must be a number of seconds of at least "
                           f"{MINIMUM_AFTER_S:g}, not {after!r}")


def too_many_lost(stale: int, nodes: int) -> bool:
    """Whether `stale` of `nodes` running nodes without libvirt is a cluster-wide event rather than one host's
    failure: more than half of them."""
    return nodes > 1 and 2 * stale > nodes
