"""Confirmations: `pvc` asks before it loses data or interrupts a VM, as upstream PVC does; `--yes` or `pvc --unsafe`
skip the question; without a terminal it refuses instead of hanging; a few questions answered through a real
pseudo-terminal. Commands upstream runs without a question still run without one."""
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvc.cli.main import cli

from vm_support import vm_xml

PVC = str(Path(sys.executable).with_name("pvc"))


@pytest.fixture(scope="module")
def env(cluster):
    return {"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None,
            "PVC_CONNECTION": None, "PVC_UNSAFE": None}


@pytest.fixture(scope="module")
def pvc(env):
    runner = CliRunner(env=env)

    def run(*args: str, extra_env: dict | None = None):
        if extra_env:
            return CliRunner(env={**env, **extra_env}).invoke(cli, list(args), catch_exceptions=False)
        return runner.invoke(cli, list(args), catch_exceptions=False)
    return run


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def defined_vm(pvc, tmp_path_factory):
    path = tmp_path_factory.mktemp("xml") / "asked.xml"
    path.write_text(vm_xml("asked", memory_mib=256))
    ok(pvc("vm", "define", str(path), "--target", "hv1"))
    return "asked"


@pytest.fixture
def running_vm(pvc, defined_vm):
    """The VM, started, whatever an earlier test left it in."""
    if vm_state(pvc, defined_vm) != "start":
        ok(pvc("vm", "start", defined_vm, "--wait"))
    return defined_vm


def vm_state(pvc, vm: str) -> str:
    return json.loads(ok(pvc("vm", "info", vm, "--format", "json")))["state"]


@pytest.fixture(scope="module")
def volume(pvc):
    ok(pvc("storage", "pool", "add", "asking"))
    ok(pvc("storage", "volume", "add", "asking", "data", "4M"))
    ok(pvc("storage", "volume", "snapshot", "add", "asking", "data", "kept"))
    return "asking", "data"


def volume_names(pvc) -> list[str]:
    return ok(pvc("storage", "volume", "list", "asking", "-f", "raw")).split()


@pytest.mark.parametrize("command, question", [
    (("vm", "stop", "asked"), "Forcibly stop VM asked"),
    (("vm", "shutdown", "asked"), "Shut down VM asked"),
    (("vm", "restart", "asked"), "Restart VM asked"),
    (("vm", "disable", "asked"), "Shut down and disable VM asked"),
])
def test_a_vm_command_that_interrupts_it_is_refused_without_a_terminal(pvc, running_vm, command, question):
    refused = pvc(*command)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr == (f"Error: not confirmed: {question} (no terminal to ask on; pass --yes, or pvc "
                              "--unsafe)\n")
    assert vm_state(pvc, running_vm) == "start"


@pytest.mark.parametrize("command", [
    ("storage", "volume", "remove", "asking", "data"),
    ("storage", "volume", "resize", "asking", "data", "8M"),
    ("storage", "volume", "rename", "asking", "data", "renamed"),
    ("storage", "volume", "snapshot", "remove", "asking", "data", "kept"),
    ("storage", "volume", "snapshot", "rollback", "asking", "data", "kept"),
    ("storage", "pool", "remove", "asking", "--force"),
])
def test_a_storage_command_that_loses_data_is_refused_without_a_terminal(pvc, volume, command):
    refused = pvc(*command)
    assert refused.exit_code == 1 and refused.stderr.startswith("Error: not confirmed: ")
    assert refused.stderr.count("\n") == 1
    info = json.loads(ok(pvc("storage", "volume", "info", "asking", "data", "-f", "json")))
    assert (info["size_bytes"], info["snapshots"]) == (4 << 20, ["kept"])
    assert volume_names(pvc) == ["asking/data"]


def test_yes_and_unsafe_skip_the_question(pvc, running_vm):
    ok(pvc("vm", "stop", running_vm, "--yes", "--wait"))
    assert vm_state(pvc, running_vm) == "stop"
    ok(pvc("vm", "start", running_vm, "--wait"))
    ok(pvc("--unsafe", "vm", "shutdown", running_vm, "-w"))
    assert vm_state(pvc, running_vm) == "shutdown"
    ok(pvc("vm", "start", running_vm, "--wait"))
    ok(pvc("vm", "restart", running_vm, "-y", "-w"))
    assert vm_state(pvc, running_vm) == "start"
    ok(pvc("vm", "disable", running_vm, "-w", extra_env={"PVC_UNSAFE": "1"}))
    assert vm_state(pvc, running_vm) == "disable"
    ok(pvc("vm", "start", running_vm, "--wait"))


def test_yes_and_unsafe_skip_the_question_for_storage(pvc, volume):
    resized = json.loads(ok(pvc("storage", "volume", "resize", "asking", "data", "8M", "-y", "-f", "json")))
    assert resized["size_bytes"] == 8 << 20
    ok(pvc("-u", "storage", "volume", "rename", "asking", "data", "renamed"))
    ok(pvc("storage", "volume", "rename", "asking", "renamed", "data", "--yes"))
    rolled = json.loads(ok(pvc("storage", "volume", "snapshot", "rollback", "asking", "data", "kept", "-y",
                               "-f", "json")))
    assert rolled["size_bytes"] == 4 << 20
    assert volume_names(pvc) == ["asking/data"]


