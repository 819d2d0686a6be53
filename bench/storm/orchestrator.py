"""The storm's orchestrator (run as root): namespaces, data, servers, the generator processes,
and what is measured around them (server CPU and RSS, the machine's load, the link bound)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TypedDict, cast

import click

from ramboot.images.manifest import images_dir
from ramboot.lab.impair import Impairment
from ramboot.lab.pg import TempCluster
from ramboot.namespace import install_loaders

from ..util import Child, NetnsPair, RssSampler, cpu_seconds, make_image, ramboot_exe, rss_bytes, run
from .common import BOOT_RETRIES, HTTP_PORT, POOL, POOL_NET, TFTP_PORT, BoundOutput, ClientRecord, Params, StormOutput
from .report import Measured, Summary, summarize

# The bench home's parent: generator processes run `python -m bench.storm` from there.
ROOT = Path(__file__).resolve().parents[2]


class StormTotals(TypedDict):
    """The generators' outputs together (written to the work dir as out.json)."""

    wall: float
    bound_mb_s: float
    server_tx_bytes: int
    gen_cpu_s: list[float]
    stray_dhcp: int
    results: list[ClientRecord]


def generator_argv(*args: str) -> list[str]:
    """This package's CLI in a new process (started with cwd=ROOT)."""
    return [sys.executable, "-m", "bench.storm", *args]


def server_config(data_dir: Path, ifname: str, lease_time: int = 3600, address: str = "10.77.0.1",
                  db_url: str | None = None, name: str | None = None, clients: int = 0, seed: bool = True,
                  serve_workers: int = 1) -> str:
    """A full-mode config, without the TLS listener: the storm measures the boot path (DHCP,
    TFTP, script, kernel, initrd, root), and its clients report `booted` over plain HTTP
    (`overlay_over_http`), not what 3,000 TLS handshakes cost. With `clients`, TFTP's caps
    on transfers (1,024) and on transfers not yet ACKed (256) are raised to that many, as a
    site with that many nodes would: all of them ask for the boot program in the same second.
    `serve_workers`: `[serve] workers`; reads are open, so the API probe needs no token."""
    shared = "" if db_url is None else (f'[database]\nurl = "{db_url}"\n'
                                         f'[cluster]\nname = "{name}"\nheartbeat = 0.5\ndead_after = 3.0\n')
    caps = f"max_transfers = {max(1024, clients)}\nmax_unconfirmed = {max(256, clients)}\n" if clients else ""
    return f"""data_dir = "{data_dir}"
{shared}[network]
interface = "{ifname}"
address = "{address}"
[dhcp]
mode = "full"
range = "{POOL[0]}-{POOL[1]}"
lease_time = {lease_time}
[tftp]
port = {TFTP_PORT}
{caps}[http]
port = {HTTP_PORT}
https_port = 0
[security]
overlay_over_http = true
[scale]
seed = {"true" if seed else "false"}
[boot]
default_image = "bench"
unknown_nodes = "boot"
[serve]
workers = {serve_workers}
[api]
read_requires_token = false
"""

def _spawn(net: NetnsPair, work: Path, base: Params, workers: int, mode: str, start_at: float,
           timeout: float) -> list[object]:
    """`workers` generator processes in the client namespace, the clients split among them;
    each one's JSON output."""
    """Run `workers` load generator processes in the client namespace, the clients split among them.

    `base` holds the generator parameters (`client_params()`); returns each process's output.
    """
    n = base["n"]
    procs: list[tuple[Child, Path]] = []
    for w in range(workers):
        first, count = n * w // workers, n * (w + 1) // workers - n * w // workers
        pf, of = work / f"params-{mode}-{w}.json", work / f"out-{mode}-{w}.json"
        of.unlink(missing_ok=True)
        pf.write_text(json.dumps(dict(base, mode=mode, first=first, count=count, start_at=start_at)))
        cmd = net.exec(net.cli, *generator_argv("--client-params", str(pf), "--client-out", str(of)))
        procs.append((Child(cmd, log=work / f"gen-{mode}-{w}.log", cwd=str(ROOT)), of))
    outs: list[object] = []
    for child, of in procs:
        try:
            child.proc.wait(timeout + 300)
        except Exception:
            child.stop()
        child.stop()
        if child.proc.returncode != 0 or not of.exists():
            raise click.ClickException(f"storm: a load generator failed:\n{child.tail(20)}")
        outs.append(json.loads(of.read_text()))
    return outs


