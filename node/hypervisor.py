"""The one class that talks to libvirt on a node.

On a simulated host (several share one machine) the node's totals come from its configuration and its live
figures from what its VMs hold. `load` is the same figure on every kind of host: the CPU seconds per second
its running guests consumed since the previous keepalive (the machine's load average would be the same on
every simulated host, and a vCPU count is not a load).
"""
import logging
import threading
import time
from dataclasses import dataclass

import libvirt

from pvc.errors import OperationFailed, Unavailable

log = logging.getLogger(__name__)
libvirt.registerErrorHandler(lambda _context, _error: None, None)


class TargetUnreachable(OperationFailed):
    """The target's libvirtd did not answer: it could not start the VM after a shutdown either."""


@dataclass(frozen=True)
class MigrationTarget:
    """Where a live migration goes: the target libvirtd's URI, the address its memory stream connects to,
    and the domain document made for the target host (`pvc.node.host_xml`)."""
    uri: str
    stream_uri: str | None
    xml: str


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    running: bool
    memory_mib: int
    vcpus: int
    cpu_time_ns: int


class Hypervisor:
    """A libvirt connection, reopened if libvirtd restarts, and the node's figures."""

    def __init__(self, uri: str, simulated_cpus: int | None = None, simulated_memory_mib: int | None = None,
                 accelerator: str | None = None):
        self.uri = uri
        self._accelerator = accelerator
        self._last_cpu_sample: tuple[float, dict[str, int]] | None = None
        self.simulated = simulated_cpus is not None or simulated_memory_mib is not None
        self._simulated_cpus = simulated_cpus
        self._simulated_memory_mib = simulated_memory_mib
        self._lock = threading.Lock()
        self._connection: libvirt.virConnect | None = None

    @property
    def can_migrate_live(self) -> bool:
        return not self.uri.startswith("test")

    def connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._connection is None or not self._connection.isAlive():
                try:
                    self._connection = libvirt.open(self.uri)
                except libvirt.libvirtError as error:
                    raise Unavailable(f"cannot connect to libvirt at {self.uri}: {error.get_error_message()}") \
                        from None
            return self._connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                try:
                    self._connection.close()
                except libvirt.libvirtError:
                    pass
                self._connection = None

    def facts(self) -> dict:
        """What does not change while the node runs: CPUs, total memory, libvirt version."""
        connection = self.connection()
        _model, memory_mib, cpus, *_rest = connection.getInfo()
        version = connection.getLibVersion()
        return {
            "cpus": self._simulated_cpus or cpus,
            "memory_total_mib": self._simulated_memory_mib or memory_mib,
            "libvirt_version": f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}",
            "hypervisor": connection.getType(),
            "accelerator": self._accelerator or self._offered_accelerator(connection),
            "simulated": self.simulated,
        }

    def _offered_accelerator(self, connection: libvirt.virConnect) -> str | None:
        if connection.getType() != "QEMU":
            return None
        try:
            capabilities = connection.getDomainCapabilities(None, None, None, "kvm")
        except libvirt.libvirtError:
            return "tcg"
        return "kvm" if "<domain>kvm</domain>" in capabilities else "tcg"

    def domains(self) -> list[Domain]:
        try:
            found = self.connection().listAllDomains()
        except libvirt.libvirtError as error:
            raise OperationFailed(f"listing domains failed: {error.get_error_message()}") from None
        result = []
        for domain in found:
            try:
                state, max_memory_kib, _memory, vcpus, cpu_time_ns = domain.info()
                result.append(Domain(domain.name(), domain.UUIDString(), state == libvirt.VIR_DOMAIN_RUNNING,
                                     max_memory_kib // 1024, vcpus, cpu_time_ns))
            except libvirt.libvirtError:
                continue
        return result

    def figures(self, memory_total_mib: int) -> dict:
        """The live figures a keepalive reports, for placement and for `node info`."""
        domains = self.domains()
        running = [domain for domain in domains if domain.running]
        allocated = sum(domain.memory_mib for domain in running)
        vcpus = sum(domain.vcpus for domain in running)
        if self.simulated:
            free = max(memory_total_mib - allocated, 0)
        else:
            free = self.connection().getFreeMemory() // (1024 * 1024)
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
        """CPU seconds per second the running guests used since the last call (0 on the first)."""
        now = time.monotonic()
        sample = {domain.uuid: domain.cpu_time_ns for domain in running}
        previous, self._last_cpu_sample = self._last_cpu_sample, (now, sample)
        if previous is None or now <= previous[0]:
            return 0.0
        used_ns = sum(max(cpu_ns - previous[1].get(uuid, cpu_ns), 0) for uuid, cpu_ns in sample.items())
        return used_ns / 1e9 / (now - previous[0])


class DomainActions:
    """Idempotent libvirt actions on one node's domains: doing one twice is the same as doing it once."""

    def __init__(self, hypervisor: Hypervisor, shutdown_timeout: float):
        self._hypervisor = hypervisor
        self._shutdown_timeout = shutdown_timeout

    def _lookup(self, name: str) -> "libvirt.virDomain | None":
        try:
            return self._hypervisor.connection().lookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise OperationFailed(f"libvirt lookup of {name} failed: {error.get_error_message()}") from None

    @property
    def can_migrate_live(self) -> bool:
        return self._hypervisor.can_migrate_live

    def exists(self, name: str) -> bool:
        return self._lookup(name) is not None

    def is_running(self, name: str) -> bool:
        domain = self._lookup(name)
        return domain is not None and bool(domain.isActive())

    def define(self, xml: str) -> None:
        self._run("define", lambda: self._hypervisor.connection().defineXML(xml))

    def start(self, name: str) -> None:
        domain = self._require(name)
        if not domain.isActive():
            self._run(f"start of {name}", domain.create)

    def shutdown(self, name: str) -> None:
        """Ask the guest to shut down; after the timeout, pull the plug."""
        domain = self._lookup(name)
        if domain is None or not domain.isActive():
            return
        self._run(f"shutdown of {name}", domain.shutdown)
        deadline = time.monotonic() + self._shutdown_timeout
        while domain.isActive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if domain.isActive():
            log.warning("%s did not shut down within %g s: destroying it", name, self._shutdown_timeout)
            self.stop(name)

    def stop(self, name: str) -> None:
        domain = self._lookup(name)
        if domain is not None and domain.isActive():
            self._run(f"stop of {name}", domain.destroy)

    def undefine(self, name: str) -> None:
        domain = self._lookup(name)
        if domain is not None:
            self.stop(name)
            self._run(f"undefine of {name}", domain.undefine)

    def migrate_live(self, name: str, target: "MigrationTarget", max_downtime_ms: int | None,
                     shared_storage: bool, timeout: float) -> None:
        """Move the running guest to `target` without stopping it (peer to peer: this libvirtd talks to the
        target's). A migration still running after `timeout` is aborted; on any failure the guest keeps
        running here, and the error says why."""
        domain = self._require(name)
        params = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: target.xml}
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
                domain.abortJob()
            except libvirt.libvirtError as error:
                log.warning("aborting the migration of %s failed: %s", name, error.get_error_message())
            worker.join()
            if not outcome:
                return
            raise OperationFailed(f"live migration of {name} to {target.uri} took longer than {timeout:g} s "
                                  "and was aborted")
        if outcome:
            error = outcome[0]
            if not isinstance(error, libvirt.libvirtError):
                raise error
            message = f"live migration of {name} to {target.uri} failed: {error.get_error_message()}"
            if error.get_error_domain() == libvirt.VIR_FROM_RPC or \
                    error.get_error_code() in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_AUTH_FAILED):
                raise TargetUnreachable(message) from None
            raise OperationFailed(message) from None

    def _require(self, name: str) -> "libvirt.virDomain":
        domain = self._lookup(name)
        if domain is None:
            raise OperationFailed(f"{name} is not defined on this node")
        return domain

    @staticmethod
    def _run(what: str, action) -> None:
        try:
            action()
        except libvirt.libvirtError as error:
            raise OperationFailed(f"{what} failed: {error.get_error_message()}") from None
