"""Provisioner templates and profiles as ZooKeeper records them and as users see them.

A template or profile is checked whole before it is written, so a record is always usable as it stands:
every error names the field and what is wrong with it, on one line. A profile's components are all optional
when it is made, so that it can be built up in steps; `missing_parts` says what a VM creation still needs.
"""
import ipaddress
import re
from typing import Any, Callable, Mapping

from pvc import schema, sizes
from pvc.errors import InvalidInput

FIRMWARES = ("bios", "efi")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "pcnet")
PROFILE_TYPES = ("provisioner", "ova")
PROFILE_COMPONENTS = ("system_template", "storage_template", "network_template", "user_data", "userdata", "ova",
                      "script", "script_args")
"""``user_data`` is the text itself (our ``--user-data FILE``), ``userdata`` the name of a stored user-data
document (upstream's ``--userdata DOC``); a profile has one or the other."""
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "swap")
DEFAULT_MAC_PREFIX = "52:54:00"
MAX_USER_DATA_BYTES = 256 * 1024
MAX_SCRIPT_BYTES = 256 * 1024
MAX_SCRIPT_ARGS = 32
"""A profile is one znode (ZooKeeper's limit is 1 MiB); cloud-init user data is a script or cloud-config."""
MAX_DISKS = 16
MAX_NICS = 16

DEFAULT_VNC_BIND = "127.0.0.1"
SYSTEM_DEFAULTS: dict[str, Any] = {"serial": True, "vnc": False, "vnc_bind": DEFAULT_VNC_BIND, "firmware": "bios",
                                   "node_limit": [], "node_selector": None, "node_autostart": False,
                                   "migration_method": None}
SYSTEM_FIELDS = ("vcpus", "memory_mib", *SYSTEM_DEFAULTS)

_MAC_OCTET = re.compile(r"[0-9a-f]{2}")


