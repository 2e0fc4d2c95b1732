"""The field order of a node's VM statistics record (`pvc.node.vm_stats` writes it, the coordinator's metrics
read it): a list of numbers per VM, then a mapping of disk to `DISK_FIELDS` and of interface to
`INTERFACE_FIELDS`. Lists keep the record small: a key name per number would double it."""

VM_FIELDS = ("state", "cpu_time_ns", "balloon_current_kib", "balloon_maximum_kib", "balloon_rss_kib",
             "balloon_unused_kib", "balloon_available_kib")
DISK_FIELDS = ("read_bytes", "write_bytes", "read_requests", "write_requests")
INTERFACE_FIELDS = ("receive_bytes", "receive_packets", "receive_errors", "receive_drops",
                    "transmit_bytes", "transmit_packets", "transmit_errors", "transmit_drops")
