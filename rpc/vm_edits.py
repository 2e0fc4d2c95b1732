"""Editing one part of a VM (vCPUs, memory, a volume, a NIC) and its tags, for the `vms` remote object.

An edit is recorded the way `vms.modify` records a new definition: the edited document replaces the VM's
XML with a new generation, so its node defines it as the domain's configuration when it next converges. A VM
that is stopped gets the change when it starts; a running one when it restarts, at once with `restart`, or
now with `live`, where libvirt on its node can change the running guest (`pvc.node.live_change`). The record
comes first: if the coordinator dies before the live step, the change still arrives at the next restart.
Each result says which of these happened: ``applied`` is ``live``, ``restarting``, ``at next start`` or
``at next restart`` (with the ``reason`` it was not live).
"""
from typing import Any, Callable

from kazoo.exceptions import NoNodeError

from pvc import domain_edit, domain_xml, models, placement, schema
from pvc.cache import OWN_VALUE
from pvc.errors import Conflict, InvalidInput, NotFound, PVCError
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.vm_control import VMControl

Spec = Callable[[domain_xml.Domain], dict[str, Any]]


class VMEditor:
    def __init__(self, context: CoordinatorContext, control: VMControl, spec_of: Spec,
                 allow_host_devices: Callable[[], bool]):
        self._context = context
        self._control = control
        self._spec_of = spec_of
        self._allow_host_devices = allow_host_devices

    # -- parts -----------------------------------------------------------------------------------------

    def set_vcpus(self, vm: str, vcpus: int, restart: bool, live: bool) -> dict[str, Any]:
        return self._edit(vm, f"vCPUs set to {vcpus}", lambda xml: domain_edit.set_vcpus(xml, vcpus),
                          restart, live, lambda _edited: [{"kind": "vcpus", "value": vcpus}])

    def set_memory(self, vm: str, memory_mib: int, restart: bool, live: bool) -> dict[str, Any]:
        return self._edit(vm, f"memory set to {memory_mib} MiB",
                          lambda xml: domain_edit.set_memory(xml, memory_mib), restart, live,
                          lambda _edited: [{"kind": "memory_mib", "value": memory_mib}])

    def add_volume(self, vm: str, volume: str, target: str | None, bus: str, restart: bool,
                   live: bool, kind: str = "rbd") -> dict[str, Any]:
        if kind == "file":
            return self._edit(vm, f"host file {volume} attached",
                              lambda xml: domain_edit.add_file_disk(xml, volume, target, bus), restart, live, None)
        if kind != "rbd":
            raise InvalidInput(f"unknown volume type {kind!r} (rbd: a PVC volume POOL/VOLUME; file: a host path)")
        pool, name = domain_edit.split_volume(volume)
        try:
            data, stat = self._context.store.zk.get(schema.volume(pool, name))
        except NoNodeError:
            raise NotFound(f"no volume {pool}/{name} in PVC storage (see 'pvc storage volume list')") from None
        if ((schema.decode(data) or {}).get("intent") or {}).get("action") == "remove":
            raise Conflict(f"volume {pool}/{name} is being removed")
        users = [user for user in self._context.volume_users(pool, name) if user != vm]
        if users:
            raise Conflict(f"volume {pool}/{name} is used by VM(s) {', '.join(users)}: two guests writing one "
                           "volume corrupt it")
        # The VM's write checks the volume's record is as read: a removal marked meanwhile wins.
        return self._edit(vm, f"volume {pool}/{name} attached",
                          lambda xml: domain_edit.add_volume(xml, volume, target, bus), restart, live, None,
                          checks=((schema.volume(pool, name), stat.version),))

    def remove_volume(self, vm: str, volume: str, restart: bool, live: bool) -> dict[str, Any]:
        if volume.startswith("/"):
            return self._edit(vm, f"host file {volume} detached",
                              lambda xml: domain_edit.remove_file_disk(xml, volume), restart, live, None)
        return self._edit(vm, f"volume {volume} detached", lambda xml: domain_edit.remove_volume(xml, volume),
                          restart, live, None)

    def add_nic(self, vm: str, source: str, kind: str, model: str, mac: str | None, restart: bool,
                live: bool) -> dict[str, Any]:
        return self._edit(vm, f"interface on {kind} {source} added",
                          lambda xml: domain_edit.add_nic(xml, source, kind, model, mac), restart, live,
                          lambda edited: [{"kind": "attach", "value": device} for device in edited.devices])

    def remove_nic(self, vm: str, source: str | None, mac: str | None, restart: bool,
                   live: bool) -> dict[str, Any]:
        what = " on ".join(part for part in (mac, source) if part)
        return self._edit(vm, f"interface {what} removed", lambda xml: domain_edit.remove_nic(xml, source, mac),
                          restart, live,
                          lambda edited: [{"kind": "detach", "value": device} for device in edited.devices])

    def _edit(self, vm: str, change: str, edit: Callable[[str], domain_edit.Edited], restart: bool, live: bool,
              live_changes: Callable[[domain_edit.Edited], list[dict[str, Any]]] | None,
              checks: tuple[tuple[str, int], ...] = ()) -> dict[str, Any]:
        with self._control.locked(vm):
            current = self._control.desired(vm)
            raw = {**self._control.raw(vm), OWN_VALUE: current.spec, "state": current.state,
                   "placement": current.placement}
            spec = current.spec
            edited = edit(spec["xml"])
            domain = domain_xml.parse(edited.xml, default_uuid=spec["uuid"],
                                      allow_host_devices=self._allow_host_devices())
            running = raw.get("state") == "start"
            new_spec = {**spec, **self._spec_of(domain), "generation": spec.get("generation", 1) + 1}
            placement.check_fits_a_node(self._context.node_views(), new_spec)
            self._control.record(vm, current, spec=new_spec,
                                 state="restart" if restart and running else None, checks=checks)
        node = raw["placement"]["node"]
        applied, reason = self._applied(vm, node, raw, edited, restart, live, live_changes)
        self._control.converge(vm, [node], wait=False)
        return {"name": vm, "change": change, "applied": applied, "reason": reason}

    def _applied(self, vm: str, node: str, raw: dict[str, Any], edited: domain_edit.Edited, restart: bool,
                 live: bool, live_changes) -> tuple[str, str | None]:
        if raw.get("state") != "start":
            return "at next start", None
        if restart:
            return "restarting", None
        if not live:
            return "at next restart", "not applied live (--no-live)"
        if live_changes is None:
            return "at next restart", "PVC attaches and detaches volumes when the VM starts"
        if not models.vm_view(vm, raw)["running"]:
            return "at next restart", f"the VM is not running on {node} yet"
        agent_uri = (self._context.node_view(node) or {}).get("agent_uri")
        try:
            if not agent_uri:
                raise Conflict(f"node {node} has no agent to apply it live")
            for change in live_changes(edited):
                self._context.agents.call(node, agent_uri, "live_change", vm, change)
        except PVCError as error:
            return "at next restart", f"not applied live: {error}"
        return "live", None

    # -- tags ------------------------------------------------------------------------------------------

    def tags(self, vm: str) -> dict[str, Any]:
        return {"name": vm, "tags": tag_list(self._control.raw(vm)[OWN_VALUE])}

    def add_tag(self, vm: str, tag: str, protected: bool) -> dict[str, Any]:
        """Tag the VM; an existing tag becomes protected with `protected`, and a protected one stays so."""
        schema.check_name("tag", tag)
        with self._control.locked(vm):
            current = self._control.desired(vm)
            tags = dict(current.spec.get("tags") or {})
            tags[tag] = {"protected": bool(protected) or bool((tags.get(tag) or {}).get("protected"))}
            self._control.record(vm, current, spec={**current.spec, "tags": tags})
        return self.tags(vm)

    def remove_tag(self, vm: str, tag: str) -> dict[str, Any]:
        """Untag the VM; a protected tag is refused (it goes only with the VM), as upstream PVC defines it."""
        with self._control.locked(vm):
            current = self._control.desired(vm)
            tags = dict(current.spec.get("tags") or {})
            if tag not in tags:
                raise NotFound(f"VM '{vm}' has no tag '{tag}'")
            if tags[tag].get("protected"):
                raise Conflict(f"tag '{tag}' of VM '{vm}' is protected and cannot be removed")
            del tags[tag]
            self._control.record(vm, current, spec={**current.spec, "tags": tags})
        return self.tags(vm)


def initial_tags(tags: list[str] | None, protected_tags: list[str] | None) -> dict[str, dict[str, bool]]:
    """The ``tags`` of a new VM's record: each name checked; a tag given both ways is protected."""
    result = {schema.check_name("tag", tag): {"protected": False} for tag in tags or []}
    result.update({schema.check_name("tag", tag): {"protected": True} for tag in protected_tags or []})
    return result


def tag_list(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "protected": bool(facts.get("protected"))}
            for name, facts in sorted((spec.get("tags") or {}).items())]
