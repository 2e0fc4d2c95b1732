"""A private single-node Ceph (one mon, one mgr, one memstore OSD) on loopback or a lab's gateway, for a local
cluster or a test.

Everything lives under one directory: ceph.conf, the daemons' data, sockets, logs and pid files. Nothing is
written to /etc/ceph or /var/lib/ceph, and authentication is off (loopback only), so `rbd -c DIR/ceph.conf`
and ``qemu-img ... rbd:POOL/IMAGE:conf=DIR/ceph.conf`` reach it and nothing else does. The OSD keeps its
data in memory: keep what is stored in it small. See ``notes/ceph.md`` for the measured facts behind each
step.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from pvc.cli.localcluster.processes import free_port, live_pid, log_tail, stop_pid, wait_until
from pvc.errors import Unavailable

MEMSTORE_BYTES = 4 << 30
PAXOS_PROPOSE_INTERVAL_S = 0.05
"""How long the monitor gathers changes before proposing them (Ceph's default is 1 s). Every RBD snapshot takes
a snapshot id from the monitor, so a VM snapshot pauses its guest for about one proposal: a two-disk guest was
paused 240-900 ms at the default and 60-62 ms at 0.05 s (tests/bench/test_bench_vm_snapshots.py)."""


class CephError(Unavailable):
    """A step of bringing the private Ceph up failed; the message names the step and the tool's reason."""


class PrivateCeph:
    def __init__(self, directory: Path, memstore_bytes: int = MEMSTORE_BYTES, address: str = "127.0.0.1") -> None:
        """`address` is where the monitor and the OSD listen: loopback, or a lab cluster's gateway, where its
        hosts reach them from their own network namespaces (and a host cut off from the lab does not)."""
        self.directory = Path(directory).absolute()
        self.memstore_bytes = memstore_bytes
        self.address = address

    @property
    def conf(self) -> Path:
        return self.directory / "ceph.conf"

    def _pid_file(self, daemon: str) -> Path:
        return self.directory / "run" / f"{daemon}.pid"

    def pids(self) -> dict[str, int]:
        """The daemons of this Ceph still running, by name (mon.a, mgr.x, osd.0)."""
        found = {}
        for pid_file in sorted((self.directory / "run").glob("*.pid")):
            pid = live_pid(pid_file, str(self.conf))
            if pid:
                found[pid_file.stem] = pid
        return found

    @property
    def running(self) -> bool:
        return bool(self.pids())

    def start(self, timeout: float = 90.0) -> None:
        """Bring up mon, mgr and one OSD; return once the cluster is healthy. On failure, nothing runs."""
        if self.running:
            raise CephError(f"the Ceph in {self.directory} is already running")
        try:
            self._bootstrap()
            wait_until(self._healthy, timeout, interval=0.5, what="Ceph to report HEALTH_OK")
        except BaseException as error:
            self.stop()
            if isinstance(error, TimeoutError):
                raise CephError(f"Ceph did not become healthy ({error}); the OSD log ends:\n"
                                f"{log_tail(self.directory / 'log' / 'osd.0.log', 10)}") from error
            raise

    def stop(self) -> None:
        """Stop OSD, mgr, then mon, by their pid files."""
        for daemon in ("osd.0", "mgr.x", "mon.a"):
            pid = live_pid(self._pid_file(daemon), str(self.conf))
            if pid:
                stop_pid(pid, timeout=15)
            self._pid_file(daemon).unlink(missing_ok=True)

    def ceph(self, *arguments: str) -> str:
        return self._run("ceph", "-c", str(self.conf), *arguments)

    def _bootstrap(self) -> None:
        directory = self.directory
        for sub in ("run", "log", "data/mon-a", "data/mgr-x", "data/osd-0", "crash"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        address = self.address
        v2, v1 = free_port(address), free_port(address)
        self._write_conf(fsid, f"[v2:{address}:{v2},v1:{address}:{v1}]")
        (directory / "keyring").write_text("")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                  f"[v2:{address}:{v2},v1:{address}:{v1}]", str(directory / "monmap"))
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(directory / "monmap"))
        self._run("ceph-mon", "-c", str(self.conf), "-i", "a")
        self.ceph("osd", "set-require-min-compat-client", "mimic")
        # The device health module makes its pool as the OSD boots; on this one-OSD, in-memory Ceph that pool's
        # placement group was seen stuck for good, every request to it queued (rbd children --all, which visits
        # every pool, then hung). Nothing here has disks to watch.
        self.ceph("config", "set", "mgr", "mgr/devicehealth/enable_monitoring", "false", "--force")
        self._run("ceph-mgr", "-c", str(self.conf), "-i", "x")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise CephError(f"a fresh Ceph gave its first OSD id {osd_id!r}, not 0")
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0")

    def stop_osd(self) -> None:
        """Stop the OSD (SIGTERM: it tells the monitor it is going down), leaving mon and mgr running."""
        pid = live_pid(self._pid_file("osd.0"), str(self.conf))
        if pid:
            stop_pid(pid, timeout=15)
        self._pid_file("osd.0").unlink(missing_ok=True)

    def start_osd(self, timeout: float = 120.0) -> None:
        """Start the OSD again; return once Ceph is healthy."""
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0")
        wait_until(self._healthy, timeout, interval=0.5, what="Ceph to report HEALTH_OK with its OSD up")

    def _healthy(self) -> bool:
        try:
            status = json.loads(self.ceph("status", "--format", "json"))
        except CephError:
            return False
        return status.get("health", {}).get("status") == "HEALTH_OK" and \
            status.get("osdmap", {}).get("num_up_osds", 0) >= 1

    def _write_conf(self, fsid: str, mon_host: str) -> None:
        directory = self.directory
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = {mon_host}
mon initial members = a
public addr = {self.address}
cluster addr = {self.address}
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon allow pool delete = true
paxos propose interval = {PAXOS_PROPOSE_INTERVAL_S}
mon max pg per osd = 1000
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
run dir = {directory}/run
admin socket = {directory}/run/$name.asok
pid file = {directory}/run/$name.pid
log file = {directory}/log/$name.log
crash dir = {directory}/crash
keyring = {directory}/keyring
mon data = {directory}/data/mon-$id
mgr data = {directory}/data/mgr-$id
osd data = {directory}/data/osd-$id

[osd]
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
""")

    @staticmethod
    def _run(*command: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if result.returncode != 0:
            reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise CephError(f"{' '.join(command[:2])} failed: {reason[-1] if reason else result.returncode}")
        return result.stdout
