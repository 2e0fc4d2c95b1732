"""With TLS on, every Pyro5 connection is encrypted and verified; a plain client is refused.

Pyro5's TLS settings are per process, so the cluster and its clients run as separate programs here, as a
user would run them, leaving this test process's own connections plain."""
import json
import os
import ssl
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

    system = tmp_path / "system.yaml"
    system.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "tls_ca": "system"}))
    unverified = run("pvc", "node", "list", config=system)
    assert unverified.returncode != 0 and "hv1" not in unverified.stdout and "certificate" in unverified.stderr, \
        "the system's CAs do not vouch for the cluster's own certificate: refused, never unverified"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PVC_")}
    client_dir = tmp_path / "client"
    saved = subprocess.run([str(BIN / "pvc"), "connection", "add", "sys", *yaml.safe_load(config.read_text())["uris"],
                            "-k", yaml.safe_load(config.read_text())["api_key"], "-s"],
                           env={**env, "PVC_CLIENT_DIR": str(client_dir)}, capture_output=True, text=True, timeout=60)
    assert saved.returncode == 0, saved.stderr
    trusted = subprocess.run([str(BIN / "pvc"), "-c", "sys", "node", "list"], capture_output=True, text=True,
                             timeout=60, env={**env, "PVC_CLIENT_DIR": str(client_dir),
                                              "SSL_CERT_FILE": yaml.safe_load(config.read_text())["tls_ca"]})
    assert trusted.returncode == 0 and "hv1" in trusted.stdout, "once the system store trusts it: " + trusted.stderr

    plain = tmp_path / "plain.yaml"
    settings = yaml.safe_load(config.read_text())
    del settings["tls_ca"]
    plain.write_text(yaml.safe_dump(settings))
    refused = run("pvc", "node", "list", config=plain)
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0 and refused.stderr.startswith("Error:")
    assert "hv1" not in refused.stdout


PLAIN_STREAM = """
import json, socket
import pvc
from pvc import bulk
data = bytes(range(256)) * 4096
ticket = pvc.connect().storage.upload_begin("sealed", "plain", len(data), bulk.checksum_of_bytes(data), "raw")
host, port = ticket["address"].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=30) as sock:
    header = {"token": ticket["token"], "size_bytes": len(data), "checksum": bulk.checksum_of_bytes(data)}
    sock.sendall(json.dumps(header).encode() + b"\\n" + data)
    print(json.dumps({"tls": ticket["tls"], "answer": sock.makefile("rb").readline().decode()}))
"""


def test_uploads_travel_under_tls_and_a_stream_in_the_clear_is_refused(tls_cluster, tmp_path):
    config = tls_cluster / "pvc.yaml"
    assert run("pvc", "storage", "pool", "add", "sealed", config=config).returncode == 0
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(3 << 20))
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)

    for name, image in (("streamed", raw), ("staged", qcow2)):
        uploaded = run("pvc", "storage", "volume", "upload", "sealed", name, str(image), config=config)
        assert uploaded.returncode == 0, uploaded.stderr
        assert (tls_cluster / "storage" / "sealed" / name).read_bytes() == raw.read_bytes()

    env = {**{key: value for key, value in os.environ.items() if not key.startswith("PVC_")},
           "PVC_CONFIG": str(config)}
    plain = subprocess.run([sys.executable, "-c", PLAIN_STREAM], capture_output=True, text=True, env=env,
                           timeout=60)
    assert plain.returncode == 0, plain.stderr
    result = json.loads(plain.stdout)
    assert result["tls"] is True
    assert "TLS only" in json.loads(result["answer"])["message"]
    volumes = run("pvc", "storage", "volume", "list", "sealed", config=config)
    assert "streamed" in volumes.stdout and "plain" not in volumes.stdout


def test_a_client_never_sends_an_image_in_the_clear_once_it_uses_tls(tmp_path):
    from pvc import bulk
    from pvc.errors import ConfigError
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)], check=True, capture_output=True)

    with pytest.raises(ConfigError, match="not encrypted"):
        bulk.client_context({"tls": False}, str(ca))
    with pytest.raises(ConfigError, match="needs tls_ca"):
        bulk.client_context({"tls": True}, None)
    assert bulk.client_context({"tls": False}, None) is None
    assert bulk.client_context({"tls": True}, str(ca)).verify_mode == ssl.CERT_REQUIRED
