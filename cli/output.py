"""How the CLI presents results: a table for people, JSON (exactly what the API returned) for scripts."""
import json
import re
import time
from typing import Any, Callable, Sequence

import click

FORMATS = ("table", "json")
UPSTREAM_FORMATS = {"pretty": "table", "json-pretty": "json"}
"""Upstream PVC's names for ours: its `pretty` is our table, its `json-pretty` our (indented) JSON."""
RAW = "raw"
LONG = "long"
"""For one object: everything the table shows and more (upstream's ``--format long``)."""


def _normalised(_context: click.Context, _parameter: click.Parameter, value: str) -> str:
    return UPSTREAM_FORMATS.get(value, value)


def _format_option(*names: str, raw: bool = False, long: bool = False):
    choices = (*FORMATS, *UPSTREAM_FORMATS, *((RAW,) if raw else ()), *((LONG,) if long else ()))
    return click.option(*names, "output_format", type=click.Choice(choices), default="table", show_default=True,
                        callback=_normalised,
                        help="table for people, json for scripts (pretty and json-pretty: the same, by upstream's "
                             "names" + ("; raw: names only, one a line" if raw else "")
                             + ("; long: everything known, the node's view included" if long else "") + ")")


format_option = _format_option("-f", "--format")
list_format_option = _format_option("-f", "--format", raw=True)
"""For lists: `raw` prints each row's name alone, one a line, as upstream's `raw` does."""
long_format_option = _format_option("--format")
info_format_option = _format_option("-f", "--format", long=True)
"""For commands where upstream's `-f` means something else (`vm migrate -f` is its --force)."""


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


def clock_time(stamp: float) -> str:
    """A wall-clock time (seconds since the epoch) in this machine's local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


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


def name_pattern(limit: str | None) -> re.Pattern | None:
    """Upstream's LIMIT argument of a list: a regular expression found anywhere in a name."""
    if limit is None:
        return None
    try:
        return re.compile(limit)
    except re.error as error:
        raise click.BadParameter(f"not a regular expression: {error}", param_hint="REGEX") from None


def matching(rows: Sequence[dict[str, Any]], limit: str | None, key: str = "name") -> list[dict[str, Any]]:
    pattern = name_pattern(limit)
    return [row for row in rows if pattern is None or pattern.search(str(row[key]))]


def names(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [row["name"] for row in rows]


def show(value: Any, output_format: str, as_table: Callable[[Any], str],
         as_raw: Callable[[Any], list[str]] = names) -> None:
    if output_format == "json":
        emit_json(value)
    elif output_format == RAW:
        for line in as_raw(value):
            click.echo(line)
    else:
        click.echo(as_table(value))
