"""A tiny real Linux guest for the simulated QEMU hosts, built from Debian packages already on the machine.

The kernel is the one of the installed ``linux-image-amd64`` package (not the machine's running kernel, whose
modules are not installed here), stored uncompressed so that QEMU boots it directly; the initramfs holds
``busybox-static``, an ``/init`` script and the few kernel modules the guest needs. Nothing is downloaded.

The guest says everything on its serial console, one line each, so that a test or the launcher can tell from
the console log on the host whether it is alive, whether it rebooted, whether its disk writes reach the host
and whether an ACPI power-button press shut it down:

    pvc-guest: boot <boot_id>
    pvc-guest: disk marker found <first line at the start of /dev/vda, or none>
    pvc-guest: heartbeat <counter> boot <boot_id>            (once a second)
    pvc-guest: disk wrote <counter> read <line read back>      (after each heartbeat, with a disk)
    pvc-guest: power button pressed, powering off
    pvc-guest: lease <interface> <address>/<prefix> router <gateway> dns <server>   (each DHCP bind or renewal)

On each network interface it takes DHCP leases with busybox ``udhcpc`` (renewing them for as long as it runs),
answers ping, serves its boot id over HTTP on port 80, echoes what it is sent on TCP port 7, and answers one
question per connection on TCP port 8 (``ping ADDRESS``, ``resolve NAME``, or ``renew now``, which makes udhcpc
renew its leases at once as it does at half their time: ``ok ...`` or ``fail``), so that a test on the guest's
network sees what the guest itself can reach and resolve.
    pvc-guest: sequence found <vda> <pvc-seq N, or none>       (at boot, per disk, with `SEQUENCE_FLAG`)

With a disk, each second the guest writes ``pvc-marker <boot_id> <counter>`` and a newline, padded with NULs
to 512 bytes, at offset 0 of /dev/vda, bypassing its own page cache (O_DIRECT), and reads it back the same
way. The boot id is the kernel's random one, new at every boot.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from pvc.errors import PVCError

DEFAULT_BOOT_DIR = Path(sys.prefix) / "share" / "pvc-local" / "boot"
KERNEL = "pvc-guest-vmlinuz"
INITRD = "pvc-guest-initrd.img"
STAMP = "pvc-guest.stamp"
ACCELERATOR_CACHE = "pvc-guest-accelerator.json"

CMDLINE = "console=ttyS0 quiet panic=-1"
SEQUENCE_FLAG = "pvc.seq"
AGENT_FLAG = "pvc.agent"
"""Boot flag of a guest that runs qemu-ga and keeps an ext2 filesystem on its last disk, mounted."""
AGENT_CHANNEL = "org.qemu.guest_agent.0"
FSFREEZE_PREFIX = "pvc-guest: fsfreeze"
QEMU_GA = Path("/usr/sbin/qemu-ga")
SEQUENCE_OFFSET = 4096
"""Where a guest booted with `SEQUENCE_FLAG` writes its sequence number on each disk (``pvc-seq N``)."""
SEQUENCE_FOUND_PATTERN = re.compile(r"^pvc-guest: sequence found (vd[a-z]) (?:pvc-seq (\d+)|none)\r?$",
                                    re.MULTILINE)
POWER_OFF_LINE = "pvc-guest: power button pressed, powering off"
HEARTBEAT_PATTERN = re.compile(r"^pvc-guest: heartbeat (\d+) boot ([0-9a-f-]+)\r?$", re.MULTILINE)
QEMU = "qemu-system-x86_64"

# In Debian's kernel these are modules: the PCI transport and block driver of the guest's disk, the ACPI
# power button with the event device through which acpid sees it, the network device's driver, the virtio
# serial port of the guest agent, and ext4 (which mounts ext2, and will not without a crc32c driver) for a
# filesystem a freeze has something to freeze in.
MODULES = ("virtio_pci", "virtio_blk", "button", "evdev", "virtio_net", "virtio_console", "crc32c_generic", "ext4")
LEASE_PATTERN = re.compile(r"^pvc-guest: lease (\S+) ([0-9.]+)/(\d+) router (\S*) dns (\S*)\r?$", re.MULTILINE)
SETUP_HINT = "run contrib/setup.sh"

_POWER_BUTTON_HANDLER = f"""\
#!/bin/sh
echo '{POWER_OFF_LINE}' > /dev/ttyS0
poweroff -f
"""

_DHCP_SCRIPT = """\
#!/bin/sh
case "$1" in
    bound|renew)
        if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
            ip -4 addr flush dev "$interface"
            ip addr add "$ip/$mask" dev "$interface"
        fi
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        [ -n "$dns" ] && echo "nameserver ${dns%% *}" > /etc/resolv.conf
        echo "pvc-guest: lease $interface $ip/$mask router ${router%% *} dns ${dns%% *}" > /dev/ttyS0 ;;
    deconfig) ;;
