"""The tiny real guest, built from the machine's own Debian packages and booted by a bare QEMU under TCG.

What the guest says is read from outside: its serial console in a file on the host, its disk as a host file,
and QEMU's process. The tests of the booted guest share one guest and run in file order; the power-button
test, which ends it, comes last.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from lxml import etree

from pvc import domain_xml as stored_domain
from pvc.cli.localcluster import guest

from helpers import eventually

BOOT_TIMEOUT = 60.0
"""Seconds to the first heartbeat: about 3.5 s under TCG on an idle machine, far more on two busy cores."""
PREVIOUS_MARKER = "pvc-marker previous-boot 41"
DISK_LINE = re.compile(r"^pvc-guest: disk wrote (\d+) read (.*?)\r?$", re.MULTILINE)


@pytest.fixture(scope="module")
def boot_dir(tmp_path_factory) -> Path:
    """The default image when one was built already (cheap to check), else a fresh build of its own."""
    if (guest.DEFAULT_BOOT_DIR / guest.KERNEL).exists():
        return guest.build()
    return guest.build(tmp_path_factory.mktemp("boot"))


@dataclass
class BootedGuest:
    qemu: subprocess.Popen
    console: Path
    disk: Path
    qmp: Path
    stderr: Path

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def heartbeats(self) -> list[guest.Heartbeat]:
        return guest.parse_console(self.text())

    def explain(self) -> str:
        return (f"console ends:\n{self.text()[-1500:]}\nQEMU {'still runs' if self.qemu.poll() is None else 'exited'}"
                f"; its stderr:\n{self.stderr.read_text(errors='replace')[-1500:]}")


@contextlib.contextmanager
def booting(boot_dir: Path, directory: Path) -> Iterator[BootedGuest]:
    """A guest with a 1 MiB raw disk whose first sector holds a marker left by an earlier boot."""
    disk = directory / "disk.img"
    disk.write_bytes((PREVIOUS_MARKER + "\n").encode().ljust(512, b"\0"))
    os.truncate(disk, 1024 * 1024)
    console, qmp, stderr = directory / "console.log", directory / "qmp.sock", directory / "qemu.stderr"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nographic", "-nic", "none",
            "-kernel", str(boot_dir / guest.KERNEL), "-initrd", str(boot_dir / guest.INITRD),
            "-append", guest.CMDLINE, "-serial", f"file:{console}", "-qmp", f"unix:{qmp},server,nowait",
            "-drive", f"file={disk},format=raw,if=virtio"]
    with open(stderr, "wb") as errors:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        yield BootedGuest(qemu, console, disk, qmp, stderr)
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()


@pytest.fixture(scope="module")
def booted(boot_dir, tmp_path_factory) -> Iterator[BootedGuest]:
    """One guest the module's tests share; none of them stops it."""
    with booting(boot_dir, tmp_path_factory.mktemp("guest")) as guest_booted:
        yield guest_booted


