"""`pvc provisioner`: templates, profiles, and creating VMs from profiles."""
import click

from pvc import provisioner_records, sizes
from pvc.cli import output, upstream
from pvc.cli import ova
from pvc.cli.text_file import TextFile
from pvc.provisioner_records import MAX_USER_DATA_BYTES

MIB = 1024 * 1024


def _disks(disks: list) -> str:
    return ", ".join((f"{disk['disk_id']}=" if disk.get("disk_id") else "")
                     + f"{disk['pool']}:{sizes.human(disk['size_bytes']) if disk['size_bytes'] else 'clone'}"
                     + (f"<{disk['source_volume']}" if disk["source_volume"] else "")
                     + (f" {disk['filesystem']}" if disk.get("filesystem") else "")
                     + (f" on {disk['mountpoint']}" if disk.get("mountpoint") else "") for disk in disks) or "-"


def _nics(nics: list) -> str:
    return ", ".join(f"{nic['bridge'] or 'network:' + nic['network']}/{nic['model']}/{nic['mac_prefix']}"
                     for nic in nics) or "-"


_TEMPLATE_COLUMNS = {
    "system": [
        output.column("NAME", "name"), output.column("VCPUS", "vcpus"),
        output.column("MEMORY", "memory_mib", output.mib), output.column("FIRMWARE", "firmware"),
        output.column("SERIAL", "serial"), output.column("VNC", "vnc"), output.column("LIMIT", "node_limit"),
        output.column("SELECTOR", "node_selector"), output.column("AUTOSTART", "node_autostart"),
        output.column("MIGRATION", "migration_method"), output.column("USED BY", "used_by"),
    ],
    "storage": [output.column("NAME", "name"), output.column("DISKS", "disks", _disks),
                output.column("USED BY", "used_by")],
    "network": [output.column("NAME", "name"), output.column("NICS", "nics", _nics),
                output.column("USED BY", "used_by")],
}

_PROFILE_COLUMNS = [
    output.column("NAME", "name"), output.column("TYPE", "type"),
    output.column("SYSTEM", "system_template"), output.column("STORAGE", "storage_template"),
    output.column("NETWORK", "network_template"), output.column("OVA", "ova"),
    output.column("USER DATA", "user_data_bytes", lambda size: f"{size} B" if size else "-"),
    output.column("USERDATA DOC", "userdata"),
    output.column("MISSING", "missing", lambda parts: "; ".join(parts) or "-"),
]


def _profile_details(profile: dict) -> str:
    return output.details([
        ("Name", profile["name"]),
        ("Type", profile["type"]),
        ("System template", output.plain(profile["system_template"])),
        ("Storage template", output.plain(profile["storage_template"])),
        ("Network template", output.plain(profile["network_template"])),
        ("OVA", output.plain(profile["ova"])),
        ("User data", f"document {profile['userdata']}" if profile.get("userdata") else
         f"{profile['user_data_bytes']} bytes" if profile["user_data_bytes"] else "-"),
        ("Install script", f"{profile['script']} {' '.join(profile.get('script_args') or [])}".strip()
         if profile.get("script") else "-"),
        ("Creation needs", "; ".join(profile["missing"]) if profile["missing"] else "nothing: it is complete"),
    ])


def _memory_mib(text: str | None) -> int | None:
    """MiB from a bare number, or bytes with a binary unit (``2G``) rounded down to MiB."""
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    return sizes.parse_size(text, "memory") // MIB


def _pairs(text: str, what: str, known: tuple[str, ...]) -> dict:
    """``key=value,key=value`` as a dict with dashes in keys made underscores."""
    pairs = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, sign, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sign or key not in known:
            raise click.BadParameter(f"{part!r}: use {','.join(f'{name}=...' for name in known)}",
                                     param_hint=f"--{what}")
        pairs[key] = value.strip()
    return pairs


@click.group("provisioner")
def group() -> None:
    """Templates, profiles and VM creation from them."""


group.add_command(ova.group)


@group.group("template")
def template() -> None:
    """System, storage and network templates."""


