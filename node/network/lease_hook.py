"""dnsmasq's lease script (``dhcp-script``) on the router node: a helper of `pvc.node.network.lease_events`.

Run by dnsmasq for every lease granted, renewed or released, never imported: it imports nothing from PVC, so
that it starts in milliseconds. dnsmasq runs it through a wrapper that names the daemon's socket and the
network first::

    lease_hook.py SOCKET VNI ACTION MAC IP [HOSTNAME]

and it sends one datagram, ``{"vni", "action", "mac", "ip", "hostname", "expires"}`` (``expires`` from
dnsmasq's ``DNSMASQ_LEASE_EXPIRES``), to the daemon, which records the lease in ZooKeeper at once. A daemon
that does not listen loses nothing: its next pass copies dnsmasq's lease file. It always exits 0, since dnsmasq
has no use for a failure here.
"""
import json
import os
import socket
import sys

ACTIONS = ("add", "old", "del")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[2] not in ACTIONS:
        return 0
    socket_path, vni, action, mac, address = argv[:5]
    expires = os.environ.get("DNSMASQ_LEASE_EXPIRES", "")
    message = {"vni": vni, "action": action, "mac": mac.lower(), "ip": address,
               "hostname": argv[5] if len(argv) > 5 and argv[5] else None,
               "expires": int(expires) if expires.isdigit() else None}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(json.dumps(message).encode(), socket_path)
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
