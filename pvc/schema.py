"""Every ZooKeeper path PVC uses, and how each value is encoded.

No other module builds a path: `grep` for a key finds its one definition here. Values are JSON documents,
one znode per thing that changes on its own (a node's keepalive is written every few seconds, its daemon
state rarely and by others), so writers never overwrite each other's fields.

Each key has one kind of writer (C: coordinators, L: the leader coordinator, N: the node it names or the node
a VM's status came from, A: whoever adds or removes the thing). A node writes only its own reports; what it
wants changed in desired state it asks for in its VM status (`request`), and the leader records it with a
version-checked write that loses to any command issued meanwhile (`pvc.rpc.node_requests`).

    path                               writer  value
    /pvc                               A   root; carries the cluster's digest ACL like every znode below it
    /pvc/schema_version                A   int, `SCHEMA_VERSION` of the layout
    /pvc/config                        C   cluster config (maintenance, default selector, ...); the fencing
                                           settings `keepalive_interval`, `fence_intervals`,
                                           `suicide_intervals`, `successful_fence` and their per-node
                                           `fencing_overrides` {NODE: {KEY: VALUE}} (`pvc.fencing_settings`;
                                           a coordinator seeds the keys missing at start); `fence_options`
                                           {POLICY: {OPTION: VALUE}}, a ``password`` only sealed
                                           (``sealed:v1:...``, `pvc.fence_secrets`)
    /pvc/coordinators/election/*       C   kazoo election contenders; the first holds leadership
    /pvc/coordinators/live/NAME        C   ephemeral: a running coordinator and its URI
    /pvc/nodes/NAME                    N   a node's static facts (CPUs, memory, agent URI, libvirt version),
                                           the keepalive interval it uses and its negotiated ZooKeeper
                                           session timeout (`zookeeper_session_timeout_s`); its "bmc" {host,
                                           port, user, password}, the password only sealed under a key
                                           derived from cluster_secret (`pvc.fence_secrets`)
    /pvc/nodes/NAME/daemon_state       N,L init | run | stop (the node, only over a state of its own, checking
                                           the version it read) | dead | fenced (the leader), and the
                                           release of a fenced node by `node ready` (L: fenced → init);
                                           while dead or fenced the node claims and starts nothing
    /pvc/nodes/NAME/domain_state       L   ready | flushing | flushed | unflushing
    /pvc/nodes/NAME/keepalive          N   live figures, rewritten every keepalive interval
    /pvc/nodes/NAME/vm_stats           N   its VMs' statistics from one bulk libvirt call per interval, one
                                           size-bounded record apart from the keepalive (`pvc.node.vm_stats`)
    /pvc/nodes/NAME/networks           N   {"made": [VNI, ...], "routing": bool}: the client networks whose
                                           devices exist on the node (`pvc.node.network`; a migration source
                                           waits for its target's to name its VM's networks), and whether it
                                           runs the router's services
    /pvc/node_owners/NAME/owner-SEQ    N   ephemeral, sequential: the pvcnoded session running node NAME (the
                                           first one owns it; every write the node makes checks its own still
                                           exists): {"host", "pid", "boot_id", "pid_namespace", "start_time"}
    /pvc/vms/NAME                      C,L a VM's definition: uuid, XML, metadata, volumes it uses (L deletes
                                           it, with its children, once a removal is confirmed); its user tags
                                           as "tags": {TAG: {"protected": bool}} (C: `vm define`, `vm tag`);
                                           "made_from": {"ova": NAME} for a VM the provisioner made from an
                                           OVA (L: the ``provision`` task, `pvc.rpc.provisioning`)
    /pvc/vms/NAME/state                C,L desired state word (start, stop, shutdown, migrate, ...); ``remove``
                                           (C: `vm remove`, or `vm rename` for the old name) marks a removal
                                           its node has yet to confirm: no other command changes it, and the
                                           record goes (C or L, `pvc.rpc.removal`) once the node reports
    /pvc/vms/NAME/placement            C,L {"node": where it is or is to be, "last_node": where it came from,
                                           "task": the flush, ready or recovery that wrote it (L), if one did}
    /pvc/vms/NAME/status               N   what a node last reported: {"node", "running": true | false | null
                                           (unknown: it could not ask libvirt, with "unknown": why), "error",
                                           "request": what it asks the leader to record, or null,
                                           "removed": true once it undefined a VM marked ``remove``,
                                           "migrating_to": the target of a live migration from this node
                                           until the target is known not to run it, "migration_error": why
                                           such a migration failed while that is not known}; a node claims a
                                           VM by writing running here before it starts it
    /pvc/node_vms                      C   the per-node index of placements: {"complete": true} once it names
                                           every VM's placement node (a new cluster's from the start, an older
                                           cluster's once a coordinator built it, `pvc.node_index`)
    /pvc/node_vms/NODE/VM              C,L empty: VM's placement names NODE; created and deleted only in the
                                           transaction that writes (and version-checks) that placement, so a
                                           node watches the VMs its index names instead of every VM (NODE's
                                           folder itself may be created empty by anyone)
    /pvc/vm_uuids/UUID                 C,L the VM name holding a UUID; created with the VM, so UUIDs stay unique;
                                           deleted with the record, once a removal is confirmed
    /pvc/locks/vms/NAME                C   kazoo lock serialising commands on one VM
    /pvc/tasks/ID                      L   a long operation (flush, ready) the leader runs and resumes
    /pvc/requests/ID                   C   a call that changed something, by its client's request id: created in
                                           the call's first transaction, then its result or error, so a retry
                                           is answered instead of done again (`pvc.rpc.retries`; L prunes)
    /pvc/storage/pools/POOL            C   a storage pool: {"backend", "options"} it was made with
    /pvc/storage/volumes/POOL:VOLUME   C,N a volume: {"pool", "name", "size_bytes"} (N: a finished upload)
    /pvc/storage/volumes/POOL:VOLUME/snapshots   C   {SNAPSHOT: {"created": time}} of that volume; one made
                                           by a VM snapshot says so ("vm_snapshot": "VM@NAME")
    /pvc/vm_snapshots/VM/NAME          C,L a whole-VM snapshot (`pvc.rpc.vm_snapshots`): the domain document,
                                           metadata and volumes at that moment; an "intent" {"action":
                                           create | remove | rollback, "coordinator", "session" (its
                                           ZooKeeper session), "node" and "deadline" of a creation,
                                           "handed_over": true once a live coordinator left its failed
                                           creation to L} while a change is under way (L finishes or undoes a
                                           dead coordinator's, or one handed over)
    /pvc/locks/storage/POOL            C,N kazoo lock serialising storage changes within one pool
    /pvc/provisioner/templates/KIND/NAME  C  a system, storage or network template (`pvc.provisioner_records`)
    /pvc/provisioner/profiles/NAME     C   a profile: its type and the names of its components, its cloud-init
                                           user data
    /pvc/provisioner/ovas/NAME         C   an imported OVA: its volumes and the hardware its descriptor declares
                                           (`pvc.rpc.areas.ova`): ``state`` importing (the upload's intent,
                                           written before the ticket) then ready, with pool, volumes,
                                           hardware, manifest status and certificate copied from the report,
                                           and "template"/"profile": the system template and ``ova`` profile
                                           named after it, created in that same transaction (None: the name
                                           was taken, so the OVA owns none), removed with it
    /pvc/provisioner/ovas/NAME/import  N   the importing node's report (`pvc.node.appliance_uploads`):
                                           ``landing`` with the volumes it is about to name, then ``done``
                                           with volumes, hardware and manifest status
    /pvc/provisioner/ovas/NAME/importing  N  ephemeral: held by the node while it imports the OVA
    /pvc/locks/provisioner             C   kazoo lock serialising changes to templates and profiles, so that no
                                           template goes while a profile starts using it
    /pvc/faults/ID                     N,L a fault: what a health check found wrong (`pvc.faults`), written only by
                                           its raiser (node NAME for ID ``node.NAME.CHECK``, the leader for
                                           ``cluster.CHECK``): {"source", "check", "severity", "delta",
                                           "message", "count", "first_seen", "last_seen", "cleared": time or
                                           null}; the raiser prunes it a while after it cleared; C deletes it
                                           on `cluster fault delete` (version-checked)
    /pvc/faults/ID/ack                 C   an acknowledgement: {"time", "occurrence": the first_seen it
                                           acknowledged}; stale once the fault clears and is raised again
    /pvc/networks/VNI                  C   a client network (`pvc.network_records`): type bridged | managed,
                                           description, domain, MTU, IPv4/IPv6 subnets, gateways, DHCP range;
                                           checked whole before it is written; its "acls" (firewall rules,
                                           `pvc.network_acl`) and DHCP "reservations" {MAC: {"ip", "hostname"}}
    /pvc/networks/VNI/leases           N   the router node's DHCP leases of a managed network {MAC: {"ip",
                                           "hostname", "expires"}}, copied from its dnsmasq, so that the next
                                           router starts with them
    /pvc/network_router                L   {"node": the node running managed networks' gateways, DHCP, DNS,
                                           NAT and ACLs, or null; "since"}: chosen by the leader among nodes with
                                           ``router: true``, moved only once the old router reported its
                                           services stopped or was fenced (`pvc.rpc.network_router`)
    /pvc/locks/networks                C   kazoo lock serialising network changes with the VM definitions that
                                           name networks, so no network goes while a VM starts to use it
    /pvc/tasks/ID (kind ``provision``) C,L a VM creation: recorded by the coordinator that was asked, with its
                                           whole plan; run, resumed or rolled back by the leader
                                           (`pvc.rpc.provisioning`)
    /pvc/tasks/ID (kind ``autobackup``) C,L a backup run (`pvc.rpc.backup`): the VMs and settings chosen when
                                           it was recorded, and per VM its step (snapshot, destination, node,
                                           state waiting | begun | exporting | done | failed), written before
                                           each action, so the next leader resumes it without a second backup
    /pvc/autobackup/run                C,L {"task": ID}: the autobackup run in progress, created with its task
                                           and deleted as it ends, so runs never overlap
    /pvc/autobackup/schedule           L   {"last_run": time}: when the schedule last started a run (or was
                                           first seen), from which the next is due
    /pvc/autobackup/outcome            L   {"task", "state": done | failed, "finished", "errors"}: the last
                                           run's outcome, which the leader's ``autobackup`` check raises as a
                                           fault while it is failed
    /pvc/mirror/destinations/NAME      C   a cluster this one sends mirrors to (`pvc.rpc.mirror.destinations`):
                                           {"uris", "tls_ca", "api_key"}, the key only sealed (``sealed:v1:``,
                                           `pvc.secrets_box`, context "mirror destination NAME api key")
    /pvc/mirror/vms/VM                 C   on a cluster receiving a mirror (`pvc.rpc.mirror.receive`): {"source":
                                           {"cluster", "destination"}, "snapshots": [{"name", "source_created"}]
                                           oldest first, "intent": {"send_id", "snapshot", "parent", "volumes",
                                           "deadline", "coordinator"} while a send is being applied}; the VM's
                                           state is ``mirror`` until it is promoted, which removes this record
    /pvc/locks/mirrors/VM              C   kazoo lock serialising the sends received for one VM and its promotion
    /pvc/mirror/outgoing/VM            C   on a sending cluster, while a send is unsettled on its destination
                                           (`pvc.rpc.mirror.send`): {"send_id", "destination", "snapshot",
                                           "coordinator", "session"}; a later send of the VM whose sender's
                                           session is gone undoes it there first
    /pvc/tasks/ID (kind ``automirror``) C,L a scheduled mirror run (`pvc.rpc.mirror.automirror`): the VMs, the
                                           settings and one step per VM (waiting | begun | done | failed |
                                           skipped), written before each VM's snapshot and send
    /pvc/mirror/run                    C,L {"task": ID}: the automirror run in progress
    /pvc/mirror/schedule               L   {"last_run": time}: when the schedule last started an automirror run
    /pvc/mirror/outcome                L   {"task", "state", "finished", "errors"}: the last automirror run's outcome
    /pvc/autobackup/vms/VM             L   a VM's backup chains, oldest first: [{"id", "backups": [{"snapshot",
                                           "directory", "node", "kind": full | incremental, "bytes",
                                           "created"}]}], "removing": chains whose exports retention is
                                           removing; written in the transaction that settles a VM's step
"""
import json
import re
from typing import Any

