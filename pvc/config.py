"""YAML configuration: every setting declared once, with its type, default and description.

The same declarations check a file (a missing, unknown or mistyped key is an error naming the key and the
file), generate the daemons' command-line overrides, and document the samples in `contrib/`.
"""
import difflib
import os
import socket
from dataclasses import dataclass
from typing import Any

import yaml

from pvc.cluster_config import KAZOO_DETECTION, SELF_FENCE_DEADLINE
from pvc import text_input
from pvc.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    name: str
    type: type | tuple[type, ...]
    default: Any
    description: str
    rules: tuple[str, ...] = ()
    """The safety rules (`pvc.cluster_config.RULES`) this setting takes part in."""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _zookeeper_settings() -> list[Setting]:
    return [
        Setting("zookeeper_hosts", str, REQUIRED, "ZooKeeper ensemble, 'host:port,host:port'"),
        Setting("zookeeper_user", str, "pvc", "digest user that owns PVC's znodes"),
        Setting("zookeeper_password", str, REQUIRED, "digest password; every PVC znode is ACL'd to it"),
        Setting("zookeeper_session_timeout", (int, float), 10, "ZooKeeper session timeout, seconds (the server "
                "negotiates it within its own bounds)", (KAZOO_DETECTION,)),
        Setting("zookeeper_connect_timeout", (int, float), 15, "give up starting if ZooKeeper does not answer "
                "within this many seconds"),
    ]


def _storage_settings() -> list[Setting]:
    return [
        Setting("storage_backend", str, "file", "storage backend plugin of this cluster: file or ceph"),
        Setting("storage_directory", str, "/var/lib/pvc/storage", "file backend: directory holding one "
                "directory per pool (shared by every node that serves storage)"),
        Setting("ceph_conf", str, "/etc/ceph/ceph.conf", "ceph backend: ceph.conf naming the Ceph cluster"),
        Setting("upload_listen_address", str, "127.0.0.1:0", "host:port of the bulk upload channel; "
                "clients learn it from the coordinator (port 0 picks a free one)"),
        Setting("upload_advertise_host", (str, type(None)), None, "host clients use to reach the upload "
                "channel (default: its listen host)"),
        Setting("upload_staging_directory", str, "/var/lib/pvc/staging", "where uploads in formats other "
                "than raw are staged for qemu-img; never left behind"),
        Setting("backup_roots", list, [], "directories (mounted backup stores) under which VM snapshots may be "
                "exported and imported from; no other path is written or read, and no link followed"),
        Setting("autobackup_pre_command", (str, type(None)), None, "shell command this node runs as root before "
                "each autobackup export it writes, and before it looks at or removes one (e.g. to mount the backup "
                "store); one that fails or outlives autobackup_command_timeout fails that VM's backup (null: "
                "none). Never settable through the API"),
        Setting("autobackup_post_command", (str, type(None)), None, "shell command this node runs after each "
                "autobackup export it wrote, whether or not the export succeeded, and after each look or removal "
                "(e.g. to unmount the store); a failure is reported with the run (null: none)"),
        Setting("autobackup_command_timeout", (int, float), 300, "seconds an autobackup pre or post command may "
                "run before its process group is killed"),
        Setting("upload_token_lifetime", (int, float), 30, "seconds an upload token stays valid"),
        Setting("qemu_img_memory_limit_mib", int, 2048, "address-space limit of every qemu-img run, MiB"),
        Setting("qemu_img_cpu_limit_s", int, 3600, "CPU-time limit of every qemu-img run, seconds"),
    ]


def _script_settings() -> list[Setting]:
    return [
        Setting("provisioner_scripts", bool, False, "whether this node runs provisioner install scripts (pvc "
                "provisioner script): a creation whose profile names one is refused while no node does"),
        Setting("provisioner_script_directory", str, "/var/lib/pvc/scripts", "where each install script run "
                "keeps its script, input, and result until the leader has recorded it"),
        Setting("provisioner_script_timeout", (int, float), 600, "seconds an install script may run before its "
                "whole process group is killed (the creation then fails and is rolled back)"),
    ]


