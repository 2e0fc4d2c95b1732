"""`pvc node`: the cluster's hypervisors."""
import socket
import sys
import time

import click

from pvc import schema
from pvc.cli import output, upstream
from pvc.cli.confirm import confirm_option

FOLLOW_INTERVAL_S = 0.5

_COLUMNS = [
    output.column("NAME", "name"),
    output.column("DAEMON", "daemon_shown"),
    output.column("DOMAIN", "domain_state"),
    output.column("HEALTH", "health", lambda health: "-" if health is None else f"{health}%"),
    output.column("COORD", "coordinator_state"),
    output.column("CPUS", "cpus"),
    output.column("LOAD", "load"),
    output.column("VMS", "vms_shown"),
    output.column("VCPUS", "vcpus_allocated"),
    output.column("MEM TOTAL", "memory_total_mib", output.mib),
    output.column("MEM FREE", "memory_free_mib", output.mib),
    output.column("MEM ALLOC", "memory_allocated_mib", output.mib),
    output.column("MEM PROV", "memory_provisioned_mib", output.mib),
]


_LIVE_DAEMON_NOTES = {"dead": "beating", "fenced": "runs again"}
"""How the list says that the daemon of a node the leader holds writes keepalives again (`daemon_note`)."""


def _daemon(node: dict) -> str:
    state = node["daemon_state"]
    return f"{state} ({_LIVE_DAEMON_NOTES[state]})" if node.get("daemon_note") and state in _LIVE_DAEMON_NOTES \
        else state


def stale_note(node: dict) -> str:
    """How a figure read from libvirt is qualified: nothing while current, its age once libvirt is lost."""
    if not node.get("figures_stale"):
        return ""
    age = node.get("figures_age_s")
    return f" (stale: libvirt lost{f', {age:.0f} s old' if age is not None else ''})"


def _vms(node: dict) -> str:
    return output.plain(node["vms_running"]) + ("*" if node.get("figures_stale") else "")


def _bmc(node: dict) -> str:
    if not node.get("bmc_host"):
        return "-"
    return (f"{node['bmc_user'] or '(no user)'}@{node['bmc_host']}:{node['bmc_port']}, "
            f"password {node['bmc_password'] or '(none)'}")


def _info_table(node: dict) -> str:
    pairs = [
        ("Name", node["name"]),
        ("Daemon state", node["daemon_state"] + (f" ({node['daemon_note']})" if node.get("daemon_note") else "")),
        ("Domain state", node["domain_state"]),
        ("Health", "-" if node.get("health") is None else f"{node['health']}%"),
        ("CPUs", output.plain(node["cpus"])),
        ("Load", output.plain(node["load"]) + stale_note(node)),
        ("VMs running", output.plain(node["vms_running"]) + stale_note(node)),
        ("VMs defined", output.plain(node["vms_defined"]) + stale_note(node)),
        ("vCPUs allocated", output.plain(node["vcpus_allocated"])),
        ("Memory total", output.mib(node["memory_total_mib"])),
        ("Memory free", output.mib(node["memory_free_mib"])),
        ("Memory allocated", output.mib(node["memory_allocated_mib"])),
        ("Memory provisioned", output.mib(node["memory_provisioned_mib"])),
        ("Last keepalive", "not seen yet" if node["keepalive_age_s"] is None
                           else f"{node['keepalive_age_s']} s ago"),
        ("Hypervisor", f"{output.plain(node['hypervisor'])}, libvirt {output.plain(node['libvirt_version'])}"
                       + (f", {node['accelerator']}" if node["accelerator"] else "")
                       + (" (simulated)" if node["simulated"] else "")),
        ("Agent", output.plain(node["agent_uri"])),
        ("BMC", _bmc(node) + (f" ({node['bmc_note']})" if node.get("bmc_note") else "")),
    ]
    for fault in node.get("faults") or []:
        acknowledged = " (acknowledged)" if fault["acknowledged"] else ""
        pairs.append(("Fault", f"{fault['severity']} -{fault['delta']}{acknowledged} {fault['check']}: "
                               f"{fault['message']} (x{fault['count']})"))
    if node.get("not_flushed"):
        pairs.append(("Not flushed", "; ".join(node["not_flushed"])))
    if node.get("changed_by_command"):
        pairs.append(("Changed by command", ", ".join(node["changed_by_command"])
                      + " (during its latest flush, ready or recovery: left to the command)"))
    recovery = node.get("recovery")
    if recovery:
        fence = "; ".join(f"{level['policy']}: {level['proven'] if level['confirmed'] else 'not confirmed'} "
                          f"({level['explanation']})" for level in recovery.get("fence") or [])
        pairs.append(("Recovery", recovery["state"] + (f": {recovery['reason']}" if recovery.get("reason") else "")))
        if recovery.get("retry_at") and recovery["state"] == "failed":
            pairs.append(("Next attempt", f"{output.clock_time(recovery['retry_at'])} "
                                          f"(attempt {(recovery.get('attempt') or 1) + 1})"))
        pairs.append(("Fence", fence or "-"))
    return output.details(pairs)