from pvc import cluster_config
from pvc.errors import InvalidInput

SCHEMA_VERSION = 1

ROOT = "/pvc"
SCHEMA_VERSION_PATH = f"{ROOT}/schema_version"
CONFIG = f"{ROOT}/config"
COORDINATORS = f"{ROOT}/coordinators"
ELECTION = f"{COORDINATORS}/election"
LIVE_COORDINATORS = f"{COORDINATORS}/live"
LEADER_HANDOFF = f"{COORDINATORS}/handoff"
"""A requested graceful handoff of leadership (`pvc node primary|secondary`): ``{"to": COORDINATOR}`` or
``{"away_from": COORDINATOR}``, ``requested`` (epoch seconds); the leader that lets go adds ``released_by``
(its last write as leader), the one that takes over ``taken_by`` and ``released_zxid`` (its first), which
settles it."""
HANDOFF_TIMEOUT_S = 30
NODES = f"{ROOT}/nodes"

VMS = f"{ROOT}/vms"
VM_UUIDS = f"{ROOT}/vm_uuids"
NODE_VMS = f"{ROOT}/node_vms"
LOCKS = f"{ROOT}/locks"
VM_LOCKS = f"{LOCKS}/vms"
TASKS = f"{ROOT}/tasks"
REQUESTS = f"{ROOT}/requests"
NODE_OWNERS = f"{ROOT}/node_owners"

