"""`ramboot serve` itself: the real CLI in a namespace, all three servers, SIGTERM, bad configs."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from dhcp_netns import RANGE, SERVER_IP, NetnsPair, udhcpc

RAMBOOT = [str(Path(sys.executable).with_name("ramboot"))]


def _serve(pair: NetnsPair, tmp: Path, data: Path) -> tuple[subprocess.Popen, Path]:
    cfg = tmp / "ramboot.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[network]\ninterface = "{pair.srv_if}"\n'
        f'[dhcp]\nmode = "full"\nrange = "{RANGE}"\n[tftp]\nport = 69\n[http]\nport = 80\n'
    )
    log = tmp / "serve.log"
    p = pair.popen(pair.srv_ns, *RAMBOOT, "serve", "--config", str(cfg), stdout=subprocess.DEVNULL,
                   stderr=open(log, "wb"))
    end = time.monotonic() + 20
    while time.monotonic() < end and b"serving on" not in log.read_bytes():
        assert p.poll() is None, log.read_text()
        time.sleep(0.1)
    assert b"serving on" in log.read_bytes(), log.read_text()
    return p, log


@pytest.mark.netns
def test_serve_answers_dhcp_tftp_http_and_stops_on_sigterm_keeping_leases(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_image(data, "demo")
    pair = NetnsPair()
    try:
        p, log = _serve(pair, tmp_path, data)
        # the address clients are told defaults to the interface's own
        lease = udhcpc(pair, tmp_path, "-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001")
        assert lease["siaddr"] == SERVER_IP and lease["boot_file"] == "undionly.kpxe"
        ip = lease["ip"]
        pair.run(pair.cli_ns, "ip", "addr", "add", f"{ip}/24", "dev", pair.cli_if)
        got = pair.run(pair.cli_ns, "curl", "-sf", f"tftp://{SERVER_IP}/images/demo/vmlinuz")
        assert got.stdout == "kernel"
        got = pair.run(pair.cli_ns, "curl", "-sf", f"http://{SERVER_IP}/images/demo/initrd.img")
        assert got.stdout == "initrd"

        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, log.read_text()
        text = log.read_text()
        assert "stopped" in text and "Traceback" not in text, text
        # every log line is one structured event
        assert all(" info " in ln or " warning " in ln or " debug " in ln for ln in text.splitlines() if ln), text
        rows = sqlite3.connect(data / "ramboot.db").execute("select ip, mac from leases").fetchall()
        assert ip in {r[0] for r in rows}, rows
    finally:
        pair.close()


@pytest.mark.parametrize(
    "config, expected",
    [
        ('[dhcp]\nmode = "fulll"\n', "dhcp.mode: must be one of"),
        ("[http]\nport = 0\n", "http.port"),
        ('[network]\ninterface = "no-such-if0"\n', "network.interface: interface 'no-such-if0' does not exist"),
        # with an address set, the missing interface is still named, before anything starts
        ('[network]\ninterface = "nosuch0"\naddress = "10.9.0.5"\n[dhcp]\nmode = "full"\n'
         'range = "10.9.0.100-10.9.0.200"\n', "interface 'nosuch0' does not exist"),
        ("data_dir = [\n", "not valid TOML"),
        ('[network]\naddress = "10.9.0.5"\n[dhcp]\nmode = "full"\nrange = "10.9.0.1-10.9.0.9"\n',
         "dhcp.range: includes the server's own address 10.9.0.5"),
    ],
)
def test_bad_config_stops_with_one_line(tmp_path: Path, config: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "d"}"\n{config}' if not config.startswith("data_dir") else config)
    out = subprocess.run([*RAMBOOT, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ramboot: error: ") and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([*RAMBOOT, "serve", "--config", str(tmp_path / "none.toml")], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "cannot read config" in out.stderr and "Traceback" not in out.stderr


def test_a_port_in_use_is_one_line_naming_it_with_no_success_before(tmp_path: Path) -> None:
    """A second `serve` (here: a socket holding the HTTP port on loopback) stops with one error
    line naming the port; no line before it says anything is registered or served."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    cfg = tmp_path / "second.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "d"}"\n[network]\ninterface = "lo"\naddress = "127.0.0.1"\n'
                   f'[dhcp]\nmode = "off"\n[http]\nbind = "127.0.0.1"\nport = {port}\nhttps_port = 0\n')
    try:
        out = subprocess.run([*RAMBOOT, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    finally:
        held.close()
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and lines[-1] == f"ramboot: error: cannot serve: http port {port}: " \
        "Address already in use", out.stderr
    said = "\n".join(lines[:-1])
    for success in ("registered", "serving on", "listening", "boot programs", "admin token", "https on"):
        assert success not in said, out.stderr
