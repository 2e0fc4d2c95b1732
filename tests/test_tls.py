"""With TLS on, every Pyro5 connection is encrypted and verified; a plain client is refused.

Pyro5's TLS settings are per process, so the cluster and its clients run as separate programs here, as a
user would run them, leaving this test process's own connections plain."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
VM_XML = ("<domain type='test'><name>sealed</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
          "<os><type>hvm</type></os></domain>")


def run(program: str, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PVC_")}
    if config:
        env["PVC_CONFIG"] = str(config)
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def tls_cluster(tmp_path):
    state_dir = tmp_path / "tls-cluster"
    started = run("pvc-local", "up", "--tls", "--nodes", "2", "--state-dir", str(state_dir))
    assert started.returncode == 0, started.stderr
    yield state_dir
    run("pvc-local", "down", "--state-dir", str(state_dir))


def test_a_tls_cluster_works_end_to_end_and_refuses_plain_clients(tls_cluster, tmp_path):
    config = tls_cluster / "pvc.yaml"
    assert yaml.safe_load(config.read_text())["tls_ca"], "the client config trusts the cluster's certificate"

    nodes = run("pvc", "node", "list", config=config)
    assert nodes.returncode == 0, nodes.stderr
    assert "hv1" in nodes.stdout and "hv2" in nodes.stdout

    xml = tmp_path / "sealed.xml"
    xml.write_text(VM_XML)
    assert run("pvc", "vm", "define", str(xml), config=config).returncode == 0
    started = run("pvc", "vm", "start", "sealed", "--wait", "--format", "json", config=config)
    assert started.returncode == 0, "the coordinator reached the node agent over TLS: " + started.stderr
    assert '"running": true' in started.stdout

    plain = tmp_path / "plain.yaml"
    settings = yaml.safe_load(config.read_text())
    del settings["tls_ca"]
    plain.write_text(yaml.safe_dump(settings))
    refused = run("pvc", "node", "list", config=plain)
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0 and refused.stderr.startswith("Error:")
    assert "hv1" not in refused.stdout