NODE_KEYS = ("daemon_state", "domain_state", "keepalive", "vm_stats", "networks")
"""The child znodes of a node, each written by whoever owns that fact."""

VM_KEYS = ("state", "placement", "status")
"""A VM's child znodes: what is wanted (state, placement) apart from what its node reports (status)."""

VM_STATES = ("start", "restart", "shutdown", "stop", "disable", "migrate", "unmigrate", "fail", "provision", "remove",
             "mirror")
RUNNING_STATES = ("start", "restart", "migrate", "unmigrate")
"""Desired states in which a VM should be running on its node."""
MIRROR_STATE = "mirror"
"""A copy of a VM kept by another cluster's sends (`pvc.rpc.mirror`): defined, never started until promoted."""

DAEMON_STATES = ("init", "run", "stop", "dead", "fenced")
HELD_DAEMON_STATES = ("dead", "fenced")
"""Daemon states the leader writes: such a node claims and starts no VM until `node ready` releases it (the
leader's ``fenced`` → ``init``, `pvc.node.fence_hold`)."""
DOMAIN_STATES = ("ready", "flushing", "flushed", "unflushing")

DEFAULT_CLUSTER_CONFIG: dict[str, Any] = {key.name: key.default for key in cluster_config.KEYS if key.initial}
"""The cluster config as a new cluster starts with it; every key is declared in `pvc.cluster_config`."""
MIGRATION_METHODS = cluster_config.MIGRATION_METHODS
DEFAULT_FENCE_CHAIN = tuple(cluster_config.BY_NAME["fence_chain"].default)
"""Fencing policies tried in order on a dead node until one confirms it is off (cluster config `fence_chain`)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(kind: str, name: object) -> str:
    """A name that is safe as one path segment everywhere PVC uses it (ZooKeeper, files, libvirt)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid {kind} name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def node(name: str) -> str:
    return f"{NODES}/{check_name('node', name)}"