def run_generators(net: NetnsPair, work: Path, base: Params, workers: int, mode: str = "storm",
                   start_at: float = 0.0, timeout: float = 600) -> list[StormOutput]:
    """Run `workers` load generator processes in the client namespace, the clients split among them.

    `base` holds the generator parameters (`client_params()`); returns each process's output.
    """
    return [cast(StormOutput, o) for o in _spawn(net, work, base, workers, mode, start_at, timeout)]


def link_bound(net: NetnsPair, work: Path, base: Params, workers: int, timeout: float) -> float:
    """MB/s of raw TCP from the blaster into the generator processes (the link bound)."""
    return sum(cast(BoundOutput, o)["bound_mb_s"] for o in _spawn(net, work, base, workers, "bound", 0.0, timeout))


def client_params(n: int, ifname: str, server: str, data: Path, man: dict[str, str], blksize: int = 1456,
                  windowsize: int = 0, ramp: float = 0.0, timeout: float = 600, mac_prefix: str | None = None,
                  bound_seconds: float = 0.0, boot_retries: int = BOOT_RETRIES, seed: bool = False) -> Params:
    """The load generators' parameters for `n` clients against the server at `server`."""
    refs = {name: (str(images_dir(data) / "bench" / name), sha) for name, sha in man.items()}
    for f in (data / "loaders").iterdir():
        if f.is_file():
            refs[f"loaders/{f.name}"] = (str(f), hashlib.sha256(f.read_bytes()).hexdigest())
    return Params(
        n=n, ifname=ifname, server=server, blksize=blksize, windowsize=windowsize,
        ramp=ramp, timeout=timeout, references=refs, manifest=man,
        mac_prefix=mac_prefix or "02" + secrets.token_hex(2), bound_seconds=bound_seconds,
        boot_retries=boot_retries, seed=seed,
    )


def prepare_data(data: Path, image_mb: float) -> dict[str, str]:
    """A data dir with the synthetic image `bench` and the boot programs; returns the manifest's sums."""
    man = make_image(data, "bench", int(image_mb * 2**20))
    install_loaders(data)
    ldir = data / "loaders"
    if not (ldir / "undionly.kpxe").exists():  # no ipxe package: any bytes will do for the transfer
        (ldir / "undionly.kpxe").write_bytes(os.urandom(70_000))
    return man


