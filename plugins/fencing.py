"""The built-in fencing policies: ``ipmi`` (power), ``ceph-blocklist`` (I/O) and ``none``.

Each is one level of a node's fencing chain (see `pvc.hookspecs.FencingPolicy`) and reports only what it has
proven: ``ipmi`` that the BMC says the chassis is off, ``ceph-blocklist`` that Ceph refuses every client
instance the node had on its VMs' volumes, ``none`` nothing at all.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pvc
from pvc.hookspecs import FenceResult

IPMI_COMMAND_TIMEOUT = 10.0
"""Seconds one ipmitool call may take; an unreachable BMC gives up after 2 s with ``-N 1 -R 1``."""
POWER_IS_OFF = "Chassis Power is off"
"""What ipmitool prints for a chassis that is off (capital P; compared case-insensitively, whole line)."""

BMC_CREDENTIAL_OPTIONS = ("user", "password", "cipher_suite")
"""The ipmi level's options that may apply to every node's BMC; its address (``host``, ``port``) never does."""
BMC_ADDRESS_OPTIONS = ("host", "port")

CEPH_COMMAND_TIMEOUT = 20.0
BLOCKLIST_EXPIRE_SECONDS = 10 * 365 * 24 * 3600
"""Ceph forgets a blocklist entry after its expiry (one hour by default); ours last until `unfence`."""
BLOCKLIST_RECORD_PREFIX = "pvc/fencing/ceph-blocklist"
"""Where in Ceph's config-key store the entries added for a node are recorded, so `unfence` (maybe run by
another coordinator) removes exactly those."""
CEPH_HELPER = Path(__file__).with_name("ceph_fence_helper.py")


def time_left(deadline: float) -> float:
    return deadline - time.monotonic()


# -- ipmi ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BMC:
    """A node's IPMI BMC as ipmitool reaches it over the network (``-I lanplus``).

    The password goes to ipmitool through its environment (``-E``), never on its command line, where every
    user of the machine could read it."""

    host: str
    port: int = 623
    user: str | None = None
    password: str | None = None
    cipher_suite: int = 3
    """3 answers at once; without ``-C`` ipmitool first tries suites the BMC may ignore, ~10 s each call."""

    @classmethod
    def of(cls, node: Mapping[str, Any], options: Mapping[str, Any]) -> BMC | None:
        """The BMC in the node's record (``bmc``: host, port, user, password), its credentials overridden by
        the same keys in `options`; None when the node names no BMC host.

        The address (host and port) is always the node's own: `options` are the whole cluster's, and an
        address in them would have every node's fence power off one host."""
        own = node.get("bmc") or {}
        merged = {**own, **{key: options[key] for key in BMC_CREDENTIAL_OPTIONS if key in options},
                  "host": own.get("host"), "port": own.get("port")}
        if not merged.get("host"):
            return None
        return cls(merged["host"], int(merged.get("port") or 623), merged.get("user"), merged.get("password"),
                   int(merged.get("cipher_suite") or 3))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def ipmitool(self, *command: str, timeout: float = IPMI_COMMAND_TIMEOUT) -> tuple[bool, str]:
        """Run one ipmitool command: ``(succeeded, its output)``, or on failure ``(False, why)``: ipmitool's
        own last words, or that it did not answer within `timeout` seconds."""
        argv = ["ipmitool", "-v", "-I", "lanplus", "-C", str(self.cipher_suite), "-N", "1", "-R", "1",
                "-H", self.host, "-p", str(self.port)]
        if self.user is not None:
            argv += ["-U", self.user]
        env = dict(os.environ)
        if self.password is not None:
            argv.append("-E")
            env["IPMI_PASSWORD"] = env["IPMITOOL_PASSWORD"] = self.password
        if timeout <= 0:
            return False, "no time left before the fencing deadline"
        try:
            result = subprocess.run([*argv, *command], capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL, env=env)
        except FileNotFoundError:
            return False, "ipmitool is not installed"
        except subprocess.TimeoutExpired:
            return False, f"ipmitool gave no answer within {timeout:.1f} s"
        if result.returncode != 0:
            return False, _ipmitool_failure(result.stderr) or f"ipmitool exit status {result.returncode}"
        return True, result.stdout.strip()

    def power_status(self, timeout: float = IPMI_COMMAND_TIMEOUT) -> tuple[bool, str]:
        """``(answered, "Chassis Power is on|off")``, or ``(False, why)``."""
        return self.ipmitool("chassis", "power", "status", timeout=timeout)


