"""A whole PVC cluster on this machine: ZooKeeper (one server or an ensemble), coordinators, and simulated hosts
each with its pvcnoded.

Everything it makes lives under one state directory, and every process it starts is recorded there by pid,
so `down` (from any later process) stops exactly what `up` started. Clusters with different state
directories run side by side: on loopback, on free ports; in a lab (`up(lab=True)`, see `lab.py`), each host,
coordinator and ZooKeeper server in a network namespace of its own on the cluster's own /24, where links can be
cut, severed and healed (`cut_link`, `isolate`, `sever`, `heal_all`).
"""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from pvc.cli.localcluster.bmc import SimulatedBMC
from pvc.cli.localcluster.prometheus import LocalPrometheus
from pvc.cli.localcluster.ceph import PrivateCeph
from pvc.cli.localcluster.pidfiles import read_pid
from pvc.cli.localcluster.processes import (exit_description, free_port, kill_pid, live_pid, log_tail, start_detached,
                                            stop_pid)
from pvc.cli.localcluster import guest
from pvc.cli.localcluster.lab import MAX_NODES as LAB_NODES, Lab
from pvc.cli.localcluster.qemuhost import QemuHost
from pvc.cli.localcluster.simhost import SimulatedHost
from pvc.cli.localcluster.zookeeper import Peer, ZooKeeperServer
from pvc.errors import Conflict, InvalidInput, PVCError, Unavailable
from pvc.handshake import use_tls

T = TypeVar("T")

NODE_CPUS = 16
NODE_MEMORY_MIB = 65536
HYPERVISORS = ("test", "qemu")
KEEPALIVE_INTERVAL = 1
LIBVIRT_TIMEOUT = 3
SESSION_TIMEOUT = 2.5
"""Seconds; ZooKeeper grants 2-20 ticks of `ZooKeeperServer.tick_ms` (500 ms: 1-10 s). kazoo notices a dead
server after 2/3 of it (1.67 s), which a self-fence must outwait (`pvc.fencing_settings`)."""
ZOOKEEPER_ENSEMBLE_SIZES = (1, 3, 5)
LAB_ZOOKEEPER_PORTS = (2181, 2888, 3888)
"""Client, quorum and election port of a lab's ZooKeeper server (each has its address to itself)."""
LAB_COORDINATOR_PORT = 7370
LAB_METRICS_PORT = 9470
HEALTH_INTERVAL = 2
"""Seconds between a local node's health check rounds: short, so a fault shows within seconds."""
UPSTREAM_DEV = "upstream0"
"""A lab host's upstream interface for managed networks' traffic when it routes: none exists until a test makes
one (a veth into a namespace of its own with no route out of the machine)."""
FENCE_INTERVALS = 4
SUICIDE_INTERVALS = 2
"""A node cut off from ZooKeeper starts stopping its VMs after 2 s of silence and is done by 3.6 s on its slowest
path (2 s + 0.1 s watchdog period + 0.5 s asking its peers + 0.8 s for libvirt to destroy them + 0.2 s to kill
what libvirt did not stop), before the leader's 4 s."""
TIMINGS = ("fast", "production")
SAMPLE_CONFIGS = Path(__file__).resolve().parents[2] / "contrib"
"""contrib/ of this checkout (the package maps cli/ to pvc.cli, so contrib/ is beside cli/)."""
SAMPLE_TIMING_KEYS = {
    "pvcnoded": ("keepalive_interval", "libvirt_timeout", "health_interval", "bmc_check_interval",
                 "vm_stats_interval", "zookeeper_session_timeout"),
    "pvcapid": ("leader_tick", "keepalive_interval", "fence_intervals", "suicide_intervals", "health_interval",
                "metrics_poll_interval", "zookeeper_session_timeout"),
}
"""The settings `up(timings="production")` takes from the sample configs instead of the fast ones above."""


def sample_timings(program: str) -> dict[str, Any]:
    """`program`'s intervals and timeouts as its sample config in contrib/ sets them (keepalive 5 s, fence after
    6 missed, ZooKeeper session 10 s...): what a cluster built like a production one runs at."""
    sample = yaml.safe_load((SAMPLE_CONFIGS / f"{program}.yaml").read_text())
    return {key: sample[key] for key in SAMPLE_TIMING_KEYS[program]}


