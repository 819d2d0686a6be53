"""`make deb`: the package's contents, reproducibility, a clean install on Debian 12, and an upgrade that keeps data.

One build set per session (two of version N to compare bytes, one of N+1 from the same
tree), and one bookworm chroot tarball that each test unpacks afresh: apt inside it
resolves every dependency from Debian's archive.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from conftest import write_fake_image
from ramboot.lab.netns import Lab
from vm_cache import deb_once

REPO = Path(__file__).resolve().parents[1]
BASE = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NEXT = f"{BASE}.post1"
MAC = "52:54:00:de:b0:01"

# One xdist worker for the module: the builds and the chroot tarball are made once.
pytestmark = [pytest.mark.deb, pytest.mark.xdist_group("deb"), pytest.mark.timeout(1800),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, dpkg)")]


def _start_build(out: Path, version: str | None = None) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "DEB_OUT": str(out)}
    env.pop("RAMBOOT_VERSION", None)
    if version:
        env["RAMBOOT_VERSION"] = version
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        return subprocess.Popen(["bash", str(REPO / "scripts" / "deb.sh")], env=env, stdout=f, stderr=f), log


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """N twice and N+1, built at once: the two N builds also run from different staging paths."""
    top = tmp_path_factory.mktemp("debs")
    runs = {"again": _start_build(top / "again"), "next": _start_build(top / "next", NEXT)}
    out = {"n": deb_once(tmp_path_factory)}  # shared with the "ramboot boots ramboot" test
    for key, (proc, log) in runs.items():
        assert proc.wait(timeout=1200) == 0, log.read_text()
        (out[key],) = (top / key).glob("ramboot_*_amd64.deb")
    return out


@pytest.fixture(scope="session")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A minimal bookworm (apt, its package lists kept) as a tarball, and an archive cache shared by the tests."""
    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap: not installed (run: make setup)")
    top = tmp_path_factory.mktemp("bookworm")
    tar = top / "bookworm.tar"
    p = subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", "--skip=cleanup/apt/lists", "bookworm", str(tar)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    cache = top / "archives"
    (cache / "partial").mkdir(parents=True)
    return tar, cache


@pytest.fixture
def chroot(bookworm: tuple[Path, Path], tmp_path: Path):
    tar, _ = bookworm
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tar)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def chroot_cmd(root: Path, cache: Path, script: str, netns: str | None = None) -> list[str]:
    """`script` under /bin/sh in the chroot, in a private mount namespace (its /dev, /proc and /sys go with it)."""
    mounts = (f'mount --rbind /dev "{root}/dev" && mount -t proc proc "{root}/proc" && '
              f'mount --rbind /sys "{root}/sys" && mount --bind "{cache}" "{root}/var/cache/apt/archives" && '
              f'exec chroot "{root}" /bin/sh -ec "$1"')
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", script]
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}