esac
"""

_PROBE = """\
#!/bin/sh
read -r verb target
case "$verb" in
    ping) ping -c 1 -W 2 "$target" > /dev/null 2>&1 && echo "ok $target" || echo fail ;;
    renew) killall -USR1 udhcpc > /dev/null 2>&1 && echo "ok renew" || echo fail ;;
    resolve) answer=$(nslookup "$target" 2> /dev/null | sed -n '/^Name:/,$ s/^Address:* *//p' | head -n 1)
             [ -n "$answer" ] && echo "ok $answer" || echo fail ;;
    *) echo fail ;;
esac
"""

_FSFREEZE_HOOK = f"""\
#!/bin/sh
echo "{FSFREEZE_PREFIX} $1" > /dev/ttyS0
"""

# busybox acpid's built-in map turns the power button's key event into the action PWRF/00000080, a file
# it runs from its configuration directory.
_INIT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec > /dev/ttyS0 2>&1 < /dev/null
{insmod}
acpid -l /dev/null
read boot_id < /proc/sys/kernel/random/boot_id
echo "pvc-guest: boot $boot_id"
ip link set lo up
for interface in $(ls /sys/class/net); do
    [ "$interface" = lo ] && continue
    ip link set "$interface" up
    udhcpc -i "$interface" -s /etc/udhcpc.script -b -t 30 -T 1 -A 2 > /dev/null 2>&1
done
if [ -n "$interface" ]; then
    echo "pvc-guest $boot_id" > /www/index.html
    httpd -p 80 -h /www
    nc -ll -p 7 -e cat &
    nc -ll -p 8 -e /bin/pvc-probe &
fi
if [ -b /dev/vda ]; then
    found=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\\000' | head -n 1)
    case "$found" in
        pvc-marker\\ *) echo "pvc-guest: disk marker found $found" ;;
        *) echo "pvc-guest: disk marker found none" ;;
    esac
fi
sequence_disks=$(ls /dev/vd? 2>/dev/null)
if grep -q pvc.agent /proc/cmdline; then
    fsdisk=$(ls /dev/vd? | tail -n 1)
    sequence_disks=$(ls /dev/vd? | grep -v "^$fsdisk$")
    mkdir -p /mnt
    if mount -t ext2 $fsdisk /mnt 2>/dev/null || {{ mke2fs -q $fsdisk >/dev/null 2>&1 && mount -t ext2 $fsdisk /mnt; }}
    then
        echo "pvc-guest: filesystem on ${{fsdisk#/dev/}} mounted"
    fi
    for port in /sys/class/virtio-ports/*; do
        [ "$(cat $port/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && agent=/dev/${{port##*/}}
    done
    /usr/sbin/qemu-ga -m virtio-serial -p $agent -F/etc/fsfreeze-hook -t /tmp -f /tmp/qemu-ga.pid -d
    echo "pvc-guest: agent started on $agent"
    (
        written=0
        while :; do
            written=$((written + 1))
            echo "pvc-fs $written" > /mnt/beat
            sync
            sleep 1
        done
    ) &
fi
if grep -q pvc.seq /proc/cmdline; then
    for disk in $sequence_disks; do
        found=$(dd if=$disk bs=512 skip={sequence_sector} count=1 iflag=direct 2>/dev/null | tr -d '\\000' | head -n 1)
        echo "pvc-guest: sequence found ${{disk#/dev/}} ${{found:-none}}"
    done
    (
        sequence=0
        while :; do
            sequence=$((sequence + 1))
            for disk in $sequence_disks; do
                {{ echo "pvc-seq $sequence"; head -c 512 /dev/zero; }} |
                    dd of=$disk bs=512 seek={sequence_sector} count=1 iflag=fullblock oflag=direct \\
                        conv=notrunc 2>/dev/null
            done
            usleep 10000
        done
    ) &
fi
counter=0
while :; do
    counter=$((counter + 1))
    echo "pvc-guest: heartbeat $counter boot $boot_id"
    if [ -b /dev/vda ]; then
        {{ echo "pvc-marker $boot_id $counter"; head -c 512 /dev/zero; }} |
            dd of=/dev/vda bs=512 count=1 iflag=fullblock oflag=direct conv=notrunc,fsync 2>/dev/null
        back=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\\000' | head -n 1)
        echo "pvc-guest: disk wrote $counter read $back"
    fi
    sleep 1
done
"""


