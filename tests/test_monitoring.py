"""Metrics, dashboards and alerts against a real Prometheus (Debian's ``prometheus``) scraping a local cluster
with running guests: every family is present with values matching `pvc` and each host's libvirt, every
dashboard panel's query and every alert expression parses, and the panels listed in
contrib/monitoring/panels-with-data.txt have data. The alert rules pass `promtool check rules` and `promtool
test rules`.

Dashboard variables are substituted by a stated rule: each variable's first value (sorted, as the dashboard
sorts them), and ``$__rate_interval`` as ``1m``."""
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from pvc.cli.localcluster.prometheus import LocalPrometheus, MONITORING

from helpers import eventually
from vm_support import vm_xml

RATE_INTERVAL = "1m"
FAMILIES = [
    "pvc_cluster_health", "pvc_cluster_faults", "pvc_fault", "pvc_cluster_nodes", "pvc_cluster_nodes_by_domain_state",
    "pvc_cluster_vms", "pvc_cluster_maintenance", "pvc_coordinator_leader",
    "pvc_node_health", "pvc_node_daemon_state", "pvc_node_domain_state", "pvc_node_cpus", "pvc_node_load",
    "pvc_node_memory_total_bytes", "pvc_node_memory_used_bytes", "pvc_node_memory_allocated_bytes",
    "pvc_node_memory_provisioned_bytes", "pvc_node_vms_running", "pvc_node_vcpus_allocated",
    "pvc_node_keepalive_age_seconds", "pvc_node_figures_stale", "pvc_node_converge_lag_seconds", "pvc_node_vm_stats_age_seconds",
    "pvc_vm_state", "pvc_vm_running", "pvc_vm_unknown", "pvc_vm_vcpus", "pvc_vm_memory_bytes",
    "pvc_vm_cpu_seconds_total", "pvc_vm_memory_balloon_bytes", "pvc_vm_memory_used_bytes",
    "pvc_storage_pool_volumes", "pvc_storage_pool_snapshots", "pvc_storage_pool_provisioned_bytes",
    "pvc_storage_pool_size_bytes", "pvc_storage_pool_used_bytes", "pvc_storage_pool_free_bytes",
    "pvc_storage_health_delta",
    "pvc_zookeeper_up", "pvc_zookeeper_latency_average_seconds", "pvc_zookeeper_latency_max_seconds",
    "pvc_zookeeper_outstanding_requests", "pvc_zookeeper_znodes", "pvc_zookeeper_leader",
    "pvc_rpc_calls_total", "pvc_rpc_call_duration_seconds_bucket",
]


