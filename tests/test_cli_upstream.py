"""An upstream PVC user at our `pvc`: their command lines work, beside ours, against a real local cluster; and the
operator views (node log, task list, snapshots across volumes) show what a user needs."""
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pvc.cli.main import cli

from vm_support import vm_xml, wait_running_on

PVC = str(Path(sys.executable).with_name("pvc"))


@pytest.fixture(scope="module")
def pvc(cluster):
    """Runs `pvc ARGS...` in-process as a user whose PVC_CONFIG points at the cluster."""
    runner = CliRunner(env={"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None,
                            "PVC_CONNECTION": None, "PVC_UNSAFE": None})

    def run(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)
    return run


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def one_line_error(result) -> str:
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def vm_file(tmp_path_factory):
    def write(name: str) -> str:
        path = tmp_path_factory.mktemp("xml") / f"{name}.xml"
        path.write_text(vm_xml(name, memory_mib=256))
        return str(path)
    return write


def test_vm_define_and_meta_take_upstreams_short_options(pvc, vm_file):
    vm = as_json(pvc("vm", "define", vm_file("up-define"), "-t", "hv1", "-l", "hv1,hv2", "-s", "mem", "-a",
                     "-m", "none", "-d", "250", "-f", "json"))
    assert (vm["node"], vm["node_limit"], vm["node_selector"]) == ("hv1", ["hv1", "hv2"], "mem")
    assert (vm["node_autostart"], vm["migration_method"], vm["max_downtime_ms"]) == (True, "auto", 250)

    changed = as_json(pvc("vm", "meta", "up-define", "--limit", "", "--node-selector", "none", "--no-autostart",
                          "--method", "live", "--format", "json-pretty"))
    assert (changed["node_limit"], changed["node_selector"]) == ([], None)
    assert (changed["node_autostart"], changed["migration_method"]) == (False, "live")

    ours = as_json(pvc("vm", "meta", "up-define", "--node-limit", "hv2", "--node-autostart",
                       "--migration-method", "shutdown", "--format", "json"))
    assert (ours["node_limit"], ours["node_autostart"], ours["migration_method"]) == (["hv2"], True, "shutdown")
    assert "Node limit:" in ok(pvc("vm", "info", "up-define", "-f", "pretty"))


def test_upstreams_formats_beside_ours(pvc):
    assert ok(pvc("plugin", "list", "-f", "json-pretty")) == ok(pvc("plugin", "list", "--format", "json"))
    assert ok(pvc("plugin", "list", "-f", "pretty")) == ok(pvc("plugin", "list"))
    assert ok(pvc("node", "list", "-f", "raw")).split() == ["hv1", "hv2", "hv3"]
    refused = pvc("node", "list", "-f", "yaml")
    assert "'yaml' is not one of 'table', 'json', 'pretty', 'json-pretty', 'raw'" in refused.stderr


def test_node_list_filters_by_name_and_state(pvc, cluster):
    assert ok(pvc("node", "list", "hv[12]", "-f", "raw")).split() == ["hv1", "hv2"]
    assert ok(pvc("node", "list", "-ds", "run", "-vs", "ready", "-f", "raw")).split() == ["hv1", "hv2", "hv3"]
    assert ok(pvc("node", "list", "--domain-state", "flushed", "-f", "raw")) == ""
    mistyped = pvc("node", "list", "-ds", "runing")
    assert mistyped.exit_code == 2 and "'runing' is not one of 'init', 'run', 'stop', 'dead', 'fenced'" in \
        mistyped.output, mistyped.output
    assert "not a regular expression" in pvc("node", "list", "hv[").stderr


def test_vm_list_filters_by_regex_node_state_and_negation(pvc, vm_file, cluster):
    for name, node in (("lister-a", "hv1"), ("lister-b", "hv2")):
        ok(pvc("vm", "define", vm_file(name), "--target", node))
    ok(pvc("vm", "start", "lister-a", "-w"))
    assert ok(pvc("vm", "list", "^lister-", "-f", "raw")).split() == ["lister-a", "lister-b"]
    assert ok(pvc("vm", "list", "lister", "-t", "hv2", "-f", "raw")).split() == ["lister-b"]
    assert ok(pvc("vm", "list", "lister", "--node", "hv1", "-f", "raw")).split() == ["lister-a"]
    assert ok(pvc("vm", "list", "lister", "-s", "start", "-f", "raw")).split() == ["lister-a"]
    assert ok(pvc("vm", "list", "lister", "-s", "start", "-n", "-f", "raw")).split() == ["lister-b"]
    rows = as_json(pvc("vm", "list", "lister-b", "--format", "json"))
    assert [row["name"] for row in rows] == ["lister-b"] and rows[0]["node"] == "hv2"


