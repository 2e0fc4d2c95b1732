"""Autobackup's exports on this node: the node's own pre and post commands around each export, and what a
leader resuming a run asks about one.

The commands come only from this node's pvcnoded.yaml (``autobackup_pre_command``, ``autobackup_post_command``):
they run as root, so nothing reaching the API can name one. Each runs through ``/bin/sh -c`` in a process
group of its own, killed whole at ``autobackup_command_timeout``; they also surround a look at an export and
retention's removals, as they surround its writing. A leader that took over a run asks `state`:
while this node still writes an export (its pre command included) it says ``writing``, and the leader waits;
then ``whole`` or ``absent``, which the export's directory alone decides (it is renamed into place whole).
"""
import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from pvc.errors import OperationFailed
from pvc.hookspecs import StorageBackend
from pvc.node import backups

log = logging.getLogger(__name__)

MAX_SHOWN_OUTPUT = 200
"""Characters of a failed command's last output line that its error shows."""


class AutobackupExports:
    def __init__(self, backend: StorageBackend, roots: backups.BackupRoots, settings: dict[str, Any]):
        self._backend = backend
        self._roots = roots
        self._pre = settings.get("autobackup_pre_command")
        self._post = settings.get("autobackup_post_command")
        self._timeout = float(settings.get("autobackup_command_timeout") or 300)
        self._writing: set[str] = set()
        self._lock = threading.Lock()

    def export(self, manifest: dict[str, Any], destination: str) -> dict[str, Any]:
        """Run the pre command, write the export (making the VM's directory, `destination`'s parent, if it is
        missing) and run the post command whatever became of the export. A failed pre command or export fails
        the call; a failed post command is reported as ``post_command_error``, the export being whole."""
        with self._lock:
            if destination in self._writing:
                raise OperationFailed(f"an export to {destination} is already under way on this node")
            self._writing.add(destination)
        try:
            try:
                if self._pre:
                    run_command(self._pre, self._timeout, "autobackup_pre_command")
                self._roots.ensure_directory(os.path.dirname(destination))
                written = backups.export(self._backend, self._roots, manifest, destination)
            finally:
                post_error = self._post_command()
            return {"bytes": sum(volume["bytes"] for volume in written["volumes"]),
                    "post_command_error": post_error}
        finally:
            with self._lock:
                self._writing.discard(destination)

    def _post_command(self) -> str | None:
        if not self._post:
            return None
        try:
            run_command(self._post, self._timeout, "autobackup_post_command")
        except OperationFailed as error:
            log.warning("%s", error)
            return str(error)
        return None

    def state(self, destination: str) -> str:
        """``writing`` while this node is at an export to `destination`, else ``whole`` or ``absent``, looked
        at between the pre and post commands, as the export was written."""
        with self._lock:
            if destination in self._writing:
                return "writing"
        with self._store_ready():
            return "whole" if self._roots.holds_export(destination) else "absent"

    def remove(self, paths: list[str]) -> list[str]:
        """Remove finished exports (retention), in the order given, between the pre and post commands; returns
        those that were there."""
        removed = []
        with self._store_ready():
            for path in paths:
                try:
                    if self._roots.remove_export(path):
                        removed.append(path)
                except OSError as error:
                    raise OperationFailed(f"cannot remove the export {path}: {error.strerror or error}") from None
        return removed

    @contextmanager
    def _store_ready(self) -> Iterator[None]:
        """The pre command before and the post command after: a store they mount and unmount holds the exports
        only meanwhile. Looked at unmounted, a whole export had been "absent" (a resumed run undid it and could
        not write it again) and retention's removals found nothing, and forgot chains whose files stayed."""
        if self._pre:
            run_command(self._pre, self._timeout, "autobackup_pre_command")
        try:
            yield
        finally:
            self._post_command()


def run_command(command: str, timeout: float, what: str) -> None:
    """Run `command` through the shell in a process group of its own, killed whole after `timeout` seconds
    (only then: what it leaves running on purpose, a FUSE mount's daemon, stays); a failure is one line naming
    `what`, its exit status and its last line of output."""
    process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.communicate()
        raise OperationFailed(f"{what} did not finish within {timeout:g} s and was killed") from None
    if process.returncode != 0:
        lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip()[:MAX_SHOWN_OUTPUT] if lines else "no output"
        raise OperationFailed(f"{what} exited with status {process.returncode}: {last}")


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
