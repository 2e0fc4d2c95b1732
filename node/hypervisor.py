"""The one class that talks to libvirt on a node.

On a simulated host (several share one machine) the node's totals come from its configuration and its live
figures from what its VMs hold. `load` is the same figure on every kind of host: the CPU seconds per second
its running guests consumed since the previous keepalive (the machine's load average would be the same on
every simulated host, and a vCPU count is not a load).
"""
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, TypeVar

import libvirt
from lxml import etree

from pvc.errors import OperationFailed, Unavailable
from pvc.node.host_xml import METADATA_NAMESPACE

log = logging.getLogger(__name__)
T = TypeVar("T")
libvirt.registerErrorHandler(lambda _context, _error: None, None)


class TimedOut(Exception):
    """The cause of an `Unavailable` raised because libvirt did not answer in time: the call may still act
    when libvirtd answers (`timed_out`)."""


def timed_out(error: BaseException) -> bool:
    """Whether `error` (an `Unavailable`) is a call given up on, which may yet change something in libvirt."""
    return isinstance(error.__cause__, TimedOut)


class TargetUnreachable(OperationFailed):
    """The target's libvirtd did not answer: it could not start the VM after a shutdown either."""


class TargetNotReached(TargetUnreachable):
    """This host's libvirtd could not even open a connection to the target's: the migration never began, so the
    guest is where it was. Any later failure (a connection lost midway) leaves that open."""


@dataclass(frozen=True)
class MigrationTarget:
    """Where a live migration goes: the target libvirtd's URI, the address its memory stream connects to,
    and the domain document made for the target host (`pvc.node.host_xml`)."""
    uri: str
    stream_uri: str | None
    xml: str


@dataclass(frozen=True)
class LateCall:
    """A libvirt call on a domain that timed out while its worker ran: `ended()` once the worker returned."""
    what: str
    since: float
    """When it timed out (epoch seconds)."""
    ended: Callable[[], bool]


DEFINITION_AUDIT_S = 600.0
"""How long what a domain's definition says (PVC's metadata element, its memory and vCPUs where the bulk
statistics lack them) is taken from memory after it was read one domain at a time: a definition changes only when
it is defined again, which this node does through `DomainActions.define` (`Hypervisor.redefined`); the audit
catches a domain redefined by hand. Each domain's is read again at a random moment within the last half of
this, so that a node's domains are not all read again in one pass."""

_FIGURES_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                  | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU)


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    running: bool
    memory_mib: int
    vcpus: int
    cpu_time_ns: int | None
    """None where the hypervisor reports no CPU time in its bulk statistics (libvirt's test driver)."""
    active: bool
    """Not shut off: running, paused, in a migration or being saved. `running` is RUNNING only (the figures)."""


@dataclass(frozen=True)
class Listed:
    """A domain as one bulk call listed it: its name, UUID and whether it exists as a running copy (`active`:
    not shut off, so running, paused, in a migration or being saved: libvirt's ``isActive``)."""
    name: str
    uuid: str
    active: bool


@dataclass(frozen=True)
class DomainList:
    """Every domain on this host, from one bulk call, and when (monotonic) that call was made."""
    taken: float
    domains: dict[str, Listed]


@dataclass(frozen=True)
class Identity:
    """Who a domain on this host is: libvirt's name and UUID, and what PVC's metadata element in it says
    (`pvc_name`, `pvc_uuid`; both None for a domain PVC did not define: it is not PVC's to touch)."""
    name: str
    uuid: str
    pvc_name: str | None
    pvc_uuid: str | None

    @property
    def managed(self) -> bool:
        return self.pvc_name is not None


