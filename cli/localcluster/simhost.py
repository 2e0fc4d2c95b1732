"""A simulated hypervisor: a libvirtd of its own hosting libvirt's test driver.

VMs on a real host keep running when pvcnoded dies, and vanish when the host loses
power. An in-process ``test:///`` connection cannot show either (its VMs die with
the process), so each simulated host runs a real libvirtd, reached over its own
socket, with one "holder" connection open for the host's lifetime: the test
driver keeps its state only while some connection is open, so the holder is what
lets VMs outlive every client. Killing libvirtd is the power cut.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

from pvc.cli.localcluster.processes import (
    kill_pid,
    live_pid,
    log_tail,
    pid_alive,
    start_detached,
    stop_pid,
    wait_until,
)

# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

# Each libvirtd gets private tmpfs copies of the directories where libvirtd keeps
# its driver pid files and state, which otherwise collide between daemons. The
# mkdir runs before the mounts and so touches the real filesystem: it only makes
# sure the mount points exist on a machine where libvirtd never ran.
_NAMESPACE_SCRIPT = (
    "set -e; "
    "mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt; "
    "mount -t tmpfs tmpfs /run/libvirt; "
    "mount -t tmpfs tmpfs /var/lib/libvirt; "
    "mount -t tmpfs tmpfs /var/cache/libvirt; "
    "exec libvirtd -f {conf} -p {pid}"
)


class SimulatedHost:
    """One simulated hypervisor whose files (config, sockets, logs, pid files) live in directory."""

    kind = "test"

    def __init__(self, directory: Path, name: str, netns: str | None = None) -> None:
        """With `netns`, libvirtd runs in that network namespace (a lab host); it is reached through its unix
        socket either way."""
        # Absolute, because libvirtd runs with the directory as its working directory.
        self.directory = Path(directory).absolute()
        self.name = name
        self.netns = netns

    @classmethod
    def attach(cls, directory: Path) -> SimulatedHost:
        """The host previously started in directory, so another process can stop it."""
        directory = Path(directory)
        return cls(directory, (directory / "name").read_text().strip())

    @property
    def socket_path(self) -> Path:
        return self.directory / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.directory / "libvirtd.log"

    @property
    def events_path(self) -> Path:
        """Lifecycle events of the host's VMs, as seen by the holder connection."""
        return self.directory / "events.log"

    @property
    def power_evidence(self) -> tuple[Path, str]:
        """The pid file and the argv marker of the process whose life is the host's power (libvirtd): the
        command line check guards against a pid file outliving its process."""
        return self.directory / "libvirtd.pid", str(self.directory / "libvirtd.conf")

    @property
    def pid(self) -> int | None:
        """The libvirtd pid, or None when the host is off."""
        return live_pid(*self.power_evidence)

    @property
    def holder_pid(self) -> int | None:
        return live_pid(self.directory / "holder.pid", str(self.socket_path))

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 15.0) -> None:
        """Power the host on, empty; on failure nothing is left running."""
        if self.running:
            raise RuntimeError(f"simulated host {self.name} is already running (pid {self.pid})")
        if len(bytes(self.socket_path)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"socket path too long for AF_UNIX: {self.socket_path}")
        self._prepare_directory()
        try:
            self._start_libvirtd(timeout)
            self._start_holder(timeout)
            self._remove_default_domain()
        except BaseException as error:
            self.power_off()
            if isinstance(error, (TimeoutError, RuntimeError)):
                raise RuntimeError(
                    f"simulated host {self.name} failed to start ({error}); "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                ) from error
            raise

    def power_off(self) -> None:
        """Cut the power: libvirtd dies without warning and takes every VM with it."""
        for pid in (self.pid, self.holder_pid):
            if pid is not None:
                kill_pid(pid)
        self._forget_pids()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the host down in order, for teardown; its VMs are gone afterwards too."""
        for pid in (self.holder_pid, self.pid):
            if pid is not None:
                stop_pid(pid, timeout)
        self._forget_pids()

    def _forget_pids(self) -> None:
        for pid_file in ("libvirtd.pid", "holder.pid"):
            (self.directory / pid_file).unlink(missing_ok=True)

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "name").write_text(f"{self.name}\n")
        # Leftover sockets of a killed daemon would make the socket look ready at once.
        for leftover in self.directory.glob("libvirt-*sock*"):
            leftover.unlink()
        # An empty driver directory keeps libvirtd from loading its qemu, network,
        # storage and other modules: the test driver is built in, and the network
        # driver would otherwise touch the real host's firewall and bridges.
        (self.directory / "no-drivers").mkdir(exist_ok=True)
        (self.directory / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.directory}"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            "listen_tcp = 0\n"
            "listen_tls = 0\n"
            f'log_outputs = "3:file:{self.log_path}"\n'
        )

    def _start_libvirtd(self, timeout: float) -> None:
        script = _NAMESPACE_SCRIPT.format(
            conf=shlex.quote(str(self.directory / "libvirtd.conf")),
            pid=shlex.quote(str(self.directory / "libvirtd.pid")),
        )
        # ip netns exec, unshare and sh all exec, so the pid started here is libvirtd's own.
        in_netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        pid = start_detached(
            [*in_netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            self.log_path,
            pid_path=self.directory / "libvirtd.pid",
            env={**os.environ, "LIBVIRT_DRIVER_DIR": str(self.directory / "no-drivers")},
            cwd=self.directory,
        )
        wait_until(
            lambda: accepts_connections(self.socket_path) or not pid_alive(pid),
            timeout,
            what=f"libvirtd of {self.name} to listen on {self.socket_path}",
        )
        if not pid_alive(pid):
            raise RuntimeError("libvirtd exited")

    def _start_holder(self, timeout: float) -> None:
        """Open the connection that keeps the host's state alive.

        virsh prints the URI once connected, which is how we know the holder is in
        place before any other connection comes and goes.
        """
        # A previous run's URI line would pass the readiness check below at once.
        self.events_path.unlink(missing_ok=True)
        pid = start_detached(
            ["virsh", "-c", self.uri, "uri; event --loop --all --timestamp"],
            self.events_path,
            pid_path=self.directory / "holder.pid",
            cwd=self.directory,
        )
        wait_until(
            lambda: self.uri in self.events_path.read_text() or not pid_alive(pid),
            timeout,
            what=f"the holder connection to {self.name}",
        )
        if not pid_alive(pid):
            raise RuntimeError(f"the holder connection failed: {log_tail(self.events_path)}")

    def _remove_default_domain(self) -> None:
        """The test driver starts with a running domain named 'test'; a fresh host has none."""
        result = subprocess.run(
            ["virsh", "-c", self.uri, "destroy test; undefine test"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"could not remove the default domain: {result.stderr.strip()}")


def accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
