"""`pvc vm autobackup`: scheduled backups of the VMs carrying a tag, as chains of full and incremental exports
(`pvc.rpc.backup`); the settings are cluster config keys (`pvc cluster config --autobackup-*`)."""
import click

from pvc.cli import output, scheduled_runs

_CHAIN_COLUMNS = [
    output.column("VM", "name"),
    output.column("CHAIN", "chain"),
    output.column("BACKUPS", "backups"),
    output.column("LAST", "last"),
    output.column("BYTES", "bytes"),
    output.column("REMOVING", "removing"),
]


@click.group("autobackup")
def autobackup() -> None:
    """Scheduled backups: each VM carrying the cluster's autobackup_tag is snapshotted and exported under
    autobackup_destination, a full export every autobackup_full_interval backups and incrementals between,
    keeping autobackup_keep_chains chains; the leader runs them on autobackup_schedule (pvc cluster config)."""


def _outcome(task: dict) -> str:
    steps = task.get("steps") or {}
    lines = [f"autobackup run {task['id']}: {task['state']}"]
    for vm in task.get("vms") or []:
        step = steps.get(vm) or {}
        detail = step.get("error") or (f"{step.get('kind')} to {step.get('destination')}"
                                       if step.get("state") == "done" else "")
        lines.append(f"  {vm}: {step.get('state')}" + (f" ({detail})" if detail else ""))
    lines += [f"  {vm}: {step[key]}" for vm, step in steps.items()
              for key in ("post_command_error", "retention_error") if step.get(key)]
    return "\n".join(lines)


@autobackup.command("run")
@click.argument("vms", metavar="[VM...]", nargs=-1)
@click.option("-F", "--force-full", is_flag=True, help="a full export of each VM, beginning a new chain")
@click.option("-w", "--wait", is_flag=True, help="wait until the run has finished, and exit 1 if it failed")
@output.format_option
@click.pass_obj
def autobackup_run(session, vms: tuple, force_full: bool, wait: bool, output_format: str) -> None:
    """Start an autobackup run now: of the VMs named, or of every VM carrying autobackup_tag. Prints the task
    id (pvc cluster task list shows its progress)."""
    task = session.client.vms.autobackup_run(list(vms) or None, force_full=force_full)
    scheduled_runs.show_run(session, task, "autobackup", wait, output_format, _outcome)


@autobackup.command("status")
@output.format_option
@click.pass_obj
def autobackup_status(session, output_format: str) -> None:
    """The autobackup settings, the run in progress, the last run's outcome and every VM's chains."""
    def shown(status: dict) -> str:
        return scheduled_runs.status_details(status) + "\n\n" + output.table(status["chains"], _CHAIN_COLUMNS)
    output.show(session.client.vms.autobackup_status(), output_format, shown)