@click.group("node")
def group() -> None:
    """The cluster's hypervisor nodes."""


def _this_node(session, name: str | None) -> str:
    """NAME, or, run on a hypervisor, the node named as this host is (upstream's default)."""
    if name:
        return name
    host = socket.gethostname().split(".")[0]
    if host not in {node["name"] for node in session.client.nodes.list()}:
        raise click.UsageError(f"give a NODE: this host ({host}) is not a node of the cluster")
    return host


_node_argument = click.argument("name", metavar="[NODE]", required=False)


@group.command("list")
@click.argument("limit", metavar="[REGEX]", required=False)
@click.option("-ds", "--daemon-state", type=click.Choice(schema.DAEMON_STATES),
              help="only nodes in this daemon state")
@click.option("-vs", "--domain-state", type=click.Choice(schema.DOMAIN_STATES),
              help="only nodes in this domain state")
@upstream.option("-cs", "--coordinator-state", type=click.Choice(["primary", "secondary", "client"]),
                 upstream=("-cs", "--coordinator-state"),
              help="only nodes in this coordinator state (upstream's: primary beside the leading coordinator, "
                   "secondary beside another, client beside none)")
@output.list_format_option
@click.pass_obj
def list_nodes(session, limit: str | None, daemon_state: str | None, domain_state: str | None,
               coordinator_state: str | None, output_format: str) -> None:
    """Every node with its states and live figures; with REGEX, those whose name it matches."""
    rows = [row for row in output.matching(session.client.nodes.list(), limit)
            if daemon_state in (None, row["daemon_state"]) and domain_state in (None, row["domain_state"])
            and coordinator_state in (None, row.get("coordinator_state"))]
    output.show(rows, output_format, _list_table)


def _list_table(rows: list[dict]) -> str:
    """The node table; a node whose libvirt cannot be asked has its VM count starred and explained below."""
    text = output.table([{**row, "daemon_shown": _daemon(row), "vms_shown": _vms(row)} for row in rows], _COLUMNS)
    notes = [f"* {row['name']}: figures{stale_note(row)}" for row in rows if row.get("figures_stale")]
    return "\n".join([text, *notes])


@group.command("info")
@_node_argument
@output.format_option
@click.pass_obj
def info(session, name: str | None, output_format: str) -> None:
    """One node in detail (run on a node: that node)."""
    output.show(session.client.nodes.info(_this_node(session, name)), output_format, _info_table)


@group.command("log")
@_node_argument
@click.option("-l", "--lines", default=100, show_default=True, type=click.IntRange(1, 10000),
              help="how many of the last lines to show")
@click.option("-f", "--follow", is_flag=True, help="keep showing lines as the daemon writes them (Ctrl-C ends)")
@click.pass_obj
def node_log(session, name: str | None, lines: int, follow: bool) -> None:
    """Show the end of the node daemon's log, read through the node (run on a node: that node)."""
    name = _this_node(session, name)
    part = session.client.nodes.log(name, lines)
    while True:
        for line in part["lines"]:
            click.echo(line)
        if not follow:
            return
        sys.stdout.flush()
        try:
            time.sleep(FOLLOW_INTERVAL_S)
        except KeyboardInterrupt:
            return
        part = session.client.nodes.log(name, lines, part["offset"])


@group.command("fence-confirm")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="confirm even though the node's keepalives resumed after it was marked dead")
@confirm_option("Have you made sure node {name} is powered off? Its VMs will be started on other nodes")
@output.format_option
@click.pass_obj
def fence_confirm(session, name: str, force: bool, output_format: str) -> None:
    """Confirm a dead node is off (after its fence failed), so that its VMs are recovered elsewhere. A node
    whose keepalives resumed after it was marked dead is likely running: refused unless --force."""
    output.show(session.client.nodes.fence_confirm(name, force=force), output_format, _info_table)


FINISHED = ("done", "failed")


