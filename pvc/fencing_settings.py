"""The fencing settings every node and coordinator reads from the cluster config, and the rule they must keep.

They live in the cluster config in ZooKeeper (`schema.CONFIG`), with per-node overrides under
``fencing_overrides`` (``{NODE: {KEY: VALUE}}``), so that a node's self-fence and the leader's fence deadline
are computed from the same numbers. A key the cluster config does not have yet falls back to the reader's
own YAML value (pvcapid seeds the keys it has at start, `seed`), else to `DEFAULTS`.

The rule (`violation`): a node cut off from ZooKeeper must have stopped its VMs before the leader may start
them elsewhere. The leader marks a node dead after `fence_intervals` × `keepalive_interval` seconds without
a keepalive change; a node counts its own silence from the start of its last keepalive write that ZooKeeper
acknowledged (the leader cannot have seen a later one). The slowest path of its self-fence
(`pvc.node.self_fence`) is: `suicide_intervals` keepalive intervals of silence, noticed up to one watchdog
period late, then its check of its peers (waited for at most its budget), then libvirt destroying its guests
(retried until the libvirt budget is spent, however long libvirtd takes to answer), then the fallback of
killing the guests' QEMU processes and waiting for them to be gone. That sum must be shorter. (After a
ZooKeeper outage both sides count from its end, and both add `reconnect_grace_s`: the leader for every node it
has not heard from since it regained ZooKeeper, a node before "a peer reaches ZooKeeper" stops its VMs.)
And because kazoo takes two thirds of the negotiated session timeout to notice a dead server and move to
another one (a failover the session survives), the silence that starts a self-fence must be longer than that,
or an ordinary ZooKeeper server failover would stop VMs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kazoo.exceptions import BadVersionError

from pvc import cluster_config, schema
from pvc.errors import InvalidInput

DEFAULTS: dict[str, Any] = {name: cluster_config.BY_NAME[name].default for name in cluster_config.FENCING_KEYS}
"""Production defaults: dead after 30 s of silence; a cut-off node has stopped its VMs by 22.75 s."""
KEYS = tuple(DEFAULTS)
OVERRIDES_KEY = cluster_config.OVERRIDES_KEY
SUCCESSFUL_FENCE_ACTIONS = cluster_config.SUCCESSFUL_FENCE_ACTIONS

PEER_CHECK_INTERVALS = 0.5
"""Keepalive intervals a cut-off node gives its own ZooKeeper probe and its peers' answers."""
LIBVIRT_STOP_INTERVALS = 0.8
"""Keepalive intervals a cut-off node gives libvirt to destroy its guests, retrying within them."""
KILL_INTERVALS = 0.2
"""Keepalive intervals a cut-off node gives itself to kill the QEMU processes libvirt did not stop and see them
gone (SIGKILL takes effect in milliseconds; the rest is margin for a loaded machine)."""
KAZOO_DETECTION_FRACTION = 2 / 3
"""kazoo's read timeout, as a fraction of the negotiated session timeout."""


def rule_text(rule: str) -> str:
    """A safety rule of `pvc.cluster_config.RULES` in words, with this module's budgets."""
    return cluster_config.RULES[rule].format(peer_check=f"{PEER_CHECK_INTERVALS:g}",
                                             libvirt_stop=f"{LIBVIRT_STOP_INTERVALS:g}", kill=f"{KILL_INTERVALS:g}")


@dataclass(frozen=True)
class FencingSettings:
    keepalive_interval: float
    fence_intervals: int
    suicide_intervals: int
    successful_fence: str

    @property
    def fence_deadline_s(self) -> float:
        """Seconds of keepalive silence after which the leader marks the node dead."""
        return self.fence_intervals * self.keepalive_interval

    @property
    def reconnect_grace_s(self) -> float:
        """Seconds a node is given, besides its deadline, to be heard from again once ZooKeeper answers after an
        outage: the leader adds them for every node it has not heard from since it reconnected itself, and a
        node that found an outage adds as many before a later "a peer reaches ZooKeeper, this node does not"
        stops its VMs. Both sides count from the end of the outage, so the rule holds unchanged."""
        return self.fence_deadline_s

    @property
    def self_fence_enabled(self) -> bool:
        return self.suicide_intervals > 0

    @property
    def silence_before_self_fence_s(self) -> float:
        return self.suicide_intervals * self.keepalive_interval

    @property
    def peer_check_s(self) -> float:
        return PEER_CHECK_INTERVALS * self.keepalive_interval

    @property
    def libvirt_stop_budget_s(self) -> float:
        return LIBVIRT_STOP_INTERVALS * self.keepalive_interval

    @property
    def kill_budget_s(self) -> float:
        return KILL_INTERVALS * self.keepalive_interval

    @property
    def watchdog_period_s(self) -> float:
        return min(0.25, self.keepalive_interval / 10)

    @property
    def self_fence_deadline_s(self) -> float:
        """Seconds from the node's last acknowledged keepalive by which a cut-off node has stopped its VMs, on
        the slowest path its self-fence can take."""
        return (self.silence_before_self_fence_s + self.watchdog_period_s + self.peer_check_s
                + self.libvirt_stop_budget_s + self.kill_budget_s)

    def describe_self_fence(self) -> str:
        return (f"self-fence deadline {self.self_fence_deadline_s:g} s (suicide_intervals "
                f"{self.suicide_intervals} × keepalive_interval {self.keepalive_interval:g} s + watchdog period "
                f"{self.watchdog_period_s:g} s + peer check {self.peer_check_s:g} s + stopping VMs through "
                f"libvirt {self.libvirt_stop_budget_s:g} s + killing what libvirt did not stop "
                f"{self.kill_budget_s:g} s)")

    def describe_fence(self) -> str:
        return (f"the leader's fence deadline {self.fence_deadline_s:g} s (fence_intervals "
                f"{self.fence_intervals} × keepalive_interval {self.keepalive_interval:g} s)")