class Hypervisor:
    """A libvirt connection, reopened if libvirtd restarts, and the node's figures.

    Every libvirt call goes through `call`, which runs it on a worker thread and waits for it at most a
    deadline: a hung libvirtd (stopped, deadlocked, swapping) makes this node say "unknown", and never stalls
    its keepalive or its converge loop. A call stuck on a frozen daemon holds its worker until the daemon
    answers; later calls time out in the queue meanwhile, which is the same answer. libvirt's own keepalive
    over an event loop is not used: with it, node daemons twice crashed inside libvirt.so after a freeze.

    A call that timed out may still act when libvirtd answers (a `create` that starts the guest seconds after
    the node gave up on it). Such a call on a domain is remembered, by domain name, until its worker has ended
    and the caller has taken note (`in_flight`, `ended_late`, `forget_late`): until then, nothing may be
    decided about that domain from what the node last saw.

    No caller ever waits for a lock that a stuck libvirt call holds: opening the connection is serialised by a
    lock of its own, which only workers take."""

    def __init__(self, uri: str, simulated_cpus: int | None = None, simulated_memory_mib: int | None = None,
                 accelerator: str | None = None, call_timeout: float = 10.0):
        self.uri = uri
        self._accelerator = accelerator
        self._last_cpu_sample: tuple[float, dict[str, int]] | None = None
        self.simulated = simulated_cpus is not None or simulated_memory_mib is not None
        self._simulated_cpus = simulated_cpus
        self._simulated_memory_mib = simulated_memory_mib
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        """Guards `_connection` and `_late` only; never held across a libvirt call."""
        self._opening = threading.Lock()
        """Held by the one worker opening a connection (which hangs on a frozen libvirtd); callers never take it."""
        self._connection: libvirt.virConnect | None = None
        self._late: dict[str, list[LateCall]] = {}
        self._touched: dict[str, float] = {}
        """Domain name → when (monotonic) a libvirt call on it last began or ended (`touched_since`)."""
        self._redefined: dict[str, float] = {}
        """Domain name → when (monotonic) it was last defined (`redefined_since`)."""
        self._definitions: dict[str, tuple[str, int, int, float, float]] = {}
        """Domain UUID → name, memory (MiB) and vCPUs as `info()` gave them, when read and until when kept
        (`DEFINITION_AUDIT_S`, or until it is defined again): for the figures, where the bulk statistics lack
        them."""
        self._calls = ThreadPoolExecutor(max_workers=16, thread_name_prefix="libvirt")

    @property
    def can_migrate_live(self) -> bool:
        return not self.uri.startswith("test")

    def call(self, what: str, action: Callable[[], T], timeout: float | None = None,
             domain: str | None = None) -> T:
        """`action()` (libvirt calls) on a worker thread, waited for at most `timeout` (default
        `call_timeout`) seconds. libvirt unreachable or too slow is `Unavailable` ("could not ask"); libvirt
        answering with an error is `OperationFailed`. A call on `domain` that times out after its worker
        began is remembered until it ends (`in_flight`); one still queued is cancelled, so it never runs."""
        timeout = self.call_timeout if timeout is None else timeout
        if domain is not None:
            self.touch(domain)

            def on_domain() -> T:
                try:
                    return action()
                finally:
                    self.touch(domain)
            future = self._calls.submit(on_domain)
        else:
            future = self._calls.submit(action)
        try:
            return future.result(timeout)
        except FutureTimeout:
            if not future.cancel() and domain is not None:
                self.track_late(domain, what, future.done)
            self._drop_connection()
            raise Unavailable(f"libvirt at {self.uri} did not answer {what} within {timeout:g} s") from TimedOut()
        except libvirt.libvirtError as error:
            if _unreachable(error):
                self._drop_connection()
                raise Unavailable(f"libvirt at {self.uri} unreachable during {what}: "
                                  f"{error.get_error_message()}") from None
            raise OperationFailed(f"{what} failed: {error.get_error_message()}") from None

    def connection(self) -> libvirt.virConnect:
        """The open connection; call only inside `call` (opening may hang on a frozen libvirtd)."""
        with self._lock:
            connection = self._connection
        if connection is not None and connection.isAlive():
            return connection
        with self._opening:
            with self._lock:
                connection = self._connection
            if connection is None or not connection.isAlive():
                connection = libvirt.open(self.uri)
                with self._lock:
                    self._connection = connection
            return connection

    def _drop_connection(self) -> None:
        """Stop using the connection; the next call reopens. It is not closed here: a call may still be
        stuck on it in a worker, and closing it under that call crashes libvirt. Python frees it, closing it,
        once the last call using it has returned. Never waits for a worker: a connection still being opened
        is not this one."""
        with self._lock:
            self._connection = None

    def touch(self, domain: str) -> None:
        """Note that a libvirt call on `domain` begins or has ended now: what a bulk call said of it before is
        no longer its answer (`touched_since`)."""
        now = time.monotonic()
        with self._lock:
            self._touched[domain] = now

    def touched_since(self, domain: str, moment: float) -> bool:
        """Whether a call on `domain` began or ended at or after `moment` (monotonic). Every call on a domain
        (`call` with ``domain``) counts, at its start and when its worker ends, even long after a timeout."""
        with self._lock:
            return self._touched.get(domain, float("-inf")) >= moment

    def redefined(self, domain: str) -> None:
        """Note that `domain` is being defined again: what was read of its definition before is out of date."""
        now = time.monotonic()
        with self._lock:
            self._touched[domain] = self._redefined[domain] = now

    def redefined_since(self, domain: str, moment: float) -> bool:
        with self._lock:
            return self._redefined.get(domain, float("-inf")) >= moment

    def track_late(self, domain: str, what: str, ended: Callable[[], bool]) -> None:
        """Remember work on `domain` that its caller gave up waiting for, until `forget_late` after it ended."""
        with self._lock:
            self._late.setdefault(domain, []).append(LateCall(what, time.time(), ended))

    def in_flight(self, domain: str) -> str | None:
        """What a timed-out call on `domain` is still doing (None when nothing is), for the VM's report."""
        with self._lock:
            running = [late for late in self._late.get(domain, ()) if not late.ended()]
        if not running:
            return None
        oldest = min(running, key=lambda late: late.since)
        return (f"libvirt has not yet finished the {oldest.what}, which timed out at "
                f"{time.strftime('%H:%M:%S', time.localtime(oldest.since))}")

    def calls_in_flight(self) -> list[str]:
        """What every timed-out call still running does, on whichever domain."""
        with self._lock:
            domains = list(self._late)
        return [f"{domain}: {doing}" for domain in domains if (doing := self.in_flight(domain))]

    def ended_late(self, domain: str) -> list[str]:
        """The timed-out calls on `domain` that have ended since: their effect is in libvirt now, unseen."""
        with self._lock:
            return [late.what for late in self._late.get(domain, ()) if late.ended()]

    def forget_late(self, domain: str) -> None:
        """The caller has reconciled what the ended calls on `domain` did."""
        with self._lock:
            still = [late for late in self._late.get(domain, ()) if not late.ended()]
            if still:
                self._late[domain] = still
            else:
                self._late.pop(domain, None)

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            self._calls.submit(connection.close)
        self._calls.shutdown(wait=False, cancel_futures=True)

    def facts(self) -> dict:
        """What does not change while the node runs: CPUs, total memory, libvirt version."""
        def read() -> dict:
            connection = self.connection()
            _model, memory_mib, cpus, *_rest = connection.getInfo()
            version = connection.getLibVersion()
            return {
                "cpus": self._simulated_cpus or cpus,
                "memory_total_mib": self._simulated_memory_mib or memory_mib,
                "libvirt_version": f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}",
                "hypervisor": connection.getType(),
                "accelerator": self._accelerator or _offered_accelerator(connection),
                "simulated": self.simulated,
                "migrates_live": self.can_migrate_live,
            }
        return self.call("reading the host's facts", read)

    def listed(self, timeout: float | None = None) -> DomainList:
        """Every domain here and whether it is active, from one bulk call (`getAllDomainStats` of the state
        alone, which asks no guest anything)."""
        taken = time.monotonic()

        def read() -> dict[str, Listed]:
            stats = self.connection().getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
            return {domain.name(): Listed(domain.name(), domain.UUIDString(), _active(domain, values))
                    for domain, values in stats}
        return DomainList(taken, self.call("listing domains", read, timeout))

    def domains(self, timeout: float | None = None) -> list[Domain]:
        """Every domain here with what the figures count, from one bulk call. Where the statistics lack a
        domain's memory or vCPUs (libvirt's test driver reports only states in bulk), they are read one domain
        at a time when it is first seen or touched, and then kept (`DEFINITION_AUDIT_S`)."""
        def read() -> list[Domain]:
            stats = self.connection().getAllDomainStats(
                _FIGURES_STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
            result = []
            for domain, values in stats:
                try:
                    memory_mib, vcpus = self._definition(domain, values)
                except libvirt.libvirtError as error:
                    if _unreachable(error):
                        raise
                    continue  # gone since it was listed
                cpu_time_ns = values.get("cpu.time")
                result.append(Domain(domain.name(), domain.UUIDString(),
                                     values.get("state.state") == libvirt.VIR_DOMAIN_RUNNING, memory_mib, vcpus,
                                     None if cpu_time_ns is None else int(cpu_time_ns), _active(domain, values)))
            self._forget_definitions({domain.UUIDString() for domain, _values in stats})
            return result
        return self.call("listing domains", read, timeout)

    def _definition(self, domain: "libvirt.virDomain", values: dict) -> tuple[int, int]:
        """A domain's memory (MiB) and vCPUs: from its bulk statistics, else as `info()` last gave them while
        nothing touched it since; call only inside `call`."""
        if "balloon.maximum" in values and "vcpu.current" in values:
            return int(values["balloon.maximum"]) // 1024, int(values["vcpu.current"])
        name, uuid, now = domain.name(), domain.UUIDString(), time.monotonic()
        with self._lock:
            known = self._definitions.get(uuid)
        if known is not None and known[0] == name and now < known[4] and not self.redefined_since(name, known[3]):
            return known[1], known[2]
        _state, max_memory_kib, _memory, vcpus, _cpu_time = domain.info()
        with self._lock:
            self._definitions[uuid] = (name, max_memory_kib // 1024, vcpus, now, now + _audit_after())
        return max_memory_kib // 1024, vcpus

    def _forget_definitions(self, present: set[str]) -> None:
        with self._lock:
            for uuid in self._definitions.keys() - present:
                del self._definitions[uuid]

    def figures(self, memory_total_mib: int) -> dict:
        """The live figures a keepalive reports, for placement and for `node info`."""
        domains = self.domains()
        running = [domain for domain in domains if domain.running]
        allocated = sum(domain.memory_mib for domain in running)
        vcpus = sum(domain.vcpus for domain in running)
        if self.simulated:
            free = max(memory_total_mib - allocated, 0)
        else:
            free = self.call("reading free memory", lambda: self.connection().getFreeMemory()) // (1024 * 1024)
        load = self._guest_load(running)
        return {
            "memory_free_mib": free,
            "memory_allocated_mib": allocated,
            "memory_provisioned_mib": sum(domain.memory_mib for domain in domains),
            "vcpus_allocated": vcpus,
            "vms_running": len(running),
            "vms_defined": len(domains),
            "load": round(load, 2),
        }

    def _guest_load(self, running: list[Domain]) -> float:
        """CPU seconds per second the running guests used since the last call (0 on the first). A running
        guest whose CPU time the host does not report in bulk (libvirt's test driver, whose per-domain `info()`
        gives the wall clock as every guest's CPU time) counts as that driver models it: one busy CPU."""
        now = time.monotonic()
        sample = {domain.uuid: domain.cpu_time_ns for domain in running if domain.cpu_time_ns is not None}
        unmetered = len(running) - len(sample)
        previous, self._last_cpu_sample = self._last_cpu_sample, (now, sample)
        if previous is None or now <= previous[0]:
            return float(unmetered)
        used_ns = sum(max(cpu_ns - previous[1].get(uuid, cpu_ns), 0) for uuid, cpu_ns in sample.items())
        return used_ns / 1e9 / (now - previous[0]) + unmetered


class DomainActions:
    """Idempotent libvirt actions on one node's domains: doing one twice is the same as doing it once. Each
    step is one bounded `Hypervisor.call`.

    A converge pass asks libvirt about every domain at once (`listed`) and passes that answer (``seen``) to
    the questions it asks about each VM, which then cost no call of their own. An answer about a domain holds
    only while no libvirt call on it has begun or ended since it was given (`Hypervisor.touched_since`: an
    action of this node, or of a converge that ran meanwhile) and no call on it that timed out still runs;
    otherwise the domain is asked about again. Every action still checks its domain itself right before it
    acts: an answer from the pass only spares an action with nothing to do (a stop of a domain that is off)."""

    def __init__(self, hypervisor: Hypervisor, shutdown_timeout: float):
        self._hypervisor = hypervisor
        self._shutdown_timeout = shutdown_timeout
        self._peer_lock = threading.Lock()
        self._peer_asks: dict[str, threading.Thread] = {}
        self._identities: dict[str, tuple[Identity, float, float]] = {}
        """Libvirt UUID → the domain's identity as last read one domain at a time, when read and until when
        kept (`DEFINITION_AUDIT_S`)."""

    def listed(self) -> DomainList:
        """Every domain on this host, from one bulk call (`Hypervisor.listed`)."""
        listed = self._hypervisor.listed()
        present = {domain.uuid for domain in listed.domains.values()}
        for uuid in self._identities.keys() - present:
            self._identities.pop(uuid, None)
        return listed

    def touch(self, name: str) -> None:
        """What was seen of `name` before now is not to be relied on (a converge of it has just ended)."""
        self._hypervisor.touch(name)

    def _seen(self, name: str, seen: DomainList | None) -> tuple[bool, Listed | None]:
        """(True, the domain as `seen` listed it, None if absent) while that answer still holds for `name`;
        (False, None) when the domain must be asked about itself."""
        if seen is None or self._hypervisor.touched_since(name, seen.taken) or self._hypervisor.in_flight(name):
            return False, None
        return True, seen.domains.get(name)

    def _lookup(self, name: str) -> "libvirt.virDomain | None":
        """The domain, or None when libvirt says it has none; call only inside `Hypervisor.call`."""
        try:
            return self._hypervisor.connection().lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _on_domain(self, what: str, name: str, action: Callable[["libvirt.virDomain"], T]) -> T | None:
        """action(domain) for an existing domain, None for a missing one, bounded in time."""
        def run():
            domain = self._lookup(name)
            return None if domain is None else action(domain)
        return self._hypervisor.call(f"{what} of {name}", run, domain=name)

    @property
    def can_migrate_live(self) -> bool:
        return self._hypervisor.can_migrate_live

    def in_flight(self, name: str) -> str | None:
        """What a timed-out action on `name` is still doing in libvirt (`Hypervisor.in_flight`)."""
        return self._hypervisor.in_flight(name)

    def ended_late(self, name: str) -> list[str]:
        return self._hypervisor.ended_late(name)

    def forget_late(self, name: str) -> None:
        self._hypervisor.forget_late(name)

    def identity(self, name: str, seen: DomainList | None = None) -> Identity | None:
        """The domain named `name` as PVC knows it (None: libvirt has none). With `seen`, a domain whose
        definition was read since it was last defined is not asked about again."""
        holds, listed = self._seen(name, seen)
        if holds:
            if listed is None:
                return None
            known = self._identities.get(listed.uuid)
            if known is not None and known[0].name == name and time.monotonic() < known[2] \
                    and not self._hypervisor.redefined_since(name, known[1]):
                return known[0]
        identity = self._on_domain("metadata read", name, _identity)
        if identity is not None:
            now = time.monotonic()
            self._identities[identity.uuid] = (identity, now, now + _audit_after())
        return identity

    def identity_by_uuid(self, uuid: str) -> Identity | None:
        """The domain with `uuid`, whatever its name (None: libvirt has none)."""
        def read():
            try:
                domain = self._hypervisor.connection().lookupByUUIDString(uuid)
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return _identity(domain)
        return self._hypervisor.call(f"lookup of UUID {uuid}", read)

    def exists(self, name: str, seen: DomainList | None = None) -> bool:
        holds, listed = self._seen(name, seen)
        if holds:
            return listed is not None
        return bool(self._on_domain("lookup", name, lambda domain: True))

    def is_running(self, name: str, seen: DomainList | None = None) -> bool:
        """Whether libvirt has the domain active (running or paused: a copy that exists)."""
        holds, listed = self._seen(name, seen)
        if holds:
            return listed is not None and listed.active
        return bool(self._on_domain("state check", name, lambda domain: domain.isActive()))

    def define(self, xml: str) -> bool:
        """Define (or redefine) the domain; whether libvirt has it active, asked of the domain just defined: a
        VM kept off needs no lookup of its own then (a define during a burst made four more calls)."""
        name = etree.fromstring(xml.encode()).findtext("name")
        if name:
            self._hypervisor.redefined(name)
        try:
            return bool(self._hypervisor.call("define",
                                              lambda: self._hypervisor.connection().defineXML(xml).isActive()))
        finally:
            if name:
                self._hypervisor.redefined(name)

    def start(self, name: str) -> None:
        def start(domain):
            if not domain.isActive():
                domain.create()
            return True
        if self._on_domain("start", name, start) is None:
            raise OperationFailed(f"{name} is not defined on this node")

    def shutdown(self, name: str, seen: DomainList | None = None,
                 wanted: Callable[[], bool] = lambda: True) -> None:
        """Ask the guest to shut down; after the timeout, pull the plug. Nothing to do for a domain `seen` off.
        The wait ends early once `wanted()` is false: a `vm stop` or `vm remove` given to a guest that ignores
        its power button is carried out at once, not after the shutdown timeout (the QEMU fault checker saw
        removals wait the whole 180 s)."""
        if self._off(name, seen):
            return

        def ask(domain):
            if domain.isActive():
                domain.shutdown()
                return True
            return False
        if not self._on_domain("shutdown", name, ask):
            return
        deadline = time.monotonic() + self._shutdown_timeout
        while self.is_running(name) and time.monotonic() < deadline:
            if not wanted():
                log.info("%s: no longer waiting for its shutdown; a newer command decides", name)
                return
            time.sleep(0.2)
        if self.is_running(name):
            log.warning("%s did not shut down within %g s: destroying it", name, self._shutdown_timeout)
            self.stop(name)

    def stop(self, name: str, seen: DomainList | None = None) -> None:
        """Pull the plug; nothing to do for a domain `seen` off."""
        if self._off(name, seen):
            return

        def stop(domain):
            if domain.isActive():
                domain.destroy()
        self._on_domain("stop", name, stop)

    def _off(self, name: str, seen: DomainList | None) -> bool:
        holds, listed = self._seen(name, seen)
        return holds and (listed is None or not listed.active)

    def undefine(self, name: str) -> None:
        def undefine(domain):
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        self._on_domain("undefine", name, undefine)

    def pull_plugs(self, deadline: float) -> dict[str, bool] | None:
        """Destroy every domain PVC manages here that is not shut off (running, paused, in a migration), all at
        once, by `deadline` (monotonic): name → whether libvirt then said it is off (False: it did not answer
        in time, or the domain still runs). None when libvirt could not even list the domains in time."""
        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.01)

        def pull(name: str) -> bool | None:
            def destroy():
                domain = self._lookup(name)
                if domain is None or not _identity(domain).managed:
                    return None
                if domain.isActive():
                    domain.destroy()
                return not domain.isActive()
            try:
                return self._hypervisor.call(f"stopping {name}", destroy, remaining(), domain=name)
            except (OperationFailed, Unavailable) as error:
                log.error("%s not stopped: %s", name, error)
                return False

        try:
            active = [domain.name for domain in self._hypervisor.listed(remaining()).domains.values()
                      if domain.active]
        except Unavailable as error:
            log.error("cannot list this host's domains to stop them: %s", error)
            return None
        if not active:
            return {}
        pool = ThreadPoolExecutor(max_workers=min(len(active), 16), thread_name_prefix="pull-plug")
        try:
            outcomes = dict(zip(active, pool.map(pull, active)))
        finally:
            pool.shutdown(wait=False)
        return {name: bool(off) for name, off in outcomes.items() if off is not None}

    def calls_in_flight(self) -> list[str]:
        """Every timed-out call on a domain that libvirtd may still carry out (`Hypervisor.in_flight`)."""
        return self._hypervisor.calls_in_flight()

    def copy_state(self, name: str) -> str | None:
        """What this host's copy of `name` is doing: ``off`` (shut off, or no such domain), ``paused`` (it
        exists but runs no guest code: paused, or the source left behind by a migration) or ``running``;
        None when libvirt could not be asked."""
        try:
            return self._on_domain("state check", name, _copy_state) or "off"
        except (OperationFailed, Unavailable) as error:
            log.warning("%s", error)
            return None

    def job_under_way(self, name: str) -> bool | None:
        """Whether this host's libvirt runs a job on `name` now (a peer-to-peer migration goes on in libvirtd
        after the client that asked for it is gone); None when libvirt could not be asked."""
        try:
            return bool(self._on_domain("job check", name,
                                        lambda domain: domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE))
        except (OperationFailed, Unavailable) as error:
            log.warning("%s", error)
            return None

    def peer_copy_state(self, uri: str, name: str, timeout: float) -> str | None:
        """`copy_state` asked of another host's libvirtd at `uri` (a live migration's target), over a
        connection of its own; None when it did not answer within `timeout`. While an earlier ask of that host
        is stuck, it is not asked again: a frozen peer holds one thread, not one a pass."""
        with self._peer_lock:
            stuck = self._peer_asks.get(uri)
            if stuck is not None and stuck.is_alive():
                return None
            answer: list[str] = []
            worker = threading.Thread(target=_ask_peer, args=(uri, name, answer), daemon=True,
                                      name=f"ask-peer-{name}")
            self._peer_asks[uri] = worker
            worker.start()
        worker.join(timeout)
        return answer[0] if answer and not worker.is_alive() else None

    def migrate_live(self, name: str, target: "MigrationTarget", max_downtime_ms: int | None,
                     shared_storage: bool, timeout: float) -> None:
        """Move the running guest to `target` without stopping it (peer to peer: this libvirtd talks to the
        target's). A migration still running after `timeout` is aborted. A failure says why, not where the
        guest now runs: libvirt may have resumed it on the target before the error (this libvirtd lost midway,
        say), so the caller asks both hosts (`copy_state`, `peer_copy_state`) before it believes either."""
        domain = self._on_domain("live migration", name, lambda found: found)
        if domain is None:
            raise OperationFailed(f"{name} is not defined on this node")
        running = self._hypervisor.call(f"reading the running definition of {name}",
                                        lambda: domain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
        params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: _with_running_machine_and_cpu(target.xml, running)}
        if target.stream_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = target.stream_uri
        if max_downtime_ms:
            params[libvirt.VIR_MIGRATE_PARAM_DOWNTIME] = int(max_downtime_ms)
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        if shared_storage:
            # The disks stay where they are, reached by both hosts; libvirt cannot tell a shared mount from a
            # local directory, so it is told.
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        outcome: list[BaseException] = []

        def migrate() -> None:
            try:
                domain.migrateToURI3(target.uri, params, flags)
            except BaseException as error:
                outcome.append(error)

        worker = threading.Thread(target=migrate, name=f"migrate-{name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning("live migration of %s to %s still running after %g s: aborting it", name, target.uri,
                        timeout)
            try:
                self._hypervisor.call(f"aborting the migration of {name}", domain.abortJob)
            except (OperationFailed, Unavailable) as error:
                log.warning("%s", error)
            worker.join(self._hypervisor.call_timeout)
            if worker.is_alive():
                self._hypervisor.track_late(name, "live migration", lambda: not worker.is_alive())
                raise Unavailable(f"live migration of {name} to {target.uri} neither finished nor stopped "
                                  f"{timeout:g} s after it began")
            if not outcome:
                return
            raise OperationFailed(f"live migration of {name} to {target.uri} took longer than {timeout:g} s "
                                  "and was aborted")
        if outcome:
            error = outcome[0]
            if not isinstance(error, libvirt.libvirtError):
                raise error
            message = f"live migration of {name} to {target.uri} failed: {error.get_error_message()}"
            if _unreachable(error):
                if "unable to connect to server" in error.get_error_message().lower():
                    raise TargetNotReached(message) from None
                raise TargetUnreachable(message) from None
            raise OperationFailed(message) from None


def _active(domain: "libvirt.virDomain", values: dict) -> bool:
    """Whether a domain from a bulk call exists as a running copy: libvirt's ``isActive`` is its ID (sent with
    the answer), and a state other than shut off counts too, whichever says so."""
    return domain.ID() != -1 or values.get("state.state") != libvirt.VIR_DOMAIN_SHUTOFF


def _audit_after() -> float:
    return DEFINITION_AUDIT_S * random.uniform(0.5, 1.0)


def _copy_state(domain: "libvirt.virDomain") -> str:
    """`DomainActions.copy_state` of a domain; call only inside a libvirt call's worker."""
    state = domain.state()[0]
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return "off"
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_SHUTDOWN):
        return "running"
    return "paused"


