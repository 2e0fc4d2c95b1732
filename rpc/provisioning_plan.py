"""What creating a VM from a profile will do, decided and checked in full before anything is made.

A plan names every volume to make (blank, or cloned from a source volume), the config drive, the domain XML
(built here, so a MAC address or UUID chosen once stays the same however often the plan is carried out), the
VM's metadata, and the OVA it is made from (``ova``, for an ``ova`` profile). Everything a user can get wrong
is refused here, with nothing written; what is left to fail while the plan is carried out is the cluster
itself (a node, the storage).
"""
import secrets
import uuid as uuidlib
from typing import Any, Mapping

from pvc import domain_builder, domain_xml, network_records, placement, provisioner_records, schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, InvalidInput, NotFound
from pvc.rpc import network_use
from pvc.rpc.context import CoordinatorContext

DEFAULT_BRIDGE = "vmbr0"
"""The bridge an OVA's NICs join when its profile has no network template."""
CONFIG_DRIVE_BUS = "sata"
OVA_FALLBACK_BUS = "sata"
"""The bus of an OVA disk whose controller PVC does not attach (NVMe): one every guest OS can boot from."""
OVA_FALLBACK_NIC_MODEL = "e1000"


def disk_volume(vm: str, index: int) -> str:
    return schema.check_name("volume", f"{vm}_disk{index}")


def config_drive_volume(vm: str) -> str:
    return schema.check_name("volume", f"{vm}_cidata")


