"""Watching what every host really runs, many times a second, from its own libvirtd.

Every active domain counts as a running copy, a paused one too (it holds its disks, and anyone may resume it),
with one exception the checker applies: an incoming migration's target while its source's outgoing migration
job is active, which the monitor tells from each domain's job (`states` of a `Sample`: ``incoming`` on the
target when its libvirtd shows the job, else ``paused``; ``migrating-out`` on the source, which is asked about
its job only while some host shows that VM paused or as a QEMU process read from outside). Each run of a domain is told apart by its libvirt domain id, which a host gives afresh at
every start, so the checker can tell "the same run, seen again" from "stopped and started again".

The monitor's own sampling gaps (a host not read for a while because this process, or the machine, stalled)
are in the history as the spacing of its readings; `checker.sampling_gaps` judges them.

A client of a frozen (SIGSTOPped) libvirtd hangs, so:

- the nemesis and the monitor share a `HostGate` per host: the nemesis closes it, and waits for readings in
  flight to finish, before it freezes that libvirtd, and opens it after the thaw; the monitor asks nothing of a
  host whose gate is closed, with one exception: just before the thaw the nemesis has the monitor send one
  reading (`read_before_thaw`), which waits in the frozen daemon's socket, so that it is answered in the same
  breath as the calls that piled up meanwhile, before anyone could stop a domain that ran through the freeze;
- each host is read by an asker thread of its own, and the monitor never waits on it: a reading that does not
  come back within `deadline` is counted as "no answer" and no new one is asked for until it returns.

On a QEMU host a guest also counts as running while its QEMU process lives, read from outside
(`host.qemu_pids()`), whenever the host's libvirtd cannot be asked or does not answer: a QEMU that outlived its
libvirtd still runs the guest.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import libvirt

from faults.history import History, Sample


class HostGate:
    """Whether a host's libvirtd may be asked now; shared by the nemesis (which freezes it) and every reader."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._closed = False
        self._asking = 0
        self.thaw_readers: list[Callable[[], bool]] = []
        """Called by `read_before_thaw`: each starts a reading of the frozen host and says whether it did."""

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed

    def enter(self) -> bool:
        """Begin a call to the libvirtd, unless the gate is closed (then False: ask nothing)."""
        with self._condition:
            if self._closed:
                return False
            self._asking += 1
            return True

    def enter_frozen(self) -> None:
        """Begin a call although the gate is closed: only for the reading sent just before a thaw."""
        with self._condition:
            self._asking += 1

    def read_before_thaw(self) -> bool:
        """Have the monitor send its readings now, to be answered at the thaw; whether any was sent."""
        return any([reader() for reader in self.thaw_readers])

    def leave(self) -> None:
        with self._condition:
            self._asking -= 1
            self._condition.notify_all()

    def close(self, timeout: float = 5.0) -> bool:
        """Close the gate and wait until no call is in flight; False if one still was after `timeout` (it then
        hangs until the thaw, harmlessly, in its asker thread)."""
        with self._condition:
            self._closed = True
            return self._condition.wait_for(lambda: self._asking == 0, timeout)

    def open(self) -> None:
        with self._condition:
            self._closed = False


def active_domains(connection: libvirt.virConnect, epoch: int,
                   incoming_elsewhere: set[str] = frozenset()) -> tuple[dict[str, str], dict[str, str]]:
    """Name → identity of the run of every active domain (running or paused), and name → how it is not simply
    running. The identity is the domain id, which libvirtd gives afresh at each start, within `epoch`, the count
    of connections this reader has opened (a libvirtd that restarted may give an id again, but it has broken
    the connection first), followed by the domain's UUID, to tell two VMs of the same name apart:
    ``EPOCH.ID/UUID``. Paused domains, and running ones named in `incoming_elsewhere`, are asked about their
    job: one call more for each, never for the common case."""
    running, states = {}, {}
    active = connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    not_running = {domain.name() for domain in active} - \
        {domain.name() for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)}
    for domain in active:
        name = domain.name()
        running[name] = f"{epoch}.{domain.ID()}/{domain.UUIDString()}"
        paused = name in not_running
        if not paused and name not in incoming_elsewhere:
            continue
        operation = _job_operation(domain)
        if operation == MIGRATION_IN and paused:
            states[name] = "incoming"
        elif operation == MIGRATION_OUT:
            states[name] = "migrating-out-paused" if paused else "migrating-out"
        elif paused:
            states[name] = "paused"
    return running, states


MIGRATION_IN = getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN", 3)
MIGRATION_OUT = getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT", 4)


def _job_operation(domain: libvirt.virDomain) -> int | None:
    """The operation of the domain's active job, or None (no job, or a driver that cannot say: the test
    driver migrates nothing). A migration's target answers no statistics: the QEMU driver refuses them
    ("available only on the source host") exactly while the domain's incoming migration job runs, so that
    refusal is the target's incoming job."""
    try:
        stats = domain.jobStats()
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED \
                and "only on the source host" in (error.get_error_message() or ""):
            return MIGRATION_IN
        return None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    return stats.get("operation")


INCOMING_MEMORY_S = 5.0
"""Seconds after a VM was last seen paused (or as a QEMU process read from outside) during which every host that
runs it is asked about its job (is it a migration's source?)."""


