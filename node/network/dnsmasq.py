"""One dnsmasq per managed network on the router node: DHCP from the network's range and reservations, DNS for
its domain and its VMs' names, router advertisements for IPv6.

Each instance has its config, pid and lease files under the node's network run directory, named by VNI. It
runs in the foreground as this daemon's child and dies with it (`PR_SET_PDEATHSIG`), so a router whose daemon
is killed stops answering DHCP at once; the next router starts from the leases in ZooKeeper, written into its
lease file before dnsmasq reads it.
"""
import ctypes
import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pvc.errors import OperationFailed
from pvc.node.network.devices import bridge_name

LEASE_TIME = "2m"
"""dnsmasq's shortest lease: guests renew every minute, so a new router hears from each of them quickly."""
START_WAIT_S = 5.0


def render(record: Mapping[str, Any], hosts: Mapping[str, str], lease_file: Path, pid_file: Path,
           lease_script: Path | None = None) -> str:
    """dnsmasq's configuration for network `record`; `hosts` are the VMs' MACs on it and their names;
    `lease_script` is run for every lease granted, renewed or released (`pvc.node.network.lease_events`)."""
    bridge = bridge_name(record["vni"])
    lines = ["no-resolv", "no-hosts", "bind-interfaces", f"interface={bridge}", "except-interface=lo",
             "dhcp-authoritative", f"dhcp-leasefile={lease_file}", f"pid-file={pid_file}", "log-facility=-",
             "quiet-dhcp", "quiet-ra"]
    if lease_script is not None:
        lines += [f"dhcp-script={lease_script}", "script-on-renewal"]
    if record.get("domain"):
        lines += [f"domain={record['domain']}", f"local=/{record['domain']}/", "expand-hosts"]
    if record.get("ipv4_network"):
        subnet = ipaddress.ip_network(record["ipv4_network"])
        lines.append(f"listen-address={record['ipv4_gateway']}")
        if record.get("dhcp4_start"):
            lines.append(f"dhcp-range={record['dhcp4_start']},{record['dhcp4_end']},{subnet.netmask},{LEASE_TIME}")
        else:
            lines.append(f"dhcp-range={subnet.network_address},static,{subnet.netmask},{LEASE_TIME}")
        lines += [f"dhcp-option=option:router,{record['ipv4_gateway']}",
                  f"dhcp-option=option:dns-server,{record['ipv4_gateway']}",
                  f"dhcp-option=option:mtu,{record['mtu']}"]
    if record.get("ipv6_network"):
        lines += ["enable-ra", f"dhcp-range=::,constructor:{bridge},ra-stateless,64"]
    for mac, reserved in sorted((record.get("reservations") or {}).items()):
        name = reserved.get("hostname") or hosts.get(mac)
        lines.append(f"dhcp-host={mac},{reserved['ip']}" + (f",{name}" if name else ""))
    for mac, name in sorted(hosts.items()):
        if mac not in (record.get("reservations") or {}):
            lines.append(f"dhcp-host={mac},{name}")
    return "\n".join(lines) + "\n"


def may_hold(record: Mapping[str, Any], mac: str, address: str) -> bool:
    """Whether dnsmasq configured from `record` could give `address` to `mac`: its reservation, or an address
    of the dynamic range. A lease of any other IPv4 address is a removed reservation's, which only blocks the
    address for whoever reserves it next."""
    reserved = (record.get("reservations") or {}).get(mac)
    if reserved is not None and reserved["ip"] == address:
        return True
    try:
        leased = ipaddress.ip_address(address)
    except ValueError:
        return False
    if leased.version != 4:
        return True
    return bool(record.get("dhcp4_start")) and \
        ipaddress.ip_address(record["dhcp4_start"]) <= leased <= ipaddress.ip_address(record["dhcp4_end"])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Dnsmasq:
    """The dnsmasq of one network, restarted when its configuration changes."""

    def __init__(self, run_directory: Path, vni: int):
        self.vni = vni
        self.config_file = run_directory / f"dnsmasq-{vni}.conf"
        self.lease_file = run_directory / f"dnsmasq-{vni}.leases"
        self.pid_file = run_directory / f"dnsmasq-{vni}.pid"
        self._process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure(self, config: str, leases: Mapping[str, Any], keep: Callable[[str, Mapping[str, Any]], bool]) -> bool:
        """Run with `config`; True if it (re)started. Starting, its lease file holds the leases it had (those of
        `leases` when it had none), less those `keep` refuses: dnsmasq reads the file only as it starts, and
        would otherwise go on holding a released address for its old owner."""
        if self.running and self.config_file.exists() and self.config_file.read_text() == config:
            return False
        self.stop()
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(config)
        held = self.lease_file.read_text() if self.lease_file.exists() else ""
        if held.strip():
            self.lease_file.write_text("".join(line for line in held.splitlines(keepends=True)
                                               if (lease := _lease(line)) is None or keep(*lease)))
        else:
            self.lease_file.write_text(lease_lines({mac: lease for mac, lease in leases.items() if keep(mac, lease)}))
        log_file = open(self.config_file.with_suffix(".log"), "ab")
        try:
            self._process = subprocess.Popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={self.config_file}"],
                                             stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                             preexec_fn=_die_with_parent)
        except FileNotFoundError:
            raise OperationFailed("dnsmasq is not installed (Debian dnsmasq-base)") from None
        finally:
            log_file.close()
        deadline = time.monotonic() + START_WAIT_S
        while not self.pid_file.exists() and self._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._process.poll() is not None:
            tail = self.config_file.with_suffix(".log").read_text()[-300:].strip()
            raise OperationFailed(f"dnsmasq for network {self.vni} exited: {tail}")
        return True

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        stop_stale(self.pid_file, self.config_file)

    def leases(self) -> dict[str, dict[str, Any]]:
        """The leases in dnsmasq's lease file, by MAC."""
        return read_leases(self.lease_file)


def stop_stale(pid_file: Path, config_file: Path) -> None:
    """Kill a dnsmasq an earlier run of this daemon left, known by its pid file and its own config path."""
    try:
        pid = int(pid_file.read_text().strip())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if str(config_file).encode() in command_line:
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def read_leases(path: Path) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(lease for line in text.splitlines() if (lease := _lease(line)) is not None)


def _lease(line: str) -> tuple[str, dict[str, Any]] | None:
    """The MAC and lease of one line of a lease file; None for another line (the server's ``duid``)."""
    parts = line.split()
    if len(parts) >= 4 and parts[0].isdigit():
        return parts[1].lower(), {"ip": parts[2], "hostname": None if parts[3] == "*" else parts[3],
                                  "expires": int(parts[0])}
    return None


def lease_lines(leases: Mapping[str, Any]) -> str:
    return "".join(f"{lease['expires']} {mac} {lease['ip']} {lease.get('hostname') or '*'} *\n"
                   for mac, lease in sorted(leases.items()))
