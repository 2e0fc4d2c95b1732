"""Provisioner install scripts on a node that enables them (``provisioner_scripts`` in pvcnoded.yaml).

A run is a directory named by its run id (the leader's recorded step, `pvc.rpc.provisioning`) holding the
script, its input document, the wrapper's pid with its start time, and at the end ``result.json``
(`pvc.node.script_run`). The directory, not this process's memory, says what a run is: after a pvcnoded
restart a run whose wrapper still lives is ``running``, one with a result is ``done``, one with neither is
``dead``, and an id never seen here is ``unknown``. Starting a run id that exists starts nothing, so the
leader's retries never run a script twice.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pvc.errors import InvalidInput

MAX_SCRIPT_BYTES = 256 << 10
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ScriptRunner:
    def __init__(self, directory: str | os.PathLike, time_limit_s: float):
        self._directory = Path(directory)
        self._time_limit_s = time_limit_s
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, run_id: str, script: str, document: dict[str, Any]) -> dict[str, Any]:
        """Run `script` with `document` as its JSON input, unless run `run_id` exists here already; returns its
        status."""
        run_dir = self._run_dir(run_id)
        if not isinstance(script, str) or not script.startswith("#!") or len(script.encode()) > MAX_SCRIPT_BYTES:
            raise InvalidInput("an install script is text starting with '#!', at most 256 KiB")
        with self._lock:
            if run_dir.exists():
                return self._status(run_id, run_dir)
            self._directory.mkdir(parents=True, exist_ok=True)
            partial = self._directory / f".{run_id}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(mode=0o700)
            (partial / "script").write_text(script)
            (partial / "script").chmod(0o700)
            (partial / "input.json").write_text(json.dumps(document))
            # The wrapper runs the script only once the run's directory names it (`script_run.wait_until_named`):
            # made visible before its pid was written, a run cut off between the two read as dead, and the next
            # run started beside its wrapper, which ran on.
            child = subprocess.Popen([sys.executable, "-m", "pvc.node.script_run", str(run_dir),
                                      str(self._time_limit_s)], start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            (partial / "wrapper.pid").write_text(f"{child.pid} {_start_time(child.pid)}")
            os.rename(partial, run_dir)
            self._children[run_id] = child
            return self._status(run_id, run_dir)

    def status(self, run_id: str) -> dict[str, Any]:
        """``{"state": running|done|dead|unknown, ...}``; a done run adds its exit code, time-out flag and
        output (the first 64 KiB)."""
        with self._lock:
            return self._status(run_id, self._run_dir(run_id))

    def forget(self, run_id: str) -> None:
        """Remove a finished run's directory (the leader has recorded its result)."""
        run_dir = self._run_dir(run_id)
        with self._lock:
            if self._status(run_id, run_dir)["state"] != "running":
                shutil.rmtree(run_dir, ignore_errors=True)
                self._children.pop(run_id, None)

    def _status(self, run_id: str, run_dir: Path) -> dict[str, Any]:
        child = self._children.get(run_id)
        if child is not None:
            child.poll()  # reaps the wrapper, so that its pid is not a zombie's
        if not run_dir.exists():
            return {"state": "unknown"}
        result = run_dir / "result.json"
        if result.exists():
            return {"state": "done", **json.loads(result.read_text())}
        try:
            pid, started = (run_dir / "wrapper.pid").read_text().split()
        except (OSError, ValueError):
            return {"state": "dead"}
        return {"state": "running" if _start_time(int(pid)) == started else "dead"}

    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise InvalidInput(f"invalid script run id {run_id!r}")
        return self._directory / run_id


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot) while it runs, not a zombie; '' otherwise: a pid
    alone could be a later process's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]