def election_contender(child: str) -> str:
    """One coordinator's place in the election (a child named by kazoo's lock recipe)."""
    return f"{ELECTION}/{child}"


def node_owners(name: str) -> str:
    return f"{NODE_OWNERS}/{check_name('node', name)}"


NODE_OWNER_PREFIX = "owner-"


def node_key(name: str, key: str) -> str:
    if key not in NODE_KEYS:
        raise ValueError(f"unknown node key {key!r}")
    return f"{node(name)}/{key}"


def vm(name: str) -> str:
    return f"{VMS}/{check_name('VM', name)}"


def vm_key(name: str, key: str) -> str:
    if key not in VM_KEYS:
        raise ValueError(f"unknown VM key {key!r}")
    return f"{vm(name)}/{key}"


def node_vms(node_name: str) -> str:
    """The folder of a node's index entries: one child per VM placed on it."""
    return f"{NODE_VMS}/{check_name('node', node_name)}"


def node_vm(node_name: str, vm_name: str) -> str:
    return f"{node_vms(node_name)}/{check_name('VM', vm_name)}"


def vm_uuid(uuid: str) -> str:
    return f"{VM_UUIDS}/{check_name('UUID', uuid)}"


def vm_lock(name: str) -> str:
    return f"{VM_LOCKS}/{check_name('VM', name)}"


