"""Real clients against the real server, in network namespaces: udhcpc, dhclient, dnsmasq beside
proxy mode, and 3,000 junk datagrams. (kill -9 of the real `ramboot serve` mid-storm:
tests/test_kill9_storm.py.)"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from dhcp_netns import SERVER_IP, NetnsPair, dhclient, need, udhcpc
from ramboot.macaddr import mac_hyphen

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp-netns")]

SCRIPT = "http://10.231.7.1/boot/{}.ipxe"
UDHCPC = [
    ("bios", ["-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001"], "undionly.kpxe", "PXEClient"),
    ("uefi", ["-x", "0x5d:0007", "-V", "PXEClient:Arch:00007:UNDI:003016"], "snponly.efi", "PXEClient"),
    ("uefi-http", ["-x", "0x5d:0010", "-V", "HTTPClient:Arch:00016:UNDI:003001"],
     "http://10.231.7.1/snponly.efi", "HTTPClient"),
    ("ipxe", ["-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845"], SCRIPT, "PXEClient"),
]
DHCLIENT = [
    ("bios", 'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\nsend arch 0;\n', "undionly.kpxe"),
    ("uefi", 'send vendor-class-identifier "PXEClient:Arch:00007:UNDI:003016";\nsend arch 7;\n', "snponly.efi"),
    ("uefi-http", 'send vendor-class-identifier "HTTPClient:Arch:00016:UNDI:003001";\nsend arch 16;\n',
     "http://10.231.7.1/snponly.efi"),
    ("ipxe", 'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\nsend arch 0;\n'
     'send user-class "iPXE";\n', SCRIPT),
]


def client_mac(pair: NetnsPair) -> str:
    return pair.run(pair.cli_ns, "cat", f"/sys/class/net/{pair.cli_if}/address").stdout.strip()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dhcp-full")
    pair = NetnsPair()
    try:
        pair.start_server(tmp)
        yield pair, tmp
    finally:
        pair.close()


@pytest.mark.parametrize("fw, args, bootfile, vendor", UDHCPC, ids=[u[0] for u in UDHCPC])
def test_udhcpc_gets_lease_and_boot_file(full, fw, args, bootfile, vendor):
    pair, tmp = full
    env = udhcpc(pair, tmp, *args)
    mac = mac_hyphen(client_mac(pair))
    assert env["ip"].startswith("10.231.7.") and env["serverid"] == SERVER_IP
    assert env["boot_file"] == env["bootfile"] == bootfile.format(mac)
    assert env["siaddr"] == SERVER_IP and env["vendor"] == vendor


@pytest.mark.parametrize("fw, conf, bootfile", DHCLIENT, ids=[d[0] for d in DHCLIENT])
def test_dhclient_gets_lease_and_boot_file(full, fw, conf, bootfile):
    pair, tmp = full
    env = dhclient(pair, tmp, conf)
    mac = mac_hyphen(client_mac(pair))
    assert env["new_ip_address"].startswith("10.231.7.")
    assert env["new_filename"] == bootfile.format(mac)
    assert env["new_dhcp_server_identifier"] == SERVER_IP


def _junk(pair: NetnsPair, ns: str, ports: list[int], count: int = 3000) -> None:
    code = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "hdr = bytes([1, 1, 6]) + bytes(233) + bytes([99, 130, 83, 99])\n"
        f"for i in range({count}):\n"
        "    n = i % 7\n"
        "    body = os.urandom(i % 600) if n < 3 else hdr + os.urandom(i % 300)\n"
        f"    for port in {ports}:\n"
        f"        s.sendto(body, ('{SERVER_IP}' if n % 2 else '10.231.7.255', port))\n"
    )
    res = pair.run(ns, "python3", "-c", code, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-1000:]


def test_junk_leaves_full_mode_answering(tmp_path):
    pair = NetnsPair(bridge=True)
    try:
        pair.start_server(tmp_path)
        junk_ns, _ = pair.add_host("j", "10.231.7.9/24")
        _junk(pair, junk_ns, [67])
        env = udhcpc(pair, tmp_path, "-V", "PXEClient:Arch:00000")
        assert env["boot_file"] == "undionly.kpxe"
    finally:
        pair.close()


def test_proxy_beside_dnsmasq_and_junk_on_67_and_4011(tmp_path):
    """dnsmasq hands out the address, ramboot only the boot file; junk on both ports changes nothing."""
    need("dnsmasq")
    pair = NetnsPair(bridge=True)
    try:
        pair.start_server(tmp_path, mode="proxy")
        dns_ns, dns_if = pair.add_host("d", "10.231.7.5/24")
        pair.popen(dns_ns, "dnsmasq", "--no-daemon", "--port=0", f"--interface={dns_if}", "--bind-interfaces",
                   "--dhcp-range=10.231.7.200,10.231.7.220,5m", f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
                   "--no-ping", stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        _junk(pair, dns_ns, [67, 4011], count=1500)  # x2 ports: 3,000 datagrams
        # a PXE DISCOVER draws two offers: dnsmasq's address and our boot file with no address.
        # (udhcpc is no PXE client: it would take whichever offer came first, so we look ourselves.)
        offers = _pxe_discover_offers(pair)
        assert offers.get("10.231.7.5", {}).get("yiaddr", "").startswith("10.231.7.2"), offers
        ours = offers.get(SERVER_IP)
        assert ours and ours["yiaddr"] == "0.0.0.0" and ours["file"] == "snponly.efi", offers
        assert ours["vendor"] == "PXEClient", offers
        # a non-PXE client gets nothing from us: only dnsmasq answers, with no boot file
        env = udhcpc(pair, tmp_path, "-V", "plain")
        assert env["serverid"] == "10.231.7.5" and env["ip"].startswith("10.231.7.2") and "boot_file" not in env
        # the proxy's answer on 4011, as a PXE ROM asks it from the leased address
        ack = _ask_4011(pair, env["ip"])
        assert ack["file"] == "snponly.efi" and ack["yiaddr"] == "0.0.0.0" and ack["vendor"] == "PXEClient"
    finally:
        pair.close()


def _pxe_discover_offers(pair: NetnsPair, wait: float = 3.0) -> dict[str, dict]:
    """Broadcast a UEFI PXE DISCOVER from the client namespace; every offer by server id."""
    code = f"""
