"""`python -m bench.storm ...` (as root, from the repository's top)."""

from .cli import main

main()
