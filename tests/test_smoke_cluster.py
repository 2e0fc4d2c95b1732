def test_nodes_run_and_ready(cluster):
    nodes = cluster.client.nodes.list()
    assert [node["name"] for node in nodes] == ["hv1", "hv2", "hv3"]
    assert all(node["daemon_state"] == "run" and node["domain_state"] == "ready" for node in nodes)
