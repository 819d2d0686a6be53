"""`python -m ramboot.bench storm ...`: the same as `ramboot bench storm ...`."""

from . import bench

bench(prog_name="ramboot bench")