def task(task_id: str) -> str:
    return f"{TASKS}/{check_name('task', task_id)}"


def request(request_id: str) -> str:
    return f"{REQUESTS}/{check_name('request', request_id)}"


FAULTS = f"{ROOT}/faults"
FAULT_KEYS = ("ack",)
"""A fault's child znode: its acknowledgement, written by coordinators apart from the raiser's record."""
CLUSTER_FAULT_SOURCE = "cluster"
"""The `source` of the faults the leader raises for the cluster as a whole."""
_CHECK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_FAULT_ID = re.compile(r"(node\.[A-Za-z0-9][A-Za-z0-9_.-]{0,62}|cluster)\.[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def check_check_name(name: object) -> str:
    """A health check's name: like any name, but without '.', so that a fault id names its check unambiguously."""
    if not isinstance(name, str) or not _CHECK_NAME.fullmatch(name):
        raise InvalidInput(f"invalid health check name {name!r}: use 1-63 letters, digits, '_' or '-', "
                           "starting with a letter or digit")
    return name


def fault_id(node_name: str | None, check: str) -> str:
    """A fault's stable id: ``node.NODE.CHECK`` for a node's check, ``cluster.CHECK`` for a leader-run one. The
    same problem in the same place is one fault, however often it is seen."""
    check_check_name(check)
    return f"node.{check_name('node', node_name)}.{check}" if node_name is not None else f"cluster.{check}"


def check_fault_id(fault_id_: object) -> str:
    if not isinstance(fault_id_, str) or not _FAULT_ID.fullmatch(fault_id_):
        raise InvalidInput(f"invalid fault id {fault_id_!r}: fault ids look like node.NODE.CHECK or cluster.CHECK")
    return fault_id_


def fault(fault_id_: str) -> str:
    return f"{FAULTS}/{check_fault_id(fault_id_)}"


def fault_ack(fault_id_: str) -> str:
    return f"{fault(fault_id_)}/ack"


def live_coordinator(name: str) -> str:
    return f"{LIVE_COORDINATORS}/{check_name('coordinator', name)}"


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes | None) -> Any:
    if not data:
        return None
    return json.loads(data)


