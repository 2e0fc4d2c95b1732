#!/usr/bin/env bash
# Brings up a local PVC cluster (3 simulated hypervisors, 1 coordinator), defines and starts a few VMs,
# and shows them placed and running. Stop it with: .venv/bin/pvc-local down
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
state_dir=${PVC_LOCAL_STATE:-$HOME/.local/state/pvc-local}

"$bin/pvc-local" down --state-dir "$state_dir" >/dev/null 2>&1 || true
eval "$("$bin/pvc-local" up --state-dir "$state_dir")"

echo "== nodes"
"$bin/pvc" node list

vm_dir=$(mktemp -d)
trap 'rm -rf "$vm_dir"' EXIT
for index in 1 2 3 4 5; do
    cat > "$vm_dir/demo$index.xml" <<XML
<domain type='test'>
  <name>demo$index</name>
  <memory unit='MiB'>$((index * 1024))</memory>
  <vcpu>$index</vcpu>
  <os><type>hvm</type></os>
</domain>
XML
    "$bin/pvc" vm define "$vm_dir/demo$index.xml" --node-selector vms >/dev/null
    "$bin/pvc" vm start "demo$index" --wait >/dev/null
done

echo "== VMs, placed by the 'vms' selector (fewest running VMs) and running"
"$bin/pvc" vm list
sleep 2  # nodes report their figures each keepalive (1 s in a local cluster)
echo "== nodes with their VMs"
"$bin/pvc" node list

echo "== storage: a pool, and a qcow2 image uploaded into it as a raw volume"
"$bin/pvc" storage pool add demo >/dev/null
qemu-img create -q -f qcow2 "$vm_dir/disk.qcow2" 1G
"$bin/pvc" storage volume upload demo disk1 "$vm_dir/disk.qcow2" >/dev/null 2>&1
"$bin/pvc" storage volume list demo
echo
echo "The cluster keeps running. Point pvc at it with:"
echo "  export PVC_CONFIG=$state_dir/pvc.yaml"
echo "Stop it with: .venv/bin/pvc-local down --state-dir $state_dir"