class IpmiPolicy:
    """Power the node off through its BMC, then read the chassis power status until it says off.

    Options (each optional; the credentials override the node record's ``bmc``, whose address is always the
    node's own): ``user``, ``password``, ``cipher_suite``; ``power_off_attempts`` (1: ipmitool itself sends
    each request twice), ``status_checks`` (5) and ``status_interval`` seconds between them (0.5);
    ``command_timeout`` per ipmitool call (10 s); ``power_on_after`` (false): power the node on again once it
    is proven off, as a real host reboots (it comes back with no VM running).

    A failed fence says whether the BMC answered at all (`FenceResult.device_answered`, `BMCAnswers`).

    The status must be the whole line ``Chassis Power is off``, compared without regard to case (upstream
    PVC compared with "Chassis power is off" and so judged every successful fence failed)."""

    description = "power the node off through its IPMI BMC (ipmitool -I lanplus) and confirm it is off"
    kind = "power"

    def fence(self, node: Mapping[str, Any], options: Mapping[str, Any], deadline: float) -> FenceResult:
        bmc = BMC.of(node, options)
        name = node.get("name", "?")
        if bmc is None:
            return FenceResult.failed(f"node {name} has no BMC address (bmc_host in its pvcnoded.yaml)")
        started = time.monotonic()
        command_timeout = float(options.get("command_timeout", IPMI_COMMAND_TIMEOUT))
        heard = BMCAnswers()

        def bounded() -> float:
            return min(command_timeout, time_left(deadline))

        why = "not tried"
        for _attempt in range(max(1, int(options.get("power_off_attempts", 1)))):
            powered_off, why = heard.note(*bmc.ipmitool("chassis", "power", "off", timeout=bounded()))
            if powered_off or time_left(deadline) <= 0:
                break
        # A power-off whose answer was lost (a slow BMC; ipmitool's retry then finds no matching request) may
        # still have been carried out: only the power status decides. A BMC still carrying it out answers the
        # status only once it is done, so it is asked as often as after a power off it acknowledged; one that
        # never opened a session (unreachable, credentials refused) cannot have done it and is asked once.

        said = "nothing"
        sent = powered_off or any(sign in why for sign in ANSWER_LOST_SIGNS)
        checks = max(1, int(options.get("status_checks", 5))) if sent else 1
        for check in range(checks):
            answered, said = heard.note(*bmc.power_status(timeout=bounded()))
            if answered and said.strip().casefold() == POWER_IS_OFF.casefold():
                took = time.monotonic() - started
                reason = f"IPMI {bmc}: chassis powered off; 'chassis power status' says '{said}' ({took:.2f} s)"
                if options.get("power_on_after"):
                    turned_on, how = bmc.ipmitool("chassis", "power", "on", timeout=bounded())
                    reason += "; powered on again" if turned_on else f"; powering it on again failed: {how}"
                return FenceResult.off(reason, bmc=str(bmc), seconds=round(took, 3))
            if check + 1 < checks:
                time.sleep(max(0.0, min(float(options.get("status_interval", 0.5)), time_left(deadline))))
            if time_left(deadline) <= 0:
                break
        if not powered_off:
            return FenceResult.failed(f"IPMI {bmc}: chassis power off failed: {why}; 'chassis power status' "
                                      f"said {said!r}{heard.summary()}", device_answered=heard.answered,
                                      bmc=str(bmc))
        return FenceResult.failed(f"IPMI {bmc}: chassis power off was accepted, but 'chassis power status' "
                                  f"then said {said!r}, not {POWER_IS_OFF!r}", device_answered=True, bmc=str(bmc))


