"""Scheduled backups (autobackup): the leader-run task that snapshots and exports each chosen VM, its chains
and their retention, and the schedule that starts it."""
