"""Benchmarks of real guests on QEMU hosts: prints figures, asserts no timings. Run with
`pytest -m bench -s tests/bench/test_bench_qemu.py`.

- boot through PVC: `vm start` to the first heartbeat on the guest's console;
- live migration of a 128 MiB guest through PVC (wall time of `vms.migrate(wait=True)`, and the downtime the
  target's libvirtd measured), against the floor: the same guest between two bare QEMU processes over QMP;
- `node flush` of a node running 3, then 6, real guests (all live migrating), and `node ready` back;
- the memory of one QEMU host: idle, with 1 and with 3 guests, and of each QEMU process.

Every figure line starts with "[bench qemu]". The machine has 2 cores that other test runs may share: each
test also prints the load average and how busy the CPUs were while it measured, and any QEMU processes on the
machine that are not this benchmark's.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import libvirt
import pytest

from pvc.cli.localcluster import guest
from pvc.cli.localcluster.cluster import LocalCluster
from pvc.cli.localcluster.pidfiles import process_cmdline
from pvc.cli.localcluster.processes import free_port, pid_alive

from conftest import RunningCluster
from guest_support import guest_xml, heartbeats, wait_heartbeat
from helpers import eventually
from vm_support import running_hosts, wait_running_on

pytestmark = pytest.mark.bench

BOOTS = 5
MIGRATIONS = 5
FLUSH_SIZES = (3, 6)
GUEST_MIB = 128
FLUSH_NODE = "hv1"
TAG = "[bench qemu]"


def say(line: str = "") -> None:
    print(f"{TAG} {line}" if line else "", flush=True)


# -- the machine's load -------------------------------------------------------------------------------------

def _cpu_jiffies() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def foreign_qemus(local: LocalCluster) -> list[int]:
    """QEMU processes on the machine that belong neither to this cluster's hosts nor to this benchmark."""
    namespaces = {_pid_namespace(host.pid) for host in (local.host(name) for name in local.node_names)
                  if host.running}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = process_cmdline(pid)
        if argv and os.path.basename(argv[0]).startswith("qemu-system") \
                and _pid_namespace(pid) not in namespaces and pid_alive(pid):
            found.append(pid)
    return found


class LoadWindow:
    """How loaded the machine was between its start and `report`."""

    def __init__(self) -> None:
        self.idle, self.total = _cpu_jiffies()

    def text(self) -> str:
        idle, total = _cpu_jiffies()
        busy = 100 * (1 - (idle - self.idle) / max(total - self.total, 1))
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return f"CPUs {busy:.0f} % busy (of {os.cpu_count()}, this benchmark's own guests included), loadavg {load}"

    def report(self, local: LocalCluster, what: str) -> None:
        say(f"load during {what}: {self.text()}, other QEMU processes on the machine: {len(foreign_qemus(local))}")


# -- consoles -----------------------------------------------------------------------------------------------

def console_path(cluster: RunningCluster, vm: str, node: str) -> Path:
    return cluster.local.console_directory(node) / f"{vm}.log"


