"""Upstream PVC's spellings that our commands accept beside our own, declared on the option itself, so that the
manual's command reference names them (as `pvc.cli.output.UPSTREAM_FORMATS` does for output formats)."""
from typing import Any, Sequence

import click


class UpstreamOption(click.Option):
    """An option some of whose spellings (`upstream`) are upstream PVC's."""

    def __init__(self, *args: Any, upstream: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.upstream = tuple(upstream)
        unknown = set(self.upstream) - set(self.opts) - set(self.secondary_opts)
        if unknown:
            raise ValueError(f"option {self.name}: {', '.join(sorted(unknown))} is not one of its spellings")


def option(*names: str, upstream: Sequence[str], **kwargs: Any):
    """`click.option` whose spellings `upstream` are upstream PVC's."""
    return click.option(*names, cls=UpstreamOption, upstream=upstream, **kwargs)
