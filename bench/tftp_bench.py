#!/usr/bin/env python3
"""TFTP: one 50 MB file from tftpd-hpa and from ramboot, side by side in one run.

Both servers serve the same directory on 127.0.0.1 (random high ports), each
in its own process (ramboot's is this script with `--serve`). Clients, as in
BASELINES.md: curl lock-step with 512 and 1468 byte blocks, and atftp with
blksize 1468 and windowsize 8/16/64 (tftpd-hpa refuses windowsize, so it
falls back to lock-step there). Each cell is the best of `--repeat` runs, and
every download is checked byte for byte. Children are killed by their PID.

Usage: .venv/bin/python bench/tftp_bench.py [--size-mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FILE = "bench.bin"

CLIENTS = [
    ("curl blksize 512", lambda port, out: ["curl", "-sS", "--tftp-blksize", "512", "-o", out, f"tftp://127.0.0.1:{port}/{FILE}"]),
    ("curl blksize 1468", lambda port, out: ["curl", "-sS", "--tftp-blksize", "1468", "-o", out, f"tftp://127.0.0.1:{port}/{FILE}"]),
] + [
    (f"atftp 1468 window {w}", lambda port, out, w=w: ["atftp", "--option", "blksize 1468", "--option", f"windowsize {w}",
                                                       "-g", "-r", FILE, "-l", out, "127.0.0.1", str(port)])
    for w in (8, 16, 64)
]


def serve(data_dir: str, port: int) -> None:
    """The ramboot side: the real server with a real namespace over `data_dir`."""
    from ramboot.config import Config
    from ramboot.inventory.store import Store
    from ramboot.namespace import Namespace
    from ramboot.policy import Booter
    from ramboot.server.events import EventLog
    from ramboot.server.tftp import start_tftp

    async def main() -> None:
        cfg = Config(data_dir=Path(data_dir))
        store = Store(f"sqlite:///{data_dir}/bench.db")
        await start_tftp(cfg, Namespace(Path(data_dir), Booter(cfg, store, "127.0.0.1")), EventLog(store),
                         host="127.0.0.1", port=port)
        await asyncio.Event().wait()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    """Ready when a request for a missing file gets a TFTP ERROR back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for _ in range(50):
            if proc.poll() is not None:
                sys.exit(f"server exited early with status {proc.returncode}")
            s.sendto(b"\x00\x01no-such-file\x00octet\x00", ("127.0.0.1", port))
            try:
                if s.recvfrom(600)[0][:2] == b"\x00\x05":
                    return
            except socket.timeout:
                pass
    sys.exit(f"no TFTP server answering on port {port}")


def measure(cmd: list[str], out: Path, src: Path, size: int) -> float:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists() or not filecmp.cmp(out, src, shallow=False):
        sys.exit(f"{' '.join(cmd)} failed (status {r.returncode}): {r.stderr.strip()}")
    return size / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    for tool in ("in.tftpd", "curl", "atftp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (make setup installs tftpd-hpa, curl and atftp)")

    work = Path(tempfile.mkdtemp(prefix="rbt-tftp-bench-"))
    children: list[subprocess.Popen] = []
    try:
        data = work / "data"
        (data / "loaders").mkdir(parents=True)
        src = data / "loaders" / FILE
        size = args.size_mb * 1_000_000
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        for p in (work, data, data / "loaders"):
            p.chmod(0o755)  # tftpd-hpa drops privileges before reading
        src.chmod(0o644)

        hpa_port, rb_port = free_port(), free_port()
        hpa = subprocess.Popen(["in.tftpd", "-L", "-4", "-a", f"127.0.0.1:{hpa_port}", "-s", str(data / "loaders")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(hpa)
        rb = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(rb_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(rb)
        wait_ready(hpa_port, hpa)
        wait_ready(rb_port, rb)

        out = work / "out.bin"
        rows = []
        for name, cmd in CLIENTS:
            best = {"tftpd-hpa": 0.0, "ramboot": 0.0}
            for _ in range(args.repeat):  # interleaved, so drift hits both servers alike
                best["tftpd-hpa"] = max(best["tftpd-hpa"], measure(cmd(hpa_port, str(out)), out, src, size))
                best["ramboot"] = max(best["ramboot"], measure(cmd(rb_port, str(out)), out, src, size))
            rows.append((name, best["tftpd-hpa"], best["ramboot"]))
            print(f"  {name}: tftpd-hpa {best['tftpd-hpa']:.1f} MB/s, ramboot {best['ramboot']:.1f} MB/s", file=sys.stderr)

        hpa_lockstep = dict((n, h) for n, h, _ in rows)["curl blksize 1468"]
        print(f"\nTFTP, {args.size_mb} MB file over loopback, best of {args.repeat} (MB/s)\n")
        print(f"| client | tftpd-hpa | ramboot | ratio | ramboot vs tftpd-hpa curl 1468 |")
        print(f"|---|---|---|---|---|")
        for name, h, r in rows:
            print(f"| {name} | {h:.1f} | {r:.1f} | {r / h:.2f}x | {r / hpa_lockstep:.2f}x |")
    finally:
        for c in children:
            c.kill()
            c.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
