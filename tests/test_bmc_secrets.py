"""BMC passwords reach ZooKeeper only sealed, under a key derived from the cluster secret that never enters it;
the leader opens them in memory to fence, and no listing ever shows one."""
import base64
import json
import logging

import pytest
from click.testing import CliRunner

from pvc import schema
from pvc.cli.main import cli
from pvc.errors import InvalidInput
from pvc.fence_secrets import opened_node, opened_options, sealed_options
from pvc.secrets_box import PREFIX, SecretError, SecretsBox

from helpers import cluster_store, eventually
from test_fencing import _recovery, _vms_on
from vm_support import wait_running_on

PASSWORD = "bmc-Pa55word"
CONTEXT = "node hv1 bmc password"


@pytest.fixture
def box() -> SecretsBox:
    return SecretsBox("the-cluster-secret")


# -- sealing -------------------------------------------------------------------------------------------------


def test_a_sealed_secret_is_tagged_opaque_and_opens_only_in_its_place(box):
    sealed = box.seal(PASSWORD, CONTEXT)
    again = box.seal(PASSWORD, CONTEXT)

    assert sealed.startswith(PREFIX) and PASSWORD not in sealed
    assert sealed != again, "each seal draws a fresh nonce"
    assert box.open(sealed, CONTEXT) == box.open(again, CONTEXT) == PASSWORD
    with pytest.raises(SecretError, match="^node hv2 bmc password: cannot open the sealed value"):
        box.open(sealed, "node hv2 bmc password")


def test_another_cluster_secret_cannot_open_it(box):
    sealed = box.seal(PASSWORD, CONTEXT)
    with pytest.raises(SecretError) as refused:
        SecretsBox("another-cluster-secret").open(sealed, CONTEXT)
    assert str(refused.value) == (f"{CONTEXT}: cannot open the sealed value: it was sealed under another "
                                  "cluster_secret, for another place, or altered")


@pytest.mark.parametrize("change", [
    lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),   # the authentication tag
    lambda raw: raw[:14] + bytes([raw[14] ^ 1]) + raw[15:],  # the ciphertext
    lambda raw: bytes([raw[0] ^ 1]) + raw[1:],  # the nonce
])
def test_a_tampered_sealed_value_is_refused(box, change):
    raw = base64.urlsafe_b64decode(box.seal(PASSWORD, CONTEXT)[len(PREFIX):])
    tampered = PREFIX + base64.urlsafe_b64encode(change(raw)).decode()
    with pytest.raises(SecretError, match="cannot open the sealed value"):
        box.open(tampered, CONTEXT)


@pytest.mark.parametrize("value, why", [
    ("sealed:v1:!!!not-base64", "not valid base64"),
    ("sealed:v1:" + base64.urlsafe_b64encode(b"short").decode(), "truncated"),
    ("sealed:v9:AAAA", "scheme 'v9'"),
])
def test_a_malformed_sealed_value_says_what_is_wrong(box, value, why):
    with pytest.raises(SecretError, match=why):
        box.open(value, CONTEXT)


def test_fence_options_store_a_password_only_sealed(box):
    stored = sealed_options(box, {"ipmi": {"password": PASSWORD, "user": "admin"}, "none": {}}, {})
    assert PASSWORD not in json.dumps(stored)
    assert stored["ipmi"]["user"] == "admin" and stored["none"] == {}
    assert opened_options(box, "ipmi", stored["ipmi"]) == {"password": PASSWORD, "user": "admin"}

    kept = sealed_options(box, {"ipmi": {"password": "(set)", "user": "root"}}, stored)
    assert kept["ipmi"] == {"password": stored["ipmi"]["password"], "user": "root"}
    with pytest.raises(InvalidInput, match="none is stored"):
        sealed_options(box, {"ipmi": {"password": "(set)"}}, {})
    with pytest.raises(InvalidInput, match="fence_options must map fencing policy names"):
        sealed_options(box, {"ipmi": "password"}, {})
    with pytest.raises(InvalidInput, match="cannot open the sealed value"):
        sealed_options(box, {"ipmi": {"password": SecretsBox("other").seal(PASSWORD, "x")}}, {})


