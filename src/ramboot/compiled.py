"""The modules built with mypyc, and whether this process runs them compiled.

`MODULES` is the one list: setup.py compiles these (plain typed Python; the
.py files are shipped beside the .so files), `ramboot --version` and
`ramboot doctor` report on them, and the tests assert that the main run loads
the compiled ones. With RAMBOOT_PURE_PYTHON=1 in the environment, ramboot
imports their .py source instead (`make test` runs their unit tests that way
a second time; it is also the switch to try when a compiled build is
suspected). RAMBOOT_NO_MYPYC=1 at build time builds without them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MODULES = (
    "ramboot.proto.dhcp_codec",
    "ramboot.proto.dhcp_core",
    "ramboot.proto.dhcp6_codec",
    "ramboot.proto.dhcp6_core",
    "ramboot.proto.tftp_core",
    "ramboot.names",
    "ramboot.render",
)
PURE_ENV = "RAMBOOT_PURE_PYTHON"


def is_compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from an extension module (a mypyc build), not from its .py source."""
    return (getattr(module, "__file__", None) or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def status() -> dict[str, bool]:
    """Each of MODULES: loaded compiled? (imports them)"""
    return {name: is_compiled(importlib.import_module(name)) for name in MODULES}


def summary() -> str:
    """One line for `--version` and `doctor`: how many of MODULES run compiled, and why not if none."""
    st = status()
    n = sum(st.values())
    if n == len(st):
        return f"mypyc: all {n} hot-path modules compiled"
    pure = ", ".join(name.removeprefix("ramboot.") for name, c in st.items() if not c)
    why = (f" ({PURE_ENV} is set)" if os.environ.get(PURE_ENV) else " (edited since the build: make setup)"
           if stale() else " (not built)")
    return f"mypyc: {n} of {len(st)} hot-path modules compiled; pure Python: {pure}{why}"


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds MODULES as their .py source even where a compiled .so sits beside it."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for d in path:
            src = os.path.join(d, leaf + ".py")
            if os.path.isfile(src):
                return importlib.util.spec_from_file_location(fullname, src)
        return None


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def built(name: str) -> str | None:
    """The compiled file of module `name` in this package's directory, if there is one."""
    base = os.path.join(_package_dir(), *name.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.isfile(base + suffix):
            return base + suffix
    return None


def stale() -> list[str]:
    """Sources of MODULES edited since their build (a tree's .py newer than the .so beside it).

    Only in a source tree (src/ramboot beside setup.py: `make setup`'s in-place build); an
    installed package's file times are the installer's, not the build's."""
    out: list[str] = []
    if not os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(_package_dir())), "setup.py")):
        return out
    # The code is in the group's library (ramboot__mypyc.*.so beside the package); a module's own
    # .so is a shim that a rebuild leaves alone (and its time with it) when only the code changed.
    group = max((os.path.getmtime(os.path.join(os.path.dirname(_package_dir()), f))
                 for f in os.listdir(os.path.dirname(_package_dir())) if f.startswith("ramboot__mypyc.")),
                default=0.0)
    for name in MODULES:
        so = built(name)
        src = os.path.join(_package_dir(), *name.split(".")[1:]) + ".py"
        if so and os.path.isfile(src) and os.path.getmtime(src) > max(os.path.getmtime(so), group):
            out.append(os.path.relpath(src, os.path.dirname(_package_dir())))
    return out


def choose() -> None:
    """At `import ramboot`: the compiled modules, or all of them from source if asked (PURE_ENV) or if
    any was edited since the build. All or none: compiled modules call each other's compiled code
    directly, so a compiled one beside a source one would mix two versions of the same classes."""
    if os.environ.get(PURE_ENV):
        prefer_source()
        return
    edited = stale()
    if edited:
        warnings.warn(f"ramboot: {', '.join(edited)} changed since the mypyc build; running the compiled modules "
                      "from their source (`make setup` rebuilds them)", RuntimeWarning, stacklevel=2)
        prefer_source()


def prefer_source() -> None:
    """Import MODULES from their .py files from now on (before any of them is imported)."""
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(MODULES))
