"""One load generator process (in the client namespace): its share of the clients, each doing
the network side of a whole BIOS PXE -> iPXE boot, or the link-bound probe."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mmap
import os
import re
import resource
import time
from collections.abc import Callable

from ramboot.macaddr import mac_from_bytes
from ramboot.proto import dhcp_codec as D

from . import seeding
from .common import (
    BOOT_RETRIES,
    SEED_PORT,
    BoundOutput,
    ClientResult,
    Failed,
    Params,
    StormOutput,
)
from .dhcp_client import DhcpMux
from .http_client import HttpClient, get_any, get_root
from .linkbound import measure_bound
from .tftp_client import TftpFetch

_KERNEL = re.compile(r"^kernel\s+(.*)$", re.M)
_INITRD = re.compile(r"^initrd\s+(.*)$", re.M)


def alternatives(line: str, verb: str) -> list[tuple[str, list[str]]]:
    """`kernel URL1 ARGS || kernel URL2 ARGS`: each (url, args), in the order iPXE tries them."""
    out = []
    for alt in (verb + " " + line).split(" || "):
        words = alt.split()
        if len(words) >= 2 and words[0] == verb:
            out.append((words[1], words[2:]))
    return out



def references(p: Params) -> dict[str, memoryview]:
    """The bytes every download must equal: the image's files and the boot programs, mapped
    read-only (the page cache the server sends from, no copy), each checked once here
    against the manifest's sha256. A byte-for-byte compare with them is as strong as
    hashing what arrives (stronger: no collisions) and costs a memcmp instead of a sha256."""
    refs = {}
    for name, (path, sha) in p["references"].items():
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            view = memoryview(mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)) if size else memoryview(b"")
        if hashlib.sha256(view).hexdigest() != sha:
            raise SystemExit(f"storm: {path} does not match its sha256 {sha}")
        refs[name] = view
    return refs


async def _boot_attempt(idx: int, mac: bytes, macs: str, p: Params, refs: dict[str, memoryview], mux: DhcpMux,
                        res: ClientResult, phase: Callable[[str], None]) -> None:
    # 1. the PXE ROM's DHCP
    ack = await mux.dora(mac, False, res)
    if res.ip and ack.yiaddr != res.ip:
        raise Failed(f"dhcp: address changed across servers ({res.ip} -> {ack.yiaddr})")
    res.ip = ack.yiaddr
    res.servers.append(ack.server_id or "?")
    bootfile = ack.boot_file
    nxt = ack.siaddr if ack.siaddr != D.ZERO_IP else (ack.ip_option(D.Opt.SERVER_ID) or p["server"])
    if not bootfile or bootfile.startswith("http"):
        raise Failed(f"dhcp: PXE client was given {bootfile!r}, not a TFTP boot program")
    phase("dhcp")
    # 2. the boot program over TFTP
    data = await TftpFetch(res.ip, nxt, bootfile, p["blksize"], p["windowsize"], res).run()
    res.bytes += len(data)
    want = refs.get(f"loaders/{bootfile}")
    if want is not None and data != want:
        raise Failed(f"tftp: {bootfile}: {len(data)} bytes that differ from the file's {len(want)}")
    phase("tftp")
    # 3. iPXE's own DHCP: must get the script URL straight away
    ack2 = await mux.dora(mac, True, res)
    res.servers.append(ack2.server_id or "?")
    script_url = ack2.boot_file
    if not script_url.startswith("http://"):
        raise Failed(f"dhcp: iPXE was given {script_url!r}, not its http script (chainload loop)")
    if ack2.yiaddr != res.ip:
        raise Failed(f"dhcp: address changed between PXE ({res.ip}) and iPXE ({ack2.yiaddr})")
    phase("dhcp-ipxe")
    # 4. HTTP: script, kernel, initrd, root, each falling back as the node would
    http = HttpClient(res.ip, p["timeout"], res)
    try:
        status, body = await http.fetch(script_url)
        if status != 200:
            raise Failed(f"http: script: status {status}")
        script = body.decode()
        km, im = _KERNEL.search(script), _INITRD.search(script)
        if not km or not im:
            raise Failed(f"http: script has no kernel/initrd line: {script[:200]!r}")
        kernels, initrds = alternatives(km.group(1), "kernel"), alternatives(im.group(1), "initrd")
        args = kernels[0][1]
        urls = [a.split("=", 1)[1] for a in args if a.startswith("ramboot.url=")]
        servers = [a.split("=", 1)[1] for a in args if a.startswith("ramboot.server=")]
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        root_sha = kv.get("ramboot.sha256")
        if not urls or not root_sha:
            raise Failed("http: kernel command line lacks ramboot.url or ramboot.sha256")
        if root_sha != p["manifest"]["rootfs.squashfs"]:
            raise Failed("http: ramboot.sha256 on the command line differs from the manifest")
        phase("script")
        await get_any(http, [u for u, _ in kernels], refs["vmlinuz"], "kernel")
        await get_any(http, [u for u, _ in initrds], refs["initrd.img"], "initrd")
        phase("kernel+initrd")
        # the initramfs's DHCP would come here; its root download tries ramboot.url= in order
        report_to = servers[0] if servers else f"http://{p['server']}"

        async def tell(stage: str, detail: dict[str, object]) -> None:
            body = json.dumps({"stage": stage, "detail": detail}).encode()
            with contextlib.suppress(Failed, OSError, TimeoutError):
                await http.fetch(f"{report_to}/api/v1/nodes/{macs}/events", method="POST", body=body)

        if p.get("seed"):
            await get_root(http, urls, refs["rootfs.squashfs"], tell)
        else:
            await get_any(http, urls, refs["rootfs.squashfs"], "rootfs")
        phase("rootfs")
        # 5. the boot report, from the leased address, to the first server that takes it
        report = json.dumps({"stage": "booted", "detail": {"storm": idx}}).encode()
        for server in servers or [f"http://{p['server']}"]:
            try:
                status, body = await http.fetch(f"{server}/api/v1/nodes/{macs}/events", method="POST", body=report)
            except (Failed, OSError, TimeoutError):
                continue
            if status // 100 == 2:
                break
            raise Failed(f"api: booted report refused: {status} {body[:120]!r}")
        else:
            raise Failed("api: no server took the booted report")
        phase("report")
        if p.get("seed"):  # a booted node serves its verified root to its peers
            await seeding.start_seeding(res.ip, p["references"]["rootfs.squashfs"][0])
            await tell("seeding", {"sha256": root_sha, "port": SEED_PORT})
    finally:
        http.close()


async def boot_one(idx: int, mac: bytes, p: Params, refs: dict[str, memoryview], mux: DhcpMux,
                   t_start: float) -> ClientResult:
    """One client's boot, started again (BOOT_RETRIES) when its firmware gives up or its server dies."""
    macs = mac_from_bytes(mac)
    res = ClientResult(macs)
    await asyncio.sleep(max(0.0, t_start - time.monotonic()))
    t0 = time.monotonic()
    res.start = t0
    mark = t0

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        res.phases[name] = round(now - mark, 4)
        mark = now

    attempts = p.get("boot_retries", BOOT_RETRIES) + 1
    for attempt in range(attempts):
        res.phases = {}
        try:
            await _boot_attempt(idx, mac, macs, p, refs, mux, res, phase)
            res.ok, res.error = True, ""
            break
        except Failed as e:
            res.error = str(e)
        except (TimeoutError, OSError) as e:
            res.error = f"{type(e).__name__}: {e}"[:300]
        except Exception as e:  # a bug in the generator must not hide the other clients
            res.error = f"generator: {type(e).__name__}: {e}"[:300]
            break
        if attempt + 1 < attempts:
            res.restarts += 1
            await asyncio.sleep(1.0)  # the firmware's pause before it tries the boot entry again
    res.boot_retries = res.restarts
    res.total = round(time.monotonic() - t0, 4)
    return res


async def run_clients(p: Params) -> BoundOutput | StormOutput:
    """One generator process: either the link-bound probe or its share of the clients."""
    if p.get("mode") == "bound":
        try:
            return {"bound_mb_s": await measure_bound(p["server"], p["bound_seconds"])}
        except OSError:
            return {"bound_mb_s": 0.0}
    # each client holds a TFTP socket, then one or two TCP connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    refs = references(p)
    mux = DhcpMux(p["ifname"])
    try:
        prefix = bytes.fromhex(p["mac_prefix"])
        start = time.monotonic() + (p["start_at"] - time.time())
        ramp, n, first, count = p["ramp"], p["n"], p["first"], p["count"]
        tasks = [
            boot_one(i, prefix + i.to_bytes(3, "big"), p, refs, mux, start + (ramp * i / n if ramp else 0.0))
            for i in range(first, first + count)
        ]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        results = await asyncio.gather(*tasks)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - start
        # Seeding clients keep serving until the other generators' clients stop asking (3 s quiet).
        await seeding.linger(3.0)
    finally:
        mux.close()
        seeding.stop()
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {"wall": wall, "cpu_s": cpu, "stray_dhcp": mux.stray, "results": [r.record() for r in results]}

