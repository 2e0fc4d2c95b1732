"""A node's autobackup pre and post commands: run through the shell, bounded in time (the whole process group
killed), a failure one line naming the setting, its status and its last line of output."""
import time
from pathlib import Path

import pytest

from pvc.errors import OperationFailed
from pvc.node.autobackup_exports import run_command

from helpers import eventually


def test_a_command_that_succeeds_says_nothing(tmp_path):
    run_command(f"echo mounted > {tmp_path / 'out'}", 5, "autobackup_pre_command")
    assert (tmp_path / "out").read_text() == "mounted\n"


def test_a_failing_command_is_one_line_with_its_status_and_last_output():
    with pytest.raises(OperationFailed) as failed:
        run_command("echo first; echo 'mount: no such device' >&2; exit 32", 5, "autobackup_pre_command")
    assert str(failed.value) == "autobackup_pre_command exited with status 32: mount: no such device"


def test_a_command_past_its_time_is_killed_with_everything_it_started(tmp_path):
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(OperationFailed, match="did not finish within 0.5 s and was killed"):
        run_command(f"sleep 30 & echo $! > {marker}; wait", 0.5, "autobackup_post_command")
    assert time.monotonic() - started < 5
    status = Path(f"/proc/{int(marker.read_text())}/status")
    assert eventually(lambda: _dead(status), 2), "the command's child was killed too"


def _dead(status: Path) -> bool:
    """Gone, or a zombie no one has reaped yet."""
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True
