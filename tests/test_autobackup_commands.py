"""A node's side of autobackup: its pre and post commands run through the shell, bounded in time (the whole
process group killed), a failure one line naming the setting, its status and its last line of output; and
retention's removals, which follow no link and say in one line what they could not remove."""
import subprocess
import time
from pathlib import Path

import pytest

from pvc.errors import OperationFailed
from pvc.node.autobackup_exports import AutobackupExports, run_command
from pvc.node.backups import BackupRoots

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


def test_retention_removes_whole_exports_follows_no_link_and_names_what_it_could_not_remove(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for export in ("vm/full", "vm/odd"):
        (root / export).mkdir(parents=True)
        (root / export / "manifest.json").write_text("{}")
    (root / "vm" / "odd" / "unexpected").mkdir()
    outside.mkdir()
    (outside / "keep").write_text("mine")
    (root / "vm" / "link").symlink_to(outside)
    exports = AutobackupExports(None, BackupRoots([str(root)], tmp_path / "journal"), {})

    assert exports.state(str(root / "vm" / "full")) == "whole"
    assert exports.remove([str(root / "vm" / "full"), str(root / "vm" / "gone")]) == [str(root / "vm" / "full")]
    assert exports.state(str(root / "vm" / "full")) == "absent"
    with pytest.raises(OperationFailed, match=r"^cannot remove the export .*/vm/odd: "):
        exports.remove([str(root / "vm" / "odd")])
    with pytest.raises(OperationFailed, match="cannot remove the export"):
        exports.remove([str(root / "vm" / "link")])
    assert (outside / "keep").read_text() == "mine", "nothing is removed through a link"


def test_a_store_the_commands_mount_is_mounted_to_look_at_an_export_and_to_remove_it(tmp_path):
    """The pre command mounts the store over the backup root and the post command unmounts it (a bind mount
    here): a whole export looked at unmounted was "absent", and retention found nothing to remove."""
    root, store = tmp_path / "root", tmp_path / "store"
    root.mkdir()
    (store / "vm" / "full").mkdir(parents=True)
    (store / "vm" / "full" / "manifest.json").write_text("{}")
    exports = AutobackupExports(None, BackupRoots([str(root)], tmp_path / "journal"),
                                {"autobackup_pre_command": f"mount --bind {store} {root}",
                                 "autobackup_post_command": f"umount {root}"})
    try:
        assert exports.state(str(root / "vm" / "full")) == "whole"
        assert not (root / "vm").exists(), "unmounted after the look"
        assert exports.remove([str(root / "vm" / "full")]) == [str(root / "vm" / "full")]
        assert not (store / "vm" / "full").exists(), "removed from the store itself"
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)
