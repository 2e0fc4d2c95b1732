"""`pvc vm autobackup`: scheduled backups of the VMs carrying a tag, as chains of full and incremental exports
(`pvc.rpc.backup`); the settings are cluster config keys (`pvc cluster config --autobackup-*`)."""
import sys
import time

import click

from pvc.cli import output

FINISHED = ("done", "failed")
WAIT_POLL_S = 0.5

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
    if not wait:
        output.show(task, output_format, lambda shown: f"autobackup run {shown['id']} started for "
                                                       f"{len(shown['vms'])} VM(s)")
        return
    while task["state"] not in FINISHED:
        time.sleep(WAIT_POLL_S)
        task = session.client.nodes.task(task["id"])
    output.show(task, output_format, _outcome)
    if task["state"] == "failed":
        sys.exit(1)


@autobackup.command("status")
@output.format_option
@click.pass_obj
def autobackup_status(session, output_format: str) -> None:
    """The autobackup settings, the run in progress, the last run's outcome and every VM's chains."""
    def shown(status: dict) -> str:
        last = status["last_outcome"] or {}
        details = output.details([
            *((key, output.plain(value)) for key, value in sorted(status["settings"].items())),
            ("running", output.plain(status["running"])),
            ("last run", f"{last.get('task')}: {last.get('state')}" if last else "-"),
            *((("errors", "; ".join(last["errors"])),) if last.get("errors") else ())])
        return details + "\n\n" + output.table(status["chains"], _CHAIN_COLUMNS)
    output.show(session.client.vms.autobackup_status(), output_format, shown)
