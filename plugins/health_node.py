"""The built-in node health checks, registered through the ``pvc`` entry points like any plugin's.

Each looks at one thing and says, in one line, what is wrong and how much it matters (the delta it takes off
the node's health): libvirt, ZooKeeper, the BMC, storage, the node's own directories, load, memory, and the
PVC version against the leader's."""
import shutil
import time
from pathlib import Path

import pvc
from pvc.hookspecs import HealthResult, NodeHealthContext
from pvc.plugins.fencing import BMC

ZOOKEEPER_SLOW_S = 1.0
DIRECTORY_WARNING_FREE = 0.10
DIRECTORY_CRITICAL_FREE = 0.05


class Libvirt:
    description = "libvirt answers this node, and for how long it has not"
    timeout = 2.0
    failure_delta = 10

    def check(self, context: NodeHealthContext) -> HealthResult:
        lost_s = context.libvirt_lost_s()
        if lost_s is None:
            return HealthResult.healthy("libvirt answers")
        settings = context.libvirt_lost_settings()
        if lost_s >= settings["libvirt_lost_after"]:
            return HealthResult(50, f"libvirt has not answered for {lost_s:.0f} s (libvirt_lost_after "
                                    f"{settings['libvirt_lost_after']:g} s): VM states and figures are stale",
                                "critical")
        return HealthResult(10, f"libvirt has not answered for {lost_s:.0f} s")


class ZooKeeperLatency:
    description = "one ZooKeeper round trip takes under a second"
    timeout = 5.0
    failure_delta = 25

    def check(self, context: NodeHealthContext) -> HealthResult:
        latency = context.zookeeper_latency_s()
        if latency >= ZOOKEEPER_SLOW_S:
            return HealthResult(10, f"a ZooKeeper round trip took {latency * 1000:.0f} ms")
        return HealthResult.healthy(f"ZooKeeper answers in {latency * 1000:.0f} ms")


class BMCAnswers:
    """Asks the BMC again only `bmc_check_interval` after it last answered (a BMC serves few sessions, and a fence
    needs one; an ipmitool run also cost a node more CPU than its daemon, 2.7 against 1.9 ms/s, at a 10 s health
    interval); one that did not answer is asked every round, so its fault clears as soon as it answers."""
    description = "the node's own BMC answers ipmitool chassis status (its bmc_* settings)"
    timeout = 8.0
    failure_delta = 10

    def __init__(self) -> None:
        self._answered_at: float | None = None

    def check(self, context: NodeHealthContext) -> HealthResult:
        settings = context.settings
        if not settings.get("bmc_host"):
            return HealthResult.healthy("no BMC configured")
        bmc = BMC(settings["bmc_host"], int(settings.get("bmc_port") or 623), settings.get("bmc_user"),
                  settings.get("bmc_password"))
        interval = float(settings.get("bmc_check_interval") or 0)
        if self._answered_at is not None and time.monotonic() - self._answered_at < interval:
            return HealthResult.healthy(f"BMC {bmc} answered {time.monotonic() - self._answered_at:.0f} s ago "
                                        f"(asked every {interval:g} s)")
        self._answered_at = None
        answered, output = bmc.ipmitool("chassis", "status", timeout=max(context.deadline_left() - 0.5, 0.5))
        if not answered:
            return HealthResult(10, f"BMC {bmc} does not answer: {output}")
        self._answered_at = time.monotonic()
        return HealthResult.healthy(f"BMC {bmc} answers")


class Storage:
    description = "the storage backend's own health (Ceph health, OSDs down or near full; a directory's space)"
    timeout = 15.0
    failure_delta = 25

    def check(self, context: NodeHealthContext) -> HealthResult:
        delta, message = context.storage_health()
        return HealthResult(delta, message)


class DirectorySpace:
    description = "free space of the node's own state and log directories"
    timeout = 2.0
    failure_delta = 10

    def check(self, context: NodeHealthContext) -> HealthResult:
        settings = context.settings
        directories = {settings.get(key) for key in ("console_log_directory", "upload_staging_directory",
                                                     "boot_image_directory") if settings.get(key)}
        if settings.get("log_file"):
            directories.add(str(Path(settings["log_file"]).parent))
        worst: tuple[float, str] | None = None
        for directory in sorted(directories):
            path = _existing(Path(directory))
            usage = shutil.disk_usage(path)
            free = usage.free / usage.total if usage.total else 1.0
            if worst is None or free < worst[0]:
                worst = (free, str(path))
        if worst is None:
            return HealthResult.healthy("no directories to watch")
        free, path = worst
        message = f"{path}: {free:.0%} free"
        if free < DIRECTORY_CRITICAL_FREE:
            return HealthResult(50, message, "critical")
        if free < DIRECTORY_WARNING_FREE:
            return HealthResult(10, message)
        return HealthResult.healthy(message)


class Load:
    description = "the guests' CPU load against the node's CPUs"
    timeout = 1.0
    failure_delta = 5

    def check(self, context: NodeHealthContext) -> HealthResult:
        figures = context.figures()
        load, cpus = figures.get("load") or 0, figures.get("cpus") or 0
        if cpus and load > cpus:
            return HealthResult(10, f"load {load:g} over {cpus} CPUs")
        return HealthResult.healthy(f"load {load:g} on {cpus} CPUs")


class Memory:
    description = "memory provisioned and allocated against the node's real memory"
    timeout = 1.0
    failure_delta = 5

    def check(self, context: NodeHealthContext) -> HealthResult:
        figures = context.figures()
        total = figures.get("memory_total_mib") or 0
        allocated = figures.get("memory_allocated_mib") or 0
        provisioned = figures.get("memory_provisioned_mib") or 0
        if total and allocated > total:
            return HealthResult(25, f"running VMs hold {allocated} MiB of {total} MiB")
        if total and provisioned > total:
            return HealthResult(5, f"{provisioned} MiB provisioned on {total} MiB: not all VMs can run here")
        return HealthResult.healthy(f"{provisioned} MiB provisioned of {total} MiB")


class Version:
    description = "this node runs the same PVC version as the leader coordinator"
    timeout = 3.0
    failure_delta = 5

    def check(self, context: NodeHealthContext) -> HealthResult:
        leader = context.leader_version()
        if leader is not None and leader != pvc.__version__:
            return HealthResult(10, f"this node runs PVC {pvc.__version__}, the leader {leader}")
        return HealthResult.healthy(f"PVC {pvc.__version__}")


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


@pvc.hookimpl
def pvc_node_health_checks():
    return {"libvirt": Libvirt(), "zookeeper": ZooKeeperLatency(), "bmc": BMCAnswers(), "storage": Storage(),
            "disk-space": DirectorySpace(), "load": Load(), "memory": Memory(), "version": Version()}