def _ask_peer(uri: str, name: str, answer: list[str]) -> None:
    """Append `copy_state` of `name` on the libvirtd at `uri` to `answer`, or nothing when it cannot be told."""
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as error:
        log.warning("cannot ask libvirt at %s about %s: %s", uri, name, error.get_error_message())
        return
    try:
        answer.append(_copy_state(connection.lookupByName(name)))
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            answer.append("off")
        else:
            log.warning("cannot ask libvirt at %s about %s: %s", uri, name, error.get_error_message())
    finally:
        connection.close()


def _identity(domain: "libvirt.virDomain") -> Identity:
    """A domain's identity, with PVC's metadata element if it has one; call only inside `Hypervisor.call`."""
    try:
        element = etree.fromstring(domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NAMESPACE))
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            raise
        element = None
    except etree.XMLSyntaxError:
        element = None
    return Identity(domain.name(), domain.UUIDString(),
                    element.get("name") if element is not None else None,
                    element.get("uuid") if element is not None else None)


def _with_running_machine_and_cpu(xml: str, running_xml: str) -> str:
    """`xml` naming the machine type and CPU the guest runs with. Aliases (machine ``pc``, a CPU mode) are
    expanded when the guest starts, and a libvirtd restarted since then no longer matches the alias with the
    expansion: it refuses the migration ("Target domain machine type pc does not match source
    pc-i440fx-...", "Target CPU does not match source")."""
    running = etree.fromstring(running_xml.encode())
    document = etree.fromstring(xml.encode())
    running_type, os_type = running.find("os/type"), document.find("os/type")
    if running_type is not None and running_type.get("machine") and os_type is not None:
        os_type.set("machine", running_type.get("machine"))
    running_cpu, cpu = running.find("cpu"), document.find("cpu")
    if running_cpu is not None:
        if cpu is not None:
            document.replace(cpu, running_cpu)
        else:
            document.append(running_cpu)
    return etree.tostring(document, encoding="unicode")


def _unreachable(error: libvirt.libvirtError) -> bool:
    """Whether the error means libvirtd could not be asked (rather than answering no)."""
    return error.get_error_domain() == libvirt.VIR_FROM_RPC or error.get_error_code() in (
        libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC)


def _offered_accelerator(connection: libvirt.virConnect) -> str | None:
    if connection.getType() != "QEMU":
        return None
    try:
        capabilities = connection.getDomainCapabilities(None, None, None, "kvm")
    except libvirt.libvirtError:
        return "tcg"
    return "kvm" if "<domain>kvm</domain>" in capabilities else "tcg"