CONTAINERS = (ROOT, COORDINATORS, ELECTION, LIVE_COORDINATORS, NODES, VMS, VM_UUIDS, LOCKS, VM_LOCKS, TASKS,
              NODE_OWNERS, REQUESTS, FAULTS)
"""Znodes that must exist before anything is written below them."""


# -- storage ------------------------------------------------------------------------------------------------
# Volumes sit flat under one parent, keyed POOL:VOLUME (':' is outside the name alphabet, so the key is
# unambiguous), so that one watched collection mirrors every volume of every pool.

STORAGE = f"{ROOT}/storage"
POOLS = f"{STORAGE}/pools"
VOLUMES = f"{STORAGE}/volumes"
STORAGE_LOCKS = f"{LOCKS}/storage"

VOLUME_KEYS = ("snapshots",)
"""A volume's child znodes: its snapshots change apart from its size."""


def pool(name: str) -> str:
    return f"{POOLS}/{check_name('pool', name)}"


def volume_key(pool_name: str, volume_name: str) -> str:
    """The flat key of a volume, ``POOL:VOLUME``, both names checked."""
    return f"{check_name('pool', pool_name)}:{check_name('volume', volume_name)}"


def split_volume_key(key: str) -> tuple[str, str]:
    pool_name, _, volume_name = key.partition(":")
    return pool_name, volume_name


def volume(pool_name: str, volume_name: str) -> str:
    return f"{VOLUMES}/{volume_key(pool_name, volume_name)}"


def volume_by_key(key: str) -> str:
    return volume(*split_volume_key(key))


def volume_snapshots(pool_name: str, volume_name: str) -> str:
    return f"{volume(pool_name, volume_name)}/snapshots"


def storage_lock(pool_name: str) -> str:
    return f"{STORAGE_LOCKS}/{check_name('pool', pool_name)}"


CONTAINERS += (STORAGE, POOLS, VOLUMES, STORAGE_LOCKS)

VM_SNAPSHOTS = f"{ROOT}/vm_snapshots"


def vm_snapshots(vm_name: str) -> str:
    """The parent of one VM's snapshots; it outlives none of them."""
    return f"{VM_SNAPSHOTS}/{check_name('VM', vm_name)}"


def vm_snapshot(vm_name: str, snapshot_name: str) -> str:
    return f"{vm_snapshots(vm_name)}/{check_name('snapshot', snapshot_name)}"


CONTAINERS += (VM_SNAPSHOTS,)


# -- provisioner --------------------------------------------------------------------------------------------

PROVISIONER = f"{ROOT}/provisioner"
TEMPLATES = f"{PROVISIONER}/templates"
TEMPLATE_KINDS = ("system", "storage", "network")
PROFILES = f"{PROVISIONER}/profiles"
OVAS = f"{PROVISIONER}/ovas"
USERDATA_DOCUMENTS = f"{PROVISIONER}/userdata"
"""Named cloud-init user-data documents (upstream's ``provisioner userdata``): ``{"data": TEXT}``."""
SCRIPTS = f"{PROVISIONER}/scripts"
"""Install scripts a profile may name (``provisioner script``): ``{"script": TEXT}``."""
PROVISIONER_LOCK = f"{LOCKS}/provisioner"


def templates(kind: str) -> str:
    if kind not in TEMPLATE_KINDS:
        raise InvalidInput(f"unknown template kind {kind!r} (one of: {', '.join(TEMPLATE_KINDS)})")
    return f"{TEMPLATES}/{kind}"


def template(kind: str, name: str) -> str:
    return f"{templates(kind)}/{check_name(f'{kind} template', name)}"


def profile(name: str) -> str:
    return f"{PROFILES}/{check_name('profile', name)}"


def userdata(name: str) -> str:
    return f"{USERDATA_DOCUMENTS}/{check_name('user-data document', name)}"


def script(name: str) -> str:
    return f"{SCRIPTS}/{check_name('install script', name)}"