def run_in(root: Path, cache: Path, script: str, netns: str | None = None, timeout: float = 900
           ) -> subprocess.CompletedProcess:
    return subprocess.run(chroot_cmd(root, cache, script, netns), capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def install(root: Path, cache: Path, deb: Path) -> None:
    shutil.copy(deb, root / "tmp" / deb.name)
    ok(run_in(root, cache, f"apt-get install -y -q --no-install-recommends /tmp/{deb.name}"))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_package_holds_what_a_sysadmin_expects(debs: dict[str, Path]) -> None:
    deb = debs["n"]
    assert deb.name == f"ramboot_{BASE}_amd64.deb"
    assert sha(deb) == sha(debs["again"]), "two builds of one tree differ"
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    for want in (f"Version: {BASE}", "Architecture: amd64", "python3 (>= 3.11), python3 (<< 3.12)",
                 "squashfs-tools", "busybox-static", "ipxe", "pxelinux", "shim-signed", "grub-efi-amd64-signed",
                 "tpm2-tools",
                 "Recommends: qemu-system-x86", "ovmf", "mmdebstrap", "dracut", "conffiles", "postinst", "postrm"):
        assert want in info, (want, info)
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for want in ("./usr/bin/ramboot -> ../lib/ramboot/bin/ramboot", "./usr/lib/ramboot/bin/ramboot",
                 "./lib/systemd/system/ramboot.service", "./usr/lib/firewalld/services/ramboot.xml",
                 "./etc/ramboot/ramboot.toml", "./usr/share/bash-completion/completions/ramboot",
                 "./usr/share/man/man1/ramboot.1.gz", "./usr/share/doc/ramboot/copyright",
                 "./usr/share/doc/ramboot/changelog.gz"):
        assert want in files, want
    assert all(line.split()[1] == "root/root" for line in files.splitlines())
    # the hot paths compiled with mypyc (ramboot/compiled.py), their .py source beside them
    from ramboot.compiled import MODULES

    for mod in MODULES:
        path = "./usr/lib/ramboot/lib/python3.11/site-packages/" + mod.replace(".", "/")
        assert f"{path}.py\n" in files and f"{path}.cpython-311-x86_64-linux-gnu.so\n" in files, mod
    assert "site-packages/ramboot__mypyc.cpython-311-x86_64-linux-gnu.so\n" in files
    out = Path(str(deb) + ".x")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(out)], check=True)
    try:
        assert (out / "DEBIAN/conffiles").read_text() == "/etc/ramboot/ramboot.toml\n"
        unit = (out / "lib/systemd/system/ramboot.service").read_text()
        assert "ExecStart=/usr/bin/ramboot serve --config /etc/ramboot/ramboot.toml\n" in unit
        assert "DynamicUser=yes" in unit and "StateDirectory=ramboot" in unit
        assert "complete -o nosort -F _ramboot_completion ramboot" in \
            (out / "usr/share/bash-completion/completions/ramboot").read_text()
        man = gzip.decompress((out / "usr/share/man/man1/ramboot.1.gz").read_bytes()).decode()
        assert man.startswith('.TH RAMBOOT 1 ') and f'"ramboot {BASE}"' in man
        assert ".SS\n\\fBramboot init\\fR" in man and "\\-\\-interface" in man
        # No trace of the build's staging directory: the venv works at /usr/lib/ramboot.
        staged = subprocess.run(["grep", "-rlI", "ramboot-deb.", str(out)], capture_output=True, text=True).stdout
        assert staged == "", staged
    finally:
        shutil.rmtree(out)


def test_installs_on_bookworm_and_runs(debs: dict[str, Path], bookworm: tuple[Path, Path], chroot: Path,
                                       tmp_path: Path) -> None:
    cache = bookworm[1]
    install(chroot, cache, debs["n"])
    assert ok(run_in(chroot, cache, "ramboot --version")).strip() == (f"ramboot, version {BASE}\n"
                                                                      "mypyc: all 7 hot-path modules compiled")
    assert "Check this host for what would stop PXE boots" in ok(run_in(chroot, cache, "ramboot doctor --help"))
    # doctor runs against the package's placeholder config and names what is missing.
    p = run_in(chroot, cache, "ramboot doctor --probe-seconds 0")
    assert p.returncode == 1 and "problem(s) found" in p.stdout, p.stdout + p.stderr
    assert (chroot / "var/lib/ramboot").is_dir()
    # init, on a real interface: the chroot's binary in a network namespace.
    lab = Lab(ns=f"rbdeb-{os.getpid()}", root=tmp_path / "lab")
    lab.create()
    try:
        out = ok(run_in(chroot, cache, "ramboot init --interface rb0 --mode full", netns=lab.ns))
    finally:
        lab.teardown()
    assert "wrote /etc/ramboot/ramboot.toml: rb0 172.22.33.2/24, mode full" in out
    cfg = tomllib.loads((chroot / "etc/ramboot/ramboot.toml").read_text())
    assert cfg["dhcp"]["mode"] == "full" and cfg["network"]["address"] == "172.22.33.2"
    # remove keeps the data, purge deletes it.
    (chroot / "var/lib/ramboot/keep").write_text("x")
    ok(run_in(chroot, cache, "apt-get remove -y -q ramboot"))
    assert (chroot / "var/lib/ramboot/keep").exists() and not (chroot / "usr/bin/ramboot").exists()
    ok(run_in(chroot, cache, "apt-get purge -y -q ramboot"))
    assert not (chroot / "var/lib/ramboot").exists()


