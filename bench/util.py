"""Shared plumbing for the benchmarks: namespaces, child processes, /proc figures.

Everything here is created by the benchmark and torn down by it: namespaces are
named `rbb<random>-s` / `rbb<random>-c`, and processes are killed by the PID we
started, never by name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ramboot.lab.impair import Impairment

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SERVER_IP = "10.77.0.1"
CLIENT_IP = "10.77.255.254"
PREFIX = 16


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair, like BASELINES.md's `dsrv`/`dcli`.

    The server side is `srv_if` in `srv` with 10.77.0.1/16, the client side
    `cli_if` in `cli` with 10.77.255.254/16. Loopback is up in both.
    """

    tag: str = field(default_factory=lambda: "rbb" + secrets.token_hex(3))
    srv_ip: str = SERVER_IP
    cli_ip: str = CLIENT_IP
    extra: list[str] = field(default_factory=list)  # more servers' namespaces (add_server)
    # With an impairment, the wire is two taps and `ramboot.lab.impair` between them
    # (loss and delay each way) instead of a veth pair.
    impair: Impairment | None = None
    relay: Child | None = None
    relay_log: Path | None = None

    @property
    def srv(self) -> str:
        return f"{self.tag}-s"

    @property
    def cli(self) -> str:
        return f"{self.tag}-c"

    @property
    def srv_if(self) -> str:
        return f"{self.tag}s"

    @property
    def cli_if(self) -> str:
        return f"{self.tag}c"

    def up(self) -> NetnsPair:
        try:
            run("ip", "netns", "add", self.srv)
            run("ip", "netns", "add", self.cli)
            if self.impair is None:
                run("ip", "link", "add", self.srv_if, "type", "veth", "peer", "name", self.cli_if)
                run("ip", "link", "set", self.srv_if, "netns", self.srv)
                run("ip", "link", "set", self.cli_if, "netns", self.cli)
            else:
                self._impaired_wire()
            for ns, ifname, ip in ((self.srv, self.srv_if, self.srv_ip), (self.cli, self.cli_if, self.cli_ip)):
                run("ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", ifname)
                run("ip", "-n", ns, "link", "set", ifname, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as e:
            self.down()
            raise RuntimeError(f"netns setup failed: {' '.join(e.cmd)}: {e.stderr.strip()}") from None
        return self

    def add_server(self, i: int) -> tuple[str, str, str]:
        """Server `i` (2, 3, …) in a namespace of its own, on one bridge with the first server and
        the clients: the first server's address moves onto the bridge (`bridge`), which is then
        its interface. Returns (namespace, interface, address)."""
        br = self.bridge
        if run("ip", "-n", self.srv, "link", "show", br, check=False).returncode != 0:
            run("ip", "-n", self.srv, "link", "add", br, "type", "bridge", "forward_delay", "0", "stp_state", "0")
            run("ip", "-n", self.srv, "addr", "del", f"{self.srv_ip}/{PREFIX}", "dev", self.srv_if)
            run("ip", "-n", self.srv, "link", "set", self.srv_if, "master", br)
            run("ip", "-n", self.srv, "addr", "add", f"{self.srv_ip}/{PREFIX}", "dev", br)
            run("ip", "-n", self.srv, "link", "set", br, "up")
        ns, a, b, ip = f"{self.tag}-s{i}", f"{self.tag}v{i}", f"{self.tag}w{i}", f"10.77.0.{i}"
        self.extra.append(ns)
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", a, "netns", self.srv)
        run("ip", "link", "set", b, "netns", ns)
        run("ip", "-n", self.srv, "link", "set", a, "master", br, "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", b)
        run("ip", "-n", ns, "link", "set", b, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns, b, ip

    @property
    def bridge(self) -> str:
        return f"{self.tag}b"

    def _impaired_wire(self) -> None:
        import sys
        import tempfile

        for ns, ifname in ((self.srv, self.srv_if), (self.cli, self.cli_if)):
            run("ip", "-n", ns, "tuntap", "add", "dev", ifname, "mode", "tap")
        assert self.impair is not None
        log = self.relay_log = Path(tempfile.mkdtemp(prefix=f"{self.tag}-relay-")) / "relay.log"
        ports = ["--port", f"tap:{self.srv}:{self.srv_if}", "--port", f"tap:{self.cli}:{self.cli_if}"]
        relay = self.relay = Child([sys.executable, "-m", "ramboot.lab.impair", *ports, *self.impair.argv()], log=log)
        wait_for(lambda: "ready" in log.read_text() or not relay.alive(), what="the impair relay")
        if not relay.alive():
            raise RuntimeError(f"impair relay: {relay.tail(5)}")

    def relay_counters(self) -> dict[str, Any]:
        """The relay's JSON counters (after `down()` stopped it), or {}."""
        import json

        if not self.relay_log or not self.relay_log.exists():
            return {}
        for line in reversed(self.relay_log.read_text().splitlines()):
            if line.startswith("{"):
                counters: dict[str, Any] = json.loads(line)
                return counters
        return {}

    def down(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        for ns in (self.srv, self.cli, *self.extra):
            run("ip", "netns", "del", ns, check=False)
        # the veth goes with its namespace; this only matters if setup failed half-way
        run("ip", "link", "del", self.srv_if, check=False)

    def __enter__(self) -> NetnsPair:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exec(self, ns: str, *cmd: str) -> list[str]:
        """A command line that runs `cmd` in namespace `ns` (ip exec()s it: same PID)."""
        return ["ip", "netns", "exec", ns, *cmd]


class Child:
    """A child process we started; stopped by its PID only."""

    def __init__(self, cmd: list[str], log: Path | None = None, env: dict[str, str] | None = None,
                 cwd: str | None = None):
        self.cmd = cmd
        self.log_path = log
        self._log: BinaryIO | int = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if not isinstance(self._log, int):  # not DEVNULL
            self._log.close()
        return self.proc.returncode

    def tail(self, n: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


# -- /proc figures -----------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's workers, ip-netns-exec'd children)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                children.setdefault(int(st[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """User + system CPU seconds of pid (and its live descendants)."""
    total = 0
    for p in tree(pid) if include_children else [pid]:
        st = _stat(p)
        if st:
            # fields after comm: state(0) ppid(1) ... utime(11) stime(12)
            total += int(st[11]) + int(st[12])
    return total / CLK_TCK


def rss_bytes(pid: int, include_children: bool = True) -> int:
    total = 0
    for p in tree(pid) if include_children else [pid]:
        st = _stat(p)
        if st:
            total += int(st[21]) * PAGE  # rss in pages
    return total


class RssSampler:
    """Samples a process tree's RSS in a background thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1):
        import threading

        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def wait_for(pred: Callable[[], object], timeout: float = 15, interval: float = 0.05, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def nginx_argv(work: Path, root: Path, listen: str, workers: str = "auto", connections: int = 4096,
               access_log: bool = False) -> list[str]:
    """nginx as a peer, serving `root` on `listen` with sendfile: its config and temp dirs in
    `work`, in the foreground (a child stopped by its PID). The command to run."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    log = f"access_log {work}/nginx-access.log;" if access_log else "access_log off;"
    temps = "\n".join(f"    {k}_temp_path {work}/tmp/{k.split('_')[0]};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(f"""user root;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    {log}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
{temps}
    types {{ application/octet-stream squashfs; }}
    server {{
        listen {listen};
        root {root};
        location / {{ }}
    }}
}}
""")
    return ["nginx", "-c", str(conf), "-p", str(work), "-g", "daemon off;"]


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def ramboot_exe() -> str:
    """The `ramboot` next to the running interpreter (the venv's), else on PATH."""
    import sys

    cand = Path(sys.executable).with_name("ramboot")
    return str(cand) if cand.exists() else (shutil.which("ramboot") or "ramboot")


# -- images ------------------------------------------------------------------


def make_image(data_dir: Path, name: str, rootfs_bytes: int, kernel_bytes: int = 0, initrd_bytes: int = 0,
               ) -> dict[str, str]:
    """A synthetic image (random bytes) with a real manifest; returns {file: sha256}.

    The bytes are random so nothing on the path can compress or dedupe them.
    """
    import hashlib

    from ramboot.images.manifest import INITRD, KERNEL, MANIFEST, ROOTFS, FileEntry, Manifest, images_dir, sha256_file

    d = images_dir(data_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    sizes = {
        KERNEL: kernel_bytes or max(rootfs_bytes // 16, 64 << 10),
        INITRD: initrd_bytes or max(rootfs_bytes // 8, 64 << 10),
        ROOTFS: rootfs_bytes,
    }
    files = {}
    for fname, size in sizes.items():
        p = d / fname
        if p.exists() and p.stat().st_size == size:
            sha = sha256_file(p)
        else:
            h = hashlib.sha256()
            with open(p, "wb") as f:
                left = size
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    h.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            sha = h.hexdigest()
        files[fname] = FileEntry(size=size, sha256=sha)
    m = Manifest(name=name, source="bench:random", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 kernel_version="bench", files=files)
    (d / MANIFEST).write_text(m.to_toml())
    return {k: v.sha256 for k, v in files.items()}


# -- output ------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(f"\n== {title} ==")
    fmt = "  ".join(f"{{:<{w:d}}}" for w in widths)
    lines.append(fmt.format(*cells[0]))
    lines.append("  ".join("-" * w for w in widths))
    lines += [fmt.format(*r) for r in cells[1:]]
    return "\n".join(lines)


def ratio(ours: float | None, peer: float | None) -> str:
    if not ours or not peer:
        return "-"
    return f"{ours / peer:.2f}x"
