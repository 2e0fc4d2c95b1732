"""The lab network of a local cluster: a network namespace per member, joined to a lab bridge by a veth pair.

Every simulated host (its pvcnoded, libvirtd and guests), every coordinator and every ZooKeeper server of a lab
cluster lives in a network namespace of its own with one link-local address on its ``eth0``; the other end of
that veth pair sits on the lab bridge in the root namespace. The bridge itself holds the lab's first address
(the gateway): the root namespace's clients (a user, a test), the BMCs and a private Ceph are reached there, so
a host cut off from the lab still has a BMC the leader can fence it through, as on a real management network.

Faults are link operations on the root side, which is what a pulled cable or a dead switch port does:

- `cut` / `heal`: one member's veth down / up (every packet both ways is dropped);
- `isolate`: several members' veths moved to a second bridge (the island), so they reach each other and
  nothing else; `heal_all` puts every veth back on the lab bridge, up;
- `sever`: one member cut off from some members only (a coordinator from the ZooKeeper servers, say), by
  packet filters in its own namespace that drop everything to and from their addresses.

Names and addresses belong to one cluster: a prefix (``pl`` and 4 hex digits) names its namespaces
(``PREFIX-hv1``), its bridges (``PREFIXb0``, ``PREFIXb1``) and the root sides of its veths (``PREFIXh1``:
interface names hold at most 15 characters), and a free /24 in 169.254.0.0/16 (never 169.254.169.0/24, where a
metadata address may live) holds its addresses. Both are picked under a machine-wide lock, so two clusters
(two test sessions) run side by side; `remove` deletes everything with the prefix, also what a crashed run
left. A blackhole route for the /24 behind the bridge's own keeps lab traffic on the machine whatever state the
bridge is in.

Each lab is registered (``/run/pvc-local-labs/PREFIX``) with the state directory that owns it, and making a
lab first removes the labs whose owner is gone (a test session killed before its teardown, whose temporary
directory was deleted since) or whose owner's state file now names another lab.
"""
from __future__ import annotations

import fcntl
import json
import re
import secrets
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pvc.errors import InvalidInput

LOCK_PATH = Path("/run/lock/pvc-local-lab.lock")
REGISTRY = Path("/run/pvc-local-labs")
RESERVED_OCTETS = frozenset({0, 169, 254, 255})
"""Third octets never used: the /16's edges, and 169.254.169.0/24 (cloud metadata services)."""
BLACKHOLE_METRIC = 4000

_MEMBER = re.compile(r"^(hv|pvcapid|zk)([1-9][0-9]?)$")
_FIRST_HOST = {"zk": 10, "pvcapid": 30, "hv": 100}
"""Each member's address is 169.254.OCTET.(first + index): ZooKeeper servers .11-, coordinators .31-, hosts
.101-.199."""
MAX_NODES = 99
_LIMIT = {"zk": 19, "pvcapid": 9, "hv": MAX_NODES}
_TAG = {"zk": "z", "pvcapid": "c", "hv": "h"}


class LabError(RuntimeError):
    """An `ip` command of the lab failed; the message names the command and ip's reason."""


