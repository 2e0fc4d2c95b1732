"""`pvc connection`: saved clusters to reach by name (`pvc -c NAME ...`), like kubectl's contexts."""
from pathlib import Path

import click

from pvc import connections, handshake, text_input
from pvc.cli import output, upstream
from pvc.cli.confirm import confirm_option
from pvc.errors import InvalidInput, PVCError

DEFAULT_PORT = 7370
MAX_API_KEY_FILE_BYTES = 4096

_COLUMNS = [
    output.column("DEFAULT", "default", lambda default: "*" if default else ""),
    output.column("NAME", "name"),
    output.column("URIS", "uris"),
    output.column("TLS", "tls_ca", lambda ca: "yes" if ca else "no"),
    output.column("DESCRIPTION", "description"),
]

_DETAIL_COLUMNS = [
    output.column("NAME", "name"),
    output.column("REACHABLE", "reachable"),
    output.column("LEADER", "leader"),
    output.column("NODES", "nodes_total"),
    output.column("READY", "nodes_ready"),
    output.column("MAINTENANCE", "maintenance"),
    output.column("ERROR", "error"),
]


def _rows(show_keys: bool) -> list[dict]:
    data = connections.load()
    rows = []
    for name, saved in sorted(data["connections"].items()):
        row = {"name": name, "default": name == data["default"], "uris": saved.get("uris") or [],
               "tls_ca": saved.get("tls_ca"), "description": saved.get("description")}
        if show_keys:
            row["api_key"] = saved.get("api_key")
        rows.append(row)
    return rows


def _read_key(path: str) -> str:
    key = text_input.read_text(path, "the API key file", MAX_API_KEY_FILE_BYTES).strip()
    if not key or "\n" in key:
        raise InvalidInput(f"the API key file {path} must hold the key alone, on one line")
    return key


@click.group("connection")
def group() -> None:
    """Saved connections to clusters, chosen with pvc -c NAME (or PVC_CONNECTION); one may be the default."""


@group.command("add")
@click.argument("name")
@click.argument("uris", nargs=-1, metavar="[URI]...")
@upstream.option("-a", "--address", upstream=("-a", "--address"), help="coordinator host, instead of a URI")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="coordinator port with --address")
@click.option("--api-key-file", type=click.Path(dir_okay=False), help="file holding the API key")
@click.option("-k", "--api-key", help="the API key itself (it shows in your shell history: prefer --api-key-file)")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
              help="PEM CA the coordinators' certificates chain to: connect with TLS")
@upstream.option("-s", "--ssl", "system_cas", is_flag=True, upstream=("-s", "--ssl"),
              help="connect with TLS, verifying the coordinators' certificates against the system's CAs "
                   "(upstream's option; never unverified)")
@click.option("-d", "--description", help="a note shown in pvc connection list")
@click.option("--default", "make_default", is_flag=True, help="make this the default connection")
@output.format_option
def add(name: str, uris: tuple[str, ...], address: str | None, port: int, api_key_file: str | None,
        api_key: str | None, tls_ca: str | None, system_cas: bool, description: str | None, make_default: bool,
        output_format: str) -> None:
    """Save a connection to the cluster whose coordinators are URI... (pvc://HOST:PORT, failed over in
    order). The first connection saved becomes the default. Keys are kept in a file only you can read."""
    if address:
        uris = (*uris, f"pvc://{address}:{port}")
    if api_key_file and api_key:
        raise click.UsageError("give --api-key-file or --api-key, not both")
    if tls_ca and system_cas:
        raise click.UsageError("give --tls-ca FILE or -s/--ssl (the system's CAs), not both")
    key = _read_key(api_key_file) if api_key_file else api_key
    ca = handshake.SYSTEM_CAS if system_cas else str(Path(tls_ca).resolve()) if tls_ca else None
    saved = connections.add(name, list(uris), key or "", ca, description, make_default)
    row = next(row for row in _rows(show_keys=False) if row["name"] == saved["name"])
    output.show(row, output_format, lambda view: output.table([view], _COLUMNS))


@group.command("remove")
@click.argument("name")
@confirm_option("Remove the saved connection {name}")
def remove(name: str) -> None:
    """Forget a saved connection (the cluster itself is untouched)."""
    connections.remove(name)
    click.echo(f"Removed connection {name}")


@group.command("default")
@click.argument("name", required=False)
def default(name: str | None) -> None:
    """Make NAME the default connection, or show which one is."""
    if name:
        connections.set_default(name)
        click.echo(f"Default connection: {name}")
        return
    current = connections.load()["default"]
    click.echo(current or "no default connection")


@group.command("list")
@click.option("-k", "--show-keys", is_flag=True, help="include the API keys")
@output.list_format_option
def list_connections(show_keys: bool, output_format: str) -> None:
    """Every saved connection; * marks the default."""
    output.show(_rows(show_keys), output_format,
                lambda rows: output.table(rows, _COLUMNS + ([output.column("API KEY", "api_key")]
                                                           if show_keys else [])))


@group.command("detail")
@output.format_option
def detail(output_format: str) -> None:
    """Reach every saved connection's cluster and show its state (or why it cannot be reached)."""
    import pvc
    rows = []
    for row in _rows(show_keys=False):
        entry = {"name": row["name"], "reachable": False, "leader": None, "nodes_total": None,
                 "nodes_ready": None, "maintenance": None, "error": None}
        try:
            with pvc.connect(connection=row["name"]) as client:
                status = client.cluster.status()
        except PVCError as error:
            entry["error"] = str(error)
        else:
            entry.update(reachable=True, leader=status["leader"], nodes_total=status["nodes_total"],
                         nodes_ready=status["nodes_ready"], maintenance=status["maintenance"])
        rows.append(entry)
    output.show(rows, output_format, lambda view: output.table(view, _DETAIL_COLUMNS))