def read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size < offset:
                offset = 0  # rewritten, not appended
            file.seek(offset)
            return file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class HeartbeatClock(threading.Thread):
    """Notes when each heartbeat counter first appears in any of the console files (10 ms polling)."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.seen: dict[tuple[str, int], float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.monotonic()
            for path in self.paths:
                for beat in guest.parse_console(read_from(path, 0)):
                    self.seen.setdefault((beat.boot_id, beat.counter), now)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def intervals(self, start: float, end: float) -> list[float]:
        """Intervals between consecutive heartbeats of one boot whose arrivals touch [start, end]."""
        times = sorted(self.seen.items())
        result = []
        for (boot, counter), when in times:
            previous = self.seen.get((boot, counter - 1))
            if previous is not None and when >= start and previous <= end:
                result.append(when - previous)
        return result


# -- bare QEMU with QMP (the floor) -------------------------------------------------------------------------

class Qmp:
    def __init__(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.stream = self.sock.makefile("rwb")
        json.loads(self.stream.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments):
        self.stream.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.stream.flush()
        while True:
            reply = json.loads(self.stream.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


class BareQemu:
    """The guest as libvirt runs it (same kernel, initrd, command line, machine, CPU model, 128 MiB, TCG with a
    16 MiB translation cache), without libvirt: a QEMU process of our own with a QMP socket."""

    def __init__(self, directory: Path, name: str, console: Path, incoming_port: int | None = None) -> None:
        boot = guest.DEFAULT_BOOT_DIR
        self.qmp_path = directory / f"{name}.qmp"
        argv = [guest.QEMU, "-name", name, "-machine", "pc,usb=off", "-accel", "tcg,tb-size=16", "-cpu", "qemu64",
                "-m", str(GUEST_MIB), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-rtc", "base=utc", "-kernel", str(boot / guest.KERNEL), "-initrd", str(boot / guest.INITRD),
                "-append", guest.CMDLINE, "-chardev", f"file,id=serial0,path={console},append=on",
                "-device", "isa-serial,chardev=serial0", "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if incoming_port is not None:
            argv += ["-incoming", f"tcp:127.0.0.1:{incoming_port}"]
        log = open(directory / f"{name}.log", "wb")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.qmp = Qmp(self.qmp_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        try:
            self.qmp.close()
        finally:
            self.process.kill()
            self.process.wait()


# -- memory -------------------------------------------------------------------------------------------------

def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of pid in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, pss


def kernel_mapping_kib(pid: int) -> int:
    """RSS of pid's mapping of the guest kernel file: page cache, shared by every guest that maps it."""
    total, inside = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.endswith("/" + guest.KERNEL)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def host_memory(local: LocalCluster, node: str) -> tuple[int, int, list[tuple[int, str, int, int]]]:
    """A host's summed RSS and PSS (KiB) over every process in its PID namespace, and each process's
    (pid, name, RSS, PSS)."""
    processes = []
    for pid, argv in sorted(local.host(node).processes().items()):
        name = os.path.basename(argv[0]) if argv else str(pid)
        if name.startswith("qemu-system"):
            name += " " + next((arg.split(",")[0] for arg in argv if arg.startswith("guest=")), "")
        processes.append((pid, name, *memory_kib(pid)))
    return sum(rss for _, _, rss, _ in processes), sum(pss for _, _, _, pss in processes), processes


def report_host_memory(local: LocalCluster, node: str, label: str) -> None:
    rss, pss, processes = host_memory(local, node)
    say(f"host {node} {label}: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB over {len(processes)} processes")
    for pid, name, process_rss, process_pss in processes:
        kernel = f"  (guest kernel file mapped: {kernel_mapping_kib(pid) / 1024:.1f} MiB of the RSS)" \
            if name.startswith("qemu") else ""
        say(f"    {name:31} RSS {process_rss / 1024:6.1f} MiB  PSS {process_pss / 1024:6.1f} MiB{kernel}")


# -- PVC helpers --------------------------------------------------------------------------------------------

def run_task(client, task: dict, timeout: float = 180.0) -> tuple[dict, float]:
    """Poll a flush/ready task every 50 ms until done; the task and the seconds since `task` was created."""
    started = time.monotonic()
    while task["state"] not in ("done", "failed"):
        assert time.monotonic() - started < timeout, f"task not done after {timeout} s: {task}"
        time.sleep(0.05)
        task = client.nodes.task(task["id"])
    return task, time.monotonic() - started


def libvirt_domain(cluster: RunningCluster, node: str, vm: str):
    connection = libvirt.open(cluster.local.host(node).uri)
    return connection, connection.lookupByName(vm)


def completed_job_stats(cluster: RunningCluster, node: str, vm: str, timeout: float = 5.0) -> dict:
    """libvirt's statistics of the migration that brought `vm` to `node`, as its libvirtd keeps them. PVC
    answers once the target runs the guest, which may be a moment before libvirt there has stored them."""
    connection, domain = libvirt_domain(cluster, node, vm)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                stats = domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError as error:
                stats = {"error": error.get_error_message()}
            if "time_elapsed" in stats or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)
    finally:
        connection.close()


def remove_vms(cluster: RunningCluster, names: list[str]) -> None:
    for name in names:
        cluster.client.vms.remove(name)
    assert eventually(lambda: not any(name in running_hosts(cluster) for name in names), 30)


