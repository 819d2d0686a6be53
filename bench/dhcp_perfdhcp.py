"""DHCP throughput with perfdhcp, set up as in BASELINES.md (run as root from the repo root).

    .venv/bin/python bench/dhcp_perfdhcp.py [RATE ...]

Two throwaway namespaces joined by a veth (10.77.0.0/16), ramboot's DHCP server
in full mode on one side with range 10.77.1.0-10.77.200.255, perfdhcp on the
other at each RATE (DORA/s, 10 s each). Prints perfdhcp's drop and delay lines.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main(rates: list[int]) -> None:
    tag = "rbd" + secrets.token_hex(3)
    srv, cli, vs, vc = tag + "s", tag + "c", tag + "a", tag + "b"
    proc = None
    try:
        sh("ip", "netns", "add", srv)
        sh("ip", "netns", "add", cli)
        sh("ip", "link", "add", vs, "type", "veth", "peer", "name", vc)
        sh("ip", "link", "set", vs, "netns", srv)
        sh("ip", "link", "set", vc, "netns", cli)
        sh("ip", "-n", srv, "addr", "add", "10.77.0.1/16", "dev", vs)
        sh("ip", "-n", cli, "addr", "add", "10.77.255.254/16", "dev", vc)
        for ns, i in ((srv, vs), (cli, vc)):
            sh("ip", "-n", ns, "link", "set", i, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "ramboot.toml"
            cfg.write_text(f'data_dir = "{d}"\n[network]\ninterface = "{vs}"\naddress = "10.77.0.1"\n'
                           '[dhcp]\nmode = "full"\nrange = "10.77.1.0-10.77.200.255"\nlease_time = 3600\n')
            proc = subprocess.Popen(["ip", "netns", "exec", srv, sys.executable,
                                     str(ROOT / "tests" / "dhcp_server_main.py"), str(cfg), "10.77.0.1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            for rate in rates:
                out = subprocess.run(["ip", "netns", "exec", cli, "perfdhcp", "-4", "-l", vc, "-r", str(rate),
                                      "-R", "1000000", "-p", "10"], capture_output=True, text=True).stdout
                print(f"--- rate {rate}")
                print("\n".join(ln for ln in out.splitlines() if "drops" in ln or "avg delay" in ln))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        for ns in (srv, cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main([int(r) for r in sys.argv[1:]] or [100, 500, 1000])
