"""What `pvc vm autobackup` and `pvc vm automirror` share: a run started now (and waited for), and the lines of
its status that both kinds have."""
import sys
import time
from typing import Callable

from pvc.cli import output

FINISHED = ("done", "failed")
WAIT_POLL_S = 0.5


def show_run(session, task: dict, kind: str, wait: bool, output_format: str, outcome: Callable[[dict], str]
             ) -> None:
    """Show the run just started, or with `wait` its outcome once it has finished (exit 1 if it failed)."""
    if not wait:
        output.show(task, output_format, lambda shown: f"{kind} run {shown['id']} started for "
                                                       f"{len(shown['vms'])} VM(s)")
        return
    while task["state"] not in FINISHED:
        time.sleep(WAIT_POLL_S)
        task = session.client.nodes.task(task["id"])
    output.show(task, output_format, outcome)
    if task["state"] == "failed":
        sys.exit(1)


def status_details(status: dict) -> str:
    """The settings, the run in progress and the last run's outcome."""
    last = status["last_outcome"] or {}
    return output.details([
        *((key, output.plain(value)) for key, value in sorted(status["settings"].items())),
        ("running", output.plain(status["running"])),
        ("last run", f"{last.get('task')}: {last.get('state')}" if last else "-"),
        *((("errors", "; ".join(last["errors"])),) if last.get("errors") else ())])