ANSWER_LOST_SIGNS = ("Unable to set Chassis Power Control",)
"""How ipmitool says that it sent a power request in an open session but no matching answer came back: the BMC
may be carrying it out."""

UNANSWERED_SIGNS = ("Get Auth Capabilities error", "Error issuing Get Channel Authentication Capabilities",
                    "gave no answer within")
"""How ipmitool says that nothing answered at all: its first request of a session went unanswered (-v), or it
did not finish in time. Every other failure (refused credentials, "RAKP 2 HMAC is invalid", "unauthorized
name", a rejected command) is an answer from the BMC."""
LOCAL_FAILURES = ("ipmitool is not installed", "no time left before the fencing deadline")
"""Failures that say nothing about the BMC."""


class BMCAnswers:
    """Whether a BMC answered any of the ipmitool calls of one fence: `answered` is True once one did, False
    while each call went unanswered (the evidence a BMC without power gives), None when some call said
    nothing about the BMC and none was answered."""

    def __init__(self):
        self.answered: bool | None = False

    def note(self, succeeded: bool, text: str) -> tuple[bool, str]:
        if succeeded or not (any(sign in text for sign in UNANSWERED_SIGNS) or text in LOCAL_FAILURES):
            self.answered = True
        elif text in LOCAL_FAILURES and self.answered is False:
            self.answered = None
        return succeeded, text

    def summary(self) -> str:
        if self.answered:
            return " (the BMC answered: the node may be running)"
        if self.answered is False:
            return " (the BMC did not answer at all)"
        return ""


# -- none ----------------------------------------------------------------------------------------------------


class NoFencing:
    """For nodes without any fencing device: every fence fails, so nothing is recovered until an
    administrator has made sure the node is off and says so (``pvc node fence-confirm``)."""

    description = "never fence: an administrator confirms by hand that the node is off"
    kind = "power"

    def fence(self, node: Mapping[str, Any], options: Mapping[str, Any], deadline: float) -> FenceResult:
        return FenceResult.failed("fencing disabled: an administrator must confirm the node is off")


# -- ceph-blocklist ------------------------------------------------------------------------------------------


