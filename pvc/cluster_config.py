"""The cluster config's keys (`pvc cluster config`, ``cluster.config()``), each declared once, here.

The cluster config is one ZooKeeper value (`pvc.schema.CONFIG`) every coordinator and node reads. Its defaults
(`pvc.schema.DEFAULT_CLUSTER_CONFIG`), the fencing settings' defaults (`pvc.fencing_settings.DEFAULTS`), the keys
the coordinator accepts, the options of `pvc cluster config` and the manual's reference all come from `KEYS`.
This module imports nothing of PVC's, so every other module may derive from it.
"""
from dataclasses import dataclass
from typing import Any, Literal

MIGRATION_METHODS = ("live", "shutdown", "auto")
SUCCESSFUL_FENCE_ACTIONS = ("migrate", "none")
LIBVIRT_LOST_ACTIONS = ("fault", "fence")

SELF_FENCE_DEADLINE = "self-fence-deadline"
"""The rule `pvc.fencing_settings.violation` enforces first: a cut-off node stops its VMs before the leader's
fence deadline."""
KAZOO_DETECTION = "kazoo-detection"
"""The rule `pvc.fencing_settings.violation` enforces second: a node does not fence itself during an ordinary
ZooKeeper server failover."""

RULES: dict[str, str] = {
    SELF_FENCE_DEADLINE: (
        "A node cut off from ZooKeeper must have stopped its VMs before the leader may start them elsewhere: its "
        "self-fence deadline (suicide_intervals × keepalive_interval, plus a watchdog period of min(0.25 s, "
        "keepalive_interval / 10), a peer check of {peer_check}, a libvirt stop budget of {libvirt_stop} and a "
        "kill budget of {kill} keepalive intervals) must be shorter than the leader's fence deadline "
        "(fence_intervals × keepalive_interval). pvcapid and pvcnoded refuse to start, and `pvc cluster config` "
        "refuses a change, that breaks it, for the cluster and for every node's overrides."),
    KAZOO_DETECTION: (
        "The silence after which a node fences itself (suicide_intervals × keepalive_interval) must be longer "
        "than kazoo's detection of a dead ZooKeeper server (2/3 of the node's negotiated session timeout, "
        "zookeeper_session_timeout at most), or an ordinary ZooKeeper server failover would stop VMs. Checked "
        "against the session timeout each node reports."),
}
"""Every safety rule a setting takes part in, by name; `pvc.config.Setting.rules` and `ClusterKey.rules` name
them. The budgets in braces are `pvc.fencing_settings`' own (`rule_text` fills them in)."""

Kind = Literal["bool", "str", "choice", "int", "float", "names", "mapping"]


@dataclass(frozen=True)
class ClusterKey:
    """One key of the cluster config."""

    name: str
    default: Any
    """The value while the config has none (None: absent)."""
    description: str
    kind: Kind
    choices: tuple[str, ...] = ()
    initial: bool = False
    """Written when the cluster is created (`pvc.schema.DEFAULT_CLUSTER_CONFIG`)."""
    fencing: bool = False
    """A fencing setting: seeded at a coordinator's start from its own pvcapid.yaml when the config lacks it,
    overridable per node (``fencing_overrides``), and checked against `RULES`."""
    settable: bool = True
    """Whether ``cluster.config(KEY=...)`` (`pvc cluster config --KEY`) sets it; others have commands of their
    own."""
    rules: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


