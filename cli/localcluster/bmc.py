"""A simulated host's BMC: OpenIPMI's ipmi_sim on a UDP port of the host's address, whose chassis power is
the host's power.

ipmi_sim runs its ``chassis_control`` command for every power request: ``chassis.py`` (run without site
packages), which answers a status itself and hands every power action to this module::

    python -S chassis.py DIRECTORY get power                    -> power:1 while the host runs, else power:0
    python -m pvc.cli.localcluster.bmc DIRECTORY set power 0    -> the power cut (`SimulatedBMC.power_off`)
    python -m pvc.cli.localcluster.bmc DIRECTORY set power 1    -> power on (`SimulatedBMC.power_on`)
    python -m pvc.cli.localcluster.bmc DIRECTORY set reset 1    -> off, then on

Status is asked of the host every time, so it is always the truth. Power off is done before the command
returns (~0.4 s), so a status read right after it says off. Power on and reset run in a process of their
own (``... DIRECTORY boot|cycle``) and the command returns at once: ipmi_sim answers only once the command
has returned, ipmitool sends its request again after 1 s of silence and gives up after 2 s, and a QEMU host
takes longer than that to start (a request run twice would reset twice).

A BMC of a local cluster (`cluster_state_dir`) powers the node, not only its host: the power cut also kills
the node's pvcnoded (SIGKILL, as a real power cut does), and power on starts the host empty, as a real host
boots with no VM running, and then its pvcnoded. Everything lives in the BMC's directory: ``bmc.json`` (port,
credentials, which host), ``power_evidence`` (the host's pid file and argv marker, for ``chassis.py``),
ipmi_sim's ``lan.conf`` and ``bmc.emu``, its log and pid file, and ``control.log``, one line per power action.
See ``notes/infra.md`` for the measured facts behind each file.

    bmc = SimulatedBMC(directory, host)
    bmc.start("admin", "secret")
    bmc.client.power_status()        # (True, "Chassis Power is on"), through ipmitool
"""
from __future__ import annotations

import fcntl
import json
import shlex
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pvc.cli.localcluster.processes import (free_port, kill_pid, live_pid, log_tail, pid_alive, start_detached,
                                            wait_until)
from pvc.cli.localcluster.qemuhost import QemuHost
from pvc.cli.localcluster.simhost import SimulatedHost

if TYPE_CHECKING:
    from pvc.plugins.fencing import BMC

CONTROL_MODULE = "pvc.cli.localcluster.bmc"
"""This module, run for each power action (by name: run with -m, its ``__name__`` is __main__)."""
CHASSIS_SCRIPT = Path(__file__).with_name("chassis.py")
"""ipmi_sim's chassis_control: a power status without the package's start-up, the rest through this module."""
PORT_ATTEMPTS = 3
PORT_TAKEN = "Address already in use"
"""What ipmi_sim logs when its UDP port was taken between our finding it free and its binding it."""

# The BMC's management controller: without an .emu file ipmi_sim prints its version and exits.
_EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

# Without a guid, lanplus fails with "does not support IPMI v2 / RMCP+".
_LAN_CONF = """\
name "{name}"
set_working_mc 0x20
  startlan 1
    addr {address} {port}
    priv_limit admin
    guid {guid}
  endlan
chassis_control "{control}"
user 2 true "{user}" "{password}" admin 10
"""