class Planner:
    """Turns (VM name, profile) into a plan, reading templates, profiles, OVAs and storage from ZooKeeper."""

    def __init__(self, context: CoordinatorContext):
        self._context = context
        self._store = context.store

    def plan(self, vm: str, profile_name: str, profile: Mapping[str, Any], start: bool) -> dict[str, Any]:
        schema.check_name("VM", vm)
        document = self._store.read(schema.userdata(profile["userdata"])) if profile.get("userdata") else None
        missing = provisioner_records.missing_parts(profile, self._ova(profile),
                                                    document is not None if profile.get("userdata") else None)
        if missing:
            raise InvalidInput(f"profile '{profile_name}' is incomplete: a VM creation needs its "
                               f"{', '.join(missing)} (add them with 'pvc provisioner profile modify')")
        system = self._template("system", profile["system_template"])
        reservations: list[dict[str, str]] = []
        if profile["type"] == "ova":
            volumes, disks, nics = self._from_ova(vm, profile)
            firmware = (self._ova(profile).get("hardware") or {}).get("firmware") or system["firmware"]
        else:
            volumes, disks = self._from_storage_template(vm, self._template("storage", profile["storage_template"]))
            template_nics = self._template("network", profile["network_template"])["nics"]
            nics = self._nics(template_nics)
            reservations = self._reservations(template_nics, nics)
            firmware = system["firmware"]
        config_drive = None
        user_data = document["data"] if document is not None else profile.get("user_data")
        if user_data:
            if not volumes:
                raise InvalidInput(f"profile '{profile_name}' has user data but no disk: its config drive goes "
                                   "into the pool of the VM's first disk")
            config_drive = {"pool": volumes[0]["pool"], "name": config_drive_volume(vm)}
            self._require_free(config_drive["pool"], config_drive["name"])
            disks.append(domain_builder.Disk(config_drive["pool"], config_drive["name"], CONFIG_DRIVE_BUS, "cdrom"))
        uuid = str(uuidlib.uuid4())
        hardware = domain_builder.Hardware(system["vcpus"], system["memory_mib"], firmware, system["serial"],
                                           system["vnc"], system.get("vnc_bind"))
        xml = domain_builder.build(vm, uuid, hardware, disks, nics)
        domain_xml.parse(xml)
        meta = {key: system[key] for key in ("node_limit", "node_selector", "node_autostart", "migration_method")}
        meta["profile"] = profile_name
        self._check_placeable(vm, system, meta)
        script = self._script(vm, profile, volumes, user_data)
        return {"vm": vm, "uuid": uuid, "xml": xml, "meta": meta, "volumes": volumes,
                "config_drive": config_drive, "user_data": user_data, "start": start,
                "ova": profile["ova"] if profile["type"] == "ova" else None, "reservations": reservations,
                "script": script}

    # -- parts ----------------------------------------------------------------------------------------

    def _template(self, kind: str, name: str) -> dict[str, Any]:
        record = self._store.read(schema.template(kind, name))
        if record is None:
            raise NotFound(f"no {kind} template named '{name}'")
        return record

    def _ova(self, profile: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._store.read(schema.ova(profile["ova"])) if profile.get("ova") else None

    def _script(self, vm: str, profile: Mapping[str, Any], volumes: list[dict[str, Any]],
                user_data: str | None) -> dict[str, Any] | None:
        """The install script step: its text and the document it reads (the volumes are given paths by the node
        that runs it). Refused now, before any volume is made, when no node runs install scripts."""
        name = profile.get("script")
        if not name:
            return None
        record = self._store.read(schema.script(name))
        if record is None:
            raise NotFound(f"profile's install script '{name}' no longer exists")
        if not any((raw.get(OWN_VALUE) or {}).get("provisioner_scripts")
                   for raw in self._context.cache.nodes.snapshot().values()):
            raise InvalidInput(f"the profile names install script '{name}', but no node runs install scripts "
                               "(provisioner_scripts in pvcnoded.yaml)")
        disks = [{"disk_id": volume.get("disk_id"), "pool": volume["pool"], "volume": volume["name"],
                  "size_bytes": volume.get("size_bytes"), "filesystem": volume.get("filesystem"),
                  "mountpoint": volume.get("mountpoint")} for volume in volumes]
        return {"name": name, "text": record["script"],
                "input": {"vm": vm, "hostname": vm, "user_data": user_data, "args": profile.get("script_args") or [],
                          "disks": disks}}

    def _from_storage_template(self, vm: str, template: Mapping[str, Any]) \
            -> tuple[list[dict[str, Any]], list[domain_builder.Disk]]:
        volumes, disks = [], []
        for index, disk in enumerate(template["disks"]):
            pool, name = disk["pool"], disk_volume(vm, index)
            self._require_pool(pool)
            self._require_free(pool, name)
            size = disk["size_bytes"]
            if disk["source_volume"]:
                source = self._require_volume(pool, disk["source_volume"])
                if size is not None and size < source["size_bytes"]:
                    raise InvalidInput(f"disk {index} of the storage template is {size} bytes, smaller than its "
                                       f"source volume '{pool}/{disk['source_volume']}' ({source['size_bytes']} "
                                       "bytes)")
            volumes.append({"pool": pool, "name": name, "size_bytes": size, "source": disk["source_volume"],
                            **{key: disk[key] for key in ("disk_id", "filesystem", "mountpoint") if disk.get(key)}})
            disks.append(domain_builder.Disk(pool, name))
        return volumes, disks

    def _from_ova(self, vm: str, profile: Mapping[str, Any]) \
            -> tuple[list[dict[str, Any]], list[domain_builder.Disk], list[domain_builder.Nic]]:
        """Each OVA volume cloned into VMNAME_diskN, on the bus its descriptor's controller gives it."""
        record = self._ova(profile)
        hardware = record.get("hardware") or {}
        declared = hardware.get("disks") or []
        volumes, disks = [], []
        for index, entry in enumerate(record.get("volumes") or []):
            pool, source = _volume_reference(entry)
            self._require_volume(pool, source)
            name = disk_volume(vm, index)
            self._require_free(pool, name)
            bus = (declared[index].get("bus") if index < len(declared) and isinstance(declared[index], dict)
                   else None)
            volumes.append({"pool": pool, "name": name, "size_bytes": None, "source": source})
            disks.append(domain_builder.Disk(pool, name, bus if bus in domain_builder.BUSES else OVA_FALLBACK_BUS))
        if not volumes:
            raise InvalidInput(f"OVA '{profile['ova']}' records no volumes to clone")
        if profile.get("network_template"):
            nics = self._nics(self._template("network", profile["network_template"])["nics"])
        else:
            nics = self._nics([{"bridge": DEFAULT_BRIDGE, "network": None,
                                "model": _nic_model(nic), "mac_prefix": provisioner_records.DEFAULT_MAC_PREFIX}
                               for nic in hardware.get("nics") or []])
        return volumes, disks, nics

    def _reservations(self, template_nics: list[Mapping[str, Any]],
                      nics: list[domain_builder.Nic]) -> list[dict[str, str]]:
        """The DHCP reservations the template asks for, by network and MAC: each network must be a managed one
        with room for it (the address is taken when the VM is defined)."""
        reservations = []
        networks = network_use.stored_networks(self._store)
        for template_nic, nic in zip(template_nics, nics):
            if template_nic.get("dhcp_reservation"):
                vni = network_records.resolve(nic.network, networks)
                network_records.free_address(networks[vni], self._store.read(schema.network_leases(vni)) or {})
                reservations.append({"network": str(vni), "mac": nic.mac})
        return reservations

    @staticmethod
    def _nics(nics: list[Mapping[str, Any]]) -> list[domain_builder.Nic]:
        return [domain_builder.Nic(_mac(nic["mac_prefix"]), nic["model"], nic.get("bridge"), nic.get("network"))
                for nic in nics]

    # -- checks ---------------------------------------------------------------------------------------

    def _require_pool(self, pool: str) -> None:
        if self._store.read(schema.pool(pool)) is None:
            raise NotFound(f"no storage pool named '{pool}'")

    def _require_volume(self, pool: str, name: str) -> dict[str, Any]:
        self._require_pool(pool)
        record = self._store.read(schema.volume(pool, name))
        if record is None:
            raise NotFound(f"no volume '{name}' in storage pool '{pool}'")
        return record

    def _require_free(self, pool: str, name: str) -> None:
        if self._store.zk.exists(schema.volume(pool, name)):
            raise AlreadyExists(f"volume '{pool}/{name}' exists already: the VM's disks would take its name")

    def _check_placeable(self, vm: str, system: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Refuse now what the definition would refuse after the volumes are made: unknown nodes or selector,
        or no node that can take the VM."""
        for node in meta["node_limit"]:
            if self._context.node_view(node) is None:
                raise NotFound(f"the system template limits the VM to node {node}, which does not exist")
        selector = self._context.selector(meta)
        view = {"name": vm, "memory_mib": system["memory_mib"], "vcpus": system["vcpus"],
                "node_limit": meta["node_limit"], "state": "stop"}
        placement.check_fits_a_node(self._context.node_views(), view)
        placement.choose(self._context.placement_views(), view, selector)


def _volume_reference(entry: Any) -> tuple[str, str]:
    """An OVA record's volume: ``"POOL/VOLUME"`` or ``{"pool", "name"}``."""
    if isinstance(entry, str) and entry.count("/") == 1:
        pool, name = entry.split("/")
    elif isinstance(entry, dict):
        pool, name = entry.get("pool"), entry.get("name") or entry.get("volume")
    else:
        raise InvalidInput(f"the OVA record names a volume as {entry!r}, not POOL/VOLUME")
    return schema.check_name("pool", pool), schema.check_name("volume", name)


def _nic_model(nic: Any) -> str:
    model = str(nic.get("model") or "").lower() if isinstance(nic, dict) else ""
    return model if model in provisioner_records.NIC_MODELS else OVA_FALLBACK_NIC_MODEL


def _mac(prefix: str) -> str:
    octets = prefix.split(":")
    return ":".join(octets + [f"{byte:02x}" for byte in secrets.token_bytes(6 - len(octets))])
