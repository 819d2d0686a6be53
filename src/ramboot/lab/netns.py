"""The lab's isolated network: a namespace holding the bridge the VMs and the server share.

Everything the lab makes lives inside one network namespace (bridge, carrier
port, taps), so deleting that namespace removes it all and the host's own
interfaces are never touched. A JSON state file records what was made and
which processes were started (with their start times, so a recycled PID is
never killed); `teardown()` reads it and undoes exactly that, and is safe to
repeat or to run after a crash.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..api_token import TOKEN_FILE, client_token
from ..config import ConfigError, load_config

LAB_NS = "ramboot-lab"
BRIDGE = "rb0"
SERVER_IP = "172.22.33.2"
PREFIX = 24
# IPv6 (`lab up --ipv6`, `--ipv6-only`): the lab's prefix and the server in it.
SERVER_IP6 = "fd00:172:22:33::2"
PREFIX6 = "fd00:172:22:33::/64"
RANGE6 = "fd00:172:22:33::100-fd00:172:22:33::1ff"
IPV6_MODES = ("", "dual", "only")  # none, dual stack, IPv6 only (no IPv4 anywhere in the lab)
# A veth pair inside the namespace, one end in the bridge: a bridge has no
# carrier until a port is up, and a tap whose QEMU has not started yet does not count.
CARRIER_PORT = "rb0-carrier"
CARRIER_PEER = "rb0-carrier-p"

T = TypeVar("T")


class LabError(Exception):
    """A lab step failed; the message is one line saying what and how to fix it."""


def default_lab_dir() -> Path:
    """Where `ramboot lab` keeps its data, log, config and state.

    `$RAMBOOT_LAB_DIR` if set; else /var/lib/ramboot-lab (the lab needs root for
    namespaces anyway, and this survives reboots for the built image); else, for a
    non-root user, `$XDG_STATE_HOME/ramboot-lab`.
    """
    env = os.environ.get("RAMBOOT_LAB_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/ramboot-lab")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "ramboot-lab"


def default_lab_ns() -> str:
    """`ramboot-lab`, or `$RAMBOOT_LAB_NS` (tests run the lab commands in a namespace of their own)."""
    return os.environ.get("RAMBOOT_LAB_NS") or LAB_NS


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise LabError with its own stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]}: not installed (run: make setup)") from None
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
    return p


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, started: int | None) -> bool:
    st = _start_time(pid)
    return st is not None and (started is None or st == started)


def stop_pid(pid: int, started: int | None, grace: float = 10.0) -> None:
    """SIGTERM then SIGKILL one process we started, never a recycled PID."""
    if not pid_alive(pid, started):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:  # reap if it is our child, so it does not linger as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not pid_alive(pid, started) or is_zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def adopted_pid(pidfile: Path, mark: str | None = None) -> int | None:
    """The live process whose PID `pidfile` holds, if its command line holds `mark` (default: the
    file's path), so a reused PID is never taken for it."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if (mark or str(pidfile)).encode() in cmdline else None


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def setns_fd(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open at `fd` (setns is per thread)."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {what}")


def enter_netns(ns: str) -> None:
    """Move the calling thread into the named namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns_fd(fd, ns)
    finally:
        os.close(fd)


def call_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that has joined namespace `ns` (setns is per thread).

    Lets the host-side CLI and tests talk to the server at 172.22.33.2 without a
    route into the lab.
    """
    value: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(ns)
            value.append(fn())
        except BaseException as e:  # handed back to the caller's thread
            error.append(e)

    t = threading.Thread(target=run, name=f"netns-{ns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return value[0]


@dataclass
class Lab:
    """One lab network. `ns` is `ramboot-lab` for the CLI (or `$RAMBOOT_LAB_NS`); tests pass their own names."""

    ns: str = field(default_factory=default_lab_ns)
    root: Path = field(default_factory=default_lab_dir)
    bridge: str = BRIDGE
    server_ip: str = SERVER_IP
    prefix: int = PREFIX
    ipv6: str = ""  # one of IPV6_MODES
    server_ip6: str = SERVER_IP6

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.ipv6 not in IPV6_MODES:
            raise LabError(f"unknown IPv6 mode {self.ipv6!r}")

    # -- files -------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / f"{self.ns}.state.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_file(self) -> Path:
        return self.root / "lab.toml"

    @property
    def log_file(self) -> Path:
        return self.root / "serve.log"

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the state file under a lock (several `lab vm` at once)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / f".{self.ns}.lock"
        with open(lock, "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                state = json.loads(self.state_file.read_text())
            except (OSError, ValueError):
                state = {}
            state.setdefault("ns", self.ns)
            state.setdefault("created_ns", False)
            state.setdefault("peers", [])
            state.setdefault("pids", {})
            state.setdefault("pidfiles", {})
            yield state
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, self.state_file)

    def state(self) -> dict[str, Any]:
        with self._state() as s:
            return dict(s)

    def remember(self, **values: Any) -> None:
        """Keep facts for later commands (the server's URL, its config)."""
        with self._state() as s:
            s.update(values)

    # -- network -----------------------------------------------------------
    def exists(self) -> bool:
        return Path(f"/run/netns/{self.ns}").exists()

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.ns, *args, check=check)

    def create(self) -> None:
        """Make the namespace, bridge, carrier port and server address; idempotent."""
        with self._state() as st:
            if self.exists() and not st["created_ns"]:
                raise LabError(
                    f"network namespace {self.ns} exists but this lab did not make it; "
                    f"remove it with: ip netns del {self.ns}"
                )
            if not self.exists():
                st["created_ns"] = True  # recorded first: a crash below is still cleaned up
                sh("ip", "netns", "add", self.ns)
        self.ip("link", "set", "lo", "up")
        if self.ip("link", "show", self.bridge, check=False).returncode != 0:
            self.ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        if self.ip("link", "show", CARRIER_PORT, check=False).returncode != 0:
            self.ip("link", "add", CARRIER_PORT, "type", "veth", "peer", "name", CARRIER_PEER)
            self.ip("link", "set", CARRIER_PORT, "master", self.bridge)
        for dev in (CARRIER_PEER, CARRIER_PORT, self.bridge):
            self.ip("link", "set", dev, "up")
        cidr = f"{self.server_ip}/{self.prefix}"
        if self.ipv6 != "only" and cidr not in self.ip("-4", "addr", "show", "dev", self.bridge).stdout:
            self.ip("addr", "add", cidr, "dev", self.bridge)
        if self.ipv6 and f"{self.server_ip6}/64" not in self.ip("-6", "addr", "show", "dev", self.bridge).stdout:
            # nodad: the server answers at once, not after a second of duplicate address detection
            self.ip("addr", "add", f"{self.server_ip6}/64", "dev", self.bridge, "nodad")

    def add_tap(self, tap: str) -> None:
        """A persistent tap in the bridge, opened by name by a QEMU run in the namespace."""
        self.ip("link", "del", tap, check=False)
        self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.ip("link", "set", tap, "master", self.bridge, "up")

    def del_tap(self, tap: str) -> None:
        if self.exists():
            self.ip("link", "del", tap, check=False)

    def add_peer(self, peer: str, cidr: str) -> None:
        """Another namespace joined to the bridge by a veth: a site DHCP server, a rogue server."""
        with self._state() as st:
            if peer not in st["peers"]:
                st["peers"].append(peer)
        if not Path(f"/run/netns/{peer}").exists():
            sh("ip", "netns", "add", peer)
        end = f"p-{peer}"[:15]
        if self.ip("link", "show", end, check=False).returncode != 0:
            self.ip("link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", peer)
            self.ip("link", "set", end, "master", self.bridge, "up")
            sh("ip", "-n", peer, "addr", "add", cidr, "dev", "eth0")
            sh("ip", "-n", peer, "link", "set", "eth0", "up")
            sh("ip", "-n", peer, "link", "set", "lo", "up")

    # -- processes -----------------------------------------------------------
    def spawn(
        self, key: str, cmd: list[str], log: Path | None = None, netns: str | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start cmd inside the namespace (or a peer's), in its own session, and record its PID."""
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
            popen.setdefault("stdout", out)
            popen.setdefault("stderr", subprocess.STDOUT)
        popen.setdefault("stdin", subprocess.DEVNULL)
        # `ip netns exec` execs the command itself, so the PID is the command's.
        p = subprocess.Popen(["ip", "netns", "exec", netns or self.ns, *cmd], start_new_session=True, **popen)
        if log is not None:
            out.close()
        with self._state() as st:
            st["pids"][key] = [p.pid, _start_time(p.pid)]
        return p

    def adopt(self, key: str, pidfile: Path, mark: str | None = None) -> None:
        """A process this lab did not spawn itself (a VM an emulated BMC or libvirtd starts):
        `teardown` stops the one whose PID is in `pidfile` and whose command line holds `mark`
        (default: the pidfile's path)."""
        with self._state() as st:
            st["pidfiles"][key] = [str(pidfile), mark or str(pidfile)]

    def forget(self, key: str) -> None:
        with self._state() as st:
            st["pids"].pop(key, None)

    def stop(self, key: str) -> None:
        with self._state() as st:
            rec = st["pids"].pop(key, None)
        if rec:
            stop_pid(rec[0], rec[1])

    def alive(self, key: str) -> bool:
        rec = self.state()["pids"].get(key)
        return bool(rec) and pid_alive(rec[0], rec[1])

    def teardown(self) -> list[str]:
        """Undo what the state file says this lab made; returns what was removed."""
        removed = []
        with self._state() as st:
            pids = dict(st["pids"])
            pidfiles = dict(st["pidfiles"])
        for key, (pid, started) in pids.items():
            if pid_alive(pid, started):
                stop_pid(pid, started)
                removed.append(f"process {key} (pid {pid})")
        for key, (path, mark) in pidfiles.items():
            pid = adopted_pid(Path(path), mark)
            if pid is not None:
                stop_pid(pid, _start_time(pid))
                removed.append(f"process {key} (pid {pid})")
        with self._state() as st:
            st["pids"] = {}
            st["pidfiles"] = {}
            for peer in st["peers"]:
                if Path(f"/run/netns/{peer}").exists():
                    sh("ip", "netns", "del", peer, check=False)
                    removed.append(f"namespace {peer}")
            st["peers"] = []
            if st["created_ns"] and self.exists():
                sh("ip", "netns", "del", self.ns)
                removed.append(f"namespace {self.ns} (bridge {self.bridge} and its taps)")
            st["created_ns"] = False
        self.state_file.unlink(missing_ok=True)
        return removed

    # -- talking to the server -------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://[{self.server_ip6}]" if self.ipv6 == "only" else f"http://{self.server_ip}"

    def api_token(self) -> str | None:
        """The token for the lab server's API: $RAMBOOT_TOKEN, else the one of the config `lab up`
        served with (its [api] token or the DATA/api-token `serve` made), else the lab's DATA/api-token."""
        if env := os.environ.get("RAMBOOT_TOKEN"):
            return env
        try:
            served = json.loads(self.state_file.read_text()).get("config")
            if served:
                return client_token(load_config(served))
        except (OSError, ValueError, ConfigError):
            pass
        try:
            return (self.data_dir / TOKEN_FILE).read_text().strip() or None
        except OSError:
            return None

    def http(self, url: str, timeout: float = 3.0, data: bytes | None = None,
             token: str | None = None) -> tuple[int, bytes]:
        """One HTTP request from inside the namespace, with the API token (`token`, else the lab's):
        (status, body); status 0 if unreachable."""
        headers = {"Content-Type": "application/json"} if data else {}
        if bearer := token or self.api_token():
            headers["Authorization"] = f"Bearer {bearer}"

        def go() -> tuple[int, bytes]:
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except (urllib.error.URLError, OSError):
                return 0, b""

        return call_in_netns(self.ns, go)

    def api(self, path: str, base: str | None = None, token: str | None = None) -> object:
        """The JSON document at `path` (callers check its shape), or None if the server did not give one."""
        status, body = self.http(f"{base or self.base_url}{path}", token=token)
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None
