"""Several `ramboot serve` on one PostgreSQL database, on one lab bridge.

Server 1 runs in the lab namespace on the bridge (`rb0`, 172.22.33.2), every other
server in a peer namespace of its own joined to the bridge by a veth (`eth0`,
172.22.33.3, .4, …), each with its own data directory and the same database URL
(a unix socket: namespaces share the file system, not the network) and the same
secrets key file (`[security] secrets_key`: the database's secrets are sealed with it). Everything
is made through `Lab`, so `lab.teardown()` removes exactly it; `kill(i)` sends
SIGKILL to the PID we started, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ramboot.lab.netns import Lab, pid_alive
from ramboot.lab.server import LAB_KERNEL_ARGS, link_image, ramboot_cmd, tail
from ramboot.tls import load_or_make_ca

RANGE = "172.22.33.100-172.22.33.200"


@dataclass
class Srv:
    index: int
    name: str
    ns: str
    iface: str
    ip: str
    key: str
    config: Path
    log: Path
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://{self.ip}"


API_TOKEN = "multi-server-admin-token"  # one admin token for every server of the cluster


class Servers:
    """`n` servers on one lab bridge and one database."""

    def __init__(self, lab: Lab, root: Path, db_url: str, n: int = 2):
        self.lab = lab
        self.root = root
        self.db_url = db_url
        self.srv: list[Srv] = []
        for i in range(n):
            ip = lab.server_ip if i == 0 else f"172.22.33.{2 + i}"
            ns = lab.ns if i == 0 else f"{lab.ns}p{i}"  # short: the veth's end is p-<peer>, 15 chars at most
            iface = lab.bridge if i == 0 else "eth0"
            d = root / f"srv{i + 1}"
            self.srv.append(Srv(i, f"s{i + 1}", ns, iface, ip, f"server{i + 1}", d / "ramboot.toml", d / "serve.log",
                                d / "data"))

    def config_text(self, s: Srv, boot: dict[str, str] | None = None) -> str:
        boot = {"kernel_args": LAB_KERNEL_ARGS, "default_image": "demo", **(boot or {})}
        return (
            f'data_dir = "{s.data_dir}"\n'
            f'[network]\ninterface = "{s.iface}"\naddress = "{s.ip}"\n'
            f'[dhcp]\nmode = "full"\nrange = "{RANGE}"\nlease_time = 600\n'
            "[tftp]\nport = 69\n[http]\nport = 80\n"
            f'[api]\ntoken = "{API_TOKEN}"\n'
            f'[database]\nurl = "{self.db_url}"\n'
            f'[security]\nsecrets_key = "{self.root / "secrets.key"}"\n'
            f'[cluster]\nname = "{s.name}"\nheartbeat = 0.5\ndead_after = 3.0\n'
            "[boot]\n" + "".join(f'{k} = "{v}"\n' for k, v in boot.items())
        )

    def create(self, image: Path | None = None, boot: dict[str, str] | None = None) -> None:
        self.lab.create()
        # One CA for the cluster, as docs/config.md tells operators (copy DATA/tls/ca.pem and
        # ca.key to every server): a node pins it, and any server's certificate chains to it.
        shared = self.root / "cluster-ca"
        shared.mkdir(mode=0o700, exist_ok=True)
        load_or_make_ca(shared)
        for s in self.srv:
            (s.data_dir / "tls").mkdir(mode=0o700, parents=True, exist_ok=True)
            for f in ("ca.pem", "ca.key"):
                shutil.copy2(shared / f, s.data_dir / "tls" / f)
            if s.index:
                self.lab.add_peer(s.ns, f"{s.ip}/{self.lab.prefix}")
            s.data_dir.mkdir(parents=True, exist_ok=True)
            if image is not None:
                link_image(image, s.data_dir, "demo")
            s.config.write_text(self.config_text(s, boot))

    def start(self, i: int, wait: float = 40.0) -> None:
        s = self.srv[i]
        self.lab.spawn(s.key, [*ramboot_cmd(), "serve", "--config", str(s.config)], log=s.log, netns=s.ns)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            status, _ = self.lab.http(f"{s.base}/api/v1/servers", timeout=1.0, token=API_TOKEN)
            if status == 200:
                return
            if not self.lab.alive(s.key):
                raise AssertionError(f"{s.name} exited at start:\n{tail(s.log, 30)}")
            time.sleep(0.2)
        raise AssertionError(f"{s.name} did not answer within {wait:.0f} s:\n{tail(s.log, 30)}")

    def start_all(self) -> None:
        for i in range(len(self.srv)):
            self.start(i)
        self.wait_peers()

    def wait_peers(self, timeout: float = 15.0) -> None:
        """Until every server lists every other one as alive, holding the image if it has one."""
        want = {s.name for s in self.srv if self.lab.alive(s.key)}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.api(s, "/api/v1/servers") for s in self.srv if s.name in want]
            if all(v is not None and {x["name"] for x in v if x["alive"]} >= want for v in views):
                return
            time.sleep(0.2)
        raise AssertionError(f"the servers did not see each other: {views}")

    def kill(self, i: int) -> None:
        """kill -9 the server we started (by its recorded PID and start time only)."""
        s = self.srv[i]
        pid, started = self.lab.state()["pids"][s.key]
        if pid_alive(pid, started):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        self.lab.forget(s.key)

    def api(self, s: Srv, path: str):
        status, body = self.lab.http(f"{s.base}{path}", timeout=5.0, token=API_TOKEN)
        return json.loads(body) if status == 200 else None

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{tail(s.log, 25)}" for s in self.srv)