def _template_commands(kind: str, fields_options, spec_from_options, help_text: str) -> click.Group:
    """The add|modify|remove|list|info commands of one template kind, in the group returned."""
    columns = _TEMPLATE_COLUMNS[kind]

    def show(value, output_format: str) -> None:
        output.show(value, output_format, lambda rows: output.table(rows if isinstance(rows, list) else [rows],
                                                                    columns))

    @template.group(kind, help=help_text)
    def kind_group() -> None:
        pass

    @kind_group.command("add")
    @click.argument("name")
    @fields_options(adding=True)
    @output.format_option
    @click.pass_obj
    def add(session, name: str, output_format: str, **options) -> None:
        """Add a template."""
        show(session.client.provisioner.template_add(kind, name, spec_from_options(options, adding=True)),
             output_format)

    @kind_group.command("modify")
    @click.argument("name")
    @fields_options(adding=False)
    @output.format_option
    @click.pass_obj
    def modify(session, name: str, output_format: str, **options) -> None:
        """Change a template; only the options given change."""
        changes = spec_from_options(options)
        if not changes:
            raise click.UsageError("nothing to change: give at least one option")
        show(session.client.provisioner.template_modify(kind, name, changes), output_format)

    @kind_group.command("remove")
    @click.argument("name")
    @click.pass_obj
    def remove(session, name: str) -> None:
        """Remove a template that no profile uses."""
        session.client.provisioner.template_remove(kind, name)
        click.echo(f"Removed {kind} template {name}")

    @kind_group.command("list")
    @output.format_option
    @click.pass_obj
    def list_templates(session, output_format: str) -> None:
        """Every template of this kind."""
        show(session.client.provisioner.template_list(kind), output_format)

    @kind_group.command("info")
    @click.argument("name")
    @output.format_option
    @click.pass_obj
    def info(session, name: str, output_format: str) -> None:
        """One template."""
        show(session.client.provisioner.template_info(kind, name), output_format)

    return kind_group


def _system_options(adding: bool):
    def decorate(function):
        options = [
            click.option("--vcpus", type=click.IntRange(min=1), required=adding, help="virtual CPUs"),
            click.option("--memory", help="memory: MiB, or with a binary unit (2G)"),
            upstream.option("--vram", type=click.IntRange(min=1), metavar="MB", upstream=("--vram",),
                            help="memory in MB (MB as upstream means it: MiB)"),
            click.option("--serial/--no-serial", default=None, help="a serial console (default: yes)"),
            click.option("--vnc/--no-vnc", default=None, help="a VNC console (default: no)"),
            click.option("--vnc-bind", metavar="ADDRESS",
                         help="the address the VNC console listens on: 127.0.0.1 (default) or ::1"),
            click.option("--firmware", type=click.Choice(["bios", "efi"]), help="firmware (default: bios)"),
            click.option("--node-limit", help="comma-separated nodes the VMs may run on ('' clears it)"),
            click.option("--node-selector", help="migration selector choosing the VMs' node (none: the cluster's)"),
            click.option("--node-autostart/--no-node-autostart", default=None,
                         help="start the VMs again when their node returns after a flush shut them down"),
            click.option("--migration-method", type=click.Choice(["live", "shutdown", "auto", "none"]),
                         help="how the VMs migrate (default, or none as upstream says: the cluster's)"),
        ]
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


def _system_spec(options: dict, adding: bool = False) -> dict:
    if options["memory"] is not None and options["vram"] is not None:
        raise click.UsageError("--memory and --vram both give the memory: use one")
    memory = options["vram"] if options["vram"] is not None else _memory_mib(options["memory"])
    if adding and memory is None:
        raise click.UsageError("give the memory: --memory SIZE or --vram MB")
    selector = options["node_selector"]
    spec = {"vcpus": options["vcpus"], "memory_mib": memory, "serial": options["serial"],
            "vnc": options["vnc"], "vnc_bind": options["vnc_bind"], "firmware": options["firmware"],
            "node_selector": "" if selector == "none" else selector, "node_autostart": options["node_autostart"],
            "migration_method": "" if options["migration_method"] == "none" else options["migration_method"]}
    if options["node_limit"] is not None:
        spec["node_limit"] = [part.strip() for part in options["node_limit"].split(",") if part.strip()]
    return {key: value for key, value in spec.items() if value is not None}


def _storage_options(adding: bool):
    return click.option("--disk", "disks", multiple=True,
                        help="a disk, in order: pool=POOL,size=SIZE (blank) or pool=POOL,source=VOLUME[,size=SIZE] "
                             "(a clone of a volume of that pool); repeat for more disks (modify replaces them all); "
                             "none: add them one by one with 'template storage disk add'")


def _storage_spec(options: dict, adding: bool = False) -> dict:
    disks = []
    for text in options["disks"]:
        pairs = _pairs(text, "disk", ("pool", "size", "source"))
        disks.append({"pool": pairs.get("pool"), "size": pairs.get("size"), "source_volume": pairs.get("source")})
    return {"disks": disks} if disks or adding else {}


