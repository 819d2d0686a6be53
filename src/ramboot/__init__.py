"""ramboot: boot diskless machines over the network into a root filesystem held in RAM."""

from importlib.metadata import PackageNotFoundError, version

from .compiled import choose

choose()  # the mypyc-compiled hot paths, or their .py source (RAMBOOT_PURE_PYTHON=1; see compiled.py)

try:
    # The one place the version lives is pyproject.toml; the installed metadata carries it.
    __version__ = version("ramboot")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
