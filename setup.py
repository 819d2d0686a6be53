"""Build hook: the hot-path modules listed in src/ramboot/compiled.py, compiled with mypyc.

pyproject.toml holds everything else. The .py sources stay in the package
beside the .so files (the pure-Python fallback: RAMBOOT_PURE_PYTHON=1 at run
time). RAMBOOT_NO_MYPYC=1 builds without compiling (no C compiler needed).
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """MODULES from src/ramboot/compiled.py, read without importing ramboot (its dependencies may be absent)."""
    tree = ast.parse((HERE / "src/ramboot/compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: no MODULES in src/ramboot/compiled.py")


def ext_modules() -> list:
    if os.environ.get("RAMBOOT_NO_MYPYC"):
        return []
    from mypyc.build import mypycify

    paths = [f"src/{name.replace('.', '/')}.py" for name in compiled_modules()]
    # Only the listed modules are compiled; what they import is read for types, not checked here
    # (`mypy` in the tests checks it), and third-party packages absent from the build environment
    # are Any. group_name: one shared library for the group, ramboot__mypyc.*.so, beside the package.
    # A config of its own, not pyproject.toml's: that one loads the pydantic plugin, and the
    # build environment holds no pydantic.
    config = Path(tempfile.mkdtemp(prefix="ramboot-mypyc-")) / "mypy.ini"
    config.write_text("[mypy]\npython_version = 3.11\nstrict = True\n")
    return mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", "--config-file", str(config), *paths],
        group_name="ramboot", opt_level="3",
    )


setup(ext_modules=ext_modules())
