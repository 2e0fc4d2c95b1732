"""The process that runs one provisioner install script (``python -m pvc.node.script_run RUN_DIR SECONDS``),
started by `pvc.node.provision_scripts` in a session of its own so that it outlives a pvcnoded restart.

It runs ``RUN_DIR/script`` with ``RUN_DIR/input.json`` on standard input, a clean environment (no cluster
secret: only PATH, LANG and HOME), in a process group of its own; it kills that whole group at the time
limit (and when the script ends, so nothing it started lingers); it keeps the first `MAX_OUTPUT_BYTES` of the
script's output; and it writes ``RUN_DIR/result.json`` atomically last, so a result file means the run is
over and nothing of it runs any more.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_OUTPUT_BYTES = 64 << 10
NAMED_WAIT_S = 30.0
"""How long a new wrapper waits for its run's directory to name it."""
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(run_dir: Path, time_limit: float) -> dict:
    kept, total = bytearray(), 0
    with open(run_dir / "input.json", "rb") as document:
        process = subprocess.Popen([str(run_dir / "script")], stdin=document, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, cwd=run_dir, start_new_session=True,
                                   env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": str(run_dir)})

    def read() -> None:
        nonlocal total
        while chunk := process.stdout.read(65536):
            total += len(chunk)
            kept.extend(chunk[:max(0, MAX_OUTPUT_BYTES - len(kept))])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    timed_out = False
    try:
        exit_code = process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        exit_code = process.wait()
    _kill_group(process.pid)
    reader.join(5)
    return {"exit_code": exit_code, "timed_out": timed_out, "seconds": round(time.monotonic() - started, 3),
            "output": kept.decode(errors="replace"), "output_bytes": total}


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until_named(run_dir: Path) -> bool:
    """Whether the run's directory, once it appears, names this process as its wrapper: one started by a
    daemon cut off before it renamed the run into place finds it missing, or naming a later wrapper, and runs
    nothing."""
    deadline = time.monotonic() + NAMED_WAIT_S
    while time.monotonic() < deadline:
        try:
            return int((run_dir / "wrapper.pid").read_text().split()[0]) == os.getpid()
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
    return False


def main() -> None:
    run_dir, time_limit = Path(sys.argv[1]), float(sys.argv[2])
    if not wait_until_named(run_dir):
        return
    try:
        result = run(run_dir, time_limit)
    except OSError as error:
        result = {"exit_code": None, "timed_out": False, "seconds": 0.0, "output": f"could not run: {error}",
                  "output_bytes": 0}
    partial = run_dir / "result.json.partial"
    partial.write_text(json.dumps(result))
    os.replace(partial, run_dir / "result.json")


if __name__ == "__main__":
    main()
