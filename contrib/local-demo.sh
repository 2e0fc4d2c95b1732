#!/usr/bin/env bash
# Brings up a local PVC cluster of 3 QEMU hosts (1 coordinator) with its own Prometheus, starts three real Linux
# guests placed by a selector, uploads an image into a pool, live-migrates a running guest to another node
# while its heartbeat goes on, and ends with the cluster's health and one Prometheus query's answer.
# Stop it with: .venv/bin/pvc-local down
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
state_dir=${PVC_LOCAL_STATE:-$HOME/.local/state/pvc-local}

"$bin/pvc-local" down --state-dir "$state_dir" >/dev/null 2>&1 || true
eval "$("$bin/pvc-local" up --hypervisor qemu --monitoring --state-dir "$state_dir")"

echo "== nodes"
"$bin/pvc" node list

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT

# The guest prints "pvc-guest: heartbeat N boot BOOT_ID" on its serial console every second.
heartbeats() { "$bin/pvc" vm log "$1" --lines 200 | grep 'pvc-guest: heartbeat' || true; }
wait_heartbeat() {
    local vm=$1 after=${2:-0} deadline=$((SECONDS + 90))
    until heartbeats "$vm" | awk -v after="$after" '$3 > after {found=1} END {exit !found}'; do
        ((SECONDS < deadline)) || { echo "no heartbeat from $vm" >&2; exit 1; }
        sleep 0.5
    done
}

for index in 1 2 3; do
    "$bin/pvc-local" guest-xml "demo$index" --state-dir "$state_dir" > "$work_dir/demo$index.xml"
    "$bin/pvc" vm define "$work_dir/demo$index.xml" --node-selector vms >/dev/null
    "$bin/pvc" vm start "demo$index" --wait >/dev/null
done
for index in 1 2 3; do wait_heartbeat "demo$index"; done

echo "== three real guests, placed by the 'vms' selector (fewest running VMs), booted and running"
"$bin/pvc" vm list
sleep 2  # nodes report their figures each keepalive (1 s in a local cluster)
echo "== nodes with their guests (load: CPU seconds per second the guests use)"
"$bin/pvc" node list

echo "== storage: a pool, and a qcow2 image uploaded into it as a raw volume"
"$bin/pvc" storage pool add demo >/dev/null
qemu-img create -q -f qcow2 "$work_dir/disk.qcow2" 1G
"$bin/pvc" storage volume upload demo disk1 "$work_dir/disk.qcow2" >/dev/null 2>&1
"$bin/pvc" storage volume list demo

source_node=$("$bin/pvc" vm info demo1 --format json | python3 -c 'import json, sys; print(json.load(sys.stdin)["node"])')
echo "== demo1 on $source_node, its last heartbeats"
heartbeats demo1 | tail -n 3
before=$(heartbeats demo1 | tail -n 1)
echo "== live migration of demo1 (pvc vm migrate demo1 --wait)"
"$bin/pvc" vm migrate demo1 --wait --format json \
    | python3 -c 'import json, sys; vm = json.load(sys.stdin); print("demo1 now runs on", vm["node"], "(came from", vm["last_node"] + ")")'
wait_heartbeat demo1 "$(echo "$before" | awk '{print $3}')"
sleep 2
echo "== demo1's heartbeats on its new node: the counter goes on"
heartbeats demo1 | tail -n 3
after=$(heartbeats demo1 | tail -n 1)
if [ "$(echo "$before" | awk '{print $5}')" = "$(echo "$after" | awk '{print $5}')" ]; then
    echo "boot id unchanged ($(echo "$after" | awk '{print $5}')): the guest moved without a reboot"
else
    echo "boot id changed: the guest rebooted" >&2
    exit 1
fi

echo "== the cluster's health (100% minus its active, unacknowledged faults: pvc cluster fault list)"
"$bin/pvc" cluster status | grep -E '^(Health|Faults|Nodes|VMs)'
echo "== Prometheus ($PVC_PROMETHEUS) scraping the coordinator's /metrics: running VMs per node"
"$bin/python" - "$PVC_PROMETHEUS" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
query = "max by (node) (pvc_node_vms_running)"
deadline = time.monotonic() + 30
while True:
    url = f"{sys.argv[1]}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    result = json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
    if result or time.monotonic() > deadline:
        break
    time.sleep(1)
if not result:
    sys.exit(f"Prometheus has no answer to {query}")
print(f"{query}:")
for sample in sorted(result, key=lambda sample: sample["metric"]["node"]):
    print(f"  {sample['metric']['node']}  {sample['value'][1]}")
EOF
echo
echo "The cluster keeps running. Point pvc at it with:"
echo "  export PVC_CONFIG=$state_dir/pvc.yaml"
echo "Stop it with: .venv/bin/pvc-local down --state-dir $state_dir"