def _network_options(adding: bool):
    return click.option("--nic", "nics", multiple=True,
                        help="a NIC, in order: bridge=BRIDGE or network=NETWORK, optionally model=MODEL "
                             "(default virtio), mac-prefix=52:54:00 and, on a managed network, dhcp-reservation=yes "
                             "(each VM made gets an address of its own, outside the DHCP range); repeat for more "
                             "(modify replaces them all); none: a template without NICs")


def _network_spec(options: dict, adding: bool = False) -> dict:
    nics = [_pairs(text, "nic", ("bridge", "network", "model", "mac_prefix", "dhcp_reservation"))
            for text in options["nics"]]
    return {"nics": nics} if nics or adding else {}


_template_commands("system", _system_options, _system_spec,
                   "System templates: vCPUs, memory, consoles, firmware and placement of the VMs made from them.")
_template_commands("storage", _storage_options, _storage_spec,
                   "Storage templates: the disks of the VMs made from them, blank or cloned.")
_network_templates = _template_commands("network", _network_options, _network_spec,
                                        "Network templates: the NICs of the VMs made from them.")


@_network_templates.group("vni")
def network_template_vni() -> None:
    """The PVC networks (by VNI) a network template's NICs join, upstream's way."""


@network_template_vni.command("add")
@click.argument("name")
@click.argument("vni")
@click.option("--permit-duplicate", is_flag=True, help="a second NIC on a network the template names already")
@click.option("--dhcp-reservation", is_flag=True, help="each VM made gets a DHCP reservation on the network, at "
              "an address outside its DHCP range")
@click.pass_obj
def network_template_vni_add(session, name: str, vni: str, permit_duplicate: bool, dhcp_reservation: bool) -> None:
    """Give template NAME one more NIC, on PVC network VNI (which must exist)."""
    network = session.client.networks.info(vni)
    nics = session.client.provisioner.template_info("network", name)["nics"]
    if not permit_duplicate and any(nic.get("network") == str(network["vni"]) for nic in nics):
        raise click.ClickException(f"network template {name} has a NIC on network {network['vni']} already "
                                   "(--permit-duplicate for another)")
    nics = [*nics, {"network": str(network["vni"]), "model": "virtio", "dhcp_reservation": dhcp_reservation}]
    session.client.provisioner.template_modify("network", name, {"nics": nics})
    click.echo(f"Added a NIC on network {network['vni']} to network template {name}")


@network_template_vni.command("remove")
@click.argument("name")
@click.argument("vni")
@click.pass_obj
def network_template_vni_remove(session, name: str, vni: str) -> None:
    """Take template NAME's NICs on network VNI away."""
    nics = session.client.provisioner.template_info("network", name)["nics"]
    kept = [nic for nic in nics if nic.get("network") != str(vni)]
    if len(kept) == len(nics):
        raise click.ClickException(f"network template {name} has no NIC on network {vni}")
    session.client.provisioner.template_modify("network", name, {"nics": kept})
    click.echo(f"Removed the NICs on network {vni} from network template {name}")


@template.commands["storage"].group("disk")
def storage_disk() -> None:
    """The disks of a storage template, one at a time (upstream's way of building one)."""


@storage_disk.command("add")
@click.argument("name")
@click.argument("disk_id", metavar="DISK_ID")
@click.option("--pool", required=True, help="the pool the disk's volume goes into")
@click.option("--size", help="the disk's size (20G), unless --source-volume gives it")
@click.option("--source-volume", help="clone this volume of the pool instead of a blank disk")
@click.option("--filesystem", type=click.Choice(provisioner_records.FILESYSTEMS),
              help="the filesystem the profile's install script makes on it")
@click.option("--mountpoint", help="where the install script mounts it in the guest (with --filesystem)")
@output.format_option
@click.pass_obj
def storage_disk_add(session, name: str, disk_id: str, pool: str, size: str | None, source_volume: str | None,
                     filesystem: str | None, mountpoint: str | None, output_format: str) -> None:
    """Add disk DISK_ID (sda, vdb, ...) to storage template NAME."""
    if size is None and source_volume is None:
        raise click.UsageError("give the disk's --size, or a --source-volume to clone")
    output.show(session.client.provisioner.template_disk_add(name, disk_id, pool, size, source_volume, filesystem,
                                                             mountpoint), output_format,
                lambda row: output.table([row], _TEMPLATE_COLUMNS["storage"]))


@storage_disk.command("remove")
@click.argument("name")
@click.argument("disk_id", metavar="DISK_ID")
@click.pass_obj
def storage_disk_remove(session, name: str, disk_id: str) -> None:
    """Remove disk DISK_ID from storage template NAME."""
    session.client.provisioner.template_disk_remove(name, disk_id)
    click.echo(f"Removed disk {disk_id} from storage template {name}")

