"""What the VM tests build once per run and share across xdist workers: a folder and its lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ramboot.lab.netns import Lab
from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import choose_accel


@contextlib.contextmanager
def shared_build(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder every worker of this run shares, held under an exclusive lock while in use."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / name
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield root


def build_once(data: Path, name: str, *args: str) -> Path:
    """`ramboot image build NAME ARGS --data-dir DATA` through the CLI, unless it is built already."""
    img = data / "images" / name
    if not (img / "image.toml").is_file():
        p = subprocess.run([*ramboot_cmd(), "image", "build", name, *args, "--data-dir", str(data)],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr[-3000:]
    return img


def accel_for(root: Path, kernel: Path) -> str:
    """The accelerator to boot with (KVM only when a probe boots; else TCG)."""
    return choose_accel(Lab(ns="unused", root=root), kernel)[0]


REPO = Path(__file__).resolve().parents[1]


def deb_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb` of this tree at its own version (scripts/deb.sh), built once per run and shared
    by the package tests and "ramboot boots ramboot"."""
    with shared_build(tmp_path_factory, "deb-n") as root:
        found = sorted(root.glob("ramboot_*_amd64.deb"))
        if not found:
            env = {**os.environ, "DEB_OUT": str(root)}
            env.pop("RAMBOOT_VERSION", None)
            log = root / "build.log"
            with open(log, "w") as f:
                p = subprocess.run(["bash", str(REPO / "scripts" / "deb.sh")], env=env, stdout=f, stderr=f,
                                   stdin=subprocess.DEVNULL, timeout=1200)
            assert p.returncode == 0, log.read_text()[-3000:]
            found = sorted(root.glob("ramboot_*_amd64.deb"))
        assert len(found) == 1, found
        return found[0]