KEYS: tuple[ClusterKey, ...] = (
    ClusterKey("maintenance", False, "while on, the leader fences no node and a node cut off from ZooKeeper "
               "keeps its VMs; set with `pvc cluster maintenance on|off`", "bool", initial=True, settable=False),
    ClusterKey("default_selector", "mem", "migration selector for VMs that name none", "str", initial=True),
    ClusterKey("migration_method", "auto", "how VMs migrate unless they say otherwise", "choice",
               MIGRATION_METHODS, initial=True),
    ClusterKey("memory_overcommit", 1.0, "how many times its memory a node may give to the running VMs placed "
               "on it (0.1 to 100); placement refuses a node past it", "float", initial=True),
    ClusterKey("allow_host_devices", False, "whether VM definitions may pass host devices (<hostdev>) and disks "
               "naming host paths", "bool", initial=True),
    ClusterKey("fence_chain", ["ipmi"], "fencing policies tried in order on a dead node until one confirms it "
               "is off (e.g. ipmi)", "names", initial=True),
    ClusterKey("underlay_mtu", 1500, "MTU the nodes' uplinks carry: the most a bridged network's MTU may be, "
               "and 50 more than a managed (VXLAN) network's", "int", initial=True),
    ClusterKey("accept_io_fence", False, "whether a dead node isolated from storage but not proven off may have "
               "its VMs recovered (only when its BMC could not be reached at all)", "bool", initial=True),
    ClusterKey("fence_options", None, "options of each fencing level as a YAML/JSON mapping {POLICY: {OPTION: "
               "VALUE}}, replacing the stored ones ('-' reads it from stdin, keeping a password off the command "
               "line); a password is stored sealed and shown as (set); never a BMC host or port: each node's is "
               "its own", "mapping"),
    ClusterKey("keepalive_interval", 5, "seconds between node keepalives (and reconcile passes)", "float",
               fencing=True, rules=(SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
    ClusterKey("fence_intervals", 6, "keepalive intervals a node may miss before it is marked dead", "int",
               fencing=True, rules=(SELF_FENCE_DEADLINE,)),
    ClusterKey("suicide_intervals", 3, "keepalive intervals a node cut off from ZooKeeper waits before stopping "
               "its VMs (0: never)", "int", fencing=True, rules=(SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
    ClusterKey("successful_fence", "migrate", "after a confirmed fence: restart the node's VMs elsewhere "
               "(migrate) or not (none)", "choice", SUCCESSFUL_FENCE_ACTIONS, fencing=True),
    ClusterKey("libvirt_lost_action", "fault", "what a node whose libvirt stops answering does after "
               "libvirt_lost_after: fault (raise a critical fault) or fence (also fence itself, so its VMs are "
               "recovered elsewhere; never in maintenance mode, nor while most nodes have lost libvirt)", "choice",
               LIBVIRT_LOST_ACTIONS),
    ClusterKey("libvirt_lost_after", 30.0, "seconds a node's libvirt may not answer before its "
               "libvirt_lost_action (at least 5)", "float"),
    ClusterKey("libvirt_lost_overrides", None, "per-node libvirt-lost settings {NODE: {KEY: VALUE}}, set one node "
               "at a time with `pvc cluster config --node NODE --libvirt-lost-action ...`", "mapping",
               settable=False),
    ClusterKey("autobackup_tag", None, "VMs carrying this tag are backed up by each scheduled autobackup run "
               "(and by `pvc vm autobackup run` without VM names)", "str"),
    ClusterKey("autobackup_destination", None, "directory under the exporting node's backup_roots that autobackup "
               "writes to, one subdirectory per VM", "str"),
    ClusterKey("autobackup_full_interval", 7, "every this many autobackups of a VM, a full export begins a new chain; "
               "the ones between are incremental (1: always full)", "int"),
    ClusterKey("autobackup_keep_chains", 2, "how many chains (a full export and the incrementals on it) autobackup "
               "keeps per VM; older chains are removed whole", "int"),
    ClusterKey("autobackup_schedule", None, "when the leader starts an autobackup run: 'Nh' (every N hours, 1 to "
               "168) or 'HH:MM' (daily, UTC); 'off' stops the schedule", "str"),
    ClusterKey("automirror_tag", None, "VMs carrying this tag are sent to automirror_destination by each scheduled "
               "automirror run (and by `pvc vm automirror run` without VM names)", "str"),
    ClusterKey("automirror_destination", None, "the PVC cluster automirror sends to: a mirror destination stored by "
               "an earlier `pvc vm snapshot send --to NAME`", "str"),
    ClusterKey("automirror_keep", 3, "how many automirror snapshots of each VM are kept on this cluster (the newest "
               "is the parent of the next incremental send)", "int"),
    ClusterKey("automirror_schedule", None, "when the leader starts an automirror run: 'Nh' (every N hours, 1 to "
               "168) or 'HH:MM' (daily, UTC); 'off' stops the schedule", "str"),
    ClusterKey("fencing_overrides", None, "per-node fencing settings {NODE: {KEY: VALUE}}, set one node at a "
               "time with `pvc cluster config --node NODE --KEY VALUE`", "mapping", settable=False,
               rules=(SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
)

BY_NAME: dict[str, ClusterKey] = {key.name: key for key in KEYS}
FENCING_KEYS: tuple[str, ...] = tuple(key.name for key in KEYS if key.fencing)
OVERRIDES_KEY = "fencing_overrides"
SETTABLE_KEYS: tuple[str, ...] = tuple(key.name for key in KEYS if key.settable)
