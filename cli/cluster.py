"""`pvc cluster`: status, maintenance mode, and the long tasks the leader runs."""

import click
import yaml

from pvc import text_input
from pvc.cli import output

MAX_FENCE_OPTIONS_BYTES = 64 << 10

_TASK_COLUMNS = [
    output.column("ID", "id"),
    output.column("KIND", "kind"),
    output.column("FOR", "for"),
    output.column("STATE", "state"),
    output.column("PROGRESS", "progress"),
    output.column("CREATED", "created", lambda stamp: output.clock_time(stamp) if stamp else "-"),
    output.column("OUTCOME", "outcome"),
]


def _task_row(task: dict) -> dict:
    """A task of any kind (flush, ready, recover, provision) as one line: whom it is for, how far it got."""
    total, done = task.get("total"), task.get("done")
    moved, shut_down = task.get("moved") or [], task.get("shut_down") or []
    outcome = [f"{len(moved)} moved"] if moved else []
    outcome += [f"{len(shut_down)} shut down"] if shut_down else []
    outcome += [f"{len(task.get('not_moved') or [])} not moved"] if task.get("not_moved") else []
    changed = task.get("changed_by_command") or []
    outcome += [f"{len(changed)} changed by a command meanwhile ({', '.join(changed)})"] if changed else []
    outcome += [task["reason"]] if task.get("reason") else []
    if task.get("retry_at") and task.get("state") == "failed":
        outcome += [f"next attempt {output.clock_time(task['retry_at'])} (attempt {(task.get('attempt') or 1) + 1})"]
    outcome += ["; ".join(task["errors"])] if task.get("errors") else []
    return {**task, "for": task.get("node") or task.get("vm"),
            "progress": f"{done}/{total}" if total is not None else "-", "outcome": ", ".join(outcome) or "-"}



def _status_table(status: dict) -> str:
    states = ", ".join(f"{count} {state}" for state, count in sorted(status["nodes_by_daemon_state"].items()))
    banner = click.style("MAINTENANCE MODE: fencing is off", fg="yellow", bold=True) + "\n" \
        if status["maintenance"] else ""
    return banner + output.details([
        ("Maintenance", "on" if status["maintenance"] else "off"),
        ("Leader", output.plain(status["leader"])),
        ("Coordinators", output.plain([c["name"] for c in status["coordinators"]])),
        ("Nodes", f"{status['nodes_total']} ({states or 'none'}), {status['nodes_ready']} ready"),
    ])


@click.group("cluster")
def group() -> None:
    """The cluster as a whole."""


@group.command("status")
@output.format_option
@click.pass_obj
def status(session, output_format: str) -> None:
    """Leader, coordinators, node counts, and whether maintenance mode is on."""
    output.show(session.client.cluster.status(), output_format, _status_table)


@group.command("maintenance")
@click.argument("mode", type=click.Choice(["on", "off"]))
@output.format_option
@click.pass_obj
def maintenance(session, mode: str, output_format: str) -> None:
    """Turn maintenance mode on or off (while on, dead nodes are not fenced)."""
    output.show(session.client.cluster.maintenance(mode == "on"), output_format, _status_table)


@group.command("config")
@click.option("--default-selector", help="migration selector for VMs that name none")
@click.option("--migration-method", type=click.Choice(["live", "shutdown", "auto"]),
              help="how VMs migrate unless they say otherwise")
@click.option("--memory-overcommit", type=click.FloatRange(0.1, 100), metavar="RATIO",
              help="how many times its memory a node may give to the running VMs placed on it (default 1.0)")
@click.option("--allow-host-devices/--no-allow-host-devices", default=None,
              help="whether VM definitions may pass host devices (<hostdev>) and disks naming host paths")
@click.option("--fence-chain", metavar="POLICY[,POLICY...]",
              help="fencing policies tried in order on a dead node until one confirms it is off (e.g. ipmi)")
@click.option("--keepalive-interval", type=float, help="seconds between node keepalives")
@click.option("--fence-intervals", type=int, help="keepalive intervals a node may miss before it is marked dead")
@click.option("--suicide-intervals", type=int,
              help="keepalive intervals a node cut off from ZooKeeper waits before stopping its VMs (0: never)")
@click.option("--successful-fence", type=click.Choice(["migrate", "none"]),
              help="after a confirmed fence: restart the node's VMs elsewhere (migrate) or not (none)")
@click.option("--accept-io-fence/--no-accept-io-fence", default=None,
              help="whether a dead node isolated from storage but not proven off may have its VMs recovered "
                   "(only when its BMC could not be reached at all)")
@click.option("--fence-options", metavar="YAML|-",
              help="options of each fencing level as a YAML/JSON mapping {POLICY: {OPTION: VALUE}}, replacing the "
                   "stored ones ('-' reads it from stdin, keeping a password off the command line); a password "
                   "is stored sealed and shown as (set); never a BMC host or port: each node's is its own")
@click.option("--node", metavar="NODE", help="set the fencing settings given for this node only (its overrides)")
@output.format_option
@click.pass_obj
def cluster_config(session, default_selector, migration_method, memory_overcommit, allow_host_devices, fence_chain,
                   keepalive_interval, fence_intervals, suicide_intervals, successful_fence, accept_io_fence,
                   fence_options, node, output_format) -> None:
    """Show the cluster configuration, or change the keys given."""
    chain = [name.strip() for name in fence_chain.split(",") if name.strip()] if fence_chain is not None else None
    changes = {key: value for key, value in {"default_selector": default_selector,
                                             "migration_method": migration_method,
                                             "allow_host_devices": allow_host_devices,
                                             "memory_overcommit": memory_overcommit,
                                             "fence_chain": chain,
                                             "keepalive_interval": keepalive_interval,
                                             "fence_intervals": fence_intervals,
                                             "suicide_intervals": suicide_intervals,
                                             "successful_fence": successful_fence,
                                             "accept_io_fence": accept_io_fence}.items()
               if value is not None}
    if fence_options is not None:
        changes["fence_options"] = _fence_options(fence_options)
    if node is not None:
        changes["node"] = node
    settings = session.client.cluster.config(**changes)
    output.show(settings, output_format,
                lambda value: output.details([(key, output.plain(item)) for key, item in sorted(value.items())]))


def _fence_options(text: str) -> dict:
    if text == "-":
        text = text_input.read_text("-", "the fence options", MAX_FENCE_OPTIONS_BYTES)
    try:
        options = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise click.BadParameter(f"not valid YAML: {str(error).splitlines()[0]}",
                                 param_hint="--fence-options") from None
    if not isinstance(options, dict):
        raise click.BadParameter("expected a mapping {POLICY: {OPTION: VALUE}}", param_hint="--fence-options")
    return options


@group.group("task")
def task() -> None:
    """The long operations the leader runs from records in ZooKeeper: node flush and ready, recovery of a
    dead node's VMs, provisioning. Finished ones are kept for an hour."""


@task.command("list")
@click.option("-s", "--state", help="only tasks in this state (pending, running, done, failed)")
@click.option("--node", help="only tasks for this node")
@output.list_format_option
@click.pass_obj
def task_list(session, state: str | None, node: str | None, output_format: str) -> None:
    """Running and recent tasks with their progress, oldest first."""
    tasks = [each for each in session.client.nodes.tasks()
             if state in (None, each["state"]) and node in (None, each.get("node"))]
    output.show(tasks, output_format, lambda rows: output.table([_task_row(row) for row in rows], _TASK_COLUMNS))
