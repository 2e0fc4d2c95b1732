"""The manual (docs/) builds offline with warnings as errors, and documents everything the code offers: a new
command, setting, cluster config key, hook, remote method or state without documentation fails here, naming it.

The manual is built once for this module, into a temporary directory (about two seconds)."""
import ast
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

from pvc import cluster_config, config, errors, hookspecs, schema
from pvc.cli.local import cli as local_cli
from pvc.cli.main import cli

DOCS = Path(__file__).parent.parent / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import pvc_docs  # noqa: E402  (the manual's own extension: how it finds commands and remote areas)


@pytest.fixture(scope="module")
def manual(tmp_path_factory) -> Path:
    """The built manual's HTML directory; the build must pass with warnings as errors and nitpicky references."""
    output = tmp_path_factory.mktemp("manual")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                            "-d", str(output / ".doctrees"), str(DOCS), str(output)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr + build.stdout
    return output


@pytest.fixture(scope="module")
def inventory(manual) -> dict[str, set[str]]:
    """The built manual's objects.inv: object type → names."""
    data = InventoryFile.loads((manual / "objects.inv").read_bytes(), uri="")
    return {objtype: set(entries) for objtype, entries in data.data.items()}


def missing(inventory: dict[str, set[str]], objtype: str, names) -> list[str]:
    return sorted(set(names) - inventory.get(objtype, set()))


def test_the_manual_builds_offline_with_warnings_as_errors(manual):
    assert (manual / "index.html").exists()
    assert "Configuration reference" in (manual / "admin" / "configuration.html").read_text()


def test_every_command_is_in_the_manual(inventory):
    commands = [name for name, _command in pvc_docs.walk_commands(cli, ("pvc",))]
    commands += [name for name, _command in pvc_docs.walk_commands(local_cli, ("pvc-local",))]
    assert "pvc cluster config" in commands and "pvc-local up" in commands
    assert missing(inventory, "std:pvc-command", commands) == []


def test_every_setting_and_cluster_config_key_is_in_the_manual(inventory):
    settings = [f"{file_name}:{setting.name}" for file_name, (attribute, _about) in pvc_docs.SETTINGS_FILES.items()
                for setting in getattr(config, attribute)]
    assert "pvcnoded.yaml:node_name" in settings and "connections.yaml:uris" in settings
    assert missing(inventory, "std:pvc-setting", settings) == []
    assert missing(inventory, "std:pvc-cluster-key", [key.name for key in cluster_config.KEYS]) == []
    assert missing(inventory, "std:pvc-rule", cluster_config.RULES) == []


def test_every_settings_list_is_documented():
    """A new list of settings in pvc.config (a new file) needs its place in the manual's SETTINGS_FILES."""
    lists = {name for name, value in vars(config).items() if name.endswith("_SETTINGS") and isinstance(value, list)}
    assert lists == {attribute for attribute, _about in pvc_docs.SETTINGS_FILES.values()}


def test_every_hook_and_what_it_registers_is_in_the_manual(inventory):
    hooks = [name for name, value in vars(hookspecs).items()
             if inspect.isfunction(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")]
    assert set(hookspecs.REGISTRATION_HOOKS) <= set(hooks)
    assert missing(inventory, "py:function", [f"pvc.hookspecs.{hook}" for hook in hooks]) == []
    interfaces = [value for value in vars(hookspecs).values()
                  if inspect.isclass(value) and value.__module__ == hookspecs.__name__]
    members = [f"pvc.hookspecs.{interface.__name__}.{name}" for interface in interfaces
               for name, member in vars(interface).items() if inspect.isfunction(member) and not name.startswith("_")]
    assert missing(inventory, "py:class", [f"pvc.hookspecs.{each.__name__}" for each in interfaces]) == []
    assert missing(inventory, "py:method", members) == []


def test_every_public_remote_method_is_in_the_manual(inventory):
    methods = [f"{area.__module__}.{area.__qualname__}.{name}" for area in pvc_docs.remote_areas()
               for name in pvc_docs.remote_methods(area)]
    assert "pvc.rpc.areas.vms.VMsArea.start" in methods
    assert missing(inventory, "py:method", methods) == [], "a remote method without a docstring is left out"
    assert missing(inventory, "py:function", ["pvc.connect", "pvc.ova_client.upload_ova"]) == []
    assert missing(inventory, "py:method", ["pvc.storage_client.StorageClient.upload"]) == []


def test_every_daemon_domain_and_vm_state_is_in_the_troubleshooting_guide(inventory):
    states = [f"daemon:{state}" for state in schema.DAEMON_STATES]
    states += [f"domain:{state}" for state in schema.DOMAIN_STATES]
    states += [f"vm:{state}" for state in schema.VM_STATES]
    assert missing(inventory, "std:pvc-state", states) == [], \
        "document each in docs/admin/troubleshooting.md: ```{pvc-state} KIND:STATE``` and what to do about it"


def test_every_remote_method_documents_the_errors_it_raises():
    """Each public remote method lists its errors (``:raises X:``), including every error its own body raises, so
    a new ``raise`` of another kind must be documented with it."""
    problems = []
    for area in pvc_docs.remote_areas():
        for name in pvc_docs.remote_methods(area):
            method = inspect.unwrap(getattr(area, name))
            documented = set(re.findall(r":raises (\w+):", inspect.getdoc(method) or ""))
            if not documented:
                problems.append(f"{area.__name__}.{name}: no :raises: field")
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
            raised = {node.exc.func.id for node in ast.walk(tree) if isinstance(node, ast.Raise)
                      and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name)}
            if raised - documented:
                problems.append(f"{area.__name__}.{name}: raises {', '.join(sorted(raised - documented))} undocumented")
            if documented - set(vars(errors)):
                problems.append(f"{area.__name__}.{name}: documents {', '.join(sorted(documented - set(vars(errors))))}, "
                                "not an error of pvc.errors")
    assert problems == [], "give each a docstring with a :raises ERROR: reason field per error it can raise"


def test_the_command_reference_names_upstream_spellings(manual):
    """Spellings declared upstream PVC's on an option (`pvc.cli.upstream`) are named in the reference."""
    page = (manual / "cli.html").read_text()
    declared = [getattr(parameter, "upstream") for _name, command in pvc_docs.walk_commands(cli)
                for parameter in command.params if getattr(parameter, "upstream", ())]
    assert {("-m", "--method"), ("--profile-type",), ("-cs", "--coordinator-state"), ("-s", "--ssl"),
            ("--dhcp-start", "-s"), ("-d", "--confirm-diff")} <= set(declared)
    assert [spellings for spellings in declared
            if f"Upstream PVC's spelling: {', '.join(spellings)}." not in page] == []
    assert "pretty (upstream's name for table)" in page