import json, socket, sys, time
sys.path.insert(0, {str(Path(__file__).parent.parent / "src")!r})
from ramboot.proto.dhcp_codec import DhcpPacket, decode, encode
mac = open('/sys/class/net/{pair.cli_if}/address').read().strip()
p = DhcpPacket(xid=78, flags=0x8000, chaddr=bytes.fromhex(mac.replace(':', '')),
               options={{53: b'\\x01', 60: b'PXEClient:Arch:00007:UNDI:003016', 93: b'\\x00\\x07'}})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{pair.cli_if}')
s.bind(('0.0.0.0', 68))
out, end = {{}}, time.monotonic() + {wait}
while time.monotonic() < end:
    if not out:
        s.sendto(encode(p), ('255.255.255.255', 67))
    s.settimeout(0.5)
    try:
        r = decode(s.recvfrom(2048)[0])
    except (socket.timeout, ValueError):
        continue
    if r.xid == 78 and r.server_id:
        out[r.server_id] = {{'yiaddr': r.yiaddr, 'file': r.boot_file, 'vendor': r.vendor_class}}
print(json.dumps(out))
"""
    import json

    return json.loads(pair.run(pair.cli_ns, "python3", "-c", code).stdout)


def _ask_4011(pair: NetnsPair, client_ip: str) -> dict:
    """Send a PXE REQUEST to the proxy's port 4011 from the client namespace and decode the answer."""
    code = f"""
import json, socket, sys
sys.path.insert(0, {str(Path(__file__).parent.parent / "src")!r})
from ramboot.proto.dhcp_codec import DhcpPacket, decode, encode
mac = open('/sys/class/net/{pair.cli_if}/address').read().strip()
p = DhcpPacket(xid=77, ciaddr='{client_ip}', chaddr=bytes.fromhex(mac.replace(':', '')),
               options={{53: b'\\x03', 60: b'PXEClient:Arch:00007:UNDI:003016', 93: b'\\x00\\x07',
                        54: bytes([10, 231, 7, 1])}})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{client_ip}', 0))
s.settimeout(5)
s.sendto(encode(p), ('{SERVER_IP}', 4011))
r = decode(s.recvfrom(2048)[0])
print(json.dumps({{'file': r.boot_file, 'yiaddr': r.yiaddr, 'vendor': r.vendor_class}}))
"""
    pair.run(pair.cli_ns, "ip", "addr", "add", f"{client_ip}/24", "dev", pair.cli_if)
    import json

    return json.loads(pair.run(pair.cli_ns, "python3", "-c", code).stdout)
