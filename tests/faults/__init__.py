"""A fault-injection checker in the spirit of Jepsen, over a local cluster of real daemons.

- `workload`: client threads issue random VM operations from a seeded schedule;
- `nemesis`: kills and restarts daemons, freezes libvirtd, drops ZooKeeper sessions, from a seeded schedule;
- `monitor`: reads every host's own libvirtd (and, on QEMU hosts, its QEMU processes) many times a second;
- `history`: the one record of what the clients did, what the nemesis did and what each host showed;
- `checker`: judges the history after the run, never during it: no VM ever ran on two hosts at once, and once
  the cluster has settled every VM's record matches what the hosts run;
- `run`: puts them together for a test (`run_faults`) and prints what happened.

Nothing here knows how PVC works inside: the harness (`LocalCluster`) provides the capabilities (kill, start,
freeze a process; the hosts' libvirt URIs) and the public client provides the operations and the records.
"""
