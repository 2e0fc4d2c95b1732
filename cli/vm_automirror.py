"""`pvc vm automirror`: scheduled mirrors of the VMs carrying a tag, each snapshotted and sent to another PVC
cluster (`pvc.rpc.mirror.automirror`); the settings are cluster config keys (`pvc cluster config
--automirror-*`)."""
import click

from pvc.cli import output, scheduled_runs


@click.group("automirror")
def automirror() -> None:
    """Scheduled mirrors: each VM carrying the cluster's automirror_tag is snapshotted and sent to
    automirror_destination (incrementally once the mirror there holds its previous snapshot), keeping
    automirror_keep of its automirror snapshots here; the leader runs them on automirror_schedule."""


def _outcome(task: dict) -> str:
    steps = task.get("steps") or {}
    lines = [f"automirror run {task['id']}: {task['state']}"]
    for vm in task.get("vms") or []:
        step = steps.get(vm) or {}
        detail = step.get("error") or (f"{step.get('kind')}, {step.get('bytes')} bytes"
                                       if step.get("state") == "done" else "")
        lines.append(f"  {vm}: {step.get('state')}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


@automirror.command("run")
@click.argument("vms", metavar="[VM...]", nargs=-1)
@click.option("-w", "--wait", is_flag=True, help="wait until the run has finished, and exit 1 if it failed")
@output.format_option
@click.pass_obj
def automirror_run(session, vms: tuple, wait: bool, output_format: str) -> None:
    """Start an automirror run now: of the VMs named, or of every VM carrying automirror_tag."""
    task = session.client.vms.automirror_run(list(vms) or None)
    scheduled_runs.show_run(session, task, "automirror", wait, output_format, _outcome)


@automirror.command("status")
@output.format_option
@click.pass_obj
def automirror_status(session, output_format: str) -> None:
    """The automirror settings, the run in progress and the last run's outcome."""
    output.show(session.client.vms.automirror_status(), output_format, scheduled_runs.status_details)