class CephBlocklistPolicy:
    """Blocklist, in Ceph's OSD map, every client instance that watches or holds the lock of the node's VMs'
    RBD images, so that those clients can never write again, even if the node still runs.

    Only those client instances (``ADDRESS:PORT/NONCE``) are blocklisted, never a whole address: other hosts
    may share it (every host of the local cluster is 127.0.0.1), and a client started afterwards, such as the
    recovered VM's, is a new instance. Lock holders count as well as watchers: a dead client's watch expires
    after 30 s, its exclusive lock stays.

    Finding no client proves nothing (the node may hold clients this fence cannot see, or open them a moment
    later): the level then fails.

    The entries are recorded in Ceph's config-key store, so that `unfence` removes exactly them, whichever
    coordinator runs it. A repeated fence of a node whose entries are recorded (its recovery retried, or the
    node fenced again before `node ready`) blocklists the recorded instances again, and every client
    instance connected now, on any RBD image, from the node's own address (``address`` in its record, else
    its node agent's host), never those on its VMs' volumes from elsewhere, which may be the VMs already
    recovered. A node whose address is loopback (shared by every host of a local cluster on one machine) or
    unknown cannot be told from the other hosts: the repeated fence then fails, saying so. The entries and
    their record are written at once (one monitor round); the record is marked complete only if every entry
    was added.

    Ceph is asked through one librados client (`ceph_fence_helper.py`, run by the interpreter of the ``ceph``
    command): the ``ceph`` command takes about a second per blocklist entry, ``rbd status`` a process per
    image. A fence takes two helper runs (a repeated one three), under a second for any number of volumes and
    clients.

    Options: ``ceph_conf`` (/etc/ceph/ceph.conf), ``ceph_id`` (the cephx user, default admin),
    ``expire_seconds`` (ten years), ``record_prefix`` (`BLOCKLIST_RECORD_PREFIX`; distinct per PVC cluster
    sharing one Ceph), ``ceph_python`` (the interpreter with the ``rados`` and ``rbd`` modules; default: the
    ``ceph`` command's)."""

    description = "blocklist the node's Ceph client instances on its VMs' RBD images (storage fence)"
    kind = "io"

    def fence(self, node: Mapping[str, Any], options: Mapping[str, Any], deadline: float) -> FenceResult:
        ceph = _Ceph(options, deadline)
        name = node["name"]
        volumes = sorted(set(node.get("volumes") or []))
        address = node_address(node)
        refusal = None
        try:
            record, found, absent = ceph.record_and_clients(name, volumes)
            repeated = bool(record and record.get("complete"))
            if repeated:
                # The clients on its VMs' volumes now may be the recovered VMs elsewhere: only those connected
                # from the node's own address are its own.
                refusal = unusable_address(name, address)
                connected = set() if refusal else {client for client in ceph.record_and_clients(
                    name, [], every_image=True)[1] if client_ip(client) == address}
                addresses = sorted(set(record["addresses"]) | connected)
            else:
                addresses = sorted(found | set((record or {}).get("addresses", [])))
            if not addresses:
                absent_note = f" ({len(absent)} of them not in Ceph: {', '.join(absent)})" if absent else ""
                return FenceResult.failed(
                    f"no Ceph client of node {name} was found to blocklist (on the {len(volumes)} RBD volume(s) of "
                    f"its VMs{absent_note}"
                    + (f", nor connected from its address {address}" if repeated and refusal is None else "")
                    + (f"; {refusal}" if refusal else "")
                    + "): finding none proves nothing about the node", addresses=[])
            failures = ceph.blocklist_and_record(name, addresses, float(options.get("expire_seconds",
                                                                                    BLOCKLIST_EXPIRE_SECONDS)))
        except CephFenceError as error:
            return FenceResult.failed(f"Ceph blocklist of node {name}: {error}")
        if failures:
            return FenceResult.failed(f"Ceph refused to blocklist {len(failures)} of node {name}'s client "
                                      f"instances: {'; '.join(failures)}", addresses=addresses)
        if refusal:
            return FenceResult.failed(f"the Ceph client instances of node {name} that an earlier fence found are "
                                      f"blocklisted again ({_listing(addresses)}), but a repeated fence must also "
                                      f"cut the clients connected since: {refusal}", addresses=addresses)
        if repeated:
            return FenceResult.isolated(f"the Ceph client instances of node {name} that an earlier fence found, and "
                                        f"those connected now from its address {address}, are blocklisted: "
                                        f"{_listing(addresses)}", addresses=addresses)
        absent_note = f" ({len(absent)} of them not in Ceph: {', '.join(absent)})" if absent else ""
        return FenceResult.isolated(f"Ceph blocklisted {len(addresses)} client instance(s) of node {name} on "
                                    f"its {len(volumes)} RBD volume(s){absent_note}: {_listing(addresses)}",
                                    addresses=addresses)

    def unfence(self, node: Mapping[str, Any], options: Mapping[str, Any], deadline: float) -> tuple[bool, str]:
        ceph = _Ceph(options, deadline)
        name = node["name"]
        try:
            record, _found, _absent = ceph.record_and_clients(name, [])
            if record is None:
                return True, f"no Ceph blocklist entries are recorded for node {name}"
            failures = ceph.unblocklist(record["addresses"])
            if failures:
                return False, f"removing node {name}'s Ceph blocklist entries failed: {'; '.join(failures)}"
            ceph.remove_record(name)
        except CephFenceError as error:
            return False, f"removing node {name}'s Ceph blocklist entries failed: {error}"
        return True, f"removed {len(record['addresses'])} Ceph blocklist entries of node {name}"