class GuestImageError(PVCError):
    """What the machine lacks to build or probe the guest, and how to get it."""


@dataclass(frozen=True)
class Heartbeat:
    counter: int
    boot_id: str


def parse_console(text: str) -> list[Heartbeat]:
    """The heartbeats in a console log, in order: a new boot id means the guest booted again."""
    return [Heartbeat(int(counter), boot_id) for counter, boot_id in HEARTBEAT_PATTERN.findall(text)]


@dataclass(frozen=True)
class Lease:
    interface: str
    address: str
    prefix: int
    router: str
    dns: str


def parse_leases(text: str) -> list[Lease]:
    """The DHCP leases the guest took or renewed, in order."""
    return [Lease(interface, address, int(prefix), router, dns)
            for interface, address, prefix, router, dns in LEASE_PATTERN.findall(text)]


def sequences_found(text: str) -> dict[str, int | None]:
    """The sequence number each disk held when the guest last booted, by its device name (None: none)."""
    found: dict[str, int | None] = {}
    for disk, number in SEQUENCE_FOUND_PATTERN.findall(text):
        found[disk] = int(number) if number else None
    return found


def read_sequence(path: str | os.PathLike) -> int | None:
    """The sequence number a guest last wrote to a raw disk image (a volume file or a snapshot of one)."""
    with open(path, "rb") as disk:
        disk.seek(SEQUENCE_OFFSET)
        line = disk.read(512).split(b"\0")[0].decode(errors="replace").strip()
    match = re.fullmatch(r"pvc-seq (\d+)", line)
    return int(match.group(1)) if match else None


def powered_off_cleanly(text: str) -> bool:
    """Whether the guest saw an ACPI power-button press and shut itself down (rather than being killed)."""
    return POWER_OFF_LINE in text