@pytest.mark.parametrize("command, undo", [
    (("node", "flush", "hv2", "--wait"), ("node", "ready", "hv2", "--wait")),
    (("cluster", "maintenance", "on"), ("cluster", "maintenance", "off")),
])
def test_what_upstream_runs_without_a_question_runs_without_one(pvc, command, undo):
    ok(pvc(*command))
    ok(pvc(*undo))


def test_migrate_runs_without_a_question(pvc, running_vm):
    ok(pvc("vm", "migrate", running_vm, "-t", "hv3", "-w"))
    ok(pvc("vm", "unmigrate", running_vm, "-w"))


def test_quiet_and_silent(pvc):
    progress = pvc("node", "flush", "hv3", "--wait")
    assert "flush hv3" in progress.stderr
    ok(pvc("node", "ready", "hv3", "--wait"))
    quiet = pvc("-q", "node", "flush", "hv3", "--wait")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout.startswith("flush of hv3: done")
    silent = pvc("--silent", "node", "ready", "hv3", "--wait")
    assert silent.exit_code == 0 and (silent.stdout, silent.stderr) == ("", "")
    failed = pvc("-s", "node", "info", "hv9")
    assert failed.exit_code == 1 and (failed.stdout, failed.stderr) == ("", "Error: no node named 'hv9'\n")


class Terminal:
    """`pvc ARGS` on a real pseudo-terminal, as a person at a shell runs it."""

    def __init__(self, env: dict, *args: str):
        self.main, secondary = pty.openpty()
        environment = {**os.environ, **{key: value for key, value in env.items() if value is not None}}
        for key in (key for key, value in env.items() if value is None):
            environment.pop(key, None)
        self.process = subprocess.Popen([PVC, *args], stdin=secondary, stdout=secondary, stderr=secondary,
                                        env=environment, close_fds=True)
        os.close(secondary)
        self.seen = ""

    def expect(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"never saw {text!r} on the terminal; saw {self.seen!r}"
            if select.select([self.main], [], [], min(remaining, 0.5))[0]:
                try:
                    self.seen += os.read(self.main, 4096).decode(errors="replace")
                except OSError:
                    break
        assert text in self.seen, self.seen
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.main, text.encode())

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        try:
            while select.select([self.main], [], [], 0.1)[0]:
                self.seen += os.read(self.main, 4096).decode(errors="replace")
        except OSError:
            pass
        os.close(self.main)
        return code


def test_the_question_on_a_terminal_answered_no_changes_nothing(env, pvc, running_vm):
    terminal = Terminal(env, "vm", "stop", running_vm)
    terminal.expect("Forcibly stop VM asked [y/N]: ")
    terminal.type("n\n")
    assert terminal.finish() == 1
    assert "Aborted!" in terminal.seen
    assert vm_state(pvc, running_vm) == "start"


def test_the_question_on_a_terminal_answered_yes_goes_ahead(env, pvc, volume):
    ok(pvc("storage", "volume", "snapshot", "add", "asking", "data", "doomed"))
    terminal = Terminal(env, "storage", "volume", "snapshot", "remove", "asking", "data", "doomed")
    terminal.expect("Remove snapshot asking/data@doomed [y/N]: ")
    terminal.type("y\n")
    assert terminal.finish() == 0
    assert "Removed snapshot asking/data@doomed" in terminal.seen
    assert json.loads(ok(pvc("storage", "volume", "info", "asking", "data", "-f", "json")))["snapshots"] == ["kept"]


def test_silent_still_asks_on_the_terminal(env, pvc, volume):
    ok(pvc("storage", "volume", "add", "asking", "scratch", "4M"))
    terminal = Terminal(env, "--silent", "storage", "volume", "remove", "asking", "scratch")
    terminal.expect("Remove volume asking/scratch and delete its data [y/N]: ")
    terminal.type("y\n")
    assert terminal.finish() == 0
    assert "Removed volume" not in terminal.seen
    assert volume_names(pvc) == ["asking/data"]


def test_modify_asks_before_replacing_the_definition(pvc, running_vm, tmp_path):
    before = ok(pvc("vm", "dump", running_vm))
    bigger = tmp_path / "bigger.xml"
    bigger.write_text(vm_xml(running_vm, memory_mib=384))
    refused = pvc("vm", "modify", running_vm, str(bigger), "-r")
    assert refused.stderr == (f"Error: not confirmed: Replace the domain XML of VM {running_vm} and restart it (no "
                              "terminal to ask on; pass --yes, or pvc --unsafe)\n")
    assert ok(pvc("vm", "dump", running_vm)) == before
    changed = json.loads(ok(pvc("vm", "modify", running_vm, str(bigger), "--yes", "-f", "json")))
    assert changed["memory_mib"] == 384
