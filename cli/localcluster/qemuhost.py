"""A simulated hypervisor that runs real guests: libvirtd with the QEMU driver in namespaces of its own.

On a real host QEMU outlives both pvcnoded and a libvirtd restart, and every guest dies with the power. Each
QEMU host is therefore a mount and PID namespace whose PID 1 is `tini` (it reaps the QEMU processes that
daemonize and are re-parented to it); under it a small supervisor script runs libvirtd and starts it again
when it exits, as systemd would. So:

- killing or restarting libvirtd leaves the namespace, and every guest in it, running;
- killing the namespace's init (`power_off`) takes every process in the namespace with it at once.

The namespace mounts its own /proc, so libvirtd and QEMU see the PIDs they made. Processes are found from
outside by the PID namespace they live in, never by name: the machine's own PID 1 reaps slowly, so a dead
QEMU may linger as a zombie under the same name.

libvirtd listens on TCP at the host's address for peer-to-peer migration, with a port of its own and a
range of ports for incoming migration streams; every address comes from the host's configured address, so
a host can later move into a network namespace of its own.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
import uuid
from pathlib import Path

from pvc.cli.localcluster.processes import (free_port, free_port_range, kill_pid, live_pid, log_tail, pid_alive,
                                            process_cmdline, start_detached, wait_until)
from pvc.cli.localcluster.simhost import MAX_SOCKET_PATH, accepts_connections

MIGRATION_PORTS = 16
"""Incoming migration streams a host can take at once (a flush moves several VMs in parallel)."""
LAB_LIBVIRT_PORT = 16509
LAB_MIGRATION_PORT_MIN = 49152
"""A lab host has its network namespace to itself: libvirt's own default ports."""

_PRIVATE_DIRECTORIES = ("/var/lib/libvirt", "/var/cache/libvirt", "/etc/libvirt/qemu")

# The supervisor: private state directories, our qemu.conf, run and log directories over the real ones, then
# libvirtd in a loop. While the file `held` exists libvirtd is not started again (a stopped libvirtd).
_SUPERVISOR = """\
set -e
for directory in {private}; do mkdir -p "$directory"; mount -t tmpfs tmpfs "$directory"; done
mkdir -p /var/log/libvirt /run/libvirt
mount --bind {log_dir} /var/log/libvirt
mount --bind {run_dir} /run/libvirt
mount --bind {qemu_conf} /etc/libvirt/qemu.conf
set +e
while :; do
    while [ -e {held} ]; do sleep 0.1; done
    echo "supervisor: starting libvirtd"
    libvirtd --listen -f {libvirtd_conf} -p /run/libvirt/supervised-libvirtd.pid
    echo "supervisor: libvirtd exited with status $?"
    sleep 0.2
done
"""