class SimulatedBMC:
    """The BMC of `host`, its files in `directory`; with `cluster_state_dir`, of that local cluster's node of
    the same name (its pvcnoded goes off and on with the host)."""

    def __init__(self, directory: Path, host: SimulatedHost | QemuHost, cluster_state_dir: Path | None = None,
                 address: str | None = None):
        """`address` is where ipmi_sim listens: by default the host's own address (loopback for a test-driver
        host); a lab cluster's BMCs listen on the lab's gateway, a management network that outlives a host's
        cut link."""
        self.directory = Path(directory).absolute()
        self.host = host
        self.cluster_state_dir = Path(cluster_state_dir).absolute() if cluster_state_dir else None
        self._address = address

    @classmethod
    def attach(cls, directory: Path) -> SimulatedBMC:
        """The BMC started earlier in `directory`, with its host, as another process (ipmi_sim's command)
        finds it."""
        settings = json.loads((Path(directory) / "bmc.json").read_text())
        netns = settings.get("host_netns")
        if settings["host_kind"] == "qemu":
            host = QemuHost(Path(settings["host_directory"]), settings["name"],
                            settings.get("host_address", settings["address"]), netns)
        else:
            host = SimulatedHost(Path(settings["host_directory"]), settings["name"], netns)
        return cls(directory, host, settings.get("cluster_state_dir"), settings["address"])

    # -- what a client needs ------------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """``{"name", "address", "port", "user", "password", "host_kind", "host_directory",
        "cluster_state_dir"}`` as chosen at the first start (empty before it)."""
        try:
            return json.loads((self.directory / "bmc.json").read_text())
        except FileNotFoundError:
            return {}

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        return self._address or getattr(self.host, "address", "127.0.0.1")

    @property
    def client(self) -> BMC:
        """How ipmitool reaches this BMC (`pvc.plugins.fencing.BMC`)."""
        from pvc.plugins.fencing import BMC  # not for ipmi_sim's every status request: it loads pluggy
        settings = self.settings
        return BMC(settings["address"], settings["port"], settings["user"], settings["password"])

    def node_settings(self) -> dict[str, Any]:
        """The node daemon's settings naming this BMC (``bmc_host``, ``bmc_port``, ``bmc_user``,
        ``bmc_password``)."""
        settings = self.settings
        return {"bmc_host": settings["address"], "bmc_port": settings["port"], "bmc_user": settings["user"],
                "bmc_password": settings["password"]}

    # -- ipmi_sim -----------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.directory / "ipmi_sim.log"

    @property
    def control_log_path(self) -> Path:
        return self.directory / "control.log"

    @property
    def pid(self) -> int | None:
        return live_pid(self.directory / "ipmi_sim.pid", str(self.directory / "lan.conf"))

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, user: str, password: str, port: int | None = None, timeout: float = 10.0) -> None:
        """Start ipmi_sim on `port` (a free UDP port of the host's address unless given, kept across
        restarts) with one admin user; return once it listens. On failure, nothing is left running. A free
        port found here can be taken by another process before ipmi_sim binds it: then another is tried."""
        if self.running:
            raise RuntimeError(f"the BMC of {self.name} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        fixed = port or self.settings.get("port")
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._start_on(fixed or free_port(self.address, socket.SOCK_DGRAM), user, password, timeout)
                return
            except RuntimeError as error:
                if fixed or attempt == PORT_ATTEMPTS - 1 or PORT_TAKEN not in str(error):
                    raise

    def _start_on(self, port: int, user: str, password: str, timeout: float) -> None:
        settings = {"name": self.name, "address": self.address, "port": port, "user": user,
                    "password": password, "host_kind": getattr(self.host, "kind", "test"),
                    "host_directory": str(self.host.directory),
                    "host_address": getattr(self.host, "address", None), "host_netns": self.host.netns,
                    "cluster_state_dir": str(self.cluster_state_dir) if self.cluster_state_dir else None}
        _write_private(self.directory / "bmc.json", json.dumps(settings, indent=2))
        pid_file, marker = self.host.power_evidence
        (self.directory / "power_evidence").write_text(f"{pid_file}\n{marker}\n")
        control = shlex.join([sys.executable, "-S", str(CHASSIS_SCRIPT), str(self.directory)])
        _write_private(self.directory / "lan.conf", _LAN_CONF.format(
            name=self.name, address=self.address, port=port, guid=uuid.uuid4().hex, user=user,
            password=password, control=control.replace("\\", "\\\\").replace('"', '\\"')))
        (self.directory / "bmc.emu").write_text(_EMU)
        (self.directory / "state").mkdir(exist_ok=True)
        pid = start_detached(["ipmi_sim", "-n", "-p", "-c", str(self.directory / "lan.conf"),
                              "-f", str(self.directory / "bmc.emu"), "-s", str(self.directory / "state")],
                             self.log_path, self.directory / "ipmi_sim.pid", cwd=self.directory)
        try:
            wait_until(lambda: _udp_port_taken(self.address, port) or not pid_alive(pid), timeout,
                       what=f"ipmi_sim of {self.name} to listen on UDP {self.address}:{port}")
            if not pid_alive(pid):
                raise RuntimeError("ipmi_sim exited")
        except BaseException as error:
            self.stop()
            if isinstance(error, (TimeoutError, RuntimeError)):
                raise RuntimeError(f"the BMC of {self.name} failed to start ({error}); last lines of "
                                   f"{self.log_path}:\n{log_tail(self.log_path)}") from error
            raise

    def stop(self) -> None:
        """Stop ipmi_sim; the host's power stays as it is. SIGKILL: it keeps no state (``-p``), and takes up to
        2 s to exit on SIGTERM."""
        pid = self.pid
        if pid is not None:
            kill_pid(pid)
        (self.directory / "ipmi_sim.pid").unlink(missing_ok=True)

    # -- the chassis: what ipmi_sim's command does ------------------------------------------------------

    @property
    def powered(self) -> bool:
        return self.host.running

    def power_off(self) -> None:
        """The power cut: the node's pvcnoded (in a local cluster) and the host die at once, with every
        guest."""
        with self._power_lock():
            cluster = self._cluster()
            if cluster is not None:
                cluster.stop_daemon("pvcnoded", self.name, kill=True)
            self.host.power_off()
            self._log("powered off")

    def power_on(self) -> None:
        """Boot: the host starts empty, then (in a local cluster) its pvcnoded; nothing if already on."""
        with self._power_lock():
            cluster = self._cluster()
            if not self.host.running:
                self.host.start()
                self._log("powered on")
            if cluster is not None and cluster.daemon_pid("pvcnoded", self.name) is None:
                cluster.start_node_daemon(self.name)
                self._log("pvcnoded started")

    def start_daemon_if_down(self) -> int | None:
        """The machine room restarting a node's pvcnoded that died on a host that is on: under the power lock and
        only if none runs, so that a boot starting it at the same moment never makes two (the second would
        wait for the first's session, refuse and exit, taking the pid file with it). Its pid if it started."""
        with self._power_lock():
            cluster = self._cluster()
            if cluster is None or not self.host.running or cluster.daemon_pid("pvcnoded", self.name) is not None:
                return None
            pid = cluster.start_node_daemon(self.name)
            self._log("pvcnoded started again")
            return pid

    def power_cycle(self) -> None:
        """Off, then on (a reset)."""
        self.power_off()
        self.power_on()

    def in_background(self, action: str) -> None:
        """Run ``boot`` (`power_on`) or ``cycle`` (`power_cycle`) in a process of its own and return at once."""
        start_detached([sys.executable, "-m", CONTROL_MODULE, str(self.directory), action],
                       self.control_log_path)

    def _cluster(self):
        if self.cluster_state_dir is None:
            return None
        from pvc.cli.localcluster.cluster import LocalCluster  # cluster.py imports this module
        return LocalCluster(self.cluster_state_dir)

    @contextmanager
    def _power_lock(self) -> Iterator[None]:
        """One power action at a time: a power cut during a boot waits for the boot, then cuts it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "power.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _log(self, what: str) -> None:
        with open(self.control_log_path, "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {self.name}: {what}\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file holding the BMC password, readable by its owner only."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _udp_port_taken(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def main(argv: list[str]) -> int:
    """ipmi_sim's chassis_control: ``DIRECTORY get power | set power 0|1 | set reset 1``, and ``DIRECTORY
    boot|cycle`` for the power on and reset it runs in the background."""
    directory, *request = argv
    bmc = SimulatedBMC.attach(Path(directory))
    match request:
        case ["get", "power"]:
            print(f"power:{1 if bmc.powered else 0}")
        case ["set", "power", "0"]:
            bmc.power_off()
        case ["set", "power", "1"]:
            bmc.in_background("boot")
        case ["set", "reset", "1"]:
            bmc.in_background("cycle")
        case ["boot"]:
            bmc.power_on()
        case ["cycle"]:
            bmc.power_cycle()
        case _:
            print(f"unsupported chassis request: {' '.join(request)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
