"""Benchmarks that live in the product: `ramboot bench storm`.

The side-by-side peer benchmarks (DHCP, TFTP, HTTP, end to end) are scripts in
`bench/`, run by `make bench`; they share `ramboot.bench.util`.
"""

from __future__ import annotations

import click

from .storm import storm


@click.group()
def bench() -> None:
    """Load generators and benchmarks (need root: they make network namespaces)."""


bench.add_command(storm)