def _follow(session, task: dict, label: str) -> dict:
    """Show a task's progress until it has finished (done or failed)."""
    nodes = session.client.nodes
    while task["total"] is None and task["state"] not in FINISHED:
        time.sleep(0.2)
        task = nodes.task(task["id"])
    with click.progressbar(length=task["total"] or 0, label=label, show_pos=True, file=sys.stderr) as bar:
        shown = 0
        while True:
            bar.update(task["done"] - shown)
            shown = task["done"]
            if task["state"] in FINISHED:
                return task
            time.sleep(0.2)
            task = nodes.task(task["id"])


def _task_outcome(task: dict) -> str:
    lines = [f"{task['kind']} of {task['node']}: {task['state']}; moved {len(task['moved'])} VM(s)"]
    if task["shut_down"]:
        lines.append(f"shut down (no valid target): {', '.join(task['shut_down'])}")
        reasons = task.get("shut_down_reasons") or {}
        lines += [f"  {name}: {reasons[name]}" for name in task["shut_down"] if name in reasons]
    if task.get("not_returned"):
        lines.append("left where they are (no room on the node): "
                     + "; ".join(f"{name}: {why}" for name, why in sorted(task["not_returned"].items())))
    if task.get("changed_by_command"):
        lines.append(f"changed by a command meanwhile, left to it: {', '.join(task['changed_by_command'])}")
    not_moved = task.get("not_moved") or []
    if not_moved:
        lines.append(f"still on {task['node']}:")
        lines += [f"  {entry['name']}: {entry['reason']}" for entry in not_moved]
    elif task["errors"]:
        lines.append("errors: " + "; ".join(task["errors"]))
    return "\n".join(lines)


def _node_task(session, name: str, kind: str, wait: bool, output_format: str) -> None:
    task = getattr(session.client.nodes, kind)(name)
    if wait:
        task = _follow(session, task, f"{kind} {name}")
    output.show(task, output_format, _task_outcome)
    if wait and (task["state"] == "failed" or task["errors"]):
        sys.exit(1)


def _task_command(kind: str, help_text: str, wait_help: str):
    @group.command(kind, help=help_text + " Run on a node without NODE: that node.")
    @_node_argument
    @click.option("-w", "--wait", is_flag=True, help=wait_help)
    @output.format_option
    @click.pass_obj
    def command(session, name: str | None, wait: bool, output_format: str) -> None:
        _node_task(session, _this_node(session, name), kind, wait, output_format)
    return command


_task_command("flush", "Move every running VM off the node (for maintenance).",
              "show progress and return when the node is flushed")
_task_command("ready", "Return the node to service: its VMs come back.",
              "show progress and return when the node is ready")


def _handoff_done(session, wanted) -> bool:
    return wanted(session.client.cluster.status()["leader"])


def _wait_for_leader(session, wanted, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _handoff_done(session, wanted):
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} has not happened after {timeout:g} s")
        time.sleep(0.2)


@group.command("primary")
@click.argument("node")
@click.option("-w", "--wait", is_flag=True, help="return once the coordinator beside NODE leads")
@click.pass_obj
def primary(session, node: str, wait: bool) -> None:
    """Hand cluster leadership gracefully to the coordinator running beside NODE (upstream's primary
    coordinator), e.g. to upgrade the others one by one."""
    handoff = session.client.nodes.primary(node)
    if wait:
        _wait_for_leader(session, lambda leader: leader == handoff["to"], f"the handoff to {handoff['to']}")
    click.echo(f"Leadership: {handoff['from']} -> {handoff['to']}" + ("" if wait else " (requested)"))


@group.command("secondary")
@click.argument("node")
@click.option("-w", "--wait", is_flag=True, help="return once another coordinator leads")
@click.pass_obj
def secondary(session, node: str, wait: bool) -> None:
    """Hand cluster leadership gracefully away from the coordinator running beside NODE, to the next
    coordinator in line (upstream's secondary coordinator)."""
    handoff = session.client.nodes.secondary(node)
    if handoff["to"] == handoff["from"]:
        click.echo(f"Leadership stays with {handoff['from']}: the coordinator beside {node} does not lead")
        return
    if wait:
        _wait_for_leader(session, lambda leader: leader not in (None, handoff["from"]),
                         f"the handoff away from {handoff['from']}")
    leader = session.client.cluster.status()["leader"]
    click.echo(f"Leadership: {handoff['from']} -> {leader if wait else '(the next coordinator)'}")
