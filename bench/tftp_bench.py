#!/usr/bin/env python3
"""TFTP: one 50 MB file from tftpd-hpa, dnsmasq and ramboot, side by side in one run.

The three servers serve the same directory over loopback, each in its own
process: tftpd-hpa and ramboot on 127.0.0.1 (random high ports), dnsmasq on
port 69 of a random 127.77.x.y (it has no listen-port option for TFTP).
`--servers` picks who runs side by side: "ramboot" is the whole `ramboot serve`
(its CLI, config file with DHCP off, store, HTTP, API), as a new user runs it;
"ramboot-bare" is `start_tftp` alone in this script with `--serve`, on the same
event loop (uvloop when installed). docs/benchmarks.md explains what differs.
Clients, as in BASELINES.md: curl lock-step with
512 and 1468 byte blocks, and atftp with blksize 1468 and windowsize 8/16/64
(tftpd-hpa and dnsmasq refuse windowsize, so they answer those lock-step).
Every cell is measured `--repeat` times, the servers' order rotating each
round so load drift hits them alike; the median is reported (the best beside
it), and every download is checked byte for byte. Then `--concurrent` curl clients (blksize 1468) fetch the file at once
from each server: aggregate MB/s, and any failed transfer is reported. The
load average is printed at the start and the end. Children are killed by
their PID.

With `--net veth` (the default) the servers run in a namespace of their own
and the clients in another, joined by a veth pair (`rbt<random>-s` / `-c`,
10.77.0.1 and 10.77.255.254; made and removed here): closer to a real NIC than
loopback, where the sender also runs the receiver's softirq. `--net loopback`
is the earlier set-up (127.0.0.1, dnsmasq on a random 127.77.x.y).

`--also TREE` (repeatable) runs the ramboot servers of another source tree
beside this one's in the same rounds, as ramboot@NAME and ramboot-bare@NAME
(NAME: the tree's directory name): before/after in one run. `--src` serves
another tree instead of this one. Every ramboot process, `serve`'s workers
included, runs its tree's code (PYTHONPATH).

Usage: .venv/bin/python bench/tftp_bench.py [--size-mb 50] [--repeat 3] [--concurrent 50] [--net veth|loopback]
       [--servers tftpd-hpa,dnsmasq,ramboot,ramboot-bare] [--only "curl blksize 1468"]
       [--also OLD_TREE] [--src OLD_TREE/src]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.util import NetnsPair

FILE = "bench.bin"
SERVERS = ("tftpd-hpa", "dnsmasq", "ramboot", "ramboot-bare")
DEFAULT_SERVERS = "tftpd-hpa,dnsmasq,ramboot"


# A client's command line: (server host, port, file to write) -> argv.
Client = Callable[[str, int, str], list[str]]


def curl(blksize: int) -> Client:
    return lambda host, port, out: ["curl", "-sS", "--tftp-blksize", str(blksize), "-o", out,
                                    f"tftp://{host}:{port}/{FILE}"]


def atftp(window: int) -> Client:
    return lambda host, port, out: ["atftp", "--option", "blksize 1468", "--option", f"windowsize {window}",
                                    "-g", "-r", FILE, "-l", out, host, str(port)]


CLIENTS = [("curl blksize 512", curl(512)), ("curl blksize 1468", curl(1468))] + \
          [(f"atftp 1468 window {w}", atftp(w)) for w in (8, 16, 64)]


def serve(src: str, data_dir: str, port: int, host: str = "127.0.0.1") -> None:
    """The ramboot side: the real server with a real namespace over `data_dir`."""
    sys.path.insert(0, src)
    import uvloop

    from ramboot.config import Config, TftpConfig
    from ramboot.inventory.store import Store
    from ramboot.namespace import Namespace
    from ramboot.policy import Booter
    from ramboot.server.events import EventLog
    from ramboot.server.tftp_server import start_tftp

    async def main() -> None:
        cfg = Config(data_dir=Path(data_dir), tftp=TftpConfig(max_per_source=256))  # all clients are 127.0.0.1
        store = Store(f"sqlite:///{data_dir}/bench-{port}.db")  # one each: several trees may serve this directory
        await start_tftp(cfg, Namespace(Path(data_dir), Booter(cfg, store.directory, host)), EventLog(store.events),
                         host=host, port=port)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as `serve` runs, in any tree
        runner.run(main())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_loopback_69() -> str:
    """A 127.77.x.y whose port 69 is free, for dnsmasq."""
    for _ in range(20):
        host = f"127.77.{random.randrange(256)}.{random.randrange(1, 255)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, 69))
                return host
            except OSError:
                continue
    sys.exit("no free 127.77.x.y:69 for dnsmasq")


def wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], prefix: list[str] | None = None) -> None:
    """Ready when a request for a missing file gets a TFTP ERROR back."""
    if prefix:  # from the client namespace: curl says 68 (file not found) once a server answers
        for _ in range(100):
            if proc.poll() is not None:
                sys.exit(f"server exited early with status {proc.returncode}")
            r = subprocess.run([*prefix, "curl", "-sS", "--max-time", "1", "-o", "/dev/null",
                                f"tftp://{host}:{port}/no-such-file"], capture_output=True)
            if r.returncode == 68:
                return
            time.sleep(0.1)
        sys.exit(f"no TFTP server answering on {host}:{port}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for _ in range(50):
            if proc.poll() is not None:
                sys.exit(f"server exited early with status {proc.returncode}")
            s.sendto(b"\x00\x01no-such-file\x00octet\x00", (host, port))
            try:
                if s.recvfrom(600)[0][:2] == b"\x00\x05":
                    return
            except TimeoutError:
                pass
    sys.exit(f"no TFTP server answering on {host}:{port}")


def measure(cmd: list[str], out: Path, src: Path, size: int) -> float:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists() or not filecmp.cmp(out, src, shallow=False):
        sys.exit(f"{' '.join(cmd)} failed (status {r.returncode}): {r.stderr.strip()}")
    return size / dt / 1e6


def concurrent(n: int, host: str, port: int, outdir: Path, src: Path, size: int,
               prefix: list[str] | None = None) -> tuple[float, int]:
    """`n` curl clients at once: aggregate MB/s over the whole batch, and how many failed."""
    outs = [outdir / f"c{i}.bin" for i in range(n)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*(prefix or []), *curl(1468)(host, port, str(o))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for o in outs]
    codes = [p.wait(timeout=900) for p in procs]
    dt = time.perf_counter() - t0
    failed = sum(1 for c, o in zip(codes, outs, strict=True)
                 if c != 0 or not o.exists() or not filecmp.cmp(o, src, shallow=False))
    for o in outs:
        o.unlink(missing_ok=True)
    return n * size / dt / 1e6, failed


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=50, help="clients in the concurrent point (0: skip it)")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"),
                    help="the ramboot source tree to serve")
    ap.add_argument("--net", choices=("veth", "loopback"), default="veth")
    ap.add_argument("--servers", default=DEFAULT_SERVERS,
                    help=f"comma-separated servers side by side, from {', '.join(SERVERS)} (default: %(default)s)")
    ap.add_argument("--also", type=Path, action="append", default=[], metavar="TREE",
                    help="also the ramboot servers of this source tree (its src/ on PYTHONPATH), in the same "
                         "rounds, as ramboot@NAME and ramboot-bare@NAME; repeatable")
    ap.add_argument("--only", help="comma-separated client names to run, by substring (e.g. 'curl blksize 1468')")
    ap.add_argument("--serve", nargs=3, metavar=("DIR", "PORT", "HOST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.src, args.serve[0], int(args.serve[1]), args.serve[2])
        return
    net = None
    if args.net == "veth":
        if os.geteuid() != 0:
            sys.exit("tftp_bench --net veth needs root (network namespaces); try --net loopback")
        root = Path(__file__).resolve().parents[1]
        sys.path[:0] = [str(root / "src"), str(root)]
        import secrets

        from bench.util import NetnsPair
        net = NetnsPair(tag="rbt" + secrets.token_hex(3)).up()
    try:
        run_all(args, net)
    finally:
        if net is not None:
            net.down()


def serve_config(data: Path, port: int, host: str, iface: str | None) -> str:
    """`ramboot serve`'s config for the bench, as a new user writes it: DHCP off, the file in
    the TFTP root (DATA/loaders), HTTP on a free port, no HTTPS listener."""
    net = f'interface = "{iface}"\n' if iface else ""
    return (f'data_dir = "{data}"\n\n[network]\n{net}address = "{host}"\n\n[dhcp]\nmode = "off"\n\n'
            f"[tftp]\nport = {port}\nmax_per_source = 256\n\n[http]\nport = {free_port()}\nhttps_port = 0\n")


def run_all(args: argparse.Namespace, net: NetnsPair | None) -> None:
    srv_prefix = ["ip", "netns", "exec", net.srv] if net else []
    cli_prefix = ["ip", "netns", "exec", net.cli] if net else []
    clients = [(n, c) for n, c in CLIENTS if not args.only or any(o in n for o in args.only.split(","))]
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    if unknown := [s for s in servers if s not in SERVERS]:
        sys.exit(f"unknown server(s) {', '.join(unknown)}: choose from {', '.join(SERVERS)}")
    # Each ramboot server's source tree (its src/ directory): this one's (or --src), and every --also.
    trees = {s: args.src for s in servers if s.startswith("ramboot")}
    for tree in args.also:
        src_dir = tree.resolve() if tree.name == "src" else tree.resolve() / "src"
        if not (src_dir / "ramboot").is_dir():
            sys.exit(f"--also {tree}: no ramboot package in {src_dir}")
        for s in [s for s in servers if s.startswith("ramboot")]:
            trees[f"{s}@{src_dir.parent.name}"] = str(src_dir)
    servers += tuple(s for s in trees if "@" in s)
    if "tftpd-hpa" not in servers:
        sys.exit("--servers must include tftpd-hpa (the ratios are against it)")
    for tool in ("in.tftpd", "dnsmasq", "curl", "atftp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (make setup installs tftpd-hpa, dnsmasq, curl and atftp)")

    work = Path(tempfile.mkdtemp(prefix="rbt-tftp-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="rbt-tftp-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    children: list[subprocess.Popen[bytes]] = []
    try:
        data = work / "data"
        (data / "loaders").mkdir(parents=True)
        src = data / "loaders" / FILE
        size = args.size_mb * 1_000_000
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        for p in (work, data, data / "loaders"):
            p.chmod(0o755)  # tftpd-hpa and dnsmasq drop privileges before reading
        src.chmod(0o644)

        host = net.srv_ip if net else "127.0.0.1"
        addr = {s: (host, free_port()) for s in servers}
        if "dnsmasq" in addr:
            addr["dnsmasq"] = (net.srv_ip, 69) if net else (free_loopback_69(), 69)
        cmds = {
            "tftpd-hpa": ["in.tftpd", "-L", "-4", "-a", "{}:{:d}".format(*addr["tftpd-hpa"]),
                          "-s", str(data / "loaders")],
        }
        if "dnsmasq" in addr:
            cmds["dnsmasq"] = ["dnsmasq", "--no-daemon", "--port=0", "--enable-tftp",
                               f"--tftp-root={data / 'loaders'}", f"--listen-address={addr['dnsmasq'][0]}",
                               "--bind-interfaces", "--tftp-max=256", "--conf-file=/dev/null", "--pid-file=",
                               "--log-facility=-", "--quiet-tftp"]
        for i, (name, tree) in enumerate(trees.items()):
            if name.partition("@")[0] == "ramboot":  # the whole `ramboot serve`, its own data directory
                rdata = work / f"ramboot{i}"
                (rdata / "loaders").mkdir(parents=True)
                os.link(src, rdata / "loaders" / FILE)
                conf = work / f"ramboot{i}.toml"
                conf.write_text(serve_config(rdata, addr[name][1], host, net.srv_if if net else None))
                cmds[name] = [sys.executable, "-c", "from ramboot.cli import main; main()", "serve", "--config",
                              str(conf)]
            else:  # `start_tftp` alone in this script
                cmds[name] = [sys.executable, __file__, "--src", tree, "--serve", str(data), str(addr[name][1]),
                              addr[name][0]]
        for name in servers:
            # PYTHONPATH, not only sys.path: `serve`'s workers (which answer TFTP) are processes of their own.
            env = dict(os.environ, PYTHONPATH=trees[name]) if name in trees else None
            # Each server in a session of its own, as a daemon runs: with autogroup scheduling a session is
            # a scheduling group, and `serve`'s workers start their own sessions; a server left in this
            # script's session, beside the clients, got faster wake-ups than one outside it (up to 1.4x).
            children.append(subprocess.Popen([*srv_prefix, *cmds[name]], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, env=env, start_new_session=True))
            wait_ready(*addr[name], children[-1], cli_prefix)

        print(f"load average at start: {loadavg()}", file=sys.stderr)
        out = work / "out.bin"
        rows = []
        k = len(servers)
        for name, cmd in clients:
            runs: dict[str, list[float]] = {s: [] for s in servers}
            for i in range(args.repeat):
                for s in servers[i % k:] + servers[: i % k]:  # each server goes first in turn
                    runs[s].append(measure([*cli_prefix, *cmd(*addr[s], str(out))], out, src, size))
            rows.append((name, runs))
            print(f"  {name}: " + ", ".join(f"{s} median {statistics.median(v):.1f} (best {max(v):.1f})"
                                           for s, v in runs.items()) + f" MB/s; load {loadavg()}", file=sys.stderr)

        storm = {}
        if args.concurrent:
            for s in servers:
                storm[s] = concurrent(args.concurrent, *addr[s], shm, src, size, cli_prefix)
                print(f"  {args.concurrent} concurrent curl 1468: {s} {storm[s][0]:.1f} MB/s, "
                      f"{storm[s][1]} failed; load {loadavg()}", file=sys.stderr)

        where = "a veth pair between two namespaces" if net else "loopback"
        ours = [s for s in servers if s.startswith("ramboot")]
        peers = [s for s in ("tftpd-hpa", "dnsmasq") if s in servers]
        print(f"\nTFTP, {args.size_mb} MB file over {where}, MB/s: median (best) of {args.repeat} rounds, "
              f"ratios of medians; load average at the end {loadavg()}\n")
        ratio_cols = [f"{r} vs {p}" for r in ours for p in peers]
        print(f"| client | {' | '.join(servers)} | {' | '.join(ratio_cols)} |")
        print("|---" * (1 + len(servers) + len(ratio_cols)) + "|")
        for name, runs in rows:
            med = {s: statistics.median(runs[s]) for s in servers}
            cells = " | ".join(f"{med[s]:.1f} ({max(runs[s]):.1f})" for s in servers)
            ratios = " | ".join(f"{med[r] / med[p]:.2f}x" for r in ours for p in peers)
            print(f"| {name} | {cells} | {ratios} |")
        if storm:
            cells = " | ".join(f"{storm[s][0]:.1f}, {storm[s][1]} failed" for s in servers)
            ratios = " | ".join(f"{storm[r][0] / storm[p][0]:.2f}x" for r in ours for p in peers)
            print(f"| {args.concurrent} concurrent curl 1468 (aggregate) | {cells} | {ratios} |")
        if any(f for _, f in storm.values()):
            sys.exit("failed transfers in the concurrent point")
    finally:
        for c in children:
            c.kill()
            c.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
