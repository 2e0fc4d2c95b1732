"""`pvc plugin`: what the coordinator has loaded."""
import click

from pvc.cli import output


def _registers(value: dict) -> str:
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(value.items())) or "-"


_COLUMNS = [
    output.column("NAME", "name"),
    output.column("DISTRIBUTION", "distribution"),
    output.column("VERSION", "version"),
    output.column("MODULE", "module"),
    output.column("REGISTERS", "registers", _registers),
]


@click.group("plugin")
def group() -> None:
    """Plugins: migration selectors, fencing policies, image importers, storage backends."""


@group.command("list")
@output.format_option
@click.pass_obj
def list_plugins(session, output_format: str) -> None:
    """Every plugin the coordinator loaded, what it registers, and its distribution."""
    output.show(session.client.cluster.plugins(), output_format, lambda rows: output.table(rows, _COLUMNS))