def test_vm_dump_to_a_file(pvc, vm_file, tmp_path):
    ok(pvc("vm", "define", vm_file("dumped")))
    printed = ok(pvc("vm", "dump", "dumped"))
    assert ok(pvc("vm", "dump", "dumped", "--file", str(tmp_path / "dumped.xml"))) == ""
    assert (tmp_path / "dumped.xml").read_text() == printed
    ok(pvc("vm", "dump", "dumped", "-f", str(tmp_path / "short.xml")))
    assert (tmp_path / "short.xml").read_text() == printed


def test_migrate_force_is_upstreams_and_ignore_limit_is_ours(pvc, vm_file, cluster):
    ok(pvc("vm", "define", vm_file("wanderer"), "-t", "hv1", "-l", "hv1,hv2"))
    ok(pvc("vm", "start", "wanderer", "--wait"))
    moved = as_json(pvc("vm", "migrate", "wanderer", "-t", "hv2", "-w", "--format", "json"))
    assert (moved["node"], moved["last_node"]) == ("hv2", "hv1")

    again = one_line_error(pvc("vm", "migrate", "wanderer", "-t", "hv3"))
    assert "VM wanderer is migrated already (from hv1): --force migrates it again" in again

    outside = one_line_error(pvc("vm", "migrate", "wanderer", "-t", "hv3", "-f"))
    assert "outside VM 'wanderer''s node limit (hv1, hv2); use --ignore-limit to override" in outside
    forced = as_json(pvc("vm", "migrate", "wanderer", "-t", "hv3", "--force", "--ignore-limit", "-w",
                         "--format", "json"))
    assert (forced["node"], forced["last_node"]) == ("hv3", "hv1")
    wait_running_on(cluster, "wanderer", "hv3")
    back = as_json(pvc("vm", "unmigrate", "wanderer", "-w", "-f", "json"))
    assert (back["node"], back["last_node"]) == ("hv1", None)


def test_node_commands_default_to_this_host(pvc, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "hv3.example.org")
    assert "Name:               hv3" in ok(pvc("node", "info"))
    flushed = ok(pvc("node", "flush", "-w"))
    assert flushed.startswith("flush of hv3: done")
    assert ok(pvc("node", "ready", "--wait")).startswith("ready of hv3: done")

    monkeypatch.setattr(socket, "gethostname", lambda: "workstation")
    refused = pvc("node", "info")
    assert refused.exit_code == 2
    assert "give a NODE: this host (workstation) is not a node of the cluster" in refused.stderr


def test_cluster_task_list_shows_flushes_and_readies_with_progress(pvc):
    ok(pvc("node", "flush", "hv2", "--wait"))
    ok(pvc("node", "ready", "hv2", "--wait"))
    tasks = as_json(pvc("cluster", "task", "list", "--node", "hv2", "-f", "json"))
    assert [(task["kind"], task["state"]) for task in tasks][-2:] == [("flush", "done"), ("ready", "done")]
    assert all(task["name"] == task["id"] for task in tasks)
    table = ok(pvc("cluster", "task", "list", "--node", "hv2"))
    header, *rows = table.splitlines()
    assert header.split()[:6] == ["ID", "KIND", "FOR", "STATE", "PROGRESS", "CREATED"]
    assert rows[-1].split()[1:4] == ["ready", "hv2", "done"]
    assert ok(pvc("cluster", "task", "list", "-s", "done", "-f", "raw")).split()[-1] == tasks[-1]["id"]