@group.group("profile")
def profile() -> None:
    """Profiles: what a VM is made from (templates, cloud-init user data, or an OVA)."""


def _profile_options(function):
    options = [
        click.option("--system-template", help="system template ('' removes it)"),
        click.option("--storage-template", help="storage template ('' removes it)"),
        click.option("--network-template", help="network template ('' removes it)"),
        click.option("--user-data", "user_data", type=TextFile("the user data file", MAX_USER_DATA_BYTES),
                     help="cloud-init user data from this file ('-': standard input); the VM gets it on a "
                          "NoCloud config drive"),
        click.option("--no-user-data", is_flag=True, help="remove the cloud-init user data"),
        upstream.option("--userdata", "userdata", metavar="DOC", upstream=("--userdata",),
                        help="cloud-init user data from the stored document DOC (pvc provisioner userdata; "
                             "'' removes it); not with --user-data"),
        click.option("--ova", help="the OVA an ova profile makes VMs from"),
        click.option("--script", help="the install script (pvc provisioner script) a creation runs after the VM's "
                                      "volumes exist, before it is defined ('' removes it)"),
        click.option("--script-arg", "script_args", multiple=True,
                     help="an argument the install script receives (repeatable; replaces them all)"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _components(options: dict) -> dict:
    if options["user_data"] is not None and options["no_user_data"]:
        raise click.UsageError("--user-data and --no-user-data contradict each other")
    if options["user_data"] is not None and options["userdata"]:
        raise click.UsageError("--user-data FILE and --userdata DOC both give the user data: use one")
    components = {key: options[key] for key in ("system_template", "storage_template", "network_template", "ova",
                                                "userdata", "script")
                  if options[key] is not None}
    if options["script_args"]:
        components["script_args"] = list(options["script_args"])
    elif options["script"] == "":
        components["script_args"] = []
    if options["userdata"]:
        components["user_data"] = None
    if options["user_data"] is not None:
        components["userdata"] = None
    if options["user_data"] is not None:
        components["user_data"] = options["user_data"]
    if options["no_user_data"]:
        components["user_data"] = None
    return components


@profile.command("add")
@click.argument("name")
@upstream.option("--type", "--profile-type", "profile_type", type=click.Choice(["provisioner", "ova"]),
                 default="provisioner", show_default=True, upstream=("--profile-type",),
                 help="what VMs are made from: templates, or an OVA")
@_profile_options
@output.format_option
@click.pass_obj
def profile_add(session, name: str, profile_type: str, output_format: str, **options) -> None:
    """Add a profile; every component may be given later with 'profile modify'."""
    output.show(session.client.provisioner.profile_add(name, profile_type, **_components(options)), output_format,
                _profile_details)


@profile.command("modify")
@click.argument("name")
@_profile_options
@output.format_option
@click.pass_obj
def profile_modify(session, name: str, output_format: str, **options) -> None:
    """Change a profile's components; only the options given change."""
    components = _components(options)
    if not components:
        raise click.UsageError("nothing to change: give at least one option")
    output.show(session.client.provisioner.profile_modify(name, **components), output_format, _profile_details)


@profile.command("remove")
@click.argument("name")
@click.pass_obj
def profile_remove(session, name: str) -> None:
    """Remove a profile."""
    session.client.provisioner.profile_remove(name)
    click.echo(f"Removed profile {name}")


@profile.command("list")
@click.argument("limit", metavar="[FILTER]", required=False)
@output.list_format_option
@click.pass_obj
def profile_list(session, limit: str | None, output_format: str) -> None:
    """Every profile (or those whose name matches FILTER), with what a VM creation from it would still need."""
    output.show(output.matching(session.client.provisioner.profile_list(), limit), output_format,
                lambda rows: output.table(rows, _PROFILE_COLUMNS))


@profile.command("info")
@click.argument("name")
@output.format_option
@click.pass_obj
def profile_info(session, name: str, output_format: str) -> None:
    """One profile, and what a VM creation from it would still need."""
    output.show(session.client.provisioner.profile_info(name), output_format, _profile_details)


@group.command("create")
@click.argument("vm")
@click.argument("profile_name", metavar="PROFILE")
@click.option("--define-only", is_flag=True, help="define the VM and leave it stopped (the default; not with "
                                                  "--start)")
@click.option("--start", is_flag=True, help="start the VM once it is defined")
@click.option("--wait", is_flag=True, help="return once the VM is created (and, with --start, running)")
@output.format_option
@click.pass_obj
def create(session, vm: str, profile_name: str, define_only: bool, start: bool, wait: bool,
           output_format: str) -> None:
    """Create VM from PROFILE: its volumes, its cloud-init config drive, its definition. Without --wait,
    the creation goes on in the cluster (it survives a coordinator's loss) and its task is shown."""
    result = session.client.provisioner.create(vm, profile_name, define_only=define_only, start=start, wait=wait)
    if wait:
        output.show(result, output_format, lambda view: f"Created VM {view['name']} on node {view['node']}: "
                                                        f"{view['state']}")
    else:
        output.show(result, output_format, lambda task: f"Creating VM {task['vm']}: task {task['id']} "
                                                        f"({task['state']})")


@group.group("userdata")
def userdata() -> None:
    """Named cloud-init user-data documents a profile may use (--userdata DOC), as upstream keeps them."""


_NAMED_TEXT_COLUMNS = [output.column("NAME", "name"),
                       output.column("SIZE", "size_bytes", lambda size: f"{size} B"),
                       output.column("USED BY", "used_by")]
"""The columns of user-data documents and install scripts alike: both are a text under a name."""


@userdata.command("add")
@click.argument("name")
@click.argument("data", metavar="FILE", type=TextFile("the user data file", MAX_USER_DATA_BYTES))
@output.format_option
@click.pass_obj
def userdata_add(session, name: str, data: str, output_format: str) -> None:
    """Store FILE ('-': standard input) as user-data document NAME."""
    output.show(session.client.provisioner.userdata_add(name, data), output_format,
                lambda row: output.table([row], _NAMED_TEXT_COLUMNS))


@userdata.command("modify")
@click.argument("name")
@click.argument("data", metavar="FILE", type=TextFile("the user data file", MAX_USER_DATA_BYTES))
@output.format_option
@click.pass_obj
def userdata_modify(session, name: str, data: str, output_format: str) -> None:
    """Replace document NAME's text with FILE."""
    output.show(session.client.provisioner.userdata_modify(name, data), output_format,
                lambda row: output.table([row], _NAMED_TEXT_COLUMNS))


@userdata.command("list")
@click.argument("limit", metavar="[FILTER]", required=False)
@output.list_format_option
@click.pass_obj
def userdata_list(session, limit: str | None, output_format: str) -> None:
    """Every document (or those whose name matches FILTER), with the profiles using it."""
    output.show(output.matching(session.client.provisioner.userdata_list(), limit), output_format,
                lambda rows: output.table(rows, _NAMED_TEXT_COLUMNS))


@userdata.command("info")
@click.argument("name")
@output.format_option
@click.pass_obj
def userdata_info(session, name: str, output_format: str) -> None:
    """One document, its text included."""
    output.show(session.client.provisioner.userdata_info(name), output_format, lambda row: row["data"])


@userdata.command("remove")
@click.argument("name")
@click.pass_obj
def userdata_remove(session, name: str) -> None:
    """Remove a document no profile uses."""
    session.client.provisioner.userdata_remove(name)
    click.echo(f"Removed user-data document {name}")


@group.group("script")
def script() -> None:
    """Install scripts a profile may name (--script): run on a node that enables them, after the VM's volumes
    exist and before it is defined, with a JSON document on standard input (the disks as paths, the hostname,
    the user data, the arguments)."""


@script.command("add")
@click.argument("name")
@click.argument("text", metavar="FILE", type=TextFile("the install script", provisioner_records.MAX_SCRIPT_BYTES))
@output.format_option
@click.pass_obj
def script_add(session, name: str, text: str, output_format: str) -> None:
    """Store FILE ('-': standard input), a program starting with '#!', as install script NAME."""
    output.show(session.client.provisioner.script_add(name, text), output_format,
                lambda row: output.table([row], _NAMED_TEXT_COLUMNS))


@script.command("list")
@click.argument("limit", metavar="[FILTER]", required=False)
@output.list_format_option
@click.pass_obj
def script_list(session, limit: str | None, output_format: str) -> None:
    """Every install script (or those whose name matches FILTER), with the profiles using it."""
    output.show(output.matching(session.client.provisioner.script_list(), limit), output_format,
                lambda rows: output.table(rows, _NAMED_TEXT_COLUMNS))


@script.command("info")
@click.argument("name")
@output.format_option
@click.pass_obj
def script_info(session, name: str, output_format: str) -> None:
    """One install script, its text included."""
    output.show(session.client.provisioner.script_info(name), output_format, lambda row: row["script"])


@script.command("remove")
@click.argument("name")
@click.pass_obj
def script_remove(session, name: str) -> None:
    """Remove an install script no profile uses."""
    session.client.provisioner.script_remove(name)
    click.echo(f"Removed install script {name}")