def summary(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    shown = ", ".join(f"{value * scale:.{digits}f}" for value in values)
    return (f"median {statistics.median(values) * scale:.{digits}f} {unit}, max {max(values) * scale:.{digits}f} "
            f"{unit} over {len(values)} (each: {shown})")


def warm_capability_caches(local: LocalCluster) -> None:
    """Have each host's libvirtd probe QEMU's capabilities now, as a production host's does once per QEMU version
    and keeps on disk (its pvcnoded asks for the domain capabilities to learn the accelerator): a lab host starts
    with an empty cache, and its probe (0.6 s) fell into the first migration to it."""
    started = time.monotonic()
    for name in local.node_names:
        connection = libvirt.open(local.host(name).uri)
        try:
            connection.getDomainCapabilities(None, None, None, None)
        finally:
            connection.close()
    say(f"libvirt's QEMU capability caches filled in {time.monotonic() - started:.2f} s")


@pytest.fixture(scope="module")
def bench_cluster(tmp_path_factory):
    """A 3-node cluster of QEMU hosts of its own."""
    local = LocalCluster(tmp_path_factory.mktemp("bench-qemu"))
    started = time.monotonic()
    local.up(nodes=3, coordinators=1, hypervisor="qemu")
    print()
    say(f"cluster of 3 QEMU hosts up in {time.monotonic() - started:.1f} s; accelerator "
        f"{local.state['accelerator']}; {guest.QEMU} {guest._qemu_version().split()[-3]}, "
        f"libvirt {libvirt.getVersion() // 1000000}.{libvirt.getVersion() // 1000 % 1000}; "
        f"{os.cpu_count()} CPUs; loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    warm_capability_caches(local)
    running = RunningCluster(local)
    try:
        yield running
    finally:
        running.client.close()
        local.down()


# -- 1. boot --------------------------------------------------------------------------------------------------

def test_bench_boot_to_first_heartbeat(bench_cluster):
    client, node, vm = bench_cluster.client, "hv3", "bootbench"
    client.vms.define(guest_xml(vm), target=node)
    path = console_path(bench_cluster, vm, node)
    connection = libvirt.open(bench_cluster.local.host(node).uri)
    to_running, to_heartbeat, returned = [], [], []
    boots_seen: set[str] = set()
    window = LoadWindow()
    try:
        for _ in range(BOOTS):
            offset = file_size(path)
            started = time.monotonic()
            client.vms.start(vm)
            returned.append(time.monotonic() - started)
            running_at = None
            while True:
                now = time.monotonic()
                if running_at is None:
                    try:
                        if connection.lookupByName(vm).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                            running_at = now
                    except libvirt.libvirtError:
                        pass
                beats = [beat for beat in guest.parse_console(read_from(path, offset))
                         if beat.boot_id not in boots_seen]
                if beats:
                    to_heartbeat.append(now - started)
                    to_running.append((running_at or now) - started)
                    boots_seen.add(beats[0].boot_id)
                    break
                assert now - started < 60, f"no heartbeat within 60 s; console:\n{read_from(path, offset)}"
                time.sleep(0.02)
            client.vms.stop(vm, wait=True)
    finally:
        connection.close()
    say("== 1. guest boot through PVC (128 MiB, TCG) on a QEMU host ==")
    say(f"vm start -> first heartbeat on the console: {summary(to_heartbeat)}")
    say(f"  of which vm start -> domain RUNNING in the host's libvirtd: {summary(to_running)}")
    say(f"  vms.start() call returned after: {summary(returned, 'ms', 1000, 0)}")
    window.report(bench_cluster.local, "the boots")
    client.vms.remove(vm)


# -- 2. live migration ----------------------------------------------------------------------------------------

def test_bench_live_migration_against_bare_qemu(bench_cluster, tmp_path):
    client, local, vm = bench_cluster.client, bench_cluster.local, "migbench"
    nodes = ["hv2", "hv3"]
    client.vms.define(guest_xml(vm), target=nodes[0])
    client.vms.start(vm, wait=True)
    first = wait_heartbeat(bench_cluster, vm, nodes[0])
    connection, domain = libvirt_domain(bench_cluster, nodes[0], vm)
    libvirt_speed_mib = domain.migrateGetMaxSpeed()
    try:
        libvirt_downtime_ms = domain.migrateGetMaxDowntime()
    except libvirt.libvirtError:
        libvirt_downtime_ms = None
    connection.close()

    clock = HeartbeatClock([console_path(bench_cluster, vm, node) for node in nodes])
    clock.start()
    rows, stats_source = [], set()
    window = LoadWindow()
    try:
        where = nodes[0]
        wait_heartbeat(bench_cluster, vm, where, after=first.counter + 1)
        for index in range(MIGRATIONS):
            target = nodes[1] if where == nodes[0] else nodes[0]
            last = heartbeats(bench_cluster, vm, where)[-1].counter
            started = time.monotonic()
            client.vms.migrate(vm, target=target, wait=True)
            wall = time.monotonic() - started
            ended = time.monotonic()
            stats = completed_job_stats(bench_cluster, target, vm)
            wait_running_on(bench_cluster, vm, target)
            after = wait_heartbeat(bench_cluster, vm, target, after=last, timeout=20)
            assert after.boot_id == first.boot_id, "the guest rebooted"
            wait_heartbeat(bench_cluster, vm, target, after=after.counter + 1, timeout=20)
            gaps = clock.intervals(started, ended + 0.5)
            rows.append({"from": where, "to": target, "wall": wall, "stats": stats, "gap": max(gaps or [0.0])})
            stats_source.add("libvirt" if "downtime" in stats else "heartbeat")
            where = target
    finally:
        clock.stop()
    baseline = statistics.median(clock.intervals(0, float("inf")))
    window.report(local, "the PVC migrations")

    floor = bare_qemu_migrations(tmp_path, libvirt_speed_mib, libvirt_downtime_ms)

    say("== 2. live migration of a 128 MiB TCG guest ==")
    say(f"libvirt's migration settings on the source domain: max speed {libvirt_speed_mib} MiB/s, "
        f"max downtime {libvirt_downtime_ms} ms (the floor below uses the same)")
    for row in rows:
        stats = row["stats"]
        say(f"  PVC {row['from']} -> {row['to']}: vms.migrate(wait=True) {row['wall']:.2f} s; libvirt on the target: "
            f"time_elapsed {stats.get('time_elapsed', '?')} ms, downtime {stats.get('downtime', '?')} ms "
            f"(downtime_net {stats.get('downtime_net', '?')} ms), setup {stats.get('setup_time', '?')} ms, "
            f"memory processed {stats.get('memory_processed', 0) / 2**20:.1f} MiB"
            f"{', ' + stats['error'] if 'error' in stats else ''}; longest heartbeat interval {row['gap']:.2f} s")
    walls = [row["wall"] for row in rows]
    elapsed = [row["stats"]["time_elapsed"] / 1000 for row in rows if "time_elapsed" in row["stats"]]
    if stats_source == {"libvirt"}:
        downtimes = [row["stats"]["downtime"] / 1000 for row in rows]
        how = "libvirt's jobStats(COMPLETED) on the target"
    else:
        downtimes = [max(row["gap"] - baseline, 0.0) for row in rows]
        how = (f"heartbeat gap on the consoles minus the usual {baseline:.3f} s interval "
               f"(libvirt gave no downtime for {sum(1 for row in rows if 'downtime' not in row['stats'])} of them)")
    say(f"PVC migrate wall time: {summary(walls)}")
    if elapsed:
        say(f"PVC migration as timed by libvirt (time_elapsed): {summary(elapsed)}")
        overhead = [row["wall"] - row["stats"]["time_elapsed"] / 1000 for row in rows if "time_elapsed" in row["stats"]]
        say(f"PVC's own share (wall time minus libvirt's time_elapsed): {summary(overhead)}")
    say(f"PVC migration downtime ({how}): {summary(downtimes, 'ms', 1000, 0)}")
    longest = ", ".join(f"{row['gap']:.2f}" for row in rows)
    say(f"heartbeat intervals: usual {baseline:.3f} s; longest across each migration {longest} s")
    say(f"floor, bare QEMU <-> QEMU over QMP on loopback: total-time {summary(floor['total'])}")
    say(f"floor downtime (QEMU query-migrate): {summary(floor['downtime'], 'ms', 1000, 0)}")
    say(f"floor migrate command -> 'completed' seen by polling: {summary(floor['wall'])}; "
        f"transferred {statistics.median(floor['mib']):.1f} MiB median")
    say(f"floor including the start of the target QEMU (as libvirt's time_elapsed includes it): "
        f"{summary(floor['with_start'])}")
    say(f"floor QEMU defaults: max-bandwidth {floor['default_bandwidth'] / 2**20:.0f} MiB/s, downtime-limit "
        f"{floor['default_downtime']} ms; bare QEMU boot to first heartbeat {floor['boot']:.2f} s (1 sample)")
    ratio_downtime = statistics.median(downtimes) / statistics.median(floor["downtime"]) \
        if statistics.median(floor["downtime"]) else float("nan")
    say(f"ratio PVC / floor: wall {statistics.median(walls) / statistics.median(floor['total']):.1f}x the floor's "
        f"total-time ({statistics.median(walls) / statistics.median(floor['with_start']):.1f}x the floor with "
        f"its target's start)"
        + (f", libvirt time_elapsed {statistics.median(elapsed) / statistics.median(floor['total']):.1f}x "
           f"({statistics.median(elapsed) / statistics.median(floor['with_start']):.1f}x with the target's start)"
           if elapsed else "")
        + f", downtime {ratio_downtime:.1f}x (medians)")
    say(f"load during the floor: {floor['load']}")
    wall, with_start = statistics.median(walls), statistics.median(floor["with_start"])
    count, check = floor["cpu_check"]
    say(f"libvirt's start of a target reads the guest CPU's {count} feature flags one QMP call each (qom-get, as "
        f"libvirt 9.0 verifies any x86 guest's CPU); bare QEMU paused for an incoming migration answers them in "
        f"{check:.2f} s ({check / count * 1e6:.0f} us a call): floor with start plus that check "
        f"{with_start + check:.2f} s, PVC wall {wall / (with_start + check):.1f}x it")
    say(f"live migration summary (medians of {len(walls)}): PVC wall {wall:.2f} s, floor with the target's start "
        f"{with_start:.2f} s, ratio {wall / with_start:.1f}x (target 1.5x)"
        + (f", libvirt time_elapsed {statistics.median(elapsed):.2f} s, PVC's share "
           f"{statistics.median(overhead):.2f} s" if elapsed else "")
        + f", downtime {statistics.median(downtimes) * 1000:.0f} ms against the floor's "
        f"{statistics.median(floor['downtime']) * 1000:.0f} ms")
    client.vms.remove(vm)


def bare_qemu_migrations(directory: Path, speed_mib: int, downtime_ms: int | None) -> dict:
    console = directory / "floor-console.log"
    window = LoadWindow()
    started = time.monotonic()
    source = BareQemu(directory, "floor0", console)
    running = [source]
    result = {"total": [], "downtime": [], "wall": [], "mib": [], "with_start": []}
    try:
        assert eventually(lambda: guest.parse_console(read_from(console, 0)), 60, 0.02), "bare QEMU never booted"
        result["boot"] = time.monotonic() - started
        boot_id = guest.parse_console(read_from(console, 0))[0].boot_id
        defaults = source.qmp.execute("query-migrate-parameters")
        result["default_bandwidth"], result["default_downtime"] = defaults["max-bandwidth"], defaults["downtime-limit"]
        for index in range(MIGRATIONS):
            time.sleep(1.2)  # as in the PVC runs: a heartbeat or so between migrations
            port = free_port()
            spawned = time.monotonic()
            target = BareQemu(directory, f"floor{index + 1}", console, incoming_port=port)
            running.append(target)
            settings = {"max-bandwidth": min(speed_mib * 2**20, 2**63 - 1)}
            if downtime_ms:
                settings["downtime-limit"] = downtime_ms
            source.qmp.execute("migrate-set-parameters", **settings)
            began = time.monotonic()
            source.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
            while True:
                state = source.qmp.execute("query-migrate")
                if state.get("status") in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.01)
            result["wall"].append(time.monotonic() - began)
            result["with_start"].append(time.monotonic() - spawned)
            assert state["status"] == "completed", state
            result["total"].append(state["total-time"] / 1000)
            result["downtime"].append(state["downtime"] / 1000)
            result["mib"].append(state["ram"]["transferred"] / 2**20)
            assert target.qmp.execute("query-status")["status"] == "running" or \
                eventually(lambda: target.qmp.execute("query-status")["status"] == "running", 5)
            source.stop()
            running.remove(source)
            source = target
        count = len(guest.parse_console(read_from(console, 0)))
        assert eventually(lambda: len(guest.parse_console(read_from(console, 0))) > count, 10), \
            "the guest goes on after the last migration"
        assert {beat.boot_id for beat in guest.parse_console(read_from(console, 0))} == {boot_id}
        result["load"] = window.text()
        result["cpu_check"] = cpu_check_calls(directory, console)
    finally:
        for qemu in running:
            qemu.stop()
    return result


def cpu_check_calls(directory: Path, console: Path) -> tuple[int, float]:
    """The calls libvirt makes to verify a guest's CPU as it starts a QEMU, made by hand on a bare QEMU waiting
    for an incoming migration: one ``qom-get`` per boolean property (feature flag) of the CPU object; their
    number and the seconds they took."""
    qemu = BareQemu(directory, "cpucheck", console, incoming_port=free_port())
    try:
        cpu = "/machine/unattached/device[0]"
        flags = [prop["name"] for prop in qemu.qmp.execute("qom-list", path=cpu) if prop["type"] == "bool"]
        began = time.monotonic()
        for flag in flags:
            qemu.qmp.execute("qom-get", path=cpu, property=flag)
        return len(flags), time.monotonic() - began
    finally:
        qemu.stop()


# -- 4. memory (before the flush, which reuses its guests) ------------------------------------------------------

def fleet(count: int) -> list[str]:
    return [f"fleet{index}" for index in range(1, count + 1)]


def boot_fleet(cluster: RunningCluster, count: int) -> dict[str, guest.Heartbeat]:
    """`count` guests running on FLUSH_NODE (those not yet defined are defined and started), each with a
    heartbeat; returns the latest heartbeat of each."""
    client = cluster.client
    defined = {vm["name"] for vm in client.vms.list()}
    for name in fleet(count):
        if name not in defined:
            client.vms.define(guest_xml(name), target=FLUSH_NODE)
            client.vms.start(name)
    return {name: wait_heartbeat(cluster, name, FLUSH_NODE, timeout=120) for name in fleet(count)}


def test_bench_qemu_host_memory(bench_cluster):
    local = bench_cluster.local
    assert not local.host(FLUSH_NODE).qemu_pids(), f"{FLUSH_NODE} should have had no guest yet"
    window = LoadWindow()
    say("== 4. memory of a QEMU host (every process in its PID namespace) ==")
    report_host_memory(local, FLUSH_NODE, "with no guest (never had one)")
    for count in (1, 3):
        beats = boot_fleet(bench_cluster, count)
        for name, beat in beats.items():
            wait_heartbeat(bench_cluster, name, FLUSH_NODE, after=beat.counter + 1)
        report_host_memory(local, FLUSH_NODE, f"with {count} guest{'s' if count > 1 else ''} of {GUEST_MIB} MiB")
    for node in local.node_names:
        if node != FLUSH_NODE:
            report_host_memory(local, node, "with no guest (after the boot and migration benchmarks' guests left)")
    window.report(local, "the memory benchmark")


# -- 3. flush and ready ----------------------------------------------------------------------------------------

def test_bench_flush_and_ready_of_real_guests(bench_cluster):
    client, local = bench_cluster.client, bench_cluster.local
    say("== 3. node flush / node ready of real guests (all live migrating) ==")
    for count in FLUSH_SIZES:
        boots = boot_fleet(bench_cluster, count)
        names = fleet(count)
        if count == max(FLUSH_SIZES):
            report_host_memory(local, FLUSH_NODE, f"with {count} guests of {GUEST_MIB} MiB")
        window, started = LoadWindow(), time.monotonic()
        task, flush_s = run_task(client, client.nodes.flush(FLUSH_NODE))
        settled = eventually(lambda: all(hosts and FLUSH_NODE not in hosts
                                         for hosts in (running_hosts(bench_cluster).get(name) for name in names)),
                             60, 0.05)
        settled_s = time.monotonic() - started
        assert settled and client.nodes.info(FLUSH_NODE)["domain_state"] == "flushed"
        spread = {}
        for name in names:
            node = client.vms.info(name)["node"]
            spread[node] = spread.get(node, 0) + 1
            beat = wait_heartbeat(bench_cluster, name, node, after=boots[name].counter, timeout=30)
            assert beat.boot_id == boots[name].boot_id, f"{name} rebooted"
        say(f"flush of {FLUSH_NODE} with {count} guests: task done in {flush_s:.2f} s; none on {FLUSH_NODE}, all "
            f"running elsewhere (the hosts' libvirtds) {settled_s:.2f} s after the flush call "
            f"(moved {len(task.get('moved') or [])}, errors {len(task.get('errors') or [])}; now on {spread})")
        window.report(local, f"the flush of {count}")

        window, started = LoadWindow(), time.monotonic()
        task, ready_s = run_task(client, client.nodes.ready(FLUSH_NODE))
        for name in names:
            wait_running_on(bench_cluster, name, FLUSH_NODE, timeout=60)
        back_s = time.monotonic() - started
        for name in names:
            assert wait_heartbeat(bench_cluster, name, FLUSH_NODE, after=boots[name].counter,
                                  timeout=30).boot_id == boots[name].boot_id
        say(f"ready of {FLUSH_NODE} with {count} guests: task done in {ready_s:.2f} s; all {count} running on "
            f"{FLUSH_NODE} again (its libvirtd) {back_s:.2f} s after the ready call "
            f"(moved {len(task.get('moved') or [])}, errors {len(task.get('errors') or [])})")
        window.report(local, f"the ready of {count}")
    remove_vms(bench_cluster, fleet(max(FLUSH_SIZES)))