NODED_SETTINGS: list[Setting] = [
    Setting("node_name", str, socket.gethostname(), "this node's name in the cluster (default: hostname)"),
    *_zookeeper_settings(),
    Setting("libvirt_uri", str, "qemu:///system", "libvirt connection URI for this hypervisor"),
    Setting("libvirt_timeout", (int, float), 10, "seconds any one libvirt call may take; a libvirtd slower than "
            "that (hung, stopped) makes this node report its VMs unknown, never stopped"),
    Setting("libvirt_run_directory", (str, type(None)), "/run/libvirt", "libvirtd's run directory, where its "
            "QEMU driver keeps qemu/NAME.pid and qemu/NAME.xml of each running guest: a node cut off from "
            "ZooKeeper whose libvirtd does not answer kills its guests' QEMU processes from these files "
            "(null: never)"),
    Setting("libvirt_namespace_pid_file", (str, type(None)), None, "only where libvirtd runs in a PID "
            "namespace other than this daemon's: a file holding the PID (as this daemon sees it) of a process "
            "in that namespace, whose numbering the PIDs in libvirt's PID files use (null: the same namespace)"),
    Setting("migration_uri", (str, type(None)), None, "libvirt URI peers' libvirtd uses to reach this "
            "hypervisor for peer-to-peer live migration (default: qemu+tcp://LISTEN_HOST/system)"),
    Setting("migration_address", (str, type(None)), None, "address the memory stream of a VM migrating to "
            "this node connects to; the port comes from libvirt's migration_port_min..max (default: the "
            "listen host)"),
    Setting("migration_timeout", (int, float), 300, "seconds a live migration may take before it is aborted "
            "(the VM then keeps running where it was)"),
    Setting("bridge_dev", (str, type(None)), None, "the uplink whose VLANs carry bridged client networks "
            "(null: this node makes none)"),
    Setting("cluster_dev", (str, type(None)), None, "the device on the cluster network whose IPv4 address "
            "managed client networks' VXLAN tunnels start from (null: this node makes none)"),
    Setting("router", bool, False, "whether this node may run managed networks' gateways, DHCP, DNS, NAT and "
            "firewall rules (the leader picks one such node at a time)"),
    Setting("upstream_dev", (str, type(None)), None, "router nodes: the interface managed networks' traffic "
            "leaves by, masqueraded to its address (null: no way out)"),
    Setting("network_run_directory", str, "/run/pvc/networks", "router nodes: dnsmasq's configs, pid and lease "
            "files"),
    Setting("boot_image_directory", str, "/var/lib/pvc/boot", "where the direct-boot kernels and initrds "
            "that domain documents name (by bare file name) live"),
    Setting("console_log_directory", str, "/var/log/pvc/console", "where the serial console of a VM whose "
            "domain document has <serial type='file'> is written, as VM.log (read by pvc vm log)"),
    Setting("snapshot_max_pause", (int, float), 2.0, "seconds a VM snapshot may keep a running guest paused; "
            "past it this node resumes the guest and abandons the snapshot, whoever asked"),
    Setting("snapshot_pause_directory", str, "/var/lib/pvc/snapshot-pauses", "where this node notes the guests "
            "a snapshot has paused, so that pvcnoded resumes them at start if it died meanwhile"),
    Setting("accelerator", (str, type(None)), None, "kvm or tcg: how this host's guests run, as probed by "
            "booting a guest (null: kvm when libvirt offers it, else tcg)"),
    Setting("keepalive_interval", (int, float), 5, "seconds between keepalive writes (and reconcile passes) "
            "until the cluster config has a keepalive_interval (pvcapid seeds it); then the cluster's applies",
            (SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
    Setting("health_interval", (int, float), 10, "seconds between rounds of this node's health checks (each "
            "check bounded by its own timeout, run off the keepalive path)"),
    Setting("vm_stats_interval", (int, float), 10, "seconds between readings of the VMs' statistics (one bulk "
            "libvirt call), written as one record apart from the keepalive, for the metrics endpoint"),
    Setting("shutdown_timeout", (int, float), 180, "seconds a guest gets to shut down before it is destroyed"),
    Setting("listen_address", str, "127.0.0.1:7371", "host:port of the node agent (port 0 picks a free one)"),
    Setting("cluster_secret", str, REQUIRED, "shared secret; the node agent accepts only coordinators "
            "presenting it"),
    Setting("tls_cert", (str, type(None)), None, "PEM certificate the node agent and upload channel serve TLS "
            "with (null: no TLS; a cluster uses TLS everywhere or nowhere)"),
    Setting("tls_key", (str, type(None)), None, "PEM private key of tls_cert"),
    Setting("tls_ca", (str, type(None)), None, "PEM CA certificates that peer node agents' certificates must "
            "chain to (a node cut off from ZooKeeper asks its peers whether they reach it)"),
    Setting("bmc_host", (str, type(None)), None, "IPMI BMC address for fencing this node"),
    Setting("bmc_port", int, 623, "IPMI BMC UDP port"),
    Setting("bmc_user", (str, type(None)), None, "IPMI BMC user"),
    Setting("bmc_password", (str, type(None)), None, "IPMI BMC password"),
    Setting("bmc_check_interval", (int, float), 60, "seconds at least between two health checks of this node's "
            "BMC that find it answering (one that does not is asked again every health round): a BMC serves few "
            "sessions, and a fence needs one"),
    Setting("simulated_cpus", (int, type(None)), None, "simulated hosts only: CPU count to report"),
    Setting("simulated_memory_mib", (int, type(None)), None, "simulated hosts only: memory (MiB) to report"),
    *_storage_settings(),
    *_script_settings(),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting("log_file", (str, type(None)), None, "file the daemon logs to instead of stderr, reopened when "
            "rotated; pvc node log reads it (null: stderr, the journal under systemd)"),
]

APID_SETTINGS: list[Setting] = [
    Setting("coordinator_name", str, socket.gethostname(), "this coordinator's name (default: hostname)"),
    Setting("node", (str, type(None)), None, "the hypervisor node this coordinator runs beside: upstream's "
            "coordinator role of that node (pvc node list -cs: primary while this coordinator leads, else "
            "secondary; a node no coordinator names is a client); null: none"),
    *_zookeeper_settings(),
    Setting("listen_address", str, "127.0.0.1:7370", "host:port the Pyro5 daemon listens on"),
    Setting("advertise_host", (str, type(None)), None, "host clients use to reach this coordinator "
            "(default: the listen host)"),
    Setting("api_keys", list, REQUIRED, "API keys accepted from clients (a list of strings)"),
    Setting("cluster_secret", str, REQUIRED, "shared secret presented to node agents"),
    Setting("tls_cert", (str, type(None)), None, "PEM certificate this coordinator serves TLS with (null: no "
            "TLS; a cluster uses TLS everywhere or nowhere)"),
    Setting("tls_key", (str, type(None)), None, "PEM private key of tls_cert"),
    Setting("tls_ca", (str, type(None)), None, "PEM CA certificates that node agents' certificates must "
            "chain to"),
    Setting("leader_tick", (int, float), 1, "seconds between runs of the leader's cluster-wide loops"),
    Setting("keepalive_interval", (int, float), 5, "initial cluster-wide seconds between node keepalives "
            "(written to the cluster config at start if it has none; then `pvc cluster config` changes it)",
            (SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
    Setting("fence_intervals", int, 6, "initial cluster-wide keepalive intervals a node may miss before the "
            "leader marks it dead (as keepalive_interval: seeds the cluster config)", (SELF_FENCE_DEADLINE,)),
    Setting("suicide_intervals", int, 3, "initial cluster-wide keepalive intervals a node cut off from "
            "ZooKeeper waits before stopping its own VMs; 0 turns self-fencing off (seeds the cluster config)",
            (SELF_FENCE_DEADLINE, KAZOO_DETECTION)),
    Setting("successful_fence", str, "migrate", "initial cluster-wide action after a confirmed fence: migrate "
            "(restart the node's VMs elsewhere) or none (seeds the cluster config)"),
    Setting("metrics_listen", (str, type(None)), None, "host:port of the Prometheus /metrics endpoint (null: "
            "off); it serves from this coordinator's cache, never walking ZooKeeper per scrape"),
    Setting("metrics_token_file", (str, type(None)), None, "file holding a bearer token a scrape must present "
            "(null: none required)"),
    Setting("metrics_tls", bool, False, "serve /metrics over TLS with tls_cert and tls_key"),
    Setting("metrics_poll_interval", (int, float), 15, "seconds between the rounds that gather what /metrics "
            "serves besides the cache: ZooKeeper's mntr and the storage pools' usage"),
    Setting("health_interval", (int, float), 10, "seconds between rounds of the cluster health checks the "
            "leader runs (the `pvc_cluster_health_checks` plugins)"),
    Setting("flush_parallelism", int, 8, "VM moves a flush or ready carries out at once"),
    Setting("recovery_starts_per_node", int, 16, "starts a dead node's recovery runs at once on any one node "
            "(recorded there and not yet settled); at least 1"),
    Setting("leader_audit_interval", (int, float), 60, "seconds between the leader's audits: its passes visit "
            "only the VMs and tasks whose records changed, and an audit visits all of them, in case a change "
            "was missed"),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
]

CLIENT_SETTINGS: list[Setting] = [
    Setting("uris", list, REQUIRED, "coordinator URIs, pvc://HOST:PORT; the client fails over in order"),
    Setting("api_key", str, REQUIRED, "API key presented to the coordinators"),
    Setting("timeout", (int, float), 5, "seconds before an unanswering coordinator is given up on"),
    Setting("tls_ca", (str, type(None)), None, "PEM CA certificates: connect with TLS, verifying the "
            "coordinators' certificates against them ('system': the system's CA store; null: no TLS)"),
]


CONNECTION_SETTINGS: list[Setting] = [
    Setting("uris", list, REQUIRED, "coordinator URIs, pvc://HOST:PORT; the client fails over in order"),
    Setting("api_key", str, REQUIRED, "API key presented to the coordinators"),
    Setting("tls_ca", (str, type(None)), None, "PEM CA certificates the coordinators' certificates must chain to "
            "(null: no TLS)"),
    Setting("description", (str, type(None)), None, "what the connection is for, shown by pvc connection list"),
]
"""One saved connection of ``connections.yaml`` (`pvc.connections`), under ``connections: {NAME: ...}``; the
file's ``default`` names the one used when none is given."""

LIST_OF_STRINGS = ("api_keys", "uris")


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {int: "integer", float: "number", str: "string", list: "list", bool: "boolean",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check(values: dict[str, Any], settings: list[Setting], source: str) -> dict[str, Any]:
    """Validate `values` against `settings`, filling defaults; errors name the key and `source`."""
    known = {setting.name: setting for setting in settings}
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{source}: unknown key '{key}'{suggestion}")
    result = {}
    for setting in settings:
        if setting.name not in values:
            if setting.required:
                raise ConfigError(f"{source}: missing required key '{setting.name}' ({setting.description})")
            result[setting.name] = setting.default
            continue
        value = values[setting.name]
        if isinstance(value, bool) and bool not in _as_tuple(setting.type) or not isinstance(value, setting.type):
            raise ConfigError(f"{source}: key '{setting.name}' must be a {_type_name(setting.type)}, "
                              f"not {value!r}")
        if isinstance(value, list) and setting.name in LIST_OF_STRINGS and \
                not all(isinstance(item, str) and item for item in value):
            raise ConfigError(f"{source}: key '{setting.name}' must be a list of non-empty strings, not {value!r}")
        result[setting.name] = value
    return result


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from `path`, or a ConfigError naming the file and what is wrong with it."""
    text = text_input.read_text(path, "config file", MAX_CONFIG_BYTES, ConfigError)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return values


def load(path: str | os.PathLike | None, settings: list[Setting],
         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read `path` (if given), apply command-line `overrides`, and check the result."""
    values = read_yaml(path) if path else {}
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return check(values, settings, str(path) if path else "command line")


def parse_override(setting: Setting, text: str) -> Any:
    """A command-line string as the setting's type (YAML syntax, so lists and null work too)."""
    return yaml.safe_load(text) if _as_tuple(setting.type) != (str,) else text


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)