STORE_SNIPPET = f"""
import sys
from ramboot.identity import Identities
from pathlib import Path
from ramboot.inventory.store import Store
from ramboot.proto.dhcp_core import LeaseRecord
s = Store("sqlite:////var/lib/ramboot/ramboot.db", Path("/var/lib/ramboot/secrets.key"))
if sys.argv[1] == "make":
    s.leases.save([LeaseRecord(key="{MAC}", ip="172.22.33.150", mac="{MAC}", expires=9e9)], [])
print(sorted(r.ip for r in s.leases.load()), Identities(s.secrets).ca()[1])
s.close()
"""


def test_upgrade_keeps_nodes_images_leases_and_the_ssh_ca(debs: dict[str, Path], bookworm: tuple[Path, Path],
                                                          chroot: Path, tmp_path: Path) -> None:
    cache = bookworm[1]
    install(chroot, cache, debs["n"])
    conf = chroot / "etc/ramboot/ramboot.toml"
    mine = ('data_dir = "/var/lib/ramboot"\n[network]\ninterface = "rb0"\naddress = "172.22.33.2"\n'
            '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n')
    conf.write_text(mine)  # the operator's config: a changed conffile
    write_fake_image(chroot / "var/lib/ramboot")
    image = {p.name: sha(p) for p in (chroot / "var/lib/ramboot/images/demo").iterdir()}
    ok(run_in(chroot, cache, f"ramboot node add {MAC} --hostname keeper --config /etc/ramboot/ramboot.toml"))
    (chroot / "tmp/store.py").write_text(STORE_SNIPPET)
    before = ok(run_in(chroot, cache, "/usr/lib/ramboot/bin/python /tmp/store.py make"))
    assert "['172.22.33.150'] ssh-ed25519 " in before

    install(chroot, cache, debs["next"])
    assert ok(run_in(chroot, cache, "ramboot --version")).strip() == (f"ramboot, version {NEXT}\n"
                                                                      "mypyc: all 7 hot-path modules compiled")
    assert conf.read_text() == mine
    assert {p.name: sha(p) for p in (chroot / "var/lib/ramboot/images/demo").iterdir()} == image
    assert ok(run_in(chroot, cache, "/usr/lib/ramboot/bin/python /tmp/store.py check")) == before
    listing = ok(run_in(chroot, cache, "ramboot node list --config /etc/ramboot/ramboot.toml"))
    assert MAC in listing and "keeper" in listing, listing
    # N+1 serves on the kept config and data: the image goes out, the lease and the CA stay.
    lab = Lab(ns=f"rbdeb-{os.getpid()}-u", root=tmp_path / "lab")
    lab.create()
    log = tmp_path / "serve.log"
    try:
        with open(log, "w") as f:
            server = subprocess.Popen(chroot_cmd(chroot, cache, "exec ramboot serve --config /etc/ramboot/ramboot.toml",
                                                 lab.ns), stdout=f, stderr=f, env=ENV)
        try:
            got = b""
            for _ in range(60):
                got = subprocess.run(["ip", "netns", "exec", lab.ns, "curl", "-s", "--max-time", "2",
                                      "http://172.22.33.2/images/demo/vmlinuz"], capture_output=True).stdout
                if got == b"kernel" or server.poll() is not None:
                    break
                time.sleep(0.5)
            assert got == b"kernel", log.read_text()
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        lab.teardown()
    assert ok(run_in(chroot, cache, "/usr/lib/ramboot/bin/python /tmp/store.py check")) == before
