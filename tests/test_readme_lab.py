"""The README's lab block (`<!-- lab-login -->`), run line by line as it stands: `lab up`, the
Debian image, a profile with an SSH key, a node, `known-hosts`, `lab vm --keep`, SSH in as root,
the serial console through `lab vm --console`, then `lab vm --stop`, whose power-off must be clean:
no failed unmount on the console (the root's layers live under /run/initramfs, which systemd
leaves alone).

Only what makes it a test, not a user's machine, differs: the lab is a namespace and folder of
its own ($RAMBOOT_LAB_NS, $RAMBOOT_LAB_DIR, so `LAB` and `ramboot-lab` name those), HOME is a
temporary one holding a fresh key, `ssh` is a shim that makes it batch-mode and reads that HOME
(ssh takes `~` from the password database, not $HOME), and the Debian image is the one the
Debian node test builds with the same command line (built once per run, shared).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ramboot.lab.netns import Lab
from ramboot.lab.server import link_image, ramboot_cmd
from test_e2e_lab import ARTIFACTS, BOOT_TIMEOUT, built, shared_dir  # noqa: F401 (fixtures)
from vm_cache import shared_build

pytestmark = [pytest.mark.vm, pytest.mark.netns]

REPO = Path(__file__).resolve().parent.parent
MAC = "52:54:00:12:34:56"
SSH_SHIM = """#!/bin/sh
exec /usr/bin/ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$HOME/.ssh/known_hosts" \\
  -i "$HOME/.ssh/id_ed25519" -o ConnectTimeout=5 "$@"
"""


def readme_lab_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- lab-login -->\n```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no <!-- lab-login --> block"
    return [ln.split("  #", 1)[0].strip() for ln in block[1].splitlines() if ln.strip()]


@pytest.mark.timeout(1500)  # the Debian image (about 4 min on a busy machine, once per run) and a systemd boot
def test_readme_lab_block_word_for_word(request, tmp_path: Path, tmp_path_factory, built) -> None:
    lines = readme_lab_lines()
    assert lines[0] == "LAB=/var/lib/ramboot-lab", lines[0]
    ns, root, home = f"rbr-{os.getpid()}", tmp_path / "lab", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "bin").mkdir()
    (home / "bin" / "ssh").write_text(SSH_SHIM)
    (home / "bin" / "ssh").chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
                   check=True)
    img, accel = built
    link_image(img, root / "data", "demo")  # `lab up` finds its built-in image (built once per run)
    env = {**os.environ, "RAMBOOT_LAB_NS": ns, "RAMBOOT_LAB_DIR": str(root), "LAB": str(root), "HOME": str(home),
           "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "RAMBOOT_LAB_ACCEL": accel}
    the_lab = Lab(ns=ns, root=root)
    outputs: list[str] = []

    def run(line: str, timeout: float = 120, lab_dir: Path = root, **kw) -> subprocess.CompletedProcess:
        line = line.replace("ip netns exec ramboot-lab ", f"ip netns exec {ns} ")
        p = subprocess.run(["bash", "-c", line], cwd=REPO, env={**env, "LAB": str(lab_dir)}, capture_output=True,
                           text=True, timeout=timeout, **kw)
        outputs.append(f"$ {line}\n{p.stdout}{p.stderr}")
        return p

    def close() -> None:
        subprocess.run([*ramboot_cmd(), "lab", "down"], env=env, capture_output=True, timeout=120)
        the_lab.teardown()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "readme-lab.commands.log").write_text("\n".join(outputs)[-300_000:])
        for name in ("serve.log", "vms/525400123456/console.log"):
            if (root / name).exists():
                shutil.copyfile(root / name, ARTIFACTS / f"readme-lab.{Path(name).name}")

    request.addfinalizer(close)
    for line in lines[1:]:
        words = shlex.split(line)
        if words[1:3] == ["image", "build"]:
            # The Debian node test's image, made by this very line (once per run, under its lock).
            with shared_build(tmp_path_factory, "debian-node") as shared:
                if not (shared / "data/images/debian/image.toml").is_file():
                    p = run(line, timeout=900, lab_dir=shared)
                    assert p.returncode == 0, p.stderr[-3000:]
                link_image(shared / "data/images/debian", root / "data", "debian")
            continue
        if "lab vm" in line and "--keep" in words:
            p = run(line, timeout=BOOT_TIMEOUT + 60)
            assert p.returncode == 0, outputs[-1][-3000:]
            assert f"{MAC} keeps running at 172.22.33.50" in p.stdout, p.stdout[-2000:]
            assert the_lab.alive(f"vm-{MAC}")  # the VM outlives the command that booted it
            continue
        if words[:4] == ["ip", "netns", "exec", "ramboot-lab"]:
            deadline, p = time.monotonic() + 120, None
            while time.monotonic() < deadline:  # sshd may still be starting when `booted` is reported
                p = run(line, timeout=60)
                if p.returncode == 0:
                    break
                time.sleep(2)
            assert p is not None and p.returncode == 0 and p.stdout.strip() == "n1", outputs[-1]
            console_round_trip(env)
            continue
        if "--stop" in words:  # the ACPI button: systemd's whole shutdown, whose console is checked below
            p = run(line, timeout=200)
            assert p.returncode == 0 and f"{MAC} powered off" in p.stdout, outputs[-1]
            assert not the_lab.alive(f"vm-{MAC}")
            continue
        p = run(line)
        assert p.returncode == 0, outputs[-1]
    console = (root / "vms" / "525400123456" / "console.log").read_text(errors="replace")
    shutdown = console.rsplit("ramboot: booted", 1)[-1]
    assert "reboot: Power down" in shutdown, shutdown[-3000:]
    for bad in ("[FAILED]", "Failed unmounting", "Failed to unmount", "Could not unmount"):
        assert bad not in shutdown, shutdown[-4000:]


def console_round_trip(env: dict[str, str]) -> None:
    """`lab vm --console` shows the node's serial console (a login prompt on Enter); Ctrl-] detaches."""
    p = subprocess.Popen([*ramboot_cmd(), "lab", "vm", "--console", MAC], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    os.set_blocking(p.stdout.fileno(), False)
    seen, deadline = b"", time.monotonic() + 30
    p.stdin.write(b"\r")
    p.stdin.flush()
    while b"login:" not in seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen += p.stdout.read() or b""
    p.stdin.write(b"\x1d")
    p.stdin.flush()
    _, err = p.communicate(timeout=15)
    assert b"n1 login:" in seen, seen[-2000:]
    assert p.returncode == 0 and b"detached" in err, (p.returncode, err)