class CephFenceError(Exception):
    pass


class _Ceph:
    """The Ceph cluster of one fence, asked through `CEPH_HELPER`, each run bounded by the deadline."""

    def __init__(self, options: Mapping[str, Any], deadline: float):
        self.conf = os.path.abspath(options.get("ceph_conf") or "/etc/ceph/ceph.conf")
        self.user = options.get("ceph_id")
        self.deadline = deadline
        self.prefix = options.get("record_prefix") or BLOCKLIST_RECORD_PREFIX
        self.python = options.get("ceph_python")

    def key(self, node: str) -> str:
        return f"{self.prefix}/{node}"

    def record_and_clients(self, node: str, volumes: list[str],
                           every_image: bool = False) -> tuple[dict | None, set[str], list[str]]:
        """The node's blocklist record (None if there is none), the addresses of every client watching or
        locking one of `volumes` (with `every_image`, any RBD image of the cluster), and the volumes Ceph does
        not have."""
        images, [answer] = self.ask(volumes, [{"prefix": "config-key get", "key": self.key(node)}], every_image)
        if answer["rc"] not in (0, -2):
            raise CephFenceError(f"reading the blocklist record failed: {answer['status']}")
        record = json.loads(answer["output"]) if answer["rc"] == 0 else None
        addresses: set[str] = set()
        absent = []
        for image, clients in images.items():
            if clients is None:
                if image in volumes:
                    absent.append(image)
            elif "error" in clients:
                raise CephFenceError(f"listing the clients of {image} failed: {clients['error']}")
            else:
                addresses.update(clients["watchers"], clients["lockers"])
        return record, addresses, absent

    def blocklist_and_record(self, node: str, addresses: list[str], expire_seconds: float) -> list[str]:
        """Blocklist every address and record them as the node's, all at once; the failures. When one is
        refused the record is written again, marked incomplete, so that the next fence looks again."""
        record = {"addresses": addresses, "complete": True, "time": time.time()}
        _images, answers = self.ask([], [
            *({"prefix": "osd blocklist", "blocklistop": "add", "addr": address, "expire": float(expire_seconds)}
              for address in addresses),
            {"prefix": "config-key set", "key": self.key(node), "val": json.dumps(record)}])
        failures = [f"{address}: {answer['status']}" for address, answer in zip(addresses, answers)
                    if answer["rc"] != 0]
        if failures:
            self._checked(self.ask([], [{"prefix": "config-key set", "key": self.key(node),
                                         "val": json.dumps({**record, "complete": False})}])[1][0],
                          "recording the blocklist entries")
        else:
            self._checked(answers[-1], "recording the blocklist entries")
        return failures

    def unblocklist(self, addresses: list[str]) -> list[str]:
        """Remove the entries (one already gone is no failure); the failures."""
        _images, answers = self.ask([], [{"prefix": "osd blocklist", "blocklistop": "rm", "addr": address}
                                         for address in addresses])
        return [f"{address}: {answer['status']}" for address, answer in zip(addresses, answers)
                if answer["rc"] != 0]

    def remove_record(self, node: str) -> None:
        [answer] = self.ask([], [{"prefix": "config-key rm", "key": self.key(node)}])[1]
        if answer["rc"] != -2:
            self._checked(answer, "removing the blocklist record")

    @staticmethod
    def _checked(answer: Mapping[str, Any], what: str) -> None:
        if answer["rc"] != 0:
            raise CephFenceError(f"{what} failed: {answer['status']}")

    def ask(self, images: list[str], commands: list[dict[str, Any]],
            every_image: bool = False) -> tuple[dict[str, Any], list[dict]]:
        """The clients of each image (with `every_image`, of every RBD image too) and the answer to each monitor
        command, asked all at once."""
        if not os.path.exists(self.conf):
            raise CephFenceError(f"no Ceph configuration file {self.conf} (the ceph_conf option)")
        timeout = min(CEPH_COMMAND_TIMEOUT, time_left(self.deadline))
        if timeout <= 0:
            raise CephFenceError("the fencing deadline passed")
        request = {"conf": self.conf, "id": self.user, "timeout": timeout, "images": images,
                   "commands": commands, "every_image": every_image}
        python = self.python or ceph_python()
        try:
            result = subprocess.run([python, str(CEPH_HELPER)], input=json.dumps(request),
                                    capture_output=True, text=True, timeout=timeout + 2)
        except subprocess.TimeoutExpired:
            raise CephFenceError(f"Ceph did not answer within {timeout:.1f} s") from None
        except OSError as error:
            raise CephFenceError(f"cannot run {python}: {error}") from None
        if result.returncode != 0:
            raise CephFenceError(_last_line(result.stderr) or f"exit status {result.returncode}")
        answer = json.loads(result.stdout)
        return answer["images"], answer["answers"]