def violation(settings: FencingSettings, session_timeout_s: float | None = None) -> str | None:
    """Why `settings` (with this negotiated ZooKeeper session timeout, if known) are unsafe, or None."""
    if not settings.self_fence_enabled:
        return None
    if settings.self_fence_deadline_s >= settings.fence_deadline_s:
        return (f"{settings.describe_self_fence()} does not end before {settings.describe_fence()}: a node cut "
                "off from ZooKeeper could still run its VMs when they start elsewhere")
    if session_timeout_s is not None:
        lag = KAZOO_DETECTION_FRACTION * session_timeout_s
        if settings.silence_before_self_fence_s <= lag:
            return (f"suicide_intervals {settings.suicide_intervals} × keepalive_interval "
                    f"{settings.keepalive_interval:g} s = {settings.silence_before_self_fence_s:g} s is not longer "
                    f"than kazoo's detection lag {lag:.2f} s (2/3 of the negotiated ZooKeeper session timeout "
                    f"{session_timeout_s:g} s): a ZooKeeper server failover would make nodes stop their VMs")
    return None


def check(values: Mapping[str, Any], where: str = "fencing setting") -> dict[str, Any]:
    """`values` (some of `KEYS`) checked one by one; `InvalidInput` names the first bad key."""
    for key, value in values.items():
        if key not in DEFAULTS:
            raise InvalidInput(f"unknown {where} {key!r} (known: {', '.join(KEYS)})")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "keepalive_interval" and not (number and value > 0):
            raise InvalidInput(f"{where} keepalive_interval must be a number of seconds above 0, not {value!r}")
        if key in ("fence_intervals", "suicide_intervals"):
            least = 1 if key == "fence_intervals" else 0
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise InvalidInput(f"{where} {key} must be a whole number of at least {least}, not {value!r}")
        if key == "successful_fence" and value not in SUCCESSFUL_FENCE_ACTIONS:
            raise InvalidInput(f"{where} successful_fence must be one of {', '.join(SUCCESSFUL_FENCE_ACTIONS)}, "
                               f"not {value!r}")
    return dict(values)


def resolve(cluster_config: Mapping[str, Any], node: str | None = None,
            fallback: Mapping[str, Any] | None = None) -> FencingSettings:
    """The settings that apply to `node`: its overrides, else the cluster's, else `fallback`, else `DEFAULTS`."""
    overrides = ((cluster_config.get(OVERRIDES_KEY) or {}).get(node) or {}) if node else {}
    values = {**DEFAULTS, **{key: value for key, value in (fallback or {}).items() if key in DEFAULTS},
              **{key: cluster_config[key] for key in KEYS if key in cluster_config}, **overrides}
    return FencingSettings(**{key: values[key] for key in KEYS})


def seed(zk, initial: Mapping[str, Any]) -> dict[str, Any]:
    """Add to the cluster config those of `initial` it does not have yet (a version-checked write, so a
    concurrent change is never overwritten); returns the cluster config as it then is."""
    initial = check({key: value for key, value in initial.items() if key in DEFAULTS})
    while True:
        data, stat = zk.get(schema.CONFIG)
        current = schema.decode(data) or {}
        missing = {key: value for key, value in initial.items() if key not in current}
        if not missing:
            return current
        try:
            zk.set(schema.CONFIG, schema.encode({**current, **missing}), version=stat.version)
            return {**current, **missing}
        except BadVersionError:
            continue
