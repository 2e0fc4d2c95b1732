"""Bad text handed to the CLI: every command that reads a text (a domain document, user data, fence options, an
API key file, the connections file, the client settings file, an editor's result) is fed, in process through
click's runner, non-UTF-8 bytes, NULs, control characters and an oversized file. Each answers with one line
naming the file, exits 1 or 2, and records nothing: ZooKeeper and the connections file are as they were."""
import os
import random
import shlex

import pytest
from click.testing import CliRunner

from pvc import schema
from pvc.cli.main import cli
from pvc.domain_xml import MAX_XML_BYTES
from pvc.provisioner_records import MAX_USER_DATA_BYTES

from conftest import started_cluster
from helpers import cluster_store, eventually
from vm_support import vm_xml

SEED = int(os.environ.get("PVC_TEXT_SEED") or random.randrange(1 << 32))


@pytest.fixture(scope="module")
def text_cluster(tmp_path_factory):
    running = started_cluster(tmp_path_factory.mktemp("text"), nodes=1, coordinators=1)
    cluster = next(running)
    cluster.client.vms.define(vm_xml("keeper"))
    # Its node's first report lands after the define answers; taken before it, a test's "before" would lack it.
    with cluster_store(cluster.local) as store:
        assert eventually(lambda: store.read(schema.vm_key("keeper", "status")), 10)
    yield cluster
    next(running, None)


def bad_payloads(rng: random.Random, limit_bytes: int) -> dict[str, bytes]:
    """Text that is not: invalid UTF-8 (a lone continuation byte, a truncated sequence, Latin-1), a NUL, C0
    controls, and one byte more than the command accepts."""
    words = "".join(rng.choice("abcdefgh <>=\"'\n\té✓") for _ in range(rng.randrange(20, 200)))
    cut = rng.randrange(len(words))
    invalid = rng.choice([b"\x80", b"\xc3", b"\xe2\x9c", b"\xff\xfe", "café".encode("latin-1")])
    control = chr(rng.choice([*range(1, 9), 0x0b, 0x0c, *range(0x0e, 0x20), 0x7f]))
    return {
        "invalid UTF-8": words[:cut].encode() + invalid + words[cut:].encode(),
        "NUL": (words[:cut] + "\0" + words[cut:]).encode(),
        "control character": (words[:cut] + control + words[cut:]).encode(),
        "oversized": b"a" * (limit_bytes + 1),
    }


def recorded(cluster) -> dict:
    """What ZooKeeper holds of VMs, profiles and the cluster's config."""
    with cluster_store(cluster.local) as store:
        def tree(path):
            values = {path: store.read(path)}
            for child in store.children(path):
                values.update(tree(f"{path}/{child}"))
            return values
        return {**tree(schema.VMS), **tree(schema.PROFILES), **tree(schema.CONFIG)}


def commands(cluster, path: str, client_dir: str):
    """Each text-reading command line, its input on stdin, and its environment, reading the text from `path`."""
    to_cluster = {"PVC_CONFIG": str(cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None,
                  "PVC_CLIENT_DIR": client_dir, "PVC_CONNECTION": None}
    data = open(path, "rb").read()
    return {
        "vm define": (["vm", "define", path], None, to_cluster, MAX_XML_BYTES),
        "vm modify": (["vm", "modify", "keeper", path, "--yes"], None, to_cluster, MAX_XML_BYTES),
        "vm modify --editor": (["vm", "modify", "keeper", "--editor", "--yes"], None,
                               {**to_cluster, "EDITOR": f"cp {shlex.quote(path)}"}, MAX_XML_BYTES),
        "profile add --user-data": (["provisioner", "profile", "add", "badprofile", "--user-data", path], None,
                                    to_cluster, MAX_USER_DATA_BYTES),
        "profile add --user-data -": (["provisioner", "profile", "add", "badprofile", "--user-data", "-"], data,
                                      to_cluster, MAX_USER_DATA_BYTES),
        "cluster config --fence-options -": (["cluster", "config", "--fence-options", "-"], data, to_cluster,
                                             64 << 10),
        "connection add --api-key-file": (["connection", "add", "bad", "pvc://127.0.0.1:7370", "--api-key-file",
                                           path], None, to_cluster, 4096),
        "connections file": (["connection", "list"], None, {**to_cluster, "PVC_CLIENT_DIR": os.path.dirname(path)},
                             1 << 20),
        "client settings file": (["vm", "list"], None, {**to_cluster, "PVC_CONFIG": path}, 1 << 20),
    }


def test_every_text_reading_command_refuses_bad_text_in_one_line_and_records_nothing(text_cluster, tmp_path):
    print(f"seed {SEED} (PVC_TEXT_SEED={SEED} repeats it)")
    rng = random.Random(SEED)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    before = recorded(text_cluster)
    names = list(commands(text_cluster, __file__, str(client_dir)))
    for name in names:
        limit = commands(text_cluster, __file__, str(client_dir))[name][3]
        for kind, payload in bad_payloads(rng, limit).items():
            folder = tmp_path / f"{names.index(name)}-{kind.replace(' ', '-')}"
            folder.mkdir()
            path = folder / "connections.yaml"
            path.write_bytes(payload)
            arguments, stdin, env, _limit = commands(text_cluster, str(path), str(client_dir))[name]

            result = CliRunner().invoke(cli, arguments, input=stdin, env=env)

            where = f"{name} fed {kind} (seed {SEED})"
            assert result.exit_code in (1, 2), f"{where}: exit {result.exit_code}\n{result.output}"
            assert not isinstance(result.exception, UnicodeError) and "Traceback" not in result.stderr, where
            errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
            assert len(errors) == 1, f"{where}: {result.stderr}"
            shown = "standard input" if stdin is not None else "your editor left" if "EDITOR" in env else str(path)
            assert shown in errors[0], f"{where}: {errors[0]}"
            assert list(client_dir.iterdir()) == [], where
    assert recorded(text_cluster) == before


def test_utf8_text_is_read_as_utf8_whatever_the_locale(text_cluster, tmp_path):
    user_data = tmp_path / "user-data"
    user_data.write_bytes("#cloud-config\n# café ✓ ünïcode\n".encode())
    env = {"PVC_CONFIG": str(text_cluster.local.client_config), "PVC_URI": None, "PVC_API_KEY": None,
           "LC_ALL": "C", "LANG": "C"}

    result = CliRunner().invoke(cli, ["provisioner", "profile", "add", "utf8", "--user-data", str(user_data)],
                                env=env)

    assert result.exit_code == 0, result.output
    assert text_cluster.client.provisioner.profile_info("utf8")["user_data_bytes"] == \
        len("#cloud-config\n# café ✓ ünïcode\n".encode())
    text_cluster.client.provisioner.profile_remove("utf8")