def node_address(node: Mapping[str, Any]) -> str | None:
    """The address a node publishes in its record: ``address``, else the host its node agent listens on."""
    if node.get("address"):
        return str(node["address"])
    agent_uri = str(node.get("agent_uri") or "")
    if "@" not in agent_uri:
        return None
    host = agent_uri.rsplit("@", 1)[1].rsplit(":", 1)[0]
    return host.strip("[]") or None


def unusable_address(name: str, address: str | None) -> str | None:
    """Why the clients connected from `address` cannot be taken for node `name`'s alone, or None."""
    if not address:
        return f"node {name} publishes no address to tell its Ceph clients by"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"node {name}'s address {address!r} is not an IP address, which Ceph's client addresses are"
    if ip.is_loopback or ip.is_unspecified:
        return (f"node {name}'s address {address} is a loopback address that other hosts share: blocklisting its "
                f"clients could cut other hosts' VMs, so it is refused (give each host an address of its own)")
    return None


def client_ip(instance: str) -> str:
    """The IP address of a Ceph client instance (``[v1:]ADDRESS:PORT/NONCE``, IPv6 in brackets)."""
    address = instance.split("/", 1)[0]
    for prefix in ("v1:", "v2:", "any:"):
        address = address.removeprefix(prefix)
    if address.startswith("["):
        return address[1:address.index("]")]
    return address.rsplit(":", 1)[0]


def ceph_python() -> str:
    """The interpreter the ``ceph`` command runs with: the one Ceph's ``rados`` module is installed for."""
    ceph = shutil.which("ceph")
    if ceph is None:
        raise CephFenceError("the ceph command is not installed")
    first_line = Path(ceph).read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if not first_line.startswith("#!"):
        raise CephFenceError(f"{ceph} names no interpreter; set the ceph_python option")
    return first_line[2:].strip().split()[0]


def _ipmitool_failure(stderr: str) -> str:
    """ipmitool's last two lines of a failure. It ends every failed session with "Unable to establish IPMI
    v2 / RMCP+ session"; with -v the line before says why: "RAKP 2 HMAC is invalid" (a wrong password),
    "unauthorized name" (an unknown user), "Get Auth Capabilities" errors (no answer at all)."""
    lines = [line.strip().removeprefix("> ") for line in stderr.splitlines()
             if line.strip() and not line.startswith(("Loading IANA", "Running Get VSO"))]
    return "; ".join(lines[-2:])


def _listing(addresses: list[str]) -> str:
    return ", ".join(addresses) if addresses else "none"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pvc.hookimpl
def pvc_fencing_policies():
    return {"ipmi": IpmiPolicy(), "ceph-blocklist": CephBlocklistPolicy(), "none": NoFencing()}