def run_storm(n: int = 100, image_mb: float = 8, blksize: int = 1456, windowsize: int = 0, ramp: float = 0.0,
              timeout: float = 600, keep: Path | None = None, bound_seconds: float = 2.0, verbose: bool = True,
              workers: int = 2, servers: int = 1, kill_after: float | None = None,
              impair: Impairment | None = None, seed: bool = False, link_mbit: float = 0.0,
              serve_workers: int = 1) -> Summary:
    """Run one storm end to end (namespaces, servers, clients); returns the summary dict.

    `seed`: booted clients serve their root to later ones as nodes do (`[scale] seed`), else
    the server has seeding off. `link_mbit`: the server's veth limited to that rate (tc tbf).
    `serve_workers`: the servers' `[serve] workers`. Throughout the storm an operator's probe
    (`apiprobe`) asks the first server's API and status page ten times a second.

    `servers` > 1: that many `ramboot serve` on one bridge and one throwaway PostgreSQL
    cluster (same range, full DHCP). `kill_after`: SIGKILL the first server that many
    seconds into the storm; the clients fall back as nodes do (DHCP from the other
    server, `||` in the iPXE script, the list of root URLs, a firmware retry).
    With `impair`, the wire between the clients and the servers drops and delays
    frames each way (`ramboot.lab.impair`) and the link-bound probe is skipped.
    """
    if impair is not None:
        bound_seconds = 0.0
    if os.geteuid() != 0:
        raise click.ClickException("storm needs root (it makes network namespaces)")
    if n > 4000:
        raise click.ClickException("storm: at most 4000 clients (the pool is a /20)")
    work = Path(tempfile.mkdtemp(prefix="rbb-storm-"))
    data = work / "data"
    pg: TempCluster | None = None
    def say(*a: object) -> None:
        if verbose:
            click.echo(" ".join(str(x) for x in a), err=True)

    try:
        man = prepare_data(data, image_mb)
        ldir = data / "loaders"
        if servers > 1:
            pg = TempCluster().start()
        net = NetnsPair(impair=impair)
        with net:
            run("ip", "-n", net.cli, "route", "add", "local", POOL_NET, "dev", "lo")
            db_url = pg.create_db("storm") if pg else None
            places = [(net.srv, net.srv_if, net.srv_ip)]
            for i in range(2, servers + 1):
                places.append(net.add_server(i))
            if servers > 1:
                places[0] = (net.srv, net.bridge, net.srv_ip)
            for ns, ifname, _addr in places:
                # The pool via the client namespace's own address: one ARP entry on the server's side
                # instead of one per client. The kernel's ARP table is shared by every namespace on
                # the host (gc_thresh3, 1,024 by default): 3,000 clients would overflow it, here and
                # for everyone else on the machine.
                run("ip", "-n", ns, "route", "add", POOL_NET, "via", net.cli_ip, "dev", ifname)
            children: list[Child] = []
            blaster: Child | None = None
            try:
                for i, (ns, ifname, addr) in enumerate(places):
                    d = data if i == 0 else work / f"data{i + 1}"
                    if i:  # the same image, hard-linked: identical files stored once
                        (d / "images" / "bench").mkdir(parents=True, exist_ok=True)
                        for f in (data / "images" / "bench").iterdir():
                            os.link(f, d / "images" / "bench" / f.name)
                        shutil.copytree(ldir, d / "loaders", copy_function=os.link)
                    cfg = work / f"ramboot{i + 1}.toml"
                    cfg.write_text(server_config(d, ifname, address=addr, db_url=db_url, name=f"s{i + 1}", clients=n,
                                                 seed=seed, serve_workers=serve_workers))
                    log = work / ("server.log" if i == 0 else f"server{i + 1}.log")
                    children.append(Child(net.exec(ns, ramboot_exe(), "serve", "--config", str(cfg)), log=log))
                    end = time.monotonic() + 30
                    while "serving on" not in log.read_text(errors="replace"):
                        if not children[-1].alive() or time.monotonic() > end:
                            raise click.ClickException(f"storm: server {i + 1} did not start:\n"
                                                       f"{children[-1].tail(10)}")
                        time.sleep(0.05)
                srv = children[0]
                if servers > 1:
                    time.sleep(1.5)  # a heartbeat or two: each server names the others to nodes
                if bound_seconds:
                    blaster = Child(net.exec(net.srv, *generator_argv(
                        "--blast", str(data / "images" / "bench" / "rootfs.squashfs"))),
                                    log=work / "blast.log", cwd=str(ROOT))
                    time.sleep(0.3)
                if link_mbit:  # what the server sends, at the link's rate (tbf; this kernel has no netem)
                    run("ip", "netns", "exec", net.srv, "tc", "qdisc", "add", "dev", net.srv_if, "root", "tbf",
                        "rate", f"{link_mbit:g}mbit", "burst", f"{max(64, int(link_mbit * 2))}kb", "latency", "50ms")
                base = client_params(n, net.cli_if, net.srv_ip, data, man, blksize, windowsize, ramp, timeout,
                                     bound_seconds=bound_seconds, seed=seed)
                bound = link_bound(net, work, base, workers, timeout) if bound_seconds else 0.0
                say(f"storm: {n} clients in {workers} generator processes, image {image_mb} MB,"
                    f" server pid {srv.pid} in {net.srv}")
                rss0 = rss_bytes(srv.pid)
                cpu0, main0 = cpu_seconds(srv.pid), cpu_seconds(srv.pid, include_children=False)
                killer: threading.Timer | None = None
                killed_at: list[float] = []  # CLOCK_MONOTONIC is one clock for every process here
                # the generators start, import, and check the references against the manifest first
                start_at = time.time() + 1.0 + 0.1 * workers + sum(os.path.getsize(f) for f, _ in
                                                                    base["references"].values()) / 1e9
                if kill_after is not None:
                    def kill() -> None:
                        say(f"storm: kill -9 server 1 (pid {srv.pid}) {kill_after} s into the storm")
                        os.kill(srv.pid, signal.SIGKILL)
                        killed_at.append(time.monotonic())
                    killer = threading.Timer(max(0.0, start_at - time.time()) + kill_after, kill)
                    killer.start()
                load0, busy0 = os.getloadavg()[0], list[tuple[int, int]]()
                at_start = threading.Timer(max(0.0, start_at - time.time()), lambda: busy0.append(_machine_jiffies()))
                at_start.start()
                tx_path = f"/sys/class/net/{net.srv_if}/statistics/tx_bytes"
                tx0 = int(run("ip", "netns", "exec", net.srv, "cat", tx_path).stdout)
                probe = Child(net.exec(net.cli, sys.executable, "-m", "bench.storm.apiprobe", net.srv_ip,
                                       str(HTTP_PORT), str(work / "api.json")), log=work / "api.log", cwd=str(ROOT))
                try:
                    with RssSampler(srv.pid) as rs:
                        outs = run_generators(net, work, base, workers, "storm", start_at, timeout)
                finally:
                    probe.stop()
                api = json.loads((work / "api.json").read_text()) if (work / "api.json").exists() else {}
                server_tx = int(run("ip", "netns", "exec", net.srv, "cat", tx_path).stdout) - tx0
                busy1 = _machine_jiffies()
                at_start.join()
                if killer is not None:
                    killer.cancel()
                cpu = cpu_seconds(srv.pid) - cpu0 if srv.alive() else 0.0
                main_cpu = cpu_seconds(srv.pid, include_children=False) - main0 if srv.alive() else 0.0
                # the storm's own duration (from the common power-on), over which CPU shares are taken
                wall = max(o["wall"] for o in outs)
                out = StormTotals(wall=wall, bound_mb_s=bound, server_tx_bytes=server_tx,
                                  gen_cpu_s=[o["cpu_s"] for o in outs],
                                  stray_dhcp=sum(o["stray_dhcp"] for o in outs),
                                  results=[r for o in outs for r in o["results"]])
                (work / "out.json").write_text(json.dumps(out))
                server_alive = all(c.alive() for i, c in enumerate(children) if not (i == 0 and kill_after is not None))
            finally:
                if blaster:
                    blaster.stop()
                for c in children:
                    c.stop()
        measured = Measured(
            wall=out["wall"], bound_mb_s=out["bound_mb_s"], server_tx_bytes=out["server_tx_bytes"],
            gen_cpu_s=out["gen_cpu_s"], stray_dhcp=out["stray_dhcp"], server_cpu_s=cpu,
            busy=(busy1[0] - busy0[0][0], busy1[1] - busy0[0][1]), load_start=load0, load_end=os.getloadavg()[0],
            server_rss_start=rss0, server_rss_peak=rs.peak, server_alive=server_alive, killed_at=killed_at,
            api_ms=api.get("latencies_ms", []), api_errors=api.get("errors", 0), server_main_cpu_s=main_cpu,
        )
        summary = summarize(
            out["results"], measured, clients=n, image_mb=image_mb, workers=workers, servers=servers,
            kill_after=kill_after, impairment=impair.describe() if impair else "",
            wire=net.relay_counters().get("directions", {}) if impair else {}, seed=seed, link_mbit=link_mbit,
            serve_workers=serve_workers,
        )
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            for f in [*work.glob("*.log"), *work.glob("*.json"), work / "ramboot.toml"]:
                if f.exists():
                    shutil.copy(f, keep / f.name)
        return summary
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all the machine's cores, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # guest is in user
    idle = v[3] + v[4]  # idle, iowait
    return sum(v) - idle, sum(v)