class LocalCluster:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir).absolute()
        self.state_file = self.state_dir / "cluster.json"
        self.client_config = self.state_dir / "pvc.yaml"
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    # -- layout -----------------------------------------------------------------------------------------

    @property
    def lab(self) -> Lab | None:
        """The cluster's lab network, when it was started with one."""
        return Lab.from_state(self.state["lab"]) if self.state.get("lab") else None

    @property
    def zookeeper_names(self) -> list[str]:
        return list(self.state.get("zookeepers", {})) or (["zk1"] if self.state.get("zookeeper_port") else [])

    def zookeeper(self, name: str) -> ZooKeeperServer:
        """One server of the cluster's ZooKeeper: a lone one lives in ``zookeeper/``, an ensemble's in
        ``zookeeper/NAME/``."""
        servers = self.state.get("zookeepers") or {"zk1": {"address": "127.0.0.1",
                                                           "port": self.state.get("zookeeper_port")}}
        if name not in servers:
            raise InvalidInput(f"no ZooKeeper server {name!r} in the local cluster in {self.state_dir} "
                               f"(it has {', '.join(servers)})")
        ensemble = [Peer(int(peer.removeprefix("zk")), found["address"], found["quorum_port"],
                         found["election_port"]) for peer, found in servers.items()] if len(servers) > 1 else []
        lab = self.lab
        return ZooKeeperServer(self.state_dir / "zookeeper" / (name if ensemble else ""), port=servers[name]["port"],
                               address=servers[name]["address"], netns=lab.netns(name) if lab else None,
                               myid=int(name.removeprefix("zk")), ensemble=ensemble)

    @property
    def zookeeper_hosts(self) -> str:
        """The connection string naming every server of the ensemble (``address:port,...``)."""
        return ",".join(self.zookeeper(name).hosts for name in self.zookeeper_names)

    def host(self, name: str) -> SimulatedHost | QemuHost:
        directory, lab = self.state_dir / "hosts" / name, self.lab
        if self.hypervisor == "qemu":
            return QemuHost(directory, name, lab.address(name), lab.netns(name)) if lab else QemuHost(directory, name)
        return SimulatedHost(directory, name, lab.netns(name) if lab else None)

    def bmc(self, name: str) -> SimulatedBMC:
        """The node's IPMI peer: ipmi_sim, whose chassis power is the host's and its pvcnoded's. A lab's BMCs
        listen on the lab's gateway: the leader reaches them whatever becomes of their hosts' links."""
        lab = self.lab
        return SimulatedBMC(self.state_dir / "bmc" / name, self.host(name), self.state_dir,
                            lab.gateway if lab else None)

    @property
    def hypervisor(self) -> str:
        """``test`` (libvirt's test driver: cheap, hundreds of VMs) or ``qemu`` (real guests)."""
        return self.state.get("hypervisor", "test")

    @property
    def boot_image_directory(self) -> Path:
        return Path(self.state.get("boot_image_directory") or guest.DEFAULT_BOOT_DIR)

    def console_directory(self, node: str) -> Path:
        return self._daemon_dir("nodes", node) / "console"

    @property
    def backup_root(self) -> Path:
        """The backup root every node of the local cluster exports VM snapshots under (one shared directory, as
        a mounted backup store would be)."""
        path = self.state_dir / "backups"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _daemon_dir(self, kind: str, name: str) -> Path:
        return self.state_dir / kind / name

    @property
    def node_names(self) -> list[str]:
        return list(self.state.get("nodes", []))

    @property
    def coordinator_names(self) -> list[str]:
        return list(self.state.get("coordinators", {}))

    def coordinator_address(self, name: str) -> str:
        lab = self.lab
        return f"{lab.address(name) if lab else '127.0.0.1'}:{self.state['coordinators'][name]}"

    def metrics_address(self, name: str) -> str:
        """Where coordinator `name` serves /metrics (every local coordinator does)."""
        lab = self.lab
        return f"{lab.address(name) if lab else '127.0.0.1'}:{self.state['metrics'][name]}"

    @property
    def metrics_targets(self) -> list[str]:
        return [self.metrics_address(name) for name in self.coordinator_names]

    @property
    def uris(self) -> list[str]:
        return [f"pvc://{self.coordinator_address(name)}" for name in self.coordinator_names]

    @property
    def storage_dir(self) -> Path:
        """The file backend's directory, shared by every node as if it were a network mount."""
        return self.state_dir / "storage"

    @property
    def private_ceph(self) -> PrivateCeph:
        """The Ceph `up --storage ceph` starts when not given an existing one."""
        lab = self.lab
        return PrivateCeph(self.state_dir / "ceph", address=lab.gateway if lab else "127.0.0.1")

    def staging_dir(self, node: str) -> Path:
        return self._daemon_dir("nodes", node) / "staging"

    # -- lifecycle --------------------------------------------------------------------------------------

    def running_processes(self) -> dict[str, int]:
        """Every process of this cluster still alive, by role."""
        found = {}
        names = self.zookeeper_names
        for name in names:
            zookeeper_pid = self.zookeeper(name).pid
            if zookeeper_pid:
                found["zookeeper" if len(names) == 1 else f"zookeeper {name}"] = zookeeper_pid
        for name in self.coordinator_names:
            pid = self.daemon_pid("pvcapid", name)
            if pid:
                found[f"pvcapid {name}"] = pid
        for name in self.node_names:
            pid = self.daemon_pid("pvcnoded", name)
            if pid:
                found[f"pvcnoded {name}"] = pid
            if self.host(name).running:
                found[f"host {name}"] = self.host(name).pid
            if self.bmc(name).running:
                found[f"bmc {name}"] = self.bmc(name).pid
        if self.state.get("private_ceph"):
            found.update({f"ceph {daemon}": pid for daemon, pid in self.private_ceph.pids().items()})
        if self.prometheus.running:
            found["prometheus"] = self.prometheus.pid
        return found

    @property
    def prometheus(self) -> LocalPrometheus:
        """The cluster's Prometheus (`up(monitoring=True)`), scraping every coordinator's /metrics."""
        return LocalPrometheus(self.state_dir / "prometheus")

    def up(self, nodes: int = 3, coordinators: int = 1, timeout: float = 60.0, storage: str = "file",
           ceph_conf: Path | None = None, tls: bool = False, hypervisor: str = "test", zookeepers: int = 1,
           lab: bool = False, monitoring: bool = False, scripts: bool = False,
           script_timeout: float = 600, timings: str = "fast") -> None:
        """Start everything and return once every node is ``run`` and ``ready``; on failure, stop it all.

        With `monitoring`, a real Prometheus (`prometheus.py`) scrapes every coordinator's /metrics, with the
        alert rules of contrib/monitoring loaded.

        `storage` is the nodes' backend: ``file`` (a directory in the state dir), ``ceph`` (the Ceph that
        `ceph_conf` names, else a private single-node Ceph started in the state dir and stopped by `down`), or
        a plugin's backend, given the same directory as ``file`` (how plugin authors try theirs: the manual's
        plugin guide).
        With `tls`, every Pyro5 connection uses TLS with a certificate made for 127.0.0.1; Pyro5's TLS settings
        are per process, so this process then uses TLS for every connection it makes.

        `hypervisor` is the kind of simulated host: ``test`` or ``qemu`` (real guests, from the tiny guest
        image that contrib/setup.sh builds; KVM when a probe guest boots with it, else TCG).

        `zookeepers` servers form the cluster's ZooKeeper (3 or 5: a real ensemble, which outlives the loss of a
        minority of its servers). With `lab`, every host, coordinator and ZooKeeper server lives in a network
        namespace of its own on the cluster's lab network (`lab.py`); a lab that a crashed earlier run of this
        state directory left is removed first. With `scripts`, every node runs provisioner install scripts,
        each for at most `script_timeout` seconds.

        `timings` ``fast`` (the default: keepalive 1 s, a node dead after 4 s) makes failures show within
        seconds; ``production`` runs every daemon at the intervals and timeouts of the sample configs in
        contrib/ (keepalive 5 s, a node dead after 30 s), as a cluster measured for its cost at rest must."""
        if zookeepers not in ZOOKEEPER_ENSEMBLE_SIZES:
            sizes = ", ".join(map(str, ZOOKEEPER_ENSEMBLE_SIZES))
            raise InvalidInput(f"a ZooKeeper of {zookeepers} servers: use {sizes}")
        if lab and (nodes > LAB_NODES or coordinators > 9):
            raise InvalidInput(f"a lab holds at most {LAB_NODES} nodes and 9 coordinators")
        if not isinstance(storage, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", storage):
            raise InvalidInput(f"unknown storage {storage!r}: use file, ceph or a plugin's backend name")
        if hypervisor not in HYPERVISORS:
            raise InvalidInput(f"unknown hypervisor {hypervisor!r}: use {' or '.join(HYPERVISORS)}")
        if timings not in TIMINGS:
            raise InvalidInput(f"unknown timings {timings!r}: use {' or '.join(TIMINGS)}")
        if self.state and self.running_processes():
            raise Conflict(f"a local cluster is already running in {self.state_dir} "
                           f"(stop it with: pvc-local down --state-dir {self.state_dir})")
        if self.lab:
            self.lab.release(self.state_dir)
        for leftover in ("zookeeper", "hosts", "bmc", "nodes", "coordinators", "storage", "ceph", "tls",
                         "prometheus"):
            shutil.rmtree(self.state_dir / leftover, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = {
            "zookeeper_password": secrets.token_urlsafe(16),
            "api_key": secrets.token_urlsafe(24),
            "cluster_secret": secrets.token_urlsafe(24),
            "bmc_user": f"pvc{secrets.token_hex(4)}", "bmc_password": secrets.token_urlsafe(12),
            "coordinators": {}, "nodes": [], "storage": storage,
            "ceph_conf": str(Path(ceph_conf).absolute()) if ceph_conf else str(self.private_ceph.conf),
            "private_ceph": storage == "ceph" and ceph_conf is None,
            "tls": tls, "hypervisor": hypervisor, "scripts": scripts,
            "script_timeout": script_timeout, "timings": timings,
        }
        try:
            if hypervisor == "qemu":
                self.state["boot_image_directory"] = str(guest.build(self.boot_image_directory))
                self.state["accelerator"] = guest.probe_accelerator(self.boot_image_directory)
            if lab:
                self._save()  # a crash while the lab is made must leave a state file that names no lab yet
                self.state["lab"] = Lab.create(self.state_dir).state
                self._save()
                for name in [f"zk{index}" for index in range(1, zookeepers + 1)] + \
                        [f"pvcapid{index}" for index in range(1, coordinators + 1)] + \
                        [f"hv{index}" for index in range(1, nodes + 1)]:
                    self.lab.add(name)
            self._start_zookeeper(zookeepers)
            if tls:
                self._make_certificate(coordinators)
            self.storage_dir.mkdir()
            if self.state["private_ceph"]:
                self._save()
                self.private_ceph.start()
            for index in range(1, coordinators + 1):
                self.state["coordinators"][f"pvcapid{index}"] = LAB_COORDINATOR_PORT if lab else free_port()
                self.state.setdefault("metrics", {})[f"pvcapid{index}"] = LAB_METRICS_PORT if lab else free_port()
                self._save()
                self.start_coordinator(f"pvcapid{index}")
            for index in range(1, nodes + 1):
                name = f"hv{index}"
                self.state["nodes"].append(name)
                self._save()
                self.host(name).start()
                self.bmc(name).start(self.state["bmc_user"], self.state["bmc_password"])
                self.start_node_daemon(name)
            self._write_client_config()
            self.wait_ready(timeout)
            if monitoring:
                self.prometheus.start(self.metrics_targets)
        except BaseException:
            self.down()
            raise

    def add_node(self, timeout: float = 60.0) -> str:
        """One more node on the running cluster, as an administrator adds a hypervisor: its host (in a namespace
        of its own on a lab cluster), its BMC and its pvcnoded; returns its name once it is ``run`` and
        ``ready``. A node that cannot start is stopped and forgotten again."""
        if not self.state or not self.running_processes():
            raise Conflict(f"no local cluster is running in {self.state_dir}")
        name = f"hv{len(self.state['nodes']) + 1}"
        lab = self.lab
        if lab:
            lab.member(name)  # InvalidInput past the lab's 99 nodes
        try:
            if lab:
                lab.add(name)
            self.state["nodes"].append(name)
            self._save()
            self.host(name).start()
            self.bmc(name).start(self.state["bmc_user"], self.state["bmc_password"])
            self.start_node_daemon(name)
            self.wait_ready(timeout)
        except BaseException:
            self._forget_node(name)
            raise
        return name

    def _forget_node(self, name: str) -> None:
        for stop in (lambda: self.stop_daemon("pvcnoded", name, kill=True), self.bmc(name).stop,
                     self.host(name).stop):
            try:
                stop()
            except (PVCError, OSError):
                pass
        if self.lab:
            self.lab.remove_member(name)
        if name in self.state["nodes"]:
            self.state["nodes"].remove(name)
            self._save()

    def _start_zookeeper(self, count: int) -> None:
        """Start the servers at once (an ensemble's server serves only once a quorum runs), then wait for all."""
        lab = self.lab
        servers = {}
        for index in range(1, count + 1):
            name = f"zk{index}"
            if lab:
                port, quorum_port, election_port = LAB_ZOOKEEPER_PORTS
                servers[name] = {"address": lab.address(name), "port": port, "quorum_port": quorum_port,
                                 "election_port": election_port}
            else:
                servers[name] = {"address": "127.0.0.1", "port": free_port(), "quorum_port": free_port(),
                                 "election_port": free_port()}
        self.state["zookeepers"] = servers
        self.state["zookeeper_port"] = servers["zk1"]["port"]
        self._save()
        started = [(server, server.launch()) for server in map(self.zookeeper, servers)]
        for server, pid in started:
            server.wait_serving(pid, timeout=60)

    def down(self) -> list[str]:
        """Stop every process this cluster started, and remove its lab network; returns what was stopped. The
        nodes stop side by side (each its BMC, pvcnoded, then host), then the coordinators, then ZooKeeper."""
        stopped = []
        if self.prometheus.running:
            self.prometheus.stop()
            stopped.append("prometheus")
        stopped += [entry for entries in self._each(self._stop_node, self.node_names) for entry in entries]
        stopped += [found for found in self._each(self._stop_coordinator, self.coordinator_names) if found]
        stopped += [found for found in self._each(self._stop_zookeeper, self.zookeeper_names) if found]
        if self.state.get("private_ceph") and self.private_ceph.running:
            self.private_ceph.stop()
            stopped.append("ceph")
        if self.lab and self.lab.release(self.state_dir):
            stopped.append(f"lab {self.lab.prefix} ({self.lab.subnet})")
        return stopped

    @staticmethod
    def _each(action: Callable[[str], T], names: list[str]) -> list[T]:
        """`action` on every name at once (stopping a daemon is mostly waiting for it), results in name order."""
        if len(names) < 2:
            return [action(name) for name in names]
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            return list(pool.map(action, names))

    def _stop_node(self, name: str) -> list[str]:
        stopped = []
        if self.bmc(name).running:
            self.bmc(name).stop()
            stopped.append(f"bmc {name}")
        pid = self.daemon_pid("pvcnoded", name)
        if pid:
            stop_pid(pid)
            stopped.append(f"pvcnoded {name}")
        host = self.host(name)
        if host.running:
            host.stop()
            stopped.append(f"host {name}")
        return stopped

    def _stop_coordinator(self, name: str) -> str | None:
        pid = self.daemon_pid("pvcapid", name)
        if pid:
            stop_pid(pid)
            return f"pvcapid {name}"
        return None

    def _stop_zookeeper(self, name: str) -> str | None:
        zookeeper = self.zookeeper(name)
        if zookeeper.running:
            zookeeper.stop()
            return "zookeeper" if len(self.zookeeper_names) == 1 else f"zookeeper {name}"
        return None

    def wait_ready(self, timeout: float) -> None:
        """Until every node is in run and ready, a coordinator leads and every coordinator answers: only then do
        flushes and the like run, and a caller that talks to one coordinator by its address finds it serving
        (one still loading its cache had refused a test's first reads)."""
        from pvc.client import connect
        if self.state.get("tls"):
            use_tls(ca=str(self.tls_cert))
        client = connect(self.uris, self.state["api_key"], timeout=2)
        starting = set(self.uris)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                nodes = {node["name"]: node for node in client.nodes.list()}
                leader = client.cluster.status()["leader"]
            except Unavailable:
                nodes, leader = {}, None
            starting = {uri for uri in starting if not self._answers(uri)}
            if leader and not starting and all(name in nodes and nodes[name]["daemon_state"] == "run"
                                               and nodes[name]["domain_state"] == "ready"
                                               for name in self.node_names):
                client.close()
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{name}={nodes.get(name, {}).get('daemon_state', 'absent')}"
                                   for name in self.node_names)
                raise Unavailable(f"nodes not all run and ready, no leader, or a coordinator not answering after "
                                  f"{timeout:g} s: {states}; leader={leader}; "
                                  f"not answering: {', '.join(sorted(starting)) or 'none'}")
            time.sleep(0.1)

    def _answers(self, uri: str) -> bool:
        from pvc.client import connect
        try:
            with contextlib.closing(connect([uri], self.state["api_key"], timeout=2)) as coordinator:
                coordinator.cluster.status()
            return True
        except Unavailable:
            return False

    def _check_alive(self) -> None:
        running = self.running_processes()
        for name in self.coordinator_names:
            if f"pvcapid {name}" not in running:
                self._died("pvcapid", self._daemon_dir("coordinators", name))
        for name in self.node_names:
            if f"pvcnoded {name}" not in running:
                self._died("pvcnoded", self._daemon_dir("nodes", name))

    @staticmethod
    def _died(program: str, directory: Path) -> None:
        pid = read_pid(directory / f"{program}.pid")
        how = exit_description(pid) if pid else ""
        log_path = directory / f"{program}.log"
        raise PVCError(f"{program} (pid {pid}) exited during start-up{', ' + how if how else ''}; "
                       f"its log ({log_path}) ends:\n{log_tail(log_path, 8)}")

    # -- individual daemons (tests restart and kill them) -------------------------------------------------

    def _common_settings(self) -> dict[str, Any]:
        return {
            "zookeeper_hosts": self.zookeeper_hosts,
            "zookeeper_user": "pvc",
            "zookeeper_password": self.state["zookeeper_password"],
            "zookeeper_session_timeout": SESSION_TIMEOUT,
            "zookeeper_connect_timeout": 10,
            "cluster_secret": self.state["cluster_secret"],
            "log_level": "INFO",
            **({"tls_cert": str(self.tls_cert), "tls_key": str(self.tls_key)} if self.state.get("tls") else {}),
        }

    @property
    def tls_cert(self) -> Path:
        return self.state_dir / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.state_dir / "tls" / "key.pem"

    def _make_certificate(self, coordinators: int) -> None:
        """A self-signed certificate for 127.0.0.1 (and every lab address), serving every daemon and trusted by
        every client."""
        self.tls_cert.parent.mkdir(mode=0o700)
        lab = self.lab
        # Every node address the lab may hold, so that a node added later (`add_node`) is served by it too.
        addresses = ["127.0.0.1"] + ([lab.address(f"pvcapid{index}") for index in range(1, coordinators + 1)]
                                     + [lab.address(f"hv{index}") for index in range(1, LAB_NODES + 1)] if lab else [])
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-subj", "/CN=pvc-local", "-addext",
                        "subjectAltName=" + ",".join(f"IP:{address}" for address in addresses),
                        "-keyout", str(self.tls_key), "-out", str(self.tls_cert)],
                       check=True, capture_output=True)

    def start_coordinator(self, name: str) -> int:
        directory = self._daemon_dir("coordinators", name)
        directory.mkdir(parents=True, exist_ok=True)
        settings = {**self._common_settings(), "coordinator_name": name,
                    "node": f"hv{name.removeprefix('pvcapid')}",
                    "listen_address": self.coordinator_address(name),
                    "api_keys": [self.state["api_key"]], "leader_tick": 0.5, "fence_intervals": FENCE_INTERVALS,
                    "health_interval": HEALTH_INTERVAL, "metrics_poll_interval": HEALTH_INTERVAL,
                    **({"metrics_listen": self.metrics_address(name)} if name in self.state.get("metrics", {})
                       else {}),
                    "keepalive_interval": KEEPALIVE_INTERVAL, "suicide_intervals": SUICIDE_INTERVALS,
                    **({"tls_ca": str(self.tls_cert)} if self.state.get("tls") else {}),
                    **self._timings("pvcapid")}
        lab = self.lab
        return self._start_daemon("pvcapid", directory, settings, lab.netns(name) if lab else None)

    def _timings(self, program: str) -> dict[str, Any]:
        """What replaces the fast intervals and timeouts in `program`'s config (`up(timings=...)`)."""
        return sample_timings(program) if self.state.get("timings") == "production" else {}

    def start_node_daemon(self, name: str, zookeeper_hosts: str | None = None, netns: str | None = None,
                          address: str | None = None, libvirt_uri: str | None = None,
                          migration_uri: str | None = None, extra_settings: dict[str, Any] | None = None) -> int:
        """Start the node's pvcnoded; `zookeeper_hosts` makes it reach ZooKeeper at another address (a test's
        proxy it can cut) instead of the server's own, `libvirt_uri` its libvirtd through another socket
        (a test's relay that slows it), and `migration_uri` has peers' libvirtds reach its libvirtd there for
        live migrations (a test's relay that holds an answer), and `extra_settings` are added to its
        pvcnoded.yaml (a node's own autobackup commands, say). `netns` runs it inside that network namespace (`ip netns
        exec`: a host a test can partition; its libvirtd's unix socket is still reached through the
        filesystem), and `address` is where its agent and upload channel listen, one its peers can reach. A lab
        node runs in its own namespace at its own address unless told otherwise."""
        lab = self.lab
        if lab:
            netns, address = netns or lab.netns(name), address or lab.address(name)
        directory = self._daemon_dir("nodes", name)
        directory.mkdir(parents=True, exist_ok=True)
        host = self.host(name)
        settings = {**self._common_settings(), "node_name": name, "libvirt_uri": libvirt_uri or host.uri,
                    **({"zookeeper_hosts": zookeeper_hosts} if zookeeper_hosts else {}),
                    **({"tls_ca": str(self.tls_cert)} if self.state.get("tls") else {}),
                    "keepalive_interval": KEEPALIVE_INTERVAL, "listen_address": "127.0.0.1:0",
                    "libvirt_timeout": LIBVIRT_TIMEOUT, "health_interval": HEALTH_INTERVAL,
                    "vm_stats_interval": HEALTH_INTERVAL, "bmc_check_interval": HEALTH_INTERVAL,
                    "boot_image_directory": str(self.boot_image_directory),
                    "console_log_directory": str(self.console_directory(name)),
                    "snapshot_pause_directory": str(directory / "snapshot-pauses"),
                    "backup_roots": [str(self.backup_root)],
                    "log_file": str(directory / "pvcnoded.log"),
                    "simulated_cpus": NODE_CPUS, "simulated_memory_mib": NODE_MEMORY_MIB,
                    "storage_backend": self.state.get("storage", "file"), "storage_directory": str(self.storage_dir),
                    "ceph_conf": self.state.get("ceph_conf", str(self.private_ceph.conf)),
                    "upload_listen_address": "127.0.0.1:0", "upload_staging_directory": str(self.staging_dir(name)),
                    "provisioner_scripts": bool(self.state.get("scripts")),
                    "provisioner_script_directory": str(directory / "scripts"),
                    "provisioner_script_timeout": self.state.get("script_timeout", 600)}
        if isinstance(host, QemuHost):
            settings.update({"listen_address": f"{host.address}:0", "upload_listen_address": f"{host.address}:0",
                             "migration_uri": migration_uri or host.migration_uri, "migration_address": host.address,
                             "accelerator": self.state["accelerator"],
                             # Guests emulated by TCG on a loaded machine took over the 2 s default to freeze.
                             "snapshot_max_pause": 10.0,
                             "libvirt_run_directory": str(host.run_directory),
                             "libvirt_namespace_pid_file": str(host.init_pid_file)})
        else:
            # The test driver runs no QEMU; the machine's own /run/libvirt is no simulated host's.
            settings["libvirt_run_directory"] = None
        if address:
            settings.update({"listen_address": f"{address}:0", "upload_listen_address": f"{address}:0"})
        if lab and netns == lab.netns(name):
            settings.update({"bridge_dev": "eth0", "cluster_dev": "eth0",  # the host's one link to the lab
                             "router": True, "upstream_dev": UPSTREAM_DEV,
                             "network_run_directory": str(directory / "networks")})
        if self.bmc(name).settings:
            settings.update(self.bmc(name).node_settings())
        settings.update(self._timings("pvcnoded"))
        settings.update(extra_settings or {})
        return self._start_daemon("pvcnoded", directory, settings, netns)

    def _start_daemon(self, program: str, directory: Path, settings: dict[str, Any], netns: str | None = None) -> int:
        config_path = directory / f"{program}.yaml"
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        executable = Path(sys.executable).with_name(program)
        # `ip netns exec` execs the program itself, so the recorded pid is still the daemon's.
        in_netns = ["ip", "netns", "exec", netns] if netns else []
        return start_detached([*in_netns, str(executable), "--config", str(config_path)],
                              directory / f"{program}.log", directory / f"{program}.pid")

    def daemon_pid(self, program: str, name: str) -> int | None:
        """The daemon's pid while it runs. Pids are recycled quickly (pid_max can be 32768), so the process
        must also name this daemon's own config file: a stale pid file never leads to another cluster's
        daemon."""
        directory = self._daemon_dir("coordinators" if program == "pvcapid" else "nodes", name)
        return live_pid(directory / f"{program}.pid", str(directory / f"{program}.yaml"))

    def stop_daemon(self, program: str, name: str, kill: bool = False) -> None:
        """SIGTERM (or, with `kill`, SIGKILL) one daemon and wait until it is gone."""
        pid = self.daemon_pid(program, name)
        if pid:
            (kill_pid if kill else stop_pid)(pid)

    # -- faults of the lab and the ensemble (tests inject them; so does `pvc-local`) ---------------------------

    def _lab_member(self, name: str) -> Lab:
        lab = self.lab
        if lab is None:
            raise InvalidInput(f"the local cluster in {self.state_dir} has no lab network (pvc-local up --lab)")
        if name not in self.node_names + self.coordinator_names + self.zookeeper_names:
            raise InvalidInput(f"no member {name!r} in the local cluster in {self.state_dir}")
        return lab

    def cut_link(self, name: str) -> None:
        """Pull the cable of one member (a node ``hvN``, a coordinator ``pvcapidN``, a ZooKeeper server
        ``zkN``): nothing reaches it and it reaches nothing, until `heal_link` or `heal_all`."""
        self._lab_member(name).cut(name)

    def heal_link(self, name: str) -> None:
        """Plug one member back into the lab (after `cut_link` or `isolate`)."""
        self._lab_member(name).heal(name)

    def isolate(self, names: list[str]) -> None:
        """Cut `names` off from the rest of the cluster together: they still reach each other, and nothing
        else (the lab's gateway included: clients, BMCs and Ceph are out of their reach)."""
        for name in names:
            self._lab_member(name)
        self.lab.isolate(names)

    def sever(self, name: str, peers: list[str]) -> None:
        """Cut one member off from `peers` only (the leading coordinator from every ZooKeeper server, say):
        nothing passes between them, and both still reach everyone else."""
        for member in [name, *peers]:
            self._lab_member(member)
        self.lab.sever(name, peers)

    def heal_all(self) -> None:
        """Every member back on the lab, its link up."""
        if self.lab:
            self.lab.heal_all()

    def link_state(self, name: str) -> str:
        """``up``, ``cut`` or ``isolated``."""
        return self._lab_member(name).link_state(name)

    def kill_zookeeper(self, name: str) -> None:
        """SIGKILL one ZooKeeper server (its data stays for `start_zookeeper`)."""
        self.zookeeper(name).kill()

    def start_zookeeper(self, name: str, timeout: float = 60.0) -> None:
        """Start one ZooKeeper server again; returns once it serves (for an ensemble's server: once it has
        joined a quorum)."""
        server = self.zookeeper(name)
        server.wait_serving(server.launch(), timeout)

    def zookeeper_modes(self) -> dict[str, str | None]:
        """Each server's ``srvr`` mode (``leader``, ``follower``, ``standalone``; None when it does not serve),
        asked from the server's own network namespace, so a server whose link is cut still answers."""
        return {name: self.zookeeper(name).mode for name in self.zookeeper_names}

    def zookeeper_leader(self) -> str | None:
        """The ensemble's leading server (a lone server leads itself), or None while none does."""
        return next((name for name, mode in self.zookeeper_modes().items() if mode in ("leader", "standalone")),
                    None)

    # -- client side -------------------------------------------------------------------------------------

    def _write_client_config(self) -> None:
        settings = {"uris": self.uris, "api_key": self.state["api_key"]}
        if self.state.get("tls"):
            settings["tls_ca"] = str(self.tls_cert)
        self.client_config.write_text(yaml.safe_dump(settings))
        self.client_config.chmod(0o600)

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=2))
        self.state_file.chmod(0o600)