def qmp_command(path: Path, command: str) -> dict:
    """One QMP command's reply (events before it are skipped)."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(path))
        stream = connection.makefile("rw")
        assert "QMP" in json.loads(stream.readline())
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "event" in (reply := json.loads(stream.readline())):
                pass
            assert "return" in reply, reply
        return reply


def first_heartbeat(booted: BootedGuest) -> guest.Heartbeat:
    beats = eventually(booted.heartbeats, BOOT_TIMEOUT, interval=0.1)
    assert beats, f"no heartbeat within {BOOT_TIMEOUT} s; {booted.explain()}"
    return beats[0]


def test_build_is_cheap_and_leaves_a_built_image_alone(boot_dir):
    before = {name: (boot_dir / name).stat() for name in (guest.KERNEL, guest.INITRD)}
    assert guest.build(boot_dir) == boot_dir
    for name, stat in before.items():
        after = (boot_dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{name} was rewritten"


def test_guest_boots_and_reads_the_marker_an_earlier_boot_left(booted):
    beat = first_heartbeat(booted)
    text = booted.text()
    assert f"pvc-guest: boot {beat.boot_id}" in text
    assert f"pvc-guest: disk marker found {PREVIOUS_MARKER}" in text, booted.explain()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", beat.boot_id)


def test_heartbeat_counter_increases_within_one_boot(booted):
    first = first_heartbeat(booted)
    later = eventually(lambda: [beat for beat in booted.heartbeats() if beat.counter > first.counter], 10)
    assert later, f"the counter stayed at {first.counter}; {booted.explain()}"
    assert {beat.boot_id for beat in booted.heartbeats()} == {first.boot_id}, "the guest booted again"
    counters = [beat.counter for beat in booted.heartbeats()]
    assert counters == list(range(1, len(counters) + 1))


def test_guest_reads_back_what_it_wrote_and_the_host_file_holds_it(booted):
    boot_id = first_heartbeat(booted).boot_id
    lines = eventually(lambda: DISK_LINE.findall(booted.text()), 10)
    assert lines, f"no disk line; {booted.explain()}"
    for counter, read in lines:
        assert read == f"pvc-marker {boot_id} {counter}", f"wrote {counter}, read back {read!r}"
    sector = booted.disk.read_bytes()[:512]
    text, _, padding = sector.partition(b"\n")
    marker, guest_boot, host_counter = text.decode().split(" ")
    assert (marker, guest_boot) == ("pvc-marker", boot_id)
    assert int(host_counter) >= int(lines[-1][0])
    assert padding == b"\0" * (511 - len(text)), "the marker is padded with NULs to one sector"


def test_power_button_shuts_the_guest_down(boot_dir, tmp_path):
    """A guest of its own: it is gone afterwards."""
    with booting(boot_dir, tmp_path) as booted:
        first_heartbeat(booted)
        assert not guest.powered_off_cleanly(booted.text())
        qmp_command(booted.qmp, "system_powerdown")
        try:
            booted.qemu.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"QEMU still runs 10 s after the power button; {booted.explain()}")
        assert booted.qemu.returncode == 0
        assert guest.powered_off_cleanly(booted.text()), booted.explain()


def test_domain_xml_names_the_volume_and_no_host_path():
    xml = guest.domain_xml("tiny", memory_mib=96, disk="pool1/disk-1")
    root = etree.fromstring(xml)
    assert root.get("type") == "qemu"
    assert (root.findtext("name"), root.find("memory").get("unit"), root.findtext("memory")) == ("tiny", "MiB", "96")
    assert root.findtext("vcpu") == "1"
    assert (root.findtext("os/kernel"), root.findtext("os/initrd")) == (guest.KERNEL, guest.INITRD)
    assert root.findtext("os/cmdline") == guest.CMDLINE
    assert root.find("features/acpi") is not None and root.findtext("on_poweroff") == "destroy"
    source = root.find("devices/disk[@type='volume']/source")
    assert (source.get("pool"), source.get("volume")) == ("pool1", "disk-1")
    assert root.find("devices/disk/target").attrib == {"dev": "vda", "bus": "virtio"}
    assert root.find("devices/serial[@type='file']/source") is None, "the node gives the console its path"
    assert root.find("devices/graphics") is None and root.find("devices/interface") is None
    values = [element.text or "" for element in root.iter()] + \
        [value for element in root.iter() for value in element.attrib.values()]
    assert not [value for value in values if "/" in value and value != "pool1/disk-1"], "no host path"
    assert stored_domain.parse(xml).volumes == ["pool1/disk-1"], "PVC accepts it as it is"
    assert etree.fromstring(guest.domain_xml("bare", domain_type="kvm")).find("devices/disk") is None
    with pytest.raises(ValueError):
        guest.domain_xml("bad", disk="no-pool")


def test_probe_accelerator_answers_from_its_cache_the_second_time(boot_dir, tmp_path, mocker):
    answer = guest.probe_accelerator(boot_dir, cache_dir=tmp_path, deadline=5.0)
    assert answer in ("kvm", "tcg")
    if not os.path.exists("/dev/kvm"):
        assert answer == "tcg"
    spawned = mocker.spy(subprocess, "Popen")
    assert guest.probe_accelerator(boot_dir, cache_dir=tmp_path, deadline=5.0) == answer
    probes = [call.args[0] for call in spawned.call_args_list if "-accel" in call.args[0]]
    assert probes == [], "no probe guest was booted the second time (asking QEMU its version is all)"
    probes = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_probe(pid, boot_dir)]
    assert not probes, "the probe's QEMU was killed"


def _is_probe(pid: str, boot_dir: Path) -> bool:
    """Whether pid is a live QEMU booting this image under KVM (the probe; the other tests use TCG)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and str(boot_dir / guest.KERNEL) in argv and "kvm" in argv