class _Asker:
    """One thread that reads one host's libvirtd when told to, on a connection only it uses."""

    def __init__(self, host: str, uri: str, history: History, gate: HostGate, incoming: dict[str, float]):
        self.host, self.uri, self.history, self.gate = host, uri, history, gate
        self._incoming = incoming
        """Shared by every asker: VM → when some host last showed it paused (an incoming migration target, or
    maybe one: a target's job is not always shown), or as a QEMU process read from outside."""
        self._connection: libvirt.virConnect | None = None
        self._epoch = 0
        self._wanted = threading.Event()
        self._stopping = False
        self.busy_since: float | None = None
        """When the reading in flight was asked for (history time), or None when idle."""
        self.last_failed = False
        self._starting = threading.Lock()
        gate.thaw_readers.append(self.ask_frozen)
        threading.Thread(target=self._run, name=f"monitor-ask-{host}", daemon=True).start()

    def ask(self) -> bool:
        """Start one reading unless one is in flight or the gate is closed."""
        with self._starting:
            if self.busy_since is not None or not self.gate.enter():
                return False
            self.busy_since = self.history.now()
        self._wanted.set()
        return True

    def ask_frozen(self) -> bool:
        """Start one reading of the frozen libvirtd (see `HostGate.read_before_thaw`) unless one is in flight."""
        with self._starting:
            if self.busy_since is not None:
                return False
            self.gate.enter_frozen()
            self.busy_since = self.history.now()
        self._wanted.set()
        return True

    def stop(self) -> None:
        self.gate.thaw_readers.remove(self.ask_frozen)
        self._stopping = True
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                break
            asked = self.busy_since
            try:
                if self._connection is None:
                    self._connection = libvirt.open(self.uri)
                    self._epoch += 1
                recent = self.history.now() - INCOMING_MEMORY_S
                elsewhere = {name for name, seen in list(self._incoming.items()) if seen > recent}
                running, states = active_domains(self._connection, self._epoch, elsewhere)
                error = None
            except libvirt.libvirtError as failure:
                running, states, error = None, None, str(failure).splitlines()[0]
                self._drop_connection()
            finally:
                self.gate.leave()
            self.last_failed = running is None
            answered = self.history.now()
            for name, state in (states or {}).items():
                if state in ("incoming", "paused"):
                    self._incoming[name] = answered
            self.history.add(Sample(self.host, asked, answered, running, "libvirt", error, states or None))
            self.busy_since = None
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except libvirt.libvirtError:
                pass
            self._connection = None


class Monitor:
    """Reads every host every `interval` seconds into the history until `stop`."""

    def __init__(self, local, history: History, gates: dict[str, HostGate], interval: float = 0.04,
                 deadline: float = 1.0):
        self._local = local
        self._history = history
        self._gates = gates
        self._interval = interval
        self._deadline = deadline
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._askers: list[_Asker] = []
        self._incoming: dict[str, float] = {}

    def start(self) -> "Monitor":
        for node in self._local.node_names:
            host = self._local.host(node)
            asker = _Asker(node, host.uri, self._history, self._gates[node], self._incoming)
            qemu_pids = host.qemu_pids if hasattr(host, "qemu_pids") else None
            thread = threading.Thread(target=self._watch, args=(asker, qemu_pids), name=f"monitor-{node}",
                                      daemon=True)
            self._askers.append(asker)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5)
        for asker in self._askers:
            asker.stop()

    def _watch(self, asker: _Asker, qemu_pids: Callable[[], dict[str, int]] | None) -> None:
        reported_stuck = False
        while not self._stopping.wait(self._interval):
            started = asker.ask()
            busy_since = asker.busy_since
            stuck = not started and busy_since is not None and self._history.now() - busy_since > self._deadline
            if stuck and not reported_stuck:
                self._history.note(asker.host, f"libvirtd gave no answer within {self._deadline:g} s")
            reported_stuck = stuck
            if qemu_pids is not None and (asker.gate.closed or stuck or asker.last_failed):
                self._read_qemu_processes(asker.host, qemu_pids)

    def _read_qemu_processes(self, host: str, qemu_pids: Callable[[], dict[str, int]]) -> None:
        asked = self._history.now()
        running = {name: f"pid{pid}" for name, pid in qemu_pids().items()}
        answered = self._history.now()
        for name in running:  # paused or not, it cannot say: any migration source must say whether it is one
            self._incoming[name] = answered
        self._history.add(Sample(host, asked, answered, running, "qemu"))


def read_hosts(local, gates: dict[str, HostGate], timeout: float = 5.0) -> dict[str, dict[str, bool] | None]:
    """Every host's domains now (name → active: running or paused), each read in a thread of its own with a deadline; None for a
    host that is off, gated (frozen) or did not answer. For the checks after a run, when nothing is frozen."""
    results: dict[str, dict[str, bool] | None] = {}

    def read(node: str) -> None:
        gate = gates[node]
        if not gate.enter():
            return
        try:
            connection = libvirt.open(local.host(node).uri)
            try:
                results[node] = {domain.name(): bool(domain.isActive())
                                 for domain in connection.listAllDomains()}
            finally:
                connection.close()
        except libvirt.libvirtError:
            pass
        finally:
            gate.leave()

    threads = [threading.Thread(target=read, args=(node,), daemon=True) for node in local.node_names
               if local.host(node).running]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {node: results.get(node) for node in local.node_names}
