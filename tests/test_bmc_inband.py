"""BMC discovery in band without a VM: the initramfs's `ipmitool lan print` parser (bmc.sh, run by
the busybox the initramfs carries), the report's checks, and `ipmi://USER:PASS@auto`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ramboot.config import parse_config
from ramboot.inventory.records import NodeSpec
from ramboot.inventory.schemas import InventoryReport
from ramboot.inventory.store import Store
from ramboot.power.bmc import AutoUnresolved, BmcError, parse

BMC_SH = Path(__file__).resolve().parents[1] / "src/ramboot/images/initramfs/bmc.sh"
MAC = "52:54:00:aa:dd:01"


def lan_parse(text: str) -> dict:
    out = subprocess.run(["/bin/busybox", "sh", "-c", f". {BMC_SH}; rb_bmc_parse"], input=text,
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    return json.loads(out) if out else {}


@pytest.mark.parametrize("text,want", [
    ("IP Address Source       : DHCP Address\nIP Address              : 10.9.8.7\nSubnet Mask             : "
     "255.255.255.0\nMAC Address             : 52:54:00:aa:bb:cc\nDefault Gateway IP      : 10.9.8.1\n"
     "Auth Type Enable        : Callback : NONE MD2\n",
     {"ip_source": "dhcp", "ip": "10.9.8.7", "netmask": "255.255.255.0", "mac": "52:54:00:aa:bb:cc",
      "gateway": "10.9.8.1"}),
    ("IP Address Source : Static Address\r\nIP Address : 172.16.0.9\r\nMAC Address : D0:94:66:0A:0B:0C\r\n",
     {"ip_source": "static", "ip": "172.16.0.9", "mac": "d0:94:66:0a:0b:0c"}),
    ("IP Address : 0.0.0.0\nMAC Address : 00:00:00:00:00:00\n", {}),
    ("MAC Address : 02:00:00:00:00:01\n", {"mac": "02:00:00:00:00:01"}),
    ("IP Address : 300.1.1.1\nMAC Address : aa:bb:cc\nIP Address Source : BIOS Assigned Address\n", {}),
    ('IP Address : 1.2.3.4","x":"y\nMAC Address : 02:00:00:00:00:02\n', {"mac": "02:00:00:00:00:02"}),
    ("IP Address : 10.0.0.1\nIP Address : 10.0.0.2\n", {"ip": "10.0.0.1"}),
    ("Invalid channel 0\n", {}),
    ("", {}),
])
def test_lan_print_is_parsed_field_by_field(text: str, want: dict) -> None:
    assert lan_parse(text) == want


def test_a_bad_bmc_field_costs_that_field_only() -> None:
    r = InventoryReport.model_validate({"bmc": {"ip": "127.0.0.1", "mac": "zz", "ip_source": "weird",
                                                "gateway": "10.0.0.1"}})
    assert r.bmc is not None and (r.bmc.ip, r.bmc.mac, r.bmc.ip_source, r.bmc.gateway) == (None, None, None, "10.0.0.1")
    assert InventoryReport.model_validate({"bmc": "junk"}).bmc is None


def test_auto_urls() -> None:
    b = parse("ipmi://admin:pw@auto:6230")
    assert b.auto and b.redacted() == "ipmi://admin:***@auto:6230"
    with pytest.raises(BmcError, match="ipmi:// only"):
        parse("redfish://a:b@auto")


def test_auto_resolves_from_the_latest_report_at_use_time(data_dir: Path) -> None:
    store = Store.for_config(parse_config(f'data_dir = "{data_dir}"\n'))
    try:
        store.nodes.put(NodeSpec(mac=MAC, bmc="ipmi://admin:s3cret@auto:6230"))
        with pytest.raises(AutoUnresolved, match="has not reported one yet"):
            store.power.bmc(MAC)
        assert store.power.bmc_in_use(MAC) == "ipmi://admin:***@auto:6230"
        store.hardware.add(MAC, {"bmc": {"ip": "10.1.2.3"}}, at=1.0)
        b = store.power.bmc(MAC)
        assert (b.host, b.port, b.password) == ("10.1.2.3", 6230, "s3cret")
        store.hardware.add(MAC, {"bmc": {"ip": "10.1.2.4"}}, at=2.0)  # the BMC moved: followed
        assert store.power.bmc(MAC).host == "10.1.2.4" and store.power.bmc_in_use(MAC) == "ipmi://admin:***@10.1.2.4:6230"
    finally:
        store.close()
