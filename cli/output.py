"""How the CLI presents results: a table for people, JSON (exactly what the API returned) for scripts."""
import json
from typing import Any, Callable, Sequence

import click

FORMATS = ("table", "json")

format_option = click.option("--format", "output_format", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="table for people, json for scripts")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def mib(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.1f}T"
    if value >= 1024:
        return f"{value / 1024:.1f}G"
    return f"{value}M"


def plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(plain(each) for each in value) or "-"
    return str(value)


Column = tuple[str, str, Callable[[Any], str]]


def column(header: str, key: str, render: Callable[[Any], str] = plain) -> Column:
    return header, key, render


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[header for header, _key, _render in columns]]
    cells += [[render(row.get(key)) for _header, key, render in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def details(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _value in pairs)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in pairs)


def show(value: Any, output_format: str, as_table: Callable[[Any], str]) -> None:
    if output_format == "json":
        emit_json(value)
    else:
        click.echo(as_table(value))
