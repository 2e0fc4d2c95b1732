"""`pvc plugin`: what the coordinator has loaded."""
import click

from pvc.cli import output


def _registers(plugin: dict) -> str:
    # Imported here: they load pluggy, which no other command needs, and every command pays for what the CLI loads.
    from pvc import hookspecs
    from pvc.plugin_manager import registered_key
    return "; ".join(f"{kind}: {', '.join(plugin[registered_key(hook_name)])}"
                     for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items()
                     if plugin.get(registered_key(hook_name))) or "-"


_COLUMNS = [
    output.column("NAME", "name"),
    output.column("DISTRIBUTION", "distribution"),
    output.column("VERSION", "version"),
    output.column("MODULE", "module"),
    output.column("REGISTERS", "registers"),
]


@click.group("plugin")
def group() -> None:
    """Plugins: migration selectors, fencing policies, image importers, storage backends, health checks."""


@group.command("list")
@output.format_option
@click.pass_obj
def list_plugins(session, output_format: str) -> None:
    """Every plugin the coordinator loaded, what it registers, and its distribution."""
    output.show(session.client.cluster.plugins(), output_format,
                lambda rows: output.table([{**row, "registers": _registers(row)} for row in rows], _COLUMNS))
