"""Network namespaces for DHCP interop tests: a server side and a client side on a veth.

Names are `rbd<random>` so parallel runs never collide; everything made here
is removed on exit, and only processes started here are killed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERVER_IP = "10.231.7.1"
RANGE = "10.231.7.100-10.231.7.150"
HERE = Path(__file__).parent


def need(*tools: str) -> None:
    """A missing tool is a failure, never a skip (`make setup` installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `make setup`")


def sh(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class NetnsPair:
    def __init__(self, bridge: bool = False) -> None:
        """`bridge`: the server side is a bridge, so `add_host()` can join more namespaces."""
        need("ip")
        if os.geteuid() != 0:
            pytest.fail("netns tests need root")
        self.tag = tag = "rbd" + secrets.token_hex(3)
        self.srv_ns, self.cli_ns = tag + "s", tag + "c"
        self.srv_port, self.cli_if = tag + "a", tag + "b"
        self.srv_if = tag + "r" if bridge else self.srv_port
        self.namespaces = [self.srv_ns, self.cli_ns]
        self.procs: list[subprocess.Popen] = []
        try:
            sh("ip", "netns", "add", self.srv_ns)
            sh("ip", "netns", "add", self.cli_ns)
            for ns in self.namespaces:
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            if bridge:
                sh("ip", "-n", self.srv_ns, "link", "add", self.srv_if, "type", "bridge")
                sh("ip", "-n", self.srv_ns, "link", "set", self.srv_if, "up")
            self._veth(self.srv_port, self.cli_ns, self.cli_if)
            sh("ip", "-n", self.srv_ns, "addr", "add", f"{SERVER_IP}/24", "dev", self.srv_if)
        except BaseException:
            self.close()
            raise

    def _veth(self, port: str, ns: str, ifname: str) -> None:
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", ifname)
        sh("ip", "link", "set", port, "netns", self.srv_ns)
        sh("ip", "link", "set", ifname, "netns", ns)
        if port != self.srv_if:
            sh("ip", "-n", self.srv_ns, "link", "set", port, "master", self.srv_if)
        sh("ip", "-n", self.srv_ns, "link", "set", port, "up")
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def add_host(self, suffix: str, address: str | None = None) -> tuple[str, str]:
        """Another namespace on the server's bridge; returns (namespace, interface)."""
        ns, ifname = self.tag + suffix, self.tag + suffix + "i"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self._veth(self.tag + suffix + "p", ns, ifname)
        if address:
            sh("ip", "-n", ns, "addr", "add", address, "dev", ifname)
        return ns, ifname

    def run(self, ns: str, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout, check=check)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def start_server(self, tmp: Path, mode: str = "full", extra: str = "", data_dir: Path | None = None) -> subprocess.Popen:
        data_dir = data_dir or tmp / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        cfg = tmp / "ramboot.toml"
        rng = f'range = "{RANGE}"\n' if mode == "full" else ""
        cfg.write_text(
            f'data_dir = "{data_dir}"\n[network]\ninterface = "{self.srv_if}"\naddress = "{SERVER_IP}"\n'
            f'[dhcp]\nmode = "{mode}"\n{rng}lease_time = 600\n{extra}'
        )
        log = open(tmp / "server.log", "ab")
        p = self.popen(self.srv_ns, sys.executable, str(HERE / "dhcp_server_main.py"), str(cfg), SERVER_IP,
                       stdout=subprocess.PIPE, stderr=log)
        line = _readline(p, 15)
        if line.strip() != b"ready":
            pytest.fail(f"dhcp server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


def _readline(p: subprocess.Popen, timeout: float) -> bytes:
    import select

    assert p.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            return p.stdout.readline()
        if p.poll() is not None:
            return b""
    return b""


def udhcpc(pair: NetnsPair, tmp: Path, *args: str, timeout: float = 20) -> dict[str, str]:
    """One busybox udhcpc run; returns the environment its script saw on `bound`."""
    need("busybox")
    out = tmp / f"udhcpc-{secrets.token_hex(3)}.env"
    script = tmp / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && env > "$UDHCPC_OUT"\nexit 0\n')
    script.chmod(0o755)
    res = pair.run(pair.cli_ns, "env", f"UDHCPC_OUT={out}", "busybox", "udhcpc", "-i", pair.cli_if, "-f", "-q", "-n",
                   "-t", "5", "-T", "1", "-s", str(script), *args, timeout=timeout, check=False)
    if not out.exists():
        pytest.fail(f"udhcpc got no lease (rc {res.returncode}): {res.stderr[-1500:]}")
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def dhclient(pair: NetnsPair, tmp: Path, conf: str = "", timeout: float = 30) -> dict[str, str]:
    """One ISC dhclient run (-1: one try); returns its script's environment on BOUND."""
    need("dhclient")
    tag = secrets.token_hex(3)
    out = tmp / f"dhclient-{tag}.env"
    script = tmp / f"dhclient-{tag}.sh"
    script.write_text(f'#!/bin/sh\n[ "$reason" = BOUND ] && env > "{out}"\nexit 0\n')
    script.chmod(0o755)
    cf = tmp / f"dhclient-{tag}.conf"
    cf.write_text("option arch code 93 = unsigned integer 16;\n" + conf)
    # -d keeps dhclient in the foreground after BOUND: wait for the script, then stop it.
    p = pair.popen(pair.cli_ns, "dhclient", "-1", "-d", "-v", "-cf", str(cf), "-lf", str(tmp / f"{tag}.leases"),
                   "-pf", str(tmp / f"{tag}.pid"), "-sf", str(script), pair.cli_if,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + timeout
    while not out.exists() and p.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.05)  # let the script finish writing
    pair.stop(p)
    if not out.exists():
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        pytest.fail(f"dhclient got no lease: {err[-1500:]}")
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def udp_payloads(pcap: bytes) -> list[tuple[int, int, bytes]]:
    """(src port, dst port, payload) of each IPv4/UDP frame in a classic Ethernet pcap."""
    import struct

    magic = pcap[:4]
    endian = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
    out, i = [], 24
    while i + 16 <= len(pcap):
        _, _, incl, _ = struct.unpack(endian + "IIII", pcap[i : i + 16])
        frame = pcap[i + 16 : i + 16 + incl]
        i += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl :]
        sport, dport, ulen = struct.unpack("!HHH", udp[:6])
        out.append((sport, dport, udp[8:ulen]))
    return out