def build(boot_dir: Path = DEFAULT_BOOT_DIR) -> Path:
    """Put the guest's kernel (`KERNEL`) and initramfs (`INITRD`) into boot_dir, and return boot_dir.

    Cheap when they are already there for the same kernel and init script. Each file is written under a
    temporary name and renamed, and the stamp last, so a half-built image is never used."""
    boot_dir = Path(boot_dir)
    version = _kernel_version()
    modules = _module_files(version)
    init = _INIT.format(insmod="\n".join(f"insmod /{_guest_module_path(path)}" for path in modules),
                        sequence_sector=SEQUENCE_OFFSET // 512)
    agent = _agent_files()
    stamp = {"kernel": version, "init_sha256": hashlib.sha256(
        (init + _POWER_BUTTON_HANDLER + _DHCP_SCRIPT + _PROBE + _FSFREEZE_HOOK).encode()).hexdigest(),
             "agent_sha256": hashlib.sha256(b"".join(path.encode() + data for path, data in agent)).hexdigest()}
    if _read_json(boot_dir / STAMP) == stamp and (boot_dir / KERNEL).is_file() and (boot_dir / INITRD).is_file():
        return boot_dir
    busybox = _busybox()
    boot_dir.mkdir(parents=True, exist_ok=True)
    (boot_dir / STAMP).unlink(missing_ok=True)
    _write_atomically(boot_dir / KERNEL, _fast_kernel(Path(f"/boot/vmlinuz-{version}").read_bytes()))
    _write_atomically(boot_dir / INITRD, _initramfs(init, busybox, modules, agent))
    _write_atomically(boot_dir / STAMP, json.dumps(stamp).encode())
    return boot_dir


def domain_xml(name: str, memory_mib: int = 128, disk: str | None = None, domain_type: str = "qemu",
               networks: tuple[str, ...] = (), macs: tuple[str, ...] = (), disks: list[str] | None = None,
               sequence: bool = False, agent: bool = False) -> str:
    """A libvirt domain document for this guest as PVC stores it: no host path in it. The kernel and initrd
    are file names in the node's boot-image directory, and the node gives the serial console its log file;
    libvirt adds the matching <console> itself. `disk` is a PVC volume, "POOL/VOLUME"; `disks` several (vda,
    vdb, ...). Each of `networks` (a PVC network's VNI or description) gets a virtio NIC, with the MAC of the
    same place in `macs` if given. With `sequence`, the guest writes a growing sequence number to each disk in
    turn, every 10 ms or so (`SEQUENCE_OFFSET`), and says on its console at boot which number each disk holds.
    With `agent`, it runs qemu-ga on a virtio channel and keeps an ext2 filesystem on its last disk (not a
    sequence disk)."""
    if domain_type not in ("qemu", "kvm"):
        raise ValueError(f"domain type must be 'qemu' or 'kvm', not {domain_type!r}")
    if memory_mib < 1:
        raise ValueError(f"memory must be at least 1 MiB, not {memory_mib}")
    domain = etree.Element("domain", type=domain_type)
    etree.SubElement(domain, "name").text = name
    etree.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    etree.SubElement(domain, "vcpu").text = "1"
    os_element = etree.SubElement(domain, "os")
    etree.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    etree.SubElement(os_element, "kernel").text = KERNEL
    etree.SubElement(os_element, "initrd").text = INITRD
    etree.SubElement(os_element, "cmdline").text = CMDLINE + (f" {SEQUENCE_FLAG}" if sequence else "") + \
        (f" {AGENT_FLAG}" if agent else "")
    features = etree.SubElement(domain, "features")
    etree.SubElement(features, "acpi")
    if domain_type == "qemu":
        # TCG's translation cache otherwise takes about 50 MB per guest; 16 MiB boots as fast.
        etree.SubElement(etree.SubElement(features, "tcg"), "tb-cache", unit="MiB").text = "16"
    etree.SubElement(domain, "on_poweroff").text = "destroy"
    devices = etree.SubElement(domain, "devices")
    for index, each in enumerate(([disk] if disk is not None else []) + list(disks or [])):
        pool, _, volume = each.partition("/")
        if not pool or not volume:
            raise ValueError(f"disk must name a PVC volume as POOL/VOLUME, not {each!r}")
        element = etree.SubElement(devices, "disk", type="volume", device="disk")
        etree.SubElement(element, "driver", name="qemu", type="raw", cache="writeback")
        etree.SubElement(element, "source", pool=pool, volume=volume)
        etree.SubElement(element, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
    for index, network in enumerate(networks):
        interface = etree.SubElement(devices, "interface", type="network")
        if index < len(macs):
            etree.SubElement(interface, "mac", address=macs[index])
        etree.SubElement(interface, "source", network=str(network))
        etree.SubElement(interface, "model", type="virtio")
    if agent:
        channel = etree.SubElement(devices, "channel", type="unix")
        etree.SubElement(channel, "source", mode="bind")
        etree.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    serial = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(serial, "target", port="0")
    etree.SubElement(devices, "memballoon", model="none")
    return etree.tostring(domain, encoding="unicode")


def probe_accelerator(boot_dir: Path = DEFAULT_BOOT_DIR, cache_dir: Path | None = None,
                      deadline: float = 20.0) -> str:
    """The accelerator guests get here: "kvm" if this guest really runs under KVM, else "tcg".

    /dev/kvm can exist and still be useless (nested KVM where the guest spins and never prints), so a guest is
    booted under KVM and must print a heartbeat within `deadline` seconds. The answer is cached in cache_dir
    (default boot_dir) for this machine's kernel and QEMU version."""
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    boot_dir = Path(boot_dir)
    missing = [name for name in (KERNEL, INITRD) if not (boot_dir / name).is_file()]
    if missing:
        # Else QEMU would fail at once, for a reason that has nothing to do with KVM, and "tcg" be cached.
        raise GuestImageError(f"{', '.join(missing)} missing in {boot_dir}: build the guest image first "
                              "(pvc-local build-guest)")
    cache = Path(cache_dir if cache_dir is not None else boot_dir) / ACCELERATOR_CACHE
    key = f"{os.uname().release} {_qemu_version()}"
    answers = _read_json(cache) or {}
    if answers.get(key) in ("kvm", "tcg"):
        return answers[key]
    answer = "kvm" if _boots_under_kvm(boot_dir, deadline) else "tcg"
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(cache, json.dumps({**answers, key: answer}, indent=1).encode())
    return answer


def _boots_under_kvm(boot_dir: Path, deadline: float) -> bool:
    with tempfile.TemporaryDirectory(prefix="pvc-kvm-probe-") as work:
        console = Path(work) / "console.log"
        argv = [QEMU, "-accel", "kvm", "-m", "128", "-nographic", "-no-reboot", "-nic", "none",
                "-kernel", str(boot_dir / KERNEL), "-initrd", str(boot_dir / INITRD), "-append", CMDLINE,
                "-serial", f"file:{console}"]
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + deadline
            while time.monotonic() < end and qemu.poll() is None:
                if console.exists() and parse_console(console.read_text(errors="replace")):
                    return True
                time.sleep(0.1)
            return False
        finally:
            qemu.kill()
            qemu.wait()


def _qemu_version() -> str:
    try:
        output = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise GuestImageError(f"qemu-system-x86 is not installed: {SETUP_HINT}") from None
    return output.splitlines()[0].strip()


def _installed(package: str) -> bool:
    try:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return status.returncode == 0 and status.stdout.endswith(" installed")


def _kernel_version() -> str:
    """The kernel release of the installed linux-image-amd64 (the release its dependency names), or else any
    release that has both a kernel in /boot and its modules."""
    releases = (path.name.removeprefix("vmlinuz-") for path in Path("/boot").glob("vmlinuz-*"))
    complete = sorted((release for release in releases
                       if Path("/usr/lib/modules", release, "modules.dep").is_file()),
                      key=lambda release: [int(number) for number in re.findall(r"\d+", release)], reverse=True)
    depends = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", "linux-image-amd64"], capture_output=True,
                             text=True).stdout if _installed("linux-image-amd64") else ""
    preferred = re.findall(r"linux-image-(\S+)", depends)
    for version in preferred + complete:
        if version in complete:
            return version
    if not preferred:
        raise GuestImageError(f"linux-image-amd64 is not installed: {SETUP_HINT}")
    raise GuestImageError(f"linux-image-amd64 depends on kernel {preferred[0]}, but /boot/vmlinuz-{preferred[0]} "
                          f"or /usr/lib/modules/{preferred[0]}/modules.dep is missing: reinstall "
                          f"linux-image-{preferred[0]}")


def _fast_kernel(bzimage: bytes) -> bytes:
    """The uncompressed kernel (vmlinux) inside a bzImage when QEMU can boot it directly (PVH entry point),
    else the bzImage itself. Under TCG the kernel's own xz decompression took 4.4 s of a 7 s boot; QEMU maps
    the vmlinux from the page cache, which every guest on the machine shares."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return bzimage
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = ((bzimage[0x1f1] or 4) + 1) * 512 + offset
    payload = bzimage[start:start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            vmlinux = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            vmlinux = zlib.decompressobj(wbits=31).decompress(payload)
        else:
            return bzimage
    except (lzma.LZMAError, zlib.error):
        return bzimage
    return vmlinux if _has_pvh_entry(vmlinux) else bzimage


def _has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit ELF kernel carries the Xen note XEN_ELFNOTE_PHYS32_ENTRY that QEMU boots it by."""
    if not elf.startswith(b"\x7fELF\x02\x01"):
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", elf, phoff + index * phentsize)
        position, end = offset, offset + size
        while kind == 4 and position + 12 <= end:  # PT_NOTE
            name_size, description_size, note_type = struct.unpack_from("<III", elf, position)
            name = elf[position + 12:position + 12 + name_size]
            if name == b"Xen\0" and note_type == 18:
                return True
            position += 12 + -(-name_size // 4) * 4 + -(-description_size // 4) * 4
    return False


def _module_files(version: str) -> list[Path]:
    """The .ko files of `MODULES` and of everything they depend on, each after its dependencies."""
    directory = Path("/usr/lib/modules", version)
    depends: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (directory / "modules.dep").read_text().splitlines():
        path, _, dependencies = line.partition(":")
        name = _module_name(path)
        paths[name] = path
        depends[name] = [_module_name(dependency) for dependency in dependencies.split()]
    builtin_list = directory / "modules.builtin"
    builtin = {_module_name(line) for line in builtin_list.read_text().split()} if builtin_list.exists() else set()
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name in builtin:
            return
        if name not in paths:
            raise GuestImageError(f"kernel {version} has no module {name} (not in {directory}/modules.dep)")
        for dependency in depends[name]:
            visit(dependency)
        ordered.append(name)

    for module in MODULES:
        visit(module)
    return [directory / paths[name] for name in ordered]


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _guest_module_path(path: Path) -> str:
    """Where a module goes in the initramfs: flat, and uncompressed."""
    return f"lib/modules/{path.name.split('.ko')[0]}.ko"


def _module_bytes(path: Path) -> bytes:
    """A module uncompressed, since busybox insmod may not read compressed ones."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        try:
            return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
        except FileNotFoundError:
            raise GuestImageError(f"{path} is zstd-compressed and zstd is not installed: apt-get install zstd") \
                from None
    return data


def _busybox() -> bytes:
    """busybox-static's binary: a dynamically linked busybox would find no libc in the guest."""
    if not _installed("busybox-static"):
        raise GuestImageError(f"busybox-static is not installed: {SETUP_HINT}")
    files = subprocess.run(["dpkg-query", "-L", "busybox-static"], capture_output=True, text=True).stdout
    path = next((line for line in files.splitlines() if line.endswith("/bin/busybox")), "/bin/busybox")
    return Path(path).read_bytes()


def _agent_files() -> list[tuple[str, bytes]]:
    """qemu-ga and the shared libraries it loads (with the dynamic loader), each at its path in the guest."""
    if not QEMU_GA.is_file():
        raise GuestImageError(f"qemu-guest-agent is not installed: {SETUP_HINT}")
    listing = subprocess.run(["ldd", str(QEMU_GA)], capture_output=True, text=True, check=True).stdout
    libraries = re.findall(r"(/\S+) \(0x", listing)
    files = [("usr/sbin/qemu-ga", QEMU_GA.read_bytes())]
    for library in sorted(set(libraries)):
        files.append((library.lstrip("/"), Path(library).resolve().read_bytes()))
    return files


def _initramfs(init: str, busybox: bytes, modules: list[Path], agent: list[tuple[str, bytes]]) -> bytes:
    """A gzip'd newc cpio archive, built here so that /dev/console can be a device node without root."""
    archive = _Cpio()
    directories = sorted({str(Path(path).parent) for path, _data in agent} - {"."})
    for directory in sorted({str(parent) for each in directories for parent in [*Path(each).parents, Path(each)]
                             if str(parent) != "."}, key=lambda each: each.count("/")):
        archive.add(directory, stat.S_IFDIR | 0o755)
    for path, data in agent:
        archive.add(path, stat.S_IFREG | 0o755, data)
    for directory in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "proc", "sys",
                      "tmp", "var", "var/run", "www"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    # The kernel opens /dev/console for /init before /init can mount devtmpfs.
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    archive.add("init", stat.S_IFREG | 0o755, init.encode())
    archive.add("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, _POWER_BUTTON_HANDLER.encode())
    archive.add("etc/udhcpc.script", stat.S_IFREG | 0o755, _DHCP_SCRIPT.encode())
    archive.add("bin/pvc-probe", stat.S_IFREG | 0o755, _PROBE.encode())
    archive.add("etc/fsfreeze-hook", stat.S_IFREG | 0o755, _FSFREEZE_HOOK.encode())
    for path in modules:
        archive.add(_guest_module_path(path), stat.S_IFREG | 0o644, _module_bytes(path))
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as stream:
        stream.write(archive.finish())
    return compressed.getvalue()


class _Cpio:
    """The "newc" cpio format the kernel unpacks an initramfs from."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._inode = 0

    def add(self, name: str, mode: int, content: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(content), 0, 0, *rdev,
                  len(encoded), 0)
        self._data += b"070701" + b"".join(b"%08x" % field for field in fields) + encoded
        self._pad()
        self._data += content
        self._pad()

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self._data)

    def _pad(self) -> None:
        self._data += b"\0" * (-len(self._data) % 4)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_atomically(path: Path, data: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
