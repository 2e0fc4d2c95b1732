#!/usr/bin/env bash
# Installs everything PVC needs on a Debian machine, creates the venv in .venv and installs PVC into it.
# Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    zookeeper                                       # the cluster's state
    libvirt-dev libvirt-daemon-system libvirt-clients pkg-config gcc python3-dev python3-venv  # libvirt
    qemu-utils qemu-block-extra                     # image conversion, qemu's rbd driver
    qemu-system-x86 libvirt-daemon-driver-qemu tini # QEMU hosts: real guests, one init per host namespace
    linux-image-amd64 busybox-static cpio           # the tiny real guest's kernel, userland and initramfs
    qemu-guest-agent                                # qemu-ga in the tiny guest: freeze/thaw for VM snapshots
    openipmi ipmitool                               # a real IPMI peer for fencing tests
    ceph-mon ceph-osd ceph-mgr ceph-common uuid-runtime  # a private single-node Ceph
    util-linux procps openssl iproute2 iptables     # unshare, prlimit, ps; certificates for --tls; the lab network
    genisoimage                                     # isoinfo: tests read cloud-init drives with another tool
    python3-doc                                     # the manual resolves Python references against its local objects.inv
    prometheus                                      # monitoring: pvc-local up --monitoring; promtool checks the alert rules
    dnsmasq-base nftables iputils-ping              # client networks: DHCP/DNS, NAT and ACL rules; pings in tests
    xfsprogs                                        # file storage on a filesystem with reflinks, in tests
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
.venv/bin/pvc-local build-guest                     # the tiny real guest of the QEMU hosts
echo "PVC installed in $(pwd)/.venv"