def ova(name: str) -> str:
    return f"{OVAS}/{check_name('OVA', name)}"


OVA_KEYS = ("import", "importing")
"""An OVA's child znodes: the importing node's report and its liveness marker."""


def ova_import(name: str) -> str:
    return f"{ova(name)}/import"


def ova_importing(name: str) -> str:
    return f"{ova(name)}/importing"


MAX_OVA_DISKS = 100


def ova_volume(name: str, index: int) -> str:
    """The volume an OVA's disk `index` lands in: ``ova_NAME_diskINDEX``."""
    volume = f"ova_{check_name('OVA', name)}_disk{index}"
    if len(volume) > 63 or not 0 <= index < MAX_OVA_DISKS:
        raise InvalidInput(f"OVA name '{name}' is too long: its volumes (ova_NAME_diskN) must fit 63 characters")
    return volume


CONTAINERS += (PROVISIONER, TEMPLATES, *(templates(kind) for kind in TEMPLATE_KINDS), PROFILES, OVAS,
               USERDATA_DOCUMENTS, SCRIPTS)


# -- client networks ----------------------------------------------------------------------------------------

NETWORKS = f"{ROOT}/networks"
NETWORK_LOCK = f"{LOCKS}/networks"
NETWORK_ROUTER = f"{ROOT}/network_router"
NETWORK_KEYS = ("leases",)
"""A network's child znodes: the router's leases change apart from the record users write."""


def network(vni: int) -> str:
    if not isinstance(vni, int) or isinstance(vni, bool) or vni < 0:
        raise InvalidInput(f"invalid network VNI {vni!r}: a whole number")
    return f"{NETWORKS}/{vni}"


def network_leases(vni: int) -> str:
    return f"{network(vni)}/leases"


CONTAINERS += (NETWORKS,)


# -- scheduled backups --------------------------------------------------------------------------------------

AUTOBACKUP = f"{ROOT}/autobackup"
AUTOBACKUP_RUN = f"{AUTOBACKUP}/run"
AUTOBACKUP_SCHEDULE = f"{AUTOBACKUP}/schedule"
AUTOBACKUP_OUTCOME = f"{AUTOBACKUP}/outcome"
AUTOBACKUP_VMS = f"{AUTOBACKUP}/vms"


def autobackup_vm(vm_name: str) -> str:
    return f"{AUTOBACKUP_VMS}/{check_name('VM', vm_name)}"


CONTAINERS += (AUTOBACKUP, AUTOBACKUP_VMS)


# -- mirrors to and from other clusters ---------------------------------------------------------------------

MIRROR = f"{ROOT}/mirror"
MIRROR_DESTINATIONS = f"{MIRROR}/destinations"
MIRROR_VMS = f"{MIRROR}/vms"
MIRROR_OUTGOING = f"{MIRROR}/outgoing"


def mirror_destination(name: str) -> str:
    return f"{MIRROR_DESTINATIONS}/{check_name('mirror destination', name)}"


def mirror_vm(vm_name: str) -> str:
    return f"{MIRROR_VMS}/{check_name('VM', vm_name)}"


def mirror_outgoing(vm_name: str) -> str:
    return f"{MIRROR_OUTGOING}/{check_name('VM', vm_name)}"


MIRROR_LOCKS = f"{LOCKS}/mirrors"


def mirror_lock(vm_name: str) -> str:
    """Serialises the sends received for one VM and its promotion."""
    return f"{MIRROR_LOCKS}/{check_name('VM', vm_name)}"


AUTOMIRROR_RUN = f"{MIRROR}/run"
AUTOMIRROR_SCHEDULE = f"{MIRROR}/schedule"
AUTOMIRROR_OUTCOME = f"{MIRROR}/outcome"

CONTAINERS += (MIRROR, MIRROR_DESTINATIONS, MIRROR_VMS, MIRROR_OUTGOING, MIRROR_LOCKS)
