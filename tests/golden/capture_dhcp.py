"""Re-capture the DHCP golden packets from real clients (run as root, from the repo root).

    .venv/bin/python tests/golden/capture_dhcp.py

Starts ramboot's DHCP server in a throwaway network namespace, runs busybox
udhcpc and ISC dhclient as BIOS, UEFI x64, UEFI HTTP and iPXE clients, and
stores every DHCP payload tcpdump saw as hex under tests/golden/dhcp/,
named CLIENT-FIRMWARE-NN-DIRECTION-TYPE.hex.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dhcp_netns import NetnsPair, dhclient, udhcpc, udp_payloads  # noqa: E402
from ramboot.proto.dhcp_codec import MsgType, decode  # noqa: E402

UDHCPC = {
    "bios": ["-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001"],
    "uefi": ["-x", "0x5d:0007", "-V", "PXEClient:Arch:00007:UNDI:003016"],
    "http": ["-x", "0x5d:0010", "-V", "HTTPClient:Arch:00016:UNDI:003001"],
    "ipxe": ["-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845"],
}
DHCLIENT = {
    "bios": 'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\nsend arch 0;\n',
    "uefi": 'send vendor-class-identifier "PXEClient:Arch:00007:UNDI:003016";\nsend arch 7;\n',
    "http": 'send vendor-class-identifier "HTTPClient:Arch:00016:UNDI:003001";\nsend arch 16;\n',
    "ipxe": 'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\nsend arch 0;\nsend user-class "iPXE";\n',
}


def main() -> None:
    dest = HERE / "dhcp"
    dest.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pair = NetnsPair()
        try:
            pair.start_server(tmp)
            for client, table in (("udhcpc", UDHCPC), ("dhclient", DHCLIENT)):
                for fw, args in table.items():
                    pcap = tmp / f"{client}-{fw}.pcap"
                    dump = pair.popen(pair.srv_ns, "tcpdump", "--immediate-mode", "-Z", "root", "-i", pair.srv_if, "-U", "-s", "0", "-w", str(pcap),
                                      "udp port 67 or udp port 68", stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                    if client == "udhcpc":
                        udhcpc(pair, tmp, *args)
                    else:
                        dhclient(pair, tmp, args)
                    time.sleep(0.5)
                    pair.stop(dump)
                    for n, (sport, _dport, payload) in enumerate(udp_payloads(pcap.read_bytes())):
                        mt = MsgType(decode(payload).msg_type).name.lower()
                        way = "in" if sport == 68 else "out"
                        (dest / f"{client}-{fw}-{n:02d}-{way}-{mt}.hex").write_text(payload.hex() + "\n")
        finally:
            pair.close()


if __name__ == "__main__":
    main()
