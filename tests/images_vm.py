"""A private boot network for QEMU/TCG tests of the initramfs.

One network namespace per use (`rbi` + random suffix): a bridge holding
10.232.7.1/24, dnsmasq for DHCP only, and the recording HTTP server from
images_httpd.py. VMs attach with tap devices; everything is torn down by the
context manager, and only the processes started here are killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SUBNET = "10.232.7"
SERVER = f"{SUBNET}.1"
HTTP_PORT = 8080
TOOLS = ("ip", "dnsmasq", "qemu-system-x86_64")


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        raise RuntimeError(f"VM tests need {', '.join(missing)}: run `make setup`")
    if os.geteuid() != 0:
        raise RuntimeError("VM tests need root (network namespaces, taps)")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class BootNet:
    def __init__(self, workdir: Path, webroot: Path):
        self.ns = "rbi" + secrets.token_hex(4)
        self.work = workdir
        self.webroot = webroot
        self.procs: list[subprocess.Popen] = []
        self.posts = workdir / "posts.jsonl"
        self.ntaps = 0

    def __enter__(self) -> BootNet:
        require_tools()
        _sh("ip", "netns", "add", self.ns)
        try:
            ns = ("ip", "-n", self.ns)
            _sh(*ns, "link", "set", "lo", "up")
            _sh(*ns, "link", "add", "br0", "type", "bridge")
            _sh(*ns, "addr", "add", f"{SERVER}/24", "dev", "br0")
            _sh(*ns, "link", "set", "br0", "up")
            self.posts.write_text("")
            self.spawn(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=br0",
                        "--bind-interfaces", f"--dhcp-range={SUBNET}.100,{SUBNET}.200,255.255.255.0,1h",
                        f"--dhcp-leasefile={self.work / 'leases'}", "--dhcp-authoritative",
                        "--user=root", "--group=root", "--pid-file="], "dnsmasq.log")
            self.spawn([sys.executable, str(HERE / "images_httpd.py"), str(self.webroot), SERVER,
                        str(HTTP_PORT), str(self.posts)], "httpd.log")
            self._wait_http()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def spawn(self, cmd: list[str], log: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        out = open(self.work / log, "wb")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=out, stderr=subprocess.STDOUT,
                             stdin=stdin)
        self.procs.append(p)
        return p

    def _wait_http(self) -> None:
        for _ in range(100):
            r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c",
                                f"import socket; socket.create_connection(('{SERVER}', {HTTP_PORT}), 1)"],
                               capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("test HTTP server did not start: " + (self.work / "httpd.log").read_text())

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def url(self, rel: str) -> str:
        return f"http://{SERVER}:{HTTP_PORT}/{rel}"

    def boot(self, image_dir: Path, append: str, name: str = "vm", mac: str = "52:54:00:12:34:56",
             mem: int = 512, decoys: tuple[str, ...] = (), interactive: bool = False) -> Vm:
        """decoys: MACs of NICs placed before the boot NIC (so they come first, eth0...), each on its own
        empty QEMU hub: link up, nothing answers. interactive: the serial console reads `Vm.type()`."""
        self.ntaps += 1
        tap = f"tap{self.ntaps}"
        _sh("ip", "-n", self.ns, "tuntap", "add", tap, "mode", "tap")
        _sh("ip", "-n", self.ns, "link", "set", tap, "master", "br0", "up")
        log = self.work / f"{name}.serial"
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(mem), "-smp", "1", "-nographic", "-no-reboot",
               "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
               "-append", f"console=ttyS0 panic=-1 quiet {append}",
               *[a for i, d in enumerate(decoys) for a in (
                   "-netdev", f"hubport,id=d{i},hubid={i + 1}", "-device", f"virtio-net-pci,netdev=d{i},mac={d}")],
               "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        stdin = subprocess.PIPE if interactive else subprocess.DEVNULL
        return Vm(self.spawn(cmd, log.name, stdin=stdin), log, self)

    def events(self) -> list[dict]:
        return [json.loads(ln) for ln in self.posts.read_text().splitlines() if ln.strip()]


class Vm:
    def __init__(self, proc: subprocess.Popen, log: Path, net: BootNet):
        self.proc, self.log, self.net = proc, log, net

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def type(self, text: str) -> None:
        """Keys on the serial console (the VM was booted with interactive=True)."""
        assert self.proc.stdin is not None, "boot(..., interactive=True) to type on the console"
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_for(self, pattern: str, timeout: float = 60, fail_on: str | None = None) -> str:
        """Wait for a regex line on the serial console; the whole log goes in the error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if re.search(pattern, t, re.M):
                return t
            if fail_on and re.search(fail_on, t, re.M):
                raise AssertionError(f"saw {fail_on!r} before {pattern!r}:\n{t[-4000:]}")
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before {pattern!r}:\n{t[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} on the console within {timeout} s:\n{self.text()[-4000:]}")


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default image (built-in root, Debian cloud kernel), built once per test session.

    xdist workers share it through their common base directory and a file lock;
    the kernel download itself is cached across sessions by the build.
    """
    from rich.console import Console

    from ramboot.images.build import build_image

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    data = shared / "rbi-demo-data"
    with open(shared / "rbi-demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (data / "images/demo/image.toml").exists():
            build_image(data, "demo", console=Console(stderr=True, quiet=True))
    return data / "images/demo"
