"""`pvc cluster`: status, maintenance mode, and the long tasks the leader runs."""

import click
import yaml

from pvc import cluster_config
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
    outcome += [f"{len(task['backed_up'])} backed up"] if task.get("kind") == "autobackup" and "backed_up" in task \
        else []
    outcome += [f"{len(task['mirrored'])} mirrored"] if task.get("kind") == "automirror" and "mirrored" in task \
        else []
    outcome += ["; ".join(task["errors"])] if task.get("errors") else []
    chosen = f"{len(task['vms'])} VM(s)" if isinstance(task.get("vms"), list) else None
    return {**task, "for": task.get("node") or task.get("vm") or chosen,
            "progress": f"{done}/{total}" if total is not None else "-", "outcome": ", ".join(outcome) or "-"}



def _status_table(status: dict) -> str:
    states = ", ".join(f"{count} {state}" for state, count in sorted(status["nodes_by_daemon_state"].items()))
    banner = click.style("MAINTENANCE MODE: fencing is off", fg="yellow", bold=True) + "\n" \
        if status["maintenance"] else ""
    resources = status.get("resources") or {}
    severities = ", ".join(f"{count} {severity}" for severity, count in status["faults_by_severity"].items() if count)
    vms = ", ".join(f"{count} {state}" for state, count in sorted((resources.get("vms_by_state") or {}).items()))
    return banner + output.details([
        ("Health", f"{status['health']}%"),
        ("Faults", f"{status['faults_active']} active ({severities or 'none'}), "
                   f"{status['faults_unacknowledged']} unacknowledged"),
        ("Maintenance", "on" if status["maintenance"] else "off"),
        ("Leader", output.plain(status["leader"])),
        ("Coordinators", output.plain([c["name"] for c in status["coordinators"]])),
        ("Nodes", f"{status['nodes_total']} ({states or 'none'}), {status['nodes_ready']} ready"),
        ("VMs", f"{resources.get('vms_total', 0)} ({vms or 'none'})"),
        ("Resources", f"{resources.get('cpus', 0)} CPUs, {resources.get('vcpus_allocated', 0)} vCPUs allocated; "
                      f"memory {output.mib(resources.get('memory_allocated_mib'))} allocated, "
                      f"{output.mib(resources.get('memory_provisioned_mib'))} provisioned of "
                      f"{output.mib(resources.get('memory_total_mib'))}"),
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


_FAULT_COLUMNS = [
    output.column("ID", "id"),
    output.column("SEVERITY", "severity"),
    output.column("DELTA", "delta", lambda delta: f"-{delta}"),
    output.column("STATE", "shown_state"),
    output.column("COUNT", "count"),
    output.column("FIRST SEEN", "first_seen", lambda stamp: output.clock_time(stamp) if stamp else "-"),
    output.column("LAST SEEN", "last_seen", lambda stamp: output.clock_time(stamp) if stamp else "-"),
    output.column("MESSAGE", "message"),
]


def _fault_table(faults: list) -> str:
    def state(fault: dict) -> str:
        if not fault["active"]:
            return "cleared"
        return "acknowledged" if fault["acknowledged"] else "active"
    return output.table([{**fault, "shown_state": state(fault)} for fault in faults], _FAULT_COLUMNS)


@group.group("fault")
def fault_group() -> None:
    """What the health checks found wrong: list, acknowledge, delete."""


@fault_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="cleared faults too (kept a while before they are pruned)")
@output.list_format_option
@click.pass_obj
def fault_list(session, show_all: bool, output_format: str) -> None:
    """Active faults, newest first; an acknowledged one no longer counts against health."""
    output.show(session.client.cluster.faults(all=show_all), output_format, _fault_table)


@fault_group.command("ack")
@click.argument("fault_ids", metavar="ID...", nargs=-1, required=True)
@output.list_format_option
@click.pass_obj
def fault_ack(session, fault_ids: tuple, output_format: str) -> None:
    """Acknowledge faults: they stop counting against health until they clear and happen again."""
    output.show(session.client.cluster.fault_ack(list(fault_ids)), output_format, _fault_table)


@fault_group.command("ack-all")
@output.list_format_option
@click.pass_obj
def fault_ack_all(session, output_format: str) -> None:
    """Acknowledge every active fault."""
    output.show(session.client.cluster.fault_ack_all(), output_format, _fault_table)


@fault_group.command("delete")
@click.argument("fault_ids", metavar="ID...", nargs=-1, required=True)
@output.list_format_option
@click.pass_obj
def fault_delete(session, fault_ids: tuple, output_format: str) -> None:
    """Forget faults now; a problem still present is raised again, counting from one."""
    output.show(session.client.cluster.fault_delete(list(fault_ids)), output_format, _fault_table)


@group.command("maintenance")
@click.argument("mode", type=click.Choice(["on", "off"]))
@output.format_option
@click.pass_obj
def maintenance(session, mode: str, output_format: str) -> None:
    """Turn maintenance mode on or off (while on, dead nodes are not fenced)."""
    output.show(session.client.cluster.maintenance(mode == "on"), output_format, _status_table)


def _key_option(key: cluster_config.ClusterKey):
    """The option of `pvc cluster config` that sets `key`, from its declaration."""
    if key.kind == "bool":
        return click.option(f"{key.option}/--no-{key.option[2:]}", key.name, default=None, help=key.description)
    if key.kind == "names":
        return click.option(key.option, key.name, metavar="NAME[,NAME...]", callback=_names, help=key.description)
    if key.kind == "mapping":
        return click.option(key.option, key.name, metavar="YAML|-", callback=_mapping, help=key.description)
    types = {"choice": click.Choice(key.choices), "int": int, "float": float, "str": str}
    return click.option(key.option, key.name, type=types[key.kind], help=key.description)


def _names(_context: click.Context, _parameter: click.Parameter, value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value is not None else None


def _mapping(_context: click.Context, parameter: click.Parameter, value: str | None) -> dict | None:
    return _yaml_mapping(value, parameter.opts[0]) if value is not None else None


def _cluster_config_command(function):
    for key in reversed(cluster_config.KEYS):
        if key.settable:
            function = _key_option(key)(function)
    return function


@group.command("config")
@_cluster_config_command
@click.option("--node", metavar="NODE",
              help="set the fencing and libvirt-lost settings given for this node only (its overrides)")
@output.format_option
@click.pass_obj
def cluster_config_command(session, node, output_format, **values) -> None:
    """Show the cluster configuration, or change the keys given (every key: the manual's cluster config
    reference)."""
    changes = {key: value for key, value in values.items() if value is not None}
    if node is not None:
        changes["node"] = node
    settings = session.client.cluster.config(**changes)
    output.show(settings, output_format,
                lambda value: output.details([(key, output.plain(item)) for key, item in sorted(value.items())]))


def _yaml_mapping(text: str, option: str) -> dict:
    if text == "-":
        text = text_input.read_text("-", "the fence options", MAX_FENCE_OPTIONS_BYTES)
    try:
        options = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise click.BadParameter(f"not valid YAML: {str(error).splitlines()[0]}", param_hint=option) from None
    if not isinstance(options, dict):
        raise click.BadParameter("expected a mapping {POLICY: {OPTION: VALUE}}", param_hint=option)
    return options


@group.group("task")
def task() -> None:
    """The long operations the leader runs from records in ZooKeeper: node flush and ready, recovery of a
    dead node's VMs, provisioning, autobackup runs. Finished ones are kept for an hour."""


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
