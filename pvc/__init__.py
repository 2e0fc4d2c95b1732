"""PVC, the Parallel Virtual Cluster: the core library and the public client.

    import pvc
    cluster = pvc.connect("pvc://127.0.0.1:7370", api_key="...")
    for node in cluster.nodes.list():
        print(node["name"], node["daemon_state"])
"""
__version__ = "0.1.0"


def connect(uri: str | list[str] | None = None, api_key: str | None = None, **options):
    """Connect to a cluster's coordinators; see `pvc.client.connect`."""
    from pvc.client import connect as _connect
    return _connect(uri, api_key, **options)


def __getattr__(name: str):
    """`pvc.hookimpl`, the marker plugins use, loads pluggy when a plugin asks for it, not with every client."""
    if name == "hookimpl":
        from pvc.hookspecs import hookimpl
        return hookimpl
    raise AttributeError(f"module 'pvc' has no attribute {name!r}")


__all__ = ["connect", "hookimpl", "__version__"]