class QemuHost:
    """One QEMU host whose files (configs, sockets, logs, state) live in `directory`."""

    kind = "qemu"

    def __init__(self, directory: Path, name: str, address: str = "127.0.0.1", netns: str | None = None) -> None:
        """With `netns`, the host's namespaces are made inside that network namespace (a lab host), where
        `address` is its own: its ports are then the standard ones."""
        self.directory = Path(directory).absolute()
        self.name = name
        self.address = address
        self.netns = netns

    @property
    def settings_path(self) -> Path:
        return self.directory / "host.json"

    @property
    def settings(self) -> dict:
        """Ports and identity chosen at the first start and kept, so a restarted host is the same host."""
        try:
            return json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            return {}

    @property
    def socket_path(self) -> Path:
        return self.directory / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def migration_uri(self) -> str:
        """Where peers' libvirtds reach this one for peer-to-peer migration."""
        return f"qemu+tcp://{self.address}:{self.settings['libvirt_port']}/system"

    @property
    def log_path(self) -> Path:
        return self.directory / "host.log"

    @property
    def qemu_log_directory(self) -> Path:
        """libvirt's per-domain QEMU logs (its /var/log/libvirt), kept for reading after a failure."""
        return self.directory / "log"

    @property
    def run_directory(self) -> Path:
        """libvirtd's /run/libvirt, seen from outside the namespace: its QEMU driver's PID files are in
        qemu/ (pvcnoded's `libvirt_run_directory`). Emptied at each power-on, as a tmpfs would be."""
        return self.directory / "run"

    @property
    def init_pid_file(self) -> Path:
        """Holds the host PID of the namespace's init: the PID namespace libvirt's PID files number in
        (pvcnoded's `libvirt_namespace_pid_file`)."""
        return self.directory / "init.pid"

    @property
    def power_evidence(self) -> tuple[Path, str]:
        """The pid file and the argv marker of the process whose life is the host's power (its init)."""
        return self.directory / "init.pid", str(self.directory / "supervisor.sh")

    @property
    def pid(self) -> int | None:
        """The host PID of the namespace's init (tini), or None when the host is off."""
        return live_pid(*self.power_evidence)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def processes(self) -> dict[int, list[str]]:
        """Every process in the host's PID namespace: host PID → argv."""
        init = self.pid
        if init is None:
            return {}
        namespace = _pid_namespace(init)
        found = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _pid_namespace(int(entry.name)) == namespace:
                pid = int(entry.name)
                if pid_alive(pid):
                    found[pid] = process_cmdline(pid)
        return found

    def qemu_pids(self) -> dict[str, int]:
        """Guest name → host PID of its QEMU process, for every QEMU running in this host."""
        guests = {}
        for pid, argv in self.processes().items():
            if argv and os.path.basename(argv[0]).startswith("qemu-system"):
                name = next((arg.split(",")[0].removeprefix("guest=") for arg in argv if arg.startswith("guest=")),
                            None)
                guests[name or str(pid)] = pid
        return guests

    @property
    def libvirtd_pid(self) -> int | None:
        conf = str(self.directory / "libvirtd.conf")
        return next((pid for pid, argv in self.processes().items()
                     if argv and os.path.basename(argv[0]) == "libvirtd" and conf in argv), None)

    def start(self, timeout: float = 30.0) -> None:
        """Power the host on, empty; on failure nothing is left running."""
        if self.running:
            raise RuntimeError(f"QEMU host {self.name} is already running (pid {self.pid})")
        if len(bytes(self.socket_path)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self._prepare_directory()
        try:
            in_netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            launcher = start_detached(
                [*in_netns, "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                 "tini", "-s", "--", "sh", str(self.directory / "supervisor.sh")],
                self.log_path, cwd=self.directory,
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(self.directory / "drivers")})
            init = wait_until(lambda: _only_child(launcher) or not pid_alive(launcher), 10,
                              what=f"the init of host {self.name}")
            if not pid_alive(launcher):
                raise RuntimeError("the host's namespace could not be made")
            (self.directory / "init.pid").write_text(f"{init}\n")
            self.wait_libvirtd(timeout)
        except BaseException as error:
            self.power_off()
            if isinstance(error, (TimeoutError, RuntimeError)):
                raise RuntimeError(f"QEMU host {self.name} failed to start ({error}); last lines of "
                                   f"{self.log_path}:\n{log_tail(self.log_path)}") from error
            raise

    def wait_libvirtd(self, timeout: float = 30.0) -> None:
        """Until libvirtd answers on its socket (after a start or a restart)."""
        wait_until(lambda: (self.libvirtd_pid and accepts_connections(self.socket_path)) or self._off(),
                   timeout, interval=0.1, what=f"libvirtd of {self.name} to listen on {self.socket_path}")
        if self._off():
            raise RuntimeError(f"host {self.name} went off while libvirtd started")

    def _off(self) -> bool:
        """Whether the host is off, read twice a moment apart: just after a start its init may be in the middle
        of exec'ing tini, when its argv reads empty (CI once saw a host "go off" that way)."""
        return not self.running and (time.sleep(0.3) or not self.running)

    def restart_libvirtd(self, timeout: float = 30.0) -> None:
        """Kill libvirtd as a crash would; the supervisor starts it again, and the guests run on."""
        old = self.libvirtd_pid
        if old is not None:
            kill_pid(old)
        self.wait_libvirtd(timeout)

    def stop_libvirtd(self) -> None:
        """Stop libvirtd and keep it stopped (guests run on) until `start_libvirtd`."""
        (self.directory / "held").touch()
        pid = self.libvirtd_pid
        if pid is not None:
            kill_pid(pid)

    def start_libvirtd(self, timeout: float = 30.0) -> None:
        (self.directory / "held").unlink(missing_ok=True)
        self.wait_libvirtd(timeout)

    def freeze_libvirtd(self, frozen: bool = True) -> None:
        """Stop (SIGSTOP) or continue libvirtd: a hung daemon that still holds its socket."""
        pid = self.libvirtd_pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def power_off(self) -> None:
        """Cut the power: the namespace's init dies, and the kernel kills every process in it."""
        init = self.pid
        if init is not None:
            kill_pid(init)
        (self.directory / "init.pid").unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Teardown: a power-off, since the host's guests and state go with it anyway."""
        self.power_off()

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "name").write_text(f"{self.name}\n")
        (self.directory / "kind").write_text(f"{self.kind}\n")
        (self.directory / "held").unlink(missing_ok=True)
        for leftover in self.directory.glob("libvirt-*sock*"):
            leftover.unlink()
        settings = self.settings or {"host_uuid": str(uuid.uuid4())}
        if self.netns:
            settings.update(libvirt_port=LAB_LIBVIRT_PORT, migration_port_min=LAB_MIGRATION_PORT_MIN)
        elif not settings.get("libvirt_port") or not settings.get("migration_port_min"):
            settings["libvirt_port"] = free_port(self.address)
            settings["migration_port_min"] = free_port_range(MIGRATION_PORTS, self.address)
        settings["address"] = self.address
        self.settings_path.write_text(json.dumps(settings, indent=2))
        self._link_drivers()
        self.qemu_log_directory.mkdir(exist_ok=True)
        shutil.rmtree(self.run_directory, ignore_errors=True)
        self.run_directory.mkdir()
        (self.directory / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.directory}"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            "listen_tcp = 1\n"
            "listen_tls = 0\n"
            f'listen_addr = "{self.address}"\n'
            f'tcp_port = "{settings["libvirt_port"]}"\n'
            'auth_tcp = "none"\n'
            f'host_uuid = "{settings["host_uuid"]}"\n'
            f'log_outputs = "3:file:{self.directory / "libvirtd.log"}"\n'
        )
        minimum = settings["migration_port_min"]
        (self.directory / "qemu.conf").write_text(
            "cgroup_controllers = [ ]\n"
            'user = "root"\n'
            'group = "root"\n'
            "dynamic_ownership = 0\n"
            "remember_owner = 0\n"
            'security_driver = "none"\n'
            'stdio_handler = "file"\n'
            f"migration_port_min = {minimum}\n"
            f"migration_port_max = {minimum + MIGRATION_PORTS - 1}\n"
        )
        (self.directory / "supervisor.sh").write_text(_SUPERVISOR.format(
            private=" ".join(_PRIVATE_DIRECTORIES),
            log_dir=shlex.quote(str(self.qemu_log_directory)),
            run_dir=shlex.quote(str(self.run_directory)),
            qemu_conf=shlex.quote(str(self.directory / "qemu.conf")),
            held=shlex.quote(str(self.directory / "held")),
            libvirtd_conf=shlex.quote(str(self.directory / "libvirtd.conf")),
        ))

    def _link_drivers(self) -> None:
        """Only the QEMU driver: the network driver would touch the real machine's bridges and firewall."""
        drivers = self.directory / "drivers"
        drivers.mkdir(exist_ok=True)
        source = _driver_directory() / "libvirt_driver_qemu.so"
        if not source.exists():
            raise RuntimeError(f"{source} is missing: install libvirt-daemon-driver-qemu (contrib/setup.sh)")
        link = drivers / source.name
        if not link.exists():
            link.symlink_to(source)


def _driver_directory() -> Path:
    for candidate in Path("/usr/lib").glob("*/libvirt/connection-driver"):
        return candidate
    return Path("/usr/lib/libvirt/connection-driver")


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _only_child(pid: int) -> int | None:
    """The one child of pid (unshare's forked child, which becomes the namespace's init)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children and process_cmdline(int(children[0])) else None