def test_a_plain_password_of_an_older_record_still_works_with_a_warning(box, caplog):
    node = {"name": "hv1", "bmc": {"host": "169.254.253.1", "port": 623, "user": "admin", "password": PASSWORD}}
    with caplog.at_level(logging.WARNING, logger="pvc.fence_secrets"):
        assert opened_node(box, node)["bmc"]["password"] == PASSWORD
    assert [record.getMessage() for record in caplog.records] == [
        "node hv1 bmc password is stored in plain text in ZooKeeper (an older record): restart its pvcnoded to "
        "seal it"]


# -- against a local cluster ---------------------------------------------------------------------------------


def _every_znode(zk, path: str = schema.ROOT):
    data, _stat = zk.get(path)
    yield path, data
    for child in zk.get_children(path):
        yield from _every_znode(zk, f"{path}/{child}")


@pytest.mark.cluster(nodes=3)
def test_zookeeper_holds_no_plain_bmc_password_and_an_ipmi_fence_still_powers_the_node_off(fresh_cluster):
    client, local = fresh_cluster.client, fresh_cluster.local
    password = local.state["bmc_password"]
    runner = CliRunner(env={"PVC_CONFIG": str(local.client_config), "PVC_URI": None, "PVC_API_KEY": None})
    refused = runner.invoke(cli, ["cluster", "config", "--fence-options", "{ipmi: [password]}"])
    assert refused.exit_code == 1 and "fence_options must map fencing policy names" in refused.stderr
    assert runner.invoke(cli, ["cluster", "config", "--fence-options", "[1, 2]"]).exit_code == 2
    assert client.cluster.config()["fence_options"] == {}, "refused options leave nothing behind"
    result = runner.invoke(cli, ["cluster", "config", "--fence-options", "-", "--format", "json"],
                           input=json.dumps({"ipmi": {"password": password, "status_interval": 0.2}}))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fence_options"] == {"ipmi": {"password": "(set)", "status_interval": 0.2}}
    assert client.nodes.info("hv1")["bmc_password"] == "(set)"
    for command in (["node", "info", "hv1"], ["node", "info", "hv1", "--format", "json"], ["node", "list"],
                    ["cluster", "config"], ["cluster", "config", "--format", "json"]):
        result = runner.invoke(cli, command, catch_exceptions=False)
        assert result.exit_code == 0 and password not in result.output, (command, result.output)
    assert "password (set)" in runner.invoke(cli, ["node", "info", "hv1"]).output

    with cluster_store(local) as store:
        znodes = dict(_every_znode(store.zk))
        record = schema.decode(znodes[schema.node("hv1")])
        config = schema.decode(znodes[schema.CONFIG])
    assert not [path for path, data in znodes.items() if data and password.encode() in data]
    assert record["bmc"]["password"].startswith(PREFIX)
    assert config["fence_options"]["ipmi"]["password"].startswith(PREFIX)

    _vms_on(client, "hv1", ["sealed-guard"])
    local.stop_daemon("pvcnoded", "hv1", kill=True)

    recovery = _recovery(client, "hv1", "done")
    assert recovery["fence"][0]["policy"] == "ipmi" and recovery["fence"][0]["confirmed"], recovery
    assert "Chassis Power is off" in recovery["fence"][0]["explanation"]
    assert not local.host("hv1").running
    node = eventually(lambda: (lambda vm: vm["node"] if vm["running"] and vm["node"] != "hv1" else None)(
        client.vms.info("sealed-guard")), 20)
    assert node, client.vms.info("sealed-guard")
    wait_running_on(fresh_cluster, "sealed-guard", node)
    with cluster_store(local) as store:
        assert not [path for path, data in _every_znode(store.zk) if data and password.encode() in data], \
            "the recovery task records no password either"
    logs = [path.read_text(errors="replace") for path in local.state_dir.glob("*/*/*.log")]
    assert logs and not any(password in text for text in logs), "no log holds the password"