def test_the_alert_rules_pass_promtool_check_and_their_tests():
    checked = subprocess.run(["promtool", "check", "rules", "pvc-alerts.yml"], cwd=MONITORING,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = subprocess.run(["promtool", "test", "rules", "pvc-alerts.test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((MONITORING / "pvc-alerts.yml").read_text())["groups"]
              for rule in group["rules"]}
    tests = yaml.safe_load((MONITORING / "pvc-alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == alerts, "every alert has a case in which it fires"


@pytest.fixture(scope="module")
def monitored(cluster, tmp_path_factory):
    client = cluster.client
    client.storage.pool_add("metrics")
    client.storage.volume_add("metrics", "disk0", "1G")
    for index, node in enumerate(["hv1", "hv1", "hv2"]):
        client.vms.define(vm_xml(f"mon{index}", memory_mib=256 * (index + 1), vcpus=index + 1), target=node)
        client.vms.start(f"mon{index}", wait=True)
    bmc = cluster.local.bmc("hv2")
    bmc.stop()  # a fault to show: hv2's BMC does not answer
    prometheus = LocalPrometheus(tmp_path_factory.mktemp("prometheus"))
    prometheus.start(cluster.local.metrics_targets)
    try:
        prometheus.wait_for_scrapes(3)
        for family in ("pvc_storage_pool_size_bytes", 'pvc_fault{id="node.hv2.bmc"}'):
            assert eventually(lambda: prometheus.query(family)["data"]["result"], timeout=15), family
        yield cluster, prometheus
    finally:
        prometheus.stop()
        bmc.start(cluster.local.state["bmc_user"], cluster.local.state["bmc_password"])


def values(prometheus, expression: str) -> dict[tuple, float]:
    answer = prometheus.query(expression)
    assert answer["status"] == "success", answer
    return {tuple(sorted(sample["metric"].items())): float(sample["value"][1]) for sample in answer["data"]["result"]}


def test_every_family_is_scraped_with_values_matching_pvc_and_libvirt(monitored):
    cluster, prometheus = monitored
    missing = [family for family in FAMILIES if not values(prometheus, family)]
    assert missing == []

    nodes = {node["name"]: node for node in cluster.client.nodes.list()}
    for name, node in nodes.items():
        assert values(prometheus, f'pvc_node_vms_running{{node="{name}"}}') == \
            {(("__name__", "pvc_node_vms_running"), ("instance", cluster.local.metrics_targets[0]), ("job", "pvc"),
              ("node", name)): node["vms_running"]}
        assert list(values(prometheus, f'pvc_node_memory_allocated_bytes{{node="{name}"}}').values()) == \
            [node["memory_allocated_mib"] * 1024 * 1024]
        assert list(values(prometheus, f'pvc_node_cpus{{node="{name}"}}').values()) == [node["cpus"]]
        running_in_libvirt = sum(cluster.host_domains(name).values())
        assert sum(values(prometheus, f'pvc_vm_running{{node="{name}"}}').values()) == running_in_libvirt
    # Health moves with faults (a slow ZooKeeper round trip on a loaded machine): the scrape, up to a second
    # old, agrees with pvc once both have seen the same faults.
    assert eventually(lambda: list(values(prometheus, "pvc_cluster_health").values()) ==
                      [cluster.client.cluster.status()["health"]], timeout=10)
    assert eventually(lambda: list(values(prometheus, 'pvc_node_health{node="hv2"}').values()) ==
                      [cluster.client.nodes.info("hv2")["health"]], timeout=10)
    assert cluster.client.nodes.info("hv2")["health"] <= 90, "hv2's BMC does not answer"
    status = cluster.client.cluster.status()
    fault = next(fault for fault in cluster.client.cluster.faults() if fault["id"] == "node.hv2.bmc")
    assert list(values(prometheus, 'pvc_fault{id="node.hv2.bmc",severity="warning"}').values()) == [fault["delta"]]
    assert list(values(prometheus, 'pvc_cluster_vms{state="start"}').values()) == \
        [status["resources"]["vms_by_state"]["start"]]
    assert list(values(prometheus, 'pvc_cluster_nodes{daemon_state="run"}').values()) == \
        [status["nodes_by_daemon_state"]["run"]]
    assert list(values(prometheus, "pvc_coordinator_leader").values()) == [1]
    pool = next(row for row in cluster.client.storage.status() if row["name"] == "metrics")
    assert list(values(prometheus, 'pvc_storage_pool_volumes{pool="metrics"}').values()) == [pool["volumes"]]
    # The file pool's capacity is its file system's, which the machine's other work changes between readings.
    assert list(values(prometheus, 'pvc_storage_pool_size_bytes{pool="metrics"}').values()) == \
        [pytest.approx(pool["capacity_bytes"], rel=0.01)]
    assert values(prometheus, 'pvc_rpc_calls_total{area="vms",method="define",outcome="ok"}')
    assert list(values(prometheus, 'pvc_storage_health_delta{backend="file"}').values()) == [0]


def substituted(expression: str, first_values: dict[str, str]) -> str:
    expression = expression.replace("$__rate_interval", RATE_INTERVAL)
    return re.sub(r"\$(\w+)", lambda match: first_values[match.group(1)], expression)


def test_every_panel_query_and_alert_expression_parses_and_the_listed_panels_have_data(monitored):
    _cluster, prometheus = monitored
    dashboard = json.loads((MONITORING / "pvc-dashboard.json").read_text())
    first_values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
        answer = prometheus.query(f"group by ({label.group(2)}) ({label.group(1)})")
        first_values[variable["name"]] = sorted(sample["metric"][label.group(2)]
                                                for sample in answer["data"]["result"])[0]
    must_have_data = [line.strip() for line in (MONITORING / "panels-with-data.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert set(must_have_data) <= titles, set(must_have_data) - titles
    failed, empty = [], []
    for panel in dashboard["panels"]:
        results = []
        for target in panel["targets"]:
            answer = prometheus.query(substituted(target["expr"], first_values))
            if answer["status"] != "success":
                failed.append(f"{panel['title']}: {answer.get('error')}")
            else:
                results += answer["data"]["result"]
        if panel["title"] in must_have_data and not results:
            empty.append(panel["title"])
    assert failed == [] and empty == []
    rules = yaml.safe_load((MONITORING / "pvc-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            answer = prometheus.query(rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)
    loaded = json.loads(urllib.request.urlopen(f"{prometheus.url}/api/v1/rules").read())
    assert {rule["name"] for group in loaded["data"]["groups"] for rule in group["rules"]} == \
        {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert all(rule["health"] == "ok" for group in loaded["data"]["groups"] for rule in group["rules"])


def test_a_scrape_needs_the_token_when_one_is_set_and_may_use_tls(tmp_path):
    from prometheus_client import CollectorRegistry, Gauge
    from pvc.rpc.metrics.server import MetricsServer, registry_renderer
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    registry = CollectorRegistry()
    Gauge("pvc_example", "an example", registry=registry).set(7)
    server = MetricsServer("127.0.0.1:0", [registry_renderer(registry)], str(token))
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{server.address}/metrics")
        assert refused.value.code == 401
        request = urllib.request.Request(f"http://{server.address}/metrics",
                                         headers={"Authorization": "Bearer s3cret"})
        assert "pvc_example 7.0" in urllib.request.urlopen(request).read().decode()
    finally:
        server.stop()

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=pvc",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = MetricsServer("127.0.0.1:0", [registry_renderer(registry)], str(token), str(cert), str(key))
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(f"https://{server.address}/metrics",
                                         headers={"Authorization": "Bearer s3cret"})
        assert "pvc_example 7.0" in urllib.request.urlopen(request, context=context).read().decode()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5)
    finally:
        server.stop()