def test_node_log_shows_the_daemons_log_and_follows_it(pvc, vm_file, cluster):
    log_file = cluster.local.state_dir / "nodes" / "hv1" / "pvcnoded.log"
    shown = ok(pvc("node", "log", "hv1", "--lines", "3")).splitlines()
    assert len(shown) == 3 and set(shown) <= set(log_file.read_text().splitlines())
    assert any("node hv1 is running" in line for line in ok(pvc("node", "log", "hv1", "-l", "10000")).splitlines())

    ok(pvc("vm", "define", vm_file("logged"), "-t", "hv1"))
    ok(pvc("vm", "start", "logged", "-w"))
    env = {**os.environ, "PVC_CONFIG": str(cluster.local.client_config)}
    follower = subprocess.Popen([PVC, "node", "log", "hv1", "--follow", "-l", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
    try:
        first = _read_until(follower, lambda text: text.count("\n") >= 1, 20)
        assert first.count("\n") == 1
        ok(pvc("vm", "move", "logged", "-t", "hv2", "-w"))
        followed = _read_until(follower, lambda text: "logged handed over to hv2" in text, 20)
        assert "logged handed over to hv2" in followed
    finally:
        follower.terminate()
        follower.wait(10)


def _read_until(process, done, timeout: float) -> str:
    text = ""
    with selectors.DefaultSelector() as waiting:
        waiting.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not done(text) and time.monotonic() < deadline:
            if waiting.select(timeout=0.5):
                text += os.read(process.stdout.fileno(), 65536).decode()
    return text


def test_node_log_of_an_unknown_node_is_a_one_line_error(pvc):
    assert one_line_error(pvc("node", "log", "hv9")) == "Error: no node named 'hv9'\n"


def test_storage_pool_add_takes_upstreams_pgs_where_the_backend_has_them(pvc):
    refused = one_line_error(pvc("storage", "pool", "add", "upstream-pool", "64"))
    assert "the file backend takes no pool options (got: pg_num)" in refused
    refused = one_line_error(pvc("storage", "pool", "add", "upstream-pool", "--replcfg", "copies=3,mincopies=2"))
    assert "the file backend takes no pool options (got: copies, mincopies)" in refused
    assert "expected copies=N,mincopies=M" in pvc("storage", "pool", "add", "p", "--replcfg", "three").stderr
    assert ok(pvc("storage", "pool", "list", "upstream", "-f", "raw")) == ""


def test_volumes_and_snapshots_listed_by_pool_and_across_volumes(pvc):
    ok(pvc("storage", "pool", "add", "snaps"))
    for volume in ("disk-a", "disk-b"):
        ok(pvc("storage", "volume", "add", "snaps", volume, "4M"))
    assert ok(pvc("storage", "volume", "list", "--pool", "snaps", "-f", "raw")).split() == ["snaps/disk-a",
                                                                                          "snaps/disk-b"]
    assert ok(pvc("storage", "volume", "list", "-p", "snaps")) == ok(pvc("storage", "volume", "list", "snaps"))

    ok(pvc("storage", "volume", "snapshot", "add", "snaps", "disk-a", "first"))
    ok(pvc("storage", "volume", "snapshot", "add", "snaps", "disk-b", "second"))
    every = as_json(pvc("storage", "volume", "snapshot", "list", "-f", "json"))
    assert {(row["pool"], row["volume"], row["name"]) for row in every} >= {("snaps", "disk-a", "first"),
                                                                          ("snaps", "disk-b", "second")}
    assert ok(pvc("storage", "volume", "snapshot", "list", "-p", "snaps", "-f", "raw")).split() == [
        "snaps/disk-a@first", "snaps/disk-b@second"]
    assert ok(pvc("storage", "volume", "snapshot", "list", "-o", "disk-b", "-f", "raw")).split() == [
        "snaps/disk-b@second"]
    ours = as_json(pvc("storage", "volume", "snapshot", "list", "snaps", "disk-a", "--format", "json"))
    assert [(row["name"], row["volume"]) for row in ours] == [("first", "disk-a")]


def test_snapshot_rename(pvc, cluster):
    ok(pvc("storage", "pool", "add", "renames"))
    ok(pvc("storage", "volume", "add", "renames", "disk", "4M"))
    ok(pvc("storage", "volume", "snapshot", "add", "renames", "disk", "before"))
    ok(pvc("storage", "volume", "snapshot", "add", "renames", "disk", "taken"))
    renamed = as_json(pvc("storage", "volume", "snapshot", "rename", "renames", "disk", "before", "golden",
                          "-f", "json"))
    assert (renamed["name"], renamed["volume"], renamed["pool"]) == ("golden", "disk", "renames")
    assert ok(pvc("storage", "volume", "snapshot", "list", "renames", "disk", "-f", "raw")).split() == [
        "renames/disk@golden", "renames/disk@taken"]
    assert as_json(pvc("storage", "volume", "info", "renames", "disk", "-f", "json"))["snapshots"] == [
        "golden", "taken"]
    rolled = pvc("storage", "volume", "snapshot", "rollback", "renames", "disk", "golden", "-y")
    assert rolled.exit_code == 0, rolled.stderr

    taken = one_line_error(pvc("storage", "volume", "snapshot", "rename", "renames", "disk", "golden", "taken"))
    assert "has a snapshot named 'taken' already" in taken
    missing = one_line_error(pvc("storage", "volume", "snapshot", "rename", "renames", "disk", "absent", "new"))
    assert "has no snapshot named 'absent'" in missing
    bad = one_line_error(pvc("storage", "volume", "snapshot", "rename", "renames", "disk", "golden", "../x"))
    assert "invalid snapshot name" in bad
    assert ok(pvc("storage", "volume", "snapshot", "list", "renames", "disk", "-f", "raw")).split() == [
        "renames/disk@golden", "renames/disk@taken"]


def _commands(command: click.Command, path: tuple[str, ...] = ("pvc",)):
    yield path, command
    if isinstance(command, click.Group):
        for name, child in command.commands.items():
            yield from _commands(child, (*path, name))


def test_no_command_declares_an_option_twice():
    for path, command in _commands(cli):
        names = [name for parameter in command.params if isinstance(parameter, click.Option)
                 for name in (*parameter.opts, *parameter.secondary_opts)]
        assert len(names) == len(set(names)), f"{' '.join(path)}: {sorted(names)}"


@pytest.mark.parametrize("words, expected", [
    ("pvc connection ", {"add", "default", "detail", "list", "remove"}),
    ("pvc node l", {"list", "log"}),
    ("pvc cluster task ", {"list"}),
    ("pvc storage volume snapshot re", {"remove", "rename"}),
    ("pvc vm migrate wanderer --i", {"--ignore-limit"}),
    ("pvc -", {"-c", "-q", "-s", "-u"}),
    ("pvc provisioner ", {"userdata", "profile", "template"}),
    ("pvc provisioner userdata ", {"add", "list", "info", "modify", "remove"}),
    ("pvc provisioner script ", {"add", "list", "info", "remove"}),
    ("pvc provisioner profile modify p --sc", {"--script", "--script-arg"}),
    ("pvc provisioner template storage disk ", {"add", "remove"}),
    ("pvc provisioner template system add t --v", {"--vram", "--vnc-bind", "--vcpus"}),
    ("pvc provisioner profile add p --", {"--profile-type", "--userdata"}),
    ("pvc vm migrate wanderer --force", {"--force-live"}),
    ("pvc vm vcpu set v 2 --no", {"--no-restart"}),
    ("pvc vm volume add v /f --t", {"--type"}),
    ("pvc vm modify v f -", {"-d", "-c"}),
    ("pvc node list -", {"-cs", "-ds", "-vs"}),
    ("pvc connection add c -", {"-s"}),
    ("pvc cluster config --m", {"--memory-overcommit"}),
])
def test_shell_completion_covers_the_new_commands_and_options(words, expected):
    env = {**os.environ, "_PVC_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    completed = subprocess.run([PVC], env=env, capture_output=True, text=True, timeout=60)
    offered = {line.split(",", 1)[1] for line in completed.stdout.splitlines() if "," in line}
    assert expected <= offered, completed.stdout


def test_snapshot_rename_and_pool_replication_on_each_backend(storage_cluster, tmp_path):
    """The same upstream command lines on the file backend and on a real Ceph."""
    runner = CliRunner(env={"PVC_CONFIG": str(storage_cluster.local.client_config), "PVC_URI": None,
                            "PVC_API_KEY": None, "PVC_CONNECTION": None, "PVC_UNSAFE": None})

    def pvc(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)
    pool = f"upstream-{storage_cluster.backend}"
    if storage_cluster.backend == "ceph":
        added = as_json(pvc("storage", "pool", "add", pool, "8", "--replcfg", "copies=2,mincopies=1", "-f", "json"))
        assert added["options"] == {"pg_num": 8, "copies": 2, "mincopies": 1}
        assert "mincopies (2) cannot exceed copies (1)" in one_line_error(
            pvc("storage", "pool", "add", "other", "--replcfg", "copies=1,mincopies=2"))
    else:
        ok(pvc("storage", "pool", "add", pool))
    try:
        ok(pvc("storage", "volume", "add", pool, "disk", "4M"))
        ok(pvc("storage", "volume", "snapshot", "add", pool, "disk", "before"))
        renamed = as_json(pvc("storage", "volume", "snapshot", "rename", pool, "disk", "before", "after", "-f", "json"))
        assert renamed["name"] == "after"
        assert ok(pvc("storage", "volume", "snapshot", "list", "-p", pool, "-f", "raw")).split() == [
            f"{pool}/disk@after"]
        ok(pvc("storage", "volume", "snapshot", "rollback", pool, "disk", "after", "--yes"))
        clone = as_json(pvc("storage", "volume", "clone", pool, "disk", "copy", "--snapshot", "after", "-f", "json"))
        assert clone["size_bytes"] == 4 << 20
    finally:
        ok(pvc("storage", "pool", "remove", pool, "--force", "--yes"))


def test_following_a_log_returns_whole_lines_and_starts_over_after_rotation(tmp_path):
    from pvc.node import daemon_log
    log = tmp_path / "pvcnoded.log"
    log.write_text("one\ntwo\nthr")
    tail = daemon_log.read(log, 1)
    assert tail == {"lines": ["thr"], "offset": len("one\ntwo\nthr")}
    start = daemon_log.read(log, 10, 4)
    assert start == {"lines": ["two"], "offset": 8}, "a line still being written waits for its end"
    with open(log, "a") as file:
        file.write("ee\nfour\n")
    assert daemon_log.read(log, 10, start["offset"]) == {"lines": ["three", "four"], "offset": 19}
    log.write_text("new\n")
    assert daemon_log.read(log, 10, 19) == {"lines": ["new"], "offset": 4}
