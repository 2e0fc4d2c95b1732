"""Mirrors: a VM's snapshots sent to another PVC cluster, kept there in state ``mirror`` until promoted."""