def check_template(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A template record of `kind` from what a user gave, complete and normalised, or `InvalidInput`."""
    schema.templates(kind)
    if not isinstance(spec, Mapping):
        raise InvalidInput(f"a {kind} template is a mapping of its fields, not {type(spec).__name__}")
    return {"system": _system, "storage": _storage, "network": _network}[kind](dict(spec))


def _unknown(kind: str, spec: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise InvalidInput(f"unknown {kind} template field(s): {', '.join(unknown)} (known: {', '.join(known)})")


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"{what} must be a positive whole number, not {value!r}")
    return value


def _flag(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, not {value!r}")
    return value


def _system(spec: dict[str, Any]) -> dict[str, Any]:
    _unknown("system", spec, SYSTEM_FIELDS)
    for needed in ("vcpus", "memory_mib"):
        if spec.get(needed) is None:
            raise InvalidInput(f"a system template needs {needed}")
    record = {**SYSTEM_DEFAULTS, **{key: value for key, value in spec.items() if value is not None}}
    record["vcpus"] = _positive_int("vcpus", record["vcpus"])
    record["memory_mib"] = _positive_int("memory_mib", record["memory_mib"])
    record["serial"] = _flag("serial", record["serial"])
    record["vnc"] = _flag("vnc", record["vnc"])
    record["node_autostart"] = _flag("node_autostart", record["node_autostart"])
    record["vnc_bind"] = check_vnc_bind(record["vnc_bind"])
    if record["firmware"] not in FIRMWARES:
        raise InvalidInput(f"unknown firmware {record['firmware']!r} (one of: {', '.join(FIRMWARES)})")
    limit = record["node_limit"]
    if isinstance(limit, str):
        limit = [part.strip() for part in limit.split(",") if part.strip()]
    if not isinstance(limit, list):
        raise InvalidInput(f"node_limit must be a list of node names, not {limit!r}")
    record["node_limit"] = sorted({schema.check_name("node", node) for node in limit})
    if record["node_selector"] is not None and not isinstance(record["node_selector"], str):
        raise InvalidInput(f"node_selector must be a selector's name, not {record['node_selector']!r}")
    record["node_selector"] = record["node_selector"] or None
    method = record["migration_method"] or None
    if method is not None and method not in schema.MIGRATION_METHODS:
        raise InvalidInput(f"unknown migration method {method!r} (one of: {', '.join(schema.MIGRATION_METHODS)})")
    record["migration_method"] = method
    return record


def check_vnc_bind(address: Any) -> str:
    """The address VNC listens on: loopback, the same on every node a VM may migrate to. Listening on more is
    the node's own libvirt setting (``vnc_listen``), not a VM's: the domain allowlist takes no other."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidInput(f"vnc_bind must be an IP address, not {address!r}") from None
    if not parsed.is_loopback or str(parsed) not in ("127.0.0.1", "::1"):
        raise InvalidInput(f"vnc_bind {address}: a VM's VNC listens on loopback (127.0.0.1 or ::1); listening on "
                           "other addresses is each node's libvirt setting (vnc_listen in qemu.conf)")
    return str(parsed)


def _storage(spec: dict[str, Any]) -> dict[str, Any]:
    disks = _items("storage", spec, "disks", "disks", MAX_DISKS, _disk)
    ids = [disk["disk_id"] for disk in disks if disk.get("disk_id")]
    if len(ids) != len(set(ids)):
        raise InvalidInput(f"a storage template names each disk once, not {', '.join(sorted(ids))}")
    return {"disks": disks}


def _items(kind: str, spec: dict[str, Any], key: str, what: str, most: int,
           check: Callable[[int, Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """A template's list of one to `most` items (disks, NICs), each checked by `check`."""
    _unknown(kind, spec, (key,))
    items = spec.get(key, [])
    if not isinstance(items, list):
        raise InvalidInput(f"a {kind} template's {what} are a list, not {items!r}")
    if len(items) > most:
        raise InvalidInput(f"a {kind} template has at most {most} {what}, not {len(items)}")
    return [check(index, item) for index, item in enumerate(items)]


def _disk(index: int, disk: Any) -> dict[str, Any]:
    what = f"disk {index}"
    if not isinstance(disk, Mapping):
        raise InvalidInput(f"{what} must be a mapping of pool, size and source_volume, not {disk!r}")
    known = ("pool", "size", "size_bytes", "source_volume", "disk_id", "filesystem", "mountpoint")
    unknown = sorted(set(disk) - set(known))
    if unknown:
        raise InvalidInput(f"{what}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
    if not disk.get("pool"):
        raise InvalidInput(f"{what} needs a pool")
    size = disk.get("size_bytes", disk.get("size"))
    source = disk.get("source_volume") or None
    if size is None and source is None:
        raise InvalidInput(f"{what} needs a size, or a source volume to clone")
    checked = {"pool": schema.check_name("pool", disk["pool"]),
               "size_bytes": sizes.parse_size(size, f"{what} size") if size is not None else None,
               "source_volume": schema.check_name("volume", source) if source is not None else None}
    return {**checked, **_disk_filesystem(what, disk)}


def _disk_filesystem(what: str, disk: Mapping[str, Any]) -> dict[str, Any]:
    """Upstream's per-disk fields: its id (``sda``), and the filesystem and mount point an install script makes
    on it."""
    extra = {}
    if disk.get("disk_id"):
        if not re.fullmatch(r"[a-z]{2,3}[a-z]{1,2}", str(disk["disk_id"])):
            raise InvalidInput(f"{what}: disk id {disk['disk_id']!r} is not a device name like sda or vdb")
        extra["disk_id"] = disk["disk_id"]
    filesystem, mountpoint = disk.get("filesystem") or None, disk.get("mountpoint") or None
    if filesystem is not None and filesystem not in FILESYSTEMS:
        raise InvalidInput(f"{what}: unknown filesystem {filesystem!r} (one of: {', '.join(FILESYSTEMS)})")
    if mountpoint is not None:
        if filesystem is None or filesystem == "swap":
            raise InvalidInput(f"{what}: a mount point needs a filesystem to mount")
        if not isinstance(mountpoint, str) or not mountpoint.startswith("/") or ".." in mountpoint.split("/") \
                or any(character < " " for character in mountpoint):
            raise InvalidInput(f"{what}: mount point {mountpoint!r} is not an absolute path")
    if filesystem is not None:
        extra["filesystem"] = filesystem
    if mountpoint is not None:
        extra["mountpoint"] = mountpoint
    return extra


def _network(spec: dict[str, Any]) -> dict[str, Any]:
    return {"nics": _items("network", spec, "nics", "NICs", MAX_NICS, _nic)}


def _nic(index: int, nic: Any) -> dict[str, Any]:
    what = f"NIC {index}"
    if not isinstance(nic, Mapping):
        raise InvalidInput(f"{what} must be a mapping of bridge or network, model and mac_prefix, not {nic!r}")
    unknown = sorted(set(nic) - {"bridge", "network", "model", "mac_prefix", "dhcp_reservation"})
    if unknown:
        raise InvalidInput(f"{what}: unknown field(s) {', '.join(unknown)} (known: bridge, network, model, "
                           "mac_prefix, dhcp_reservation)")
    if bool(nic.get("bridge")) == bool(nic.get("network")):
        raise InvalidInput(f"{what} needs either a bridge or a network (one of them)")
    model = nic.get("model") or "virtio"
    if model not in NIC_MODELS:
        raise InvalidInput(f"{what}: unknown model {model!r} (one of: {', '.join(NIC_MODELS)})")
    reservation = nic.get("dhcp_reservation") or False
    if isinstance(reservation, str) and reservation.lower() in ("yes", "true", "no", "false"):
        reservation = reservation.lower() in ("yes", "true")
    reservation = _flag(f"{what} dhcp_reservation", reservation)
    if reservation and not nic.get("network"):
        raise InvalidInput(f"{what}: a DHCP reservation needs a PVC network, not a bridge")
    return {"bridge": schema.check_name("bridge", nic["bridge"]) if nic.get("bridge") else None,
            "network": schema.check_name("network", nic["network"]) if nic.get("network") else None,
            "model": model, "mac_prefix": check_mac_prefix(what, nic.get("mac_prefix") or DEFAULT_MAC_PREFIX),
            "dhcp_reservation": reservation}


def check_mac_prefix(what: str, prefix: Any) -> str:
    """One to five octets (``52:54:00``) of a unicast MAC address; the rest is chosen per NIC."""
    octets = prefix.lower().split(":") if isinstance(prefix, str) else []
    if not 1 <= len(octets) <= 5 or not all(_MAC_OCTET.fullmatch(octet) for octet in octets):
        raise InvalidInput(f"{what}: invalid MAC prefix {prefix!r}: use one to five hex octets, like 52:54:00")
    if int(octets[0], 16) & 1:
        raise InvalidInput(f"{what}: MAC prefix {prefix!r} is a multicast address; the first octet must be even")
    return ":".join(octets)


def appliance_system_template(hardware: Mapping[str, Any]) -> dict[str, Any]:
    """The system template an imported appliance gets: the vCPUs, memory (rounded up to whole MiB) and firmware
    its descriptor declares, a VNC console as well as the serial one (appliances expect a screen), and the
    defaults for the rest."""
    memory_mib = max(1, -(-int(hardware.get("memory_bytes") or 0) // (1 << 20)))
    return check_template("system", {"vcpus": hardware.get("vcpus"), "memory_mib": memory_mib,
                                     "firmware": hardware.get("firmware") or "bios", "vnc": True})


def appliance_profile(ova: str) -> dict[str, Any]:
    """The ``ova`` profile an imported appliance gets: the OVA and its system template, both named `ova`."""
    return check_profile({"type": "ova", "system_template": ova, "ova": ova})


def check_profile(record: Mapping[str, Any]) -> dict[str, Any]:
    """A profile record, normalised: its type and its components, each a name, the user data text, or None."""
    unknown = sorted(set(record) - {"type", *PROFILE_COMPONENTS})
    if unknown:
        raise InvalidInput(f"unknown profile field(s): {', '.join(unknown)} "
                           f"(known: type, {', '.join(PROFILE_COMPONENTS)})")
    profile_type = record.get("type") or "provisioner"
    if profile_type not in PROFILE_TYPES:
        raise InvalidInput(f"unknown profile type {profile_type!r} (one of: {', '.join(PROFILE_TYPES)})")
    checked: dict[str, Any] = {"type": profile_type}
    for kind in schema.TEMPLATE_KINDS:
        name = record.get(f"{kind}_template") or None
        checked[f"{kind}_template"] = schema.check_name(f"{kind} template", name) if name is not None else None
    if profile_type == "ova" and record.get("storage_template"):
        raise InvalidInput("an ova profile takes its disks from the OVA: it has no storage template")
    ova = record.get("ova") or None
    if ova is not None and profile_type != "ova":
        raise InvalidInput("only an ova profile names an OVA (make it with type ova)")
    checked["ova"] = schema.check_name("OVA", ova) if ova is not None else None
    checked["user_data"] = check_user_data(record.get("user_data"))
    document = record.get("userdata") or None
    checked["userdata"] = schema.check_name("user-data document", document) if document is not None else None
    if checked["user_data"] is not None and checked["userdata"] is not None:
        raise InvalidInput("a profile takes its user data from a file (--user-data) or a stored document "
                           "(--userdata), not both")
    script = record.get("script") or None
    checked["script"] = schema.check_name("install script", script) if script is not None else None
    checked["script_args"] = _script_args(record.get("script_args"))
    if checked["script_args"] and checked["script"] is None:
        raise InvalidInput("script arguments need a script (--script NAME)")
    return checked


def _script_args(args: Any) -> list[str]:
    if args is None:
        return []
    if not isinstance(args, list) or len(args) > MAX_SCRIPT_ARGS or \
            not all(isinstance(arg, str) and len(arg) <= 1024 and "\0" not in arg for arg in args):
        raise InvalidInput(f"script arguments are a list of at most {MAX_SCRIPT_ARGS} texts of at most 1024 "
                           "characters each")
    return list(args)


def check_script(script: Any) -> str:
    """An install script's text: a program the node can run, starting with ``#!``."""
    if not isinstance(script, str) or not script.startswith("#!"):
        raise InvalidInput("an install script is a text starting with '#!' (its interpreter)")
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"an install script is at most {MAX_SCRIPT_BYTES // 1024} KiB")
    return script


def check_user_data(user_data: Any) -> str | None:
    if user_data is None or user_data == "":
        return None
    if not isinstance(user_data, str):
        raise InvalidInput(f"cloud-init user data must be text, not {type(user_data).__name__}")
    if len(user_data.encode()) > MAX_USER_DATA_BYTES:
        raise InvalidInput(f"cloud-init user data is larger than {MAX_USER_DATA_BYTES // 1024} KiB")
    return user_data


def required_parts(profile_type: str) -> tuple[str, ...]:
    if profile_type == "ova":
        return ("ova", "system_template")
    return ("system_template", "storage_template", "network_template")


def missing_parts(record: Mapping[str, Any], ova: Mapping[str, Any] | None = None,
                  userdata_exists: bool | None = None) -> list[str]:
    """What a VM creation from this profile still needs, in a user's words; `ova` is the record of the OVA
    the profile names (None if there is none)."""
    missing = [part.replace("_", " ") for part in required_parts(record["type"]) if not record.get(part)]
    if record.get("userdata") and userdata_exists is not None and not userdata_exists:
        missing.append(f"user-data document '{record['userdata']}' (it no longer exists)")
    if record.get("ova") and ova is None:
        missing.append(f"OVA '{record['ova']}' (it no longer exists)")
    elif record.get("ova") and ova.get("state", "ready") != "ready":
        missing.append(f"OVA '{record['ova']}' (it is {ova.get('state')}, not ready)")
    return missing


def template_view(kind: str, name: str, record: Mapping[str, Any], used_by: list[str]) -> dict[str, Any]:
    return {"name": name, "kind": kind, **record, "used_by": used_by}


def profile_view(name: str, record: Mapping[str, Any], ova: Mapping[str, Any] | None,
                 detail: bool = True, userdata_exists: bool | None = None) -> dict[str, Any]:
    user_data = record.get("user_data")
    view = {"name": name, "type": record["type"],
            **{key: record.get(key) for key in ("system_template", "storage_template", "network_template", "ova",
                                                "userdata", "script")},
            "script_args": record.get("script_args") or [],
            "user_data_bytes": len(user_data.encode()) if user_data else 0,
            "missing": missing_parts(record, ova, userdata_exists)}
    view["complete"] = not view["missing"]
    if detail:
        view["user_data"] = user_data
    return view


def users_of_script(profiles: Mapping[str, Mapping[str, Any]], name: str) -> list[str]:
    """The profiles (name → record) that name install script `name`."""
    return sorted(profile for profile, record in profiles.items() if record.get("script") == name)


def users_of_userdata(profiles: Mapping[str, Mapping[str, Any]], name: str) -> list[str]:
    """The profiles (name → record) that take their user data from document `name`."""
    return sorted(profile for profile, record in profiles.items() if record.get("userdata") == name)


def users_of_template(profiles: Mapping[str, Mapping[str, Any]], kind: str, name: str) -> list[str]:
    """The profiles (name → record) that use template `name` of `kind`."""
    return sorted(profile for profile, record in profiles.items() if record.get(f"{kind}_template") == name)