def ip(*arguments: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=15,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Member:
    """One lab member: `name` (hv1, pvcapid1, zk1), its namespace, the root side of its veth, its address."""
    name: str
    netns: str
    veth: str
    address: str


@dataclass(frozen=True)
class Lab:
    """One cluster's lab: its names come from `prefix`, its addresses from 169.254.`octet`.0/24."""
    prefix: str
    octet: int

    # -- names and addresses ----------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """What the cluster's state file records, so a later process (`down`, a crashed run's `up`) finds it."""
        return {"prefix": self.prefix, "octet": self.octet}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Lab:
        return cls(state["prefix"], int(state["octet"]))

    @property
    def subnet(self) -> str:
        return f"169.254.{self.octet}.0/24"

    @property
    def gateway(self) -> str:
        """The lab bridge's own address in the root namespace: where clients, BMCs and Ceph are reached."""
        return f"169.254.{self.octet}.1"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}b0"

    @property
    def island(self) -> str:
        """The second bridge, for members cut off together from the rest (`isolate`)."""
        return f"{self.prefix}b1"

    def member(self, name: str) -> Member:
        match = _MEMBER.match(name)
        if not match or int(match[2]) > _LIMIT[match[1]]:
            raise InvalidInput(f"{name!r} is not a lab member (hv1-hv99, pvcapid1-pvcapid9, zk1-zk19)")
        kind, index = match[1], int(match[2])
        return Member(name, f"{self.prefix}-{name}", f"{self.prefix}{_TAG[kind]}{index}",
                      f"169.254.{self.octet}.{_FIRST_HOST[kind] + index}")

    def address(self, name: str) -> str:
        return self.member(name).address

    def netns(self, name: str) -> str:
        return self.member(name).netns

    def members(self) -> list[Member]:
        """The members whose namespace exists now."""
        prefix = f"{self.prefix}-"
        return [self.member(name.removeprefix(prefix)) for name in _netns_names() if name.startswith(prefix)]

    # -- making and removing ------------------------------------------------------------------------------

    @classmethod
    def create(cls, owner: Path) -> Lab:
        """A new lab for the cluster whose state directory is `owner`: free prefix and /24, its two bridges and
        the blackhole route; nothing is left on failure."""
        with _machine_lock():
            _remove_orphans()
            lab = cls(_free_prefix(), _free_octet())
            REGISTRY.mkdir(parents=True, exist_ok=True)
            (REGISTRY / lab.prefix).write_text(json.dumps({**lab.state, "owner": str(Path(owner).absolute())}))
            try:
                for bridge in (lab.bridge, lab.island):
                    ip("link", "add", bridge, "type", "bridge")
                ip("addr", "add", f"{lab.gateway}/24", "dev", lab.bridge)
                ip("route", "add", "blackhole", lab.subnet, "metric", str(BLACKHOLE_METRIC))
                for bridge in (lab.bridge, lab.island):
                    ip("link", "set", bridge, "up")
            except BaseException:
                lab.remove()
                raise
        return lab

    def add(self, name: str) -> Member:
        """The member's namespace and veth pair, its address on `eth0`, its root side on the lab bridge."""
        member = self.remove_member(name)
        ip("netns", "add", member.netns)
        ip("link", "add", member.veth, "type", "veth", "peer", "name", "eth0", "netns", member.netns)
        ip("link", "set", member.veth, "master", self.bridge, "up")
        ip("-n", member.netns, "addr", "add", f"{member.address}/24", "dev", "eth0")
        ip("-n", member.netns, "link", "set", "eth0", "up")
        ip("-n", member.netns, "link", "set", "lo", "up")
        return member

    def remove_member(self, name: str) -> Member:
        """The member's namespace and veth pair, gone (a leftover, or a node that could not join)."""
        member = self.member(name)
        ip("netns", "del", member.netns, check=False)
        ip("link", "del", member.veth, check=False)
        return member

    def release(self, owner: Path) -> list[str]:
        """`remove` the lab unless the registry says it now belongs to another state directory than `owner`
        (a prefix a removed lab had may since have been given to another cluster)."""
        try:
            registered = json.loads((REGISTRY / self.prefix).read_text())
        except (OSError, ValueError):
            registered = {}
        if registered.get("owner", str(Path(owner).absolute())) != str(Path(owner).absolute()) or \
                registered.get("octet", self.octet) != self.octet:
            return []
        return self.remove()

    def remove(self) -> list[str]:
        """Delete every namespace, link and route with this lab's names; returns what was there."""
        removed = []
        prefix = f"{self.prefix}-"
        for netns in _netns_names():
            if netns.startswith(prefix):
                ip("netns", "del", netns, check=False)
                removed.append(netns)
        for link in _link_names():
            if link.startswith(self.prefix):
                ip("link", "del", link, check=False)
                removed.append(link)
        if f"blackhole {self.subnet}" in ip("route", "show", "table", "main", check=False):
            ip("route", "del", "blackhole", self.subnet, "metric", str(BLACKHOLE_METRIC), check=False)
            removed.append(f"route {self.subnet}")
        (REGISTRY / self.prefix).unlink(missing_ok=True)
        return removed

    # -- faults ------------------------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Pull the member's cable: its veth goes down on the root side, and nothing passes either way."""
        ip("link", "set", self.member(name).veth, "down")

    def heal(self, name: str) -> None:
        """Plug the member back into the lab bridge (from a cut, an island or a `sever`)."""
        member = self.member(name)
        ip("link", "set", member.veth, "master", self.bridge, "up")
        self._filter(name, "-F", "INPUT")
        self._filter(name, "-F", "OUTPUT")

    def sever(self, name: str, peers: Iterable[str]) -> None:
        """Cut the member off from `peers` only: nothing passes between it and them, either way, while both
        still reach everyone else."""
        for peer in peers:
            address = self.address(peer)
            self._filter(name, "-A", "INPUT", "-s", address, "-j", "DROP")
            self._filter(name, "-A", "OUTPUT", "-d", address, "-j", "DROP")

    def severed_from(self, name: str) -> list[str]:
        """The addresses `sever` cut the member off from."""
        rules = self._filter(name, "-S", "OUTPUT")
        return re.findall(r"-A OUTPUT -d ([0-9.]+)/32 -j DROP", rules)

    def _filter(self, name: str, *rule: str) -> str:
        result = subprocess.run(self.command(name, ["iptables", "-w", *rule]), capture_output=True, text=True,
                                timeout=15, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise LabError(f"iptables {' '.join(rule)} in {self.netns(name)}: {result.stderr.strip()}")
        return result.stdout

    def isolate(self, names: Iterable[str]) -> None:
        """Cut `names` off from the rest together: they still reach each other (on the island bridge), nothing
        else reaches them."""
        for name in names:
            ip("link", "set", self.member(name).veth, "master", self.island, "up")

    def heal_all(self) -> None:
        """Every member back on the lab bridge, its link up."""
        for member in self.members():
            self.heal(member.name)

    def link_state(self, name: str) -> str:
        """``up``, ``cut``, ``isolated`` or ``severed from ADDRESS, ...``: what `cut`, `isolate`, `sever` and
        `heal` last did to the member."""
        details = ip("-o", "link", "show", self.member(name).veth)
        if f"master {self.island}" in details:
            return "isolated"
        if ",UP" not in details and "<UP" not in details:
            return "cut"
        severed = self.severed_from(name)
        return f"severed from {', '.join(severed)}" if severed else "up"

    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run inside the member's namespace (``ip netns exec`` execs it: its pid is the program's)."""
        return ["ip", "netns", "exec", self.netns(name), *argv]


def _remove_orphans() -> None:
    """Remove the registered labs whose owning state directory is gone or names another lab now."""
    for entry in REGISTRY.glob("pl*") if REGISTRY.is_dir() else ():
        try:
            registered = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        state_file = Path(registered["owner"]) / "cluster.json"
        try:
            named = json.loads(state_file.read_text()).get("lab") if state_file.exists() else None
        except (OSError, ValueError):
            continue
        owner_gone = not Path(registered["owner"]).exists()
        if owner_gone or (named and named.get("prefix") != registered["prefix"]):
            Lab.from_state(registered).remove()


def _netns_names() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]


def _link_names() -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show", check=False).splitlines()]


def _free_prefix() -> str:
    taken = _netns_names() + _link_names()
    for _attempt in range(100):
        prefix = f"pl{secrets.token_hex(2)}"
        if not any(name.startswith(prefix) for name in taken):
            return prefix
    raise LabError("no free lab prefix")


def _free_octet() -> int:
    """A third octet of 169.254.0.0/16 that no address or route of the root namespace uses (another lab's bridge
    address and blackhole route are both there)."""
    used = ip("-o", "addr", "show") + ip("route", "show", "table", "all")
    taken = {int(octet) for octet in re.findall(r"169\.254\.(\d+)\.", used)}
    if re.search(r"169\.254\.0\.0/16", used):
        raise LabError("the root namespace routes all of 169.254.0.0/16: no /24 of it is free for a lab")
    free = [octet for octet in range(1, 254) if octet not in taken and octet not in RESERVED_OCTETS]
    if not free:
        raise LabError("no free /24 in 169.254.0.0/16")
    return free[secrets.randbelow(len(free))]


@contextmanager
def _machine_lock() -> Iterator[None]:
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
