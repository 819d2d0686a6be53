"""The mypyc build (ramboot/compiled.py): the main run loads the compiled hot paths, so a
build that silently fell back to source fails here; `make test`'s second, pure run
(RAMBOOT_PURE_PYTHON=1) loads every one of them from its .py file."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys

from ramboot import compiled

PURE = bool(os.environ.get(compiled.PURE_ENV))


def test_the_hot_paths_are_the_compiled_modules_in_the_main_run_and_the_source_in_the_pure_one() -> None:
    st = compiled.status()
    assert set(st) == set(compiled.MODULES) and len(st) == 7
    assert st == dict.fromkeys(compiled.MODULES, not PURE), compiled.summary()
    from ramboot.proto import dhcp_codec

    assert dhcp_codec.__file__ is not None
    if PURE:
        assert dhcp_codec.__file__.endswith(".py")
    else:
        assert dhcp_codec.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        assert not compiled.stale(), "a compiled module's source changed since the build: make setup"


def test_the_switch_loads_all_of_them_from_source_and_version_says_so() -> None:
    env = dict(os.environ, **{compiled.PURE_ENV: "1"})
    out = subprocess.run([sys.executable, "-c", "import ramboot.compiled as c; print(sorted(c.status().values()))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([False] * 7)
    ver = subprocess.run([sys.executable, "-c", "from ramboot.cli import main; main()", "--version"], env=env, capture_output=True, text=True)
    assert "0 of 7 hot-path modules compiled" in ver.stdout, ver.stdout + ver.stderr
    env.pop(compiled.PURE_ENV)
    ver = subprocess.run([sys.executable, "-c", "from ramboot.cli import main; main()", "--version"], env=env, capture_output=True, text=True)
    assert ver.stdout.splitlines()[1] == "mypyc: all 7 hot-path modules compiled", ver.stdout + ver.stderr
