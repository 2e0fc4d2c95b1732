"""Print every node: its states and free memory. Connects with the same settings as the `pvc` command."""
import pvc

with pvc.connect() as cluster:
    for node in cluster.nodes.list():
        print(f"{node['name']:10} {node['daemon_state']:7} {node['domain_state']:10} "
              f"{node['memory_free_mib']} MiB free")
