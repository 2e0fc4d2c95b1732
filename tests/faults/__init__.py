"""A fault-injection checker in the spirit of Jepsen, over a local cluster of real daemons.

- `workload`: client threads issue random VM operations from a seeded schedule;
- `nemesis`: injects one family of faults from a seeded schedule, overlapping (processes killed, paused, frozen
  and slowed; lab links cut and ZooKeeper servers killed; BMCs silenced or given a wrong password, a node
  cloned), and acts as the machine room and, when nothing else can, as an administrator;
- `monitor`: reads every host's own libvirtd (and, on QEMU hosts, its QEMU processes) many times a second;
  a paused domain counts as a running copy;
- `history`: the one record of what the clients did, what the nemesis did and what each host showed;
- `checker`: judges the history after the run, never during it: no VM ever ran on two hosts at once; once the
  cluster has settled every VM's record matches what the hosts run, and its state and placement agree with the
  commands acknowledged on it; the monitor's own gaps were small enough for the run to mean anything;
- `run`: puts them together for a test (`run_faults`), checks the outcomes some faults must have (a cut host
  fences itself, a clone takes nothing over, a lost ZooKeeper server fences nothing) and that every fault kind
  asked for came, and prints what happened: faults per kind, recoveries completed.

Nothing here knows how PVC works inside: the harness (`LocalCluster`) provides the capabilities (kill, start,
freeze a process; the hosts' libvirt URIs) and the public client provides the operations and the records.
"""
