"""`ramboot doctor`: what would stop machines from booting here, each with the command that fixes it.

It looks at the host as the server would see it: the provisioning interface and
its address, who holds the DHCP/TFTP/HTTP ports, another DHCP server answering
on the segment (a real DISCOVER), nftables rules that would drop the ports,
SELinux labels on the data directory, and the boot programs and image being
present. With loader "grub" (Secure Boot): shim and GRUB present, each image
those nodes boot carrying a kernel signature shim accepts, and no grub node in
proxy mode. One line per check; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .config import Config, ConfigError, load_config
from .images.manifest import MANIFEST, ManifestError, images_dir, load_manifest
from .namespace import LOADERS_DIR, SYSTEM_LOADERS
from .proto import dhcp6_codec as d6
from .proto.dhcp_codec import DhcpDecodeError, DhcpPacket, MsgType, Opt, decode, encode
from .server.dhcp6_server import our_duid

DEFAULT_CONFIG = Path("/etc/ramboot/ramboot.toml")
# Labels a confined service may read the data dir under (the seed fought tftpdir_rw_t
# and httpd_sys_content_t); var_lib_t is what StateDirectory= gets by default.
SELINUX_READABLE = {"public_content_t", "public_content_rw_t", "var_lib_t", "tftpdir_t", "tftpdir_rw_t",
                    "httpd_sys_content_t"}
LOADER_PACKAGES = {"undionly.kpxe": "ipxe", "snponly.efi": "ipxe", "ipxe.efi": "ipxe",
                   "pxelinux.0": "pxelinux", "ldlinux.c32": "syslinux-common"}


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.what}"
        return f"FAIL  {self.what}" + (f"; fix: {self.fix}" if self.fix else "")


# -- interface -------------------------------------------------------------------

def ipv4_addrs(ifname: str) -> list[ipaddress.IPv4Interface]:
    p = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname], capture_output=True, text=True)
    try:
        info = json.loads(p.stdout or "[]")
    except ValueError:
        return []
    return [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}") for i in info for a in i.get("addr_info", [])]


def check_interface(cfg: Config, cfg_path: str) -> list[Finding]:
    ifname = cfg.network.interface
    sysdir = Path("/sys/class/net") / ifname
    if not sysdir.exists():
        names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
        return [Finding(False, f"interface {ifname} does not exist (there are: {', '.join(names) or 'none'})",
                        f"set network.interface in {cfg_path} to the provisioning NIC or VLAN, e.g. "
                        f"ip link add link {names[0] if names else 'eth0'} name {ifname} type vlan id VLAN")]
    out = []
    flags = int((sysdir / "flags").read_text(), 16)
    if not flags & 0x1:
        out.append(Finding(False, f"interface {ifname} is down", f"ip link set {ifname} up"))
    else:
        try:
            carrier = (sysdir / "carrier").read_text().strip() == "1"
        except OSError:
            carrier = False
        out.append(Finding(carrier, f"interface {ifname} is up" + ("" if carrier else " but has no carrier"),
                           None if carrier
                           else f"connect {ifname} to the provisioning network (cable, switch port, bridge port)"))
    addrs = ipv4_addrs(ifname)
    want = cfg.network.address
    if want is not None and not any(a.ip == want for a in addrs):
        out.append(Finding(False, f"{want} (network.address) is not on {ifname}",
                           f"ip addr add {want}/24 dev {ifname}"))
    elif not addrs and ipv6_only(cfg):
        out.append(Finding(True, f"{ifname} has no IPv4 address (IPv4 is off: IPv6 only)"))
    elif not addrs:
        out.append(Finding(False, f"{ifname} has no IPv4 address", f"ip addr add ADDRESS/PREFIX dev {ifname}"))
    else:
        out.append(Finding(True, f"{ifname} has {', '.join(str(a) for a in addrs)}"))
    return out + check_interface6(cfg, ifname)


def ipv6_only(cfg: Config) -> bool:
    return cfg.dhcp.mode == "off" and cfg.network.address is None and (
        cfg.dhcp6.mode == "full" or cfg.network.address6 is not None)


def ipv6_addrs(ifname: str) -> list[ipaddress.IPv6Interface]:
    """The interface's global IPv6 addresses that passed duplicate address detection."""
    p = subprocess.run(["ip", "-j", "-6", "addr", "show", "dev", ifname, "scope", "global"], capture_output=True,
                       text=True)
    try:
        info = json.loads(p.stdout or "[]")
    except ValueError:
        return []
    return [ipaddress.IPv6Interface(f"{a['local']}/{a['prefixlen']}") for i in info for a in i.get("addr_info", [])
            if "local" in a and not a.get("tentative") and not a.get("dadfailed")]


def check_interface6(cfg: Config, ifname: str) -> list[Finding]:
    """IPv6, when it is served: the address clients are told is on the interface, inside the
    prefix the RAs announce; and a bridge's MLD snooping cannot eat solicitations."""
    if cfg.dhcp6.mode == "off" and cfg.network.address6 is None:
        return []
    out = []
    addrs = ipv6_addrs(ifname)
    want = cfg.network.address6
    prefix = cfg.dhcp6.prefix
    if want is not None and not any(a.ip == want for a in addrs):
        out.append(Finding(False, f"{want} (network.address6) is not on {ifname} (or is still tentative)",
                           f"ip addr add {want}/{prefix.prefixlen if prefix else 64} dev {ifname} nodad"))
    elif not addrs:
        out.append(Finding(False, f"{ifname} has no global IPv6 address",
                           f"ip addr add ADDRESS/64 dev {ifname} nodad   # inside dhcp6.prefix"))
    else:
        out.append(Finding(True, f"{ifname} has {', '.join(str(a) for a in addrs)}"))
        if prefix is not None and not any(a.ip in prefix for a in addrs):
            out.append(Finding(False, f"no address of {ifname} is inside dhcp6.prefix {prefix}: clients could not "
                                      "reach the server on the link",
                               f"ip addr add {next(prefix.hosts())}/{prefix.prefixlen} dev {ifname} nodad"))
    out += check_mld_snooping(ifname)
    return out


def check_mld_snooping(ifname: str) -> list[Finding]:
    """MLD snooping can eat DHCPv6 Solicits to ff02::1:2 (confluent#205): a switch that snoops
    drops a group's frames on ports it saw no report for. A Linux bridge floods them while no
    querier is seen, and its own host port joins the group with the server: say what it does.
    A hardware switch cannot be asked from here: say what to keep on it."""
    br = Path("/sys/class/net", ifname, "bridge")
    if not br.exists():
        return [Finding(True, f"{ifname} is no Linux bridge; on a switch with MLD snooping, keep an MLD querier on "
                              "the VLAN (or snooping off) so DHCPv6 Solicits reach ramboot")]
    try:
        snooping = (br / "multicast_snooping").read_text().strip() == "1"
    except OSError:
        return []
    how = "on (the bridge's own port joins ff02::1:2 with the server)" if snooping else "off"
    return [Finding(True, f"bridge {ifname}: MLD snooping {how}")]


# -- ports -----------------------------------------------------------------------

_USERS = re.compile(r'\("([^"]*)",pid=(\d+)')


def port_holders(proto: str, port: int) -> list[tuple[str, int]]:
    """(process name, pid) of every socket listening on proto/port, from ss."""
    p = subprocess.run(["ss", "-H", "-n", "-l", "-p", "-u" if proto == "udp" else "-t"], capture_output=True, text=True)
    holders = []
    for line in p.stdout.splitlines():
        cols = line.split()
        local = next((c for c in cols if re.search(r":\d+$", c)), "")
        if local.rsplit(":", 1)[-1] == str(port):
            holders += [(n, int(pid)) for n, pid in _USERS.findall(line)] or [("unknown", 0)]
    return sorted(set(holders))


def _service_of(pid: int) -> str | None:
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    m = re.search(r"/([^/]+\.service)$", cgroup.strip().splitlines()[-1])
    return m.group(1) if m else None


def _is_ramboot(pid: int) -> bool:
    try:
        return b"ramboot" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def service_ports(cfg: Config) -> list[tuple[str, int, str]]:
    """(proto, port, role) of every port the server listens on with this config."""
    wanted = [("tcp", cfg.http.port, "HTTP"), ("udp", cfg.tftp.port, "TFTP")]
    if cfg.http.https_port:
        wanted.append(("tcp", cfg.http.https_port, "HTTPS"))
    if cfg.dhcp.mode != "off":
        wanted.append(("udp", 67, "DHCP"))
    if cfg.dhcp.mode == "proxy":
        wanted.append(("udp", 4011, "proxyDHCP"))
    if cfg.dhcp6.mode == "full":
        wanted.append(("udp", 547, "DHCPv6"))
    return wanted


def check_ports(cfg: Config) -> list[Finding]:
    out = []
    for proto, port, role in service_ports(cfg):
        holders = port_holders(proto, port)
        others = [(n, pid) for n, pid in holders if not _is_ramboot(pid)]
        if not holders:
            out.append(Finding(True, f"port {port}/{proto} ({role}) is free"))
        elif not others:
            out.append(Finding(True, f"port {port}/{proto} ({role}) is held by ramboot itself"))
        for name, pid in others:
            unit = _service_of(pid)
            if unit and name.split(".")[0] in unit:
                fix = f"systemctl disable --now {unit}"
            else:
                fix = f"kill {pid}" if pid else f"ss -lnp{proto[0]} 'sport = :{port}'   # find and stop it"
            out.append(Finding(False, f"port {port}/{proto} ({role}) is held by {name} (pid {pid})", fix))
    return out


# -- another DHCP server ------------------------------------------------------------

def probe_dhcp(ifname: str, seconds: float = 3.0) -> list[tuple[str, str, bool]]:
    """Broadcast a PXE DISCOVER on ifname; (server id, source, hands out addresses) per answer."""
    mac = bytes([0x02]) + secrets.token_bytes(5)
    xid = secrets.randbits(32)
    pkt = DhcpPacket(xid=xid, flags=0x8000, chaddr=mac, options={
        Opt.MESSAGE_TYPE: bytes([MsgType.DISCOVER]),
        Opt.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001",
        Opt.CLIENT_ARCH: b"\x00\x00",
        Opt.PARAM_REQUEST: bytes([1, 3, 6, 43, 54, 60, 66, 67]),
    })
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.bind(("0.0.0.0", 68))
        s.sendto(encode(pkt), ("255.255.255.255", 67))
        found: dict[str, tuple[str, str, bool]] = {}
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, (src, _port) = s.recvfrom(4096)
            try:
                reply = decode(data)
            except DhcpDecodeError:
                continue
            if reply.xid != xid or reply.msg_type != MsgType.OFFER:
                continue
            sid = reply.server_id or src
            found[sid] = (sid, src, reply.yiaddr != "0.0.0.0")
        return sorted(found.values())
    finally:
        s.close()


def check_other_dhcp(cfg: Config, cfg_path: str, seconds: float) -> list[Finding]:
    if cfg.dhcp.mode == "off":
        return [Finding(True, "dhcp.mode is off: another server points clients here (not probed)")]
    ifname = cfg.network.interface
    if not Path("/sys/class/net", ifname).exists():
        return []
    ours = {str(a.ip) for a in ipv4_addrs(ifname)} | ({str(cfg.network.address)} if cfg.network.address else set())
    try:
        answers = [a for a in probe_dhcp(ifname, seconds) if a[0] not in ours and a[1] not in ours]
    except OSError as e:
        return [Finding(False, f"cannot probe for DHCP servers on {ifname}: {e.strerror}",
                        "run ramboot doctor as root while port 68 is free")]
    leasing = [a for a in answers if a[2]]
    proxies = [a for a in answers if not a[2]]
    out = []
    if cfg.dhcp.mode == "full":
        for sid, src, _ in leasing:
            out.append(Finding(False, f"another DHCP server {sid} (from {src}) hands out addresses on {ifname}",
                               f"sed -i 's/^mode *= *\"full\"/mode = \"proxy\"/' {cfg_path}   # or stop that server"))
    elif not leasing:
        rng = "FIRST-LAST"
        out.append(Finding(False, f"no DHCP server hands out addresses on {ifname}, and proxy mode needs one",
                           f"sed -i 's/^mode *= *\"proxy\"/mode = \"full\"\\nrange = \"{rng}\"/' {cfg_path}"))
    for sid, src, _ in proxies:
        out.append(Finding(False, f"another PXE/proxyDHCP server {sid} (from {src}) answers boot requests on {ifname}",
                           f"stop the PXE service on {sid}, or set dhcp.mode = \"off\" in {cfg_path}"
                           " and point it at ramboot"))
    if not out:
        seen = ", ".join(a[0] for a in leasing) or "none"
        out.append(Finding(True, f"DHCP servers answering on {ifname} besides ramboot: {seen}"
                                 f" (fits mode {cfg.dhcp.mode})"))
    return out


def probe_dhcp6(ifname: str, seconds: float = 3.0) -> list[tuple[str, str]]:
    """Multicast a DHCPv6 Solicit (a made-up DUID-LL) on ifname; (server DUID hex, source) per Advertise."""
    duid = struct.pack("!HH", 3, 1) + bytes([0x02]) + secrets.token_bytes(5)
    txid = secrets.randbits(24)
    ia = d6.encode_ia_na(d6.IaNa(1, 0, 0))
    sol = d6.encode(d6.Message(d6.Msg.SOLICIT, txid, [(d6.Opt.CLIENTID, duid), (d6.Opt.ELAPSED_TIME, b"\0\0"),
                                                       (d6.Opt.IA_NA, ia)]))
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.bind(("::", d6.CLIENT_PORT))
        s.sendto(sol, (d6.ALL_SERVERS, d6.SERVER_PORT, 0, socket.if_nametoindex(ifname)))
        found: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, src = s.recvfrom(4096)
            try:
                msg = d6.decode(data)
            except d6.Dhcp6DecodeError:
                continue
            if not isinstance(msg, d6.Message) or msg.msg_type != d6.Msg.ADVERTISE or msg.txid != txid:
                continue
            sid = (msg.get(d6.Opt.SERVERID) or b"").hex()
            found[sid] = (sid, src[0].split("%")[0])
        return sorted(found.values())
    finally:
        s.close()


def check_other_dhcp6(cfg: Config, cfg_path: str, seconds: float) -> list[Finding]:
    """In DHCPv6 full mode, another DHCPv6 server on the link hands out addresses too."""
    if cfg.dhcp6.mode != "full":
        return []
    ifname = cfg.network.interface
    if not Path("/sys/class/net", ifname).exists():
        return []
    ours = our_duid(ifname).hex()
    try:
        answers = [a for a in probe_dhcp6(ifname, seconds) if a[0] != ours]
    except OSError as e:
        return [Finding(False, f"cannot probe for DHCPv6 servers on {ifname}: {e.strerror}",
                        "run ramboot doctor as root while port 546 is free")]
    if not answers:
        return [Finding(True, f"no other DHCPv6 server answers on {ifname}")]
    return [Finding(False, f"another DHCPv6 server (DUID {sid}, from {src}) hands out addresses on {ifname}",
                    f"stop that server, or set dhcp6.mode = \"off\" in {cfg_path}") for sid, src in answers]


# -- firewall ----------------------------------------------------------------------

def _port_match(right: object, port: int) -> bool:
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            return any(_port_match(x, port) for x in right["set"])
        if "range" in right:
            lo, hi = right["range"]
            return bool(lo <= port <= hi)
    if isinstance(right, list):
        return any(_port_match(x, port) for x in right)
    return False


def _in_set(right: object, value: str) -> bool:
    if isinstance(right, dict) and "set" in right:
        return value in right["set"]
    return right == value


def _rule_matches(exprs: list[dict[str, Any]], proto: str, port: int, ifname: str) -> bool | None:
    """True/False if the rule surely does/does not match a new proto/port packet on ifname; None if unsure."""
    for e in exprs:
        if set(e) & {"counter", "log", "limit", "comment"}:
            continue
        m = e.get("match")
        if m is None:
            continue
        left, right, op = m.get("left", {}), m.get("right"), m.get("op", "==")
        neg = op == "!="
        if "payload" in left and left["payload"].get("field") == "dport":
            hit = left["payload"].get("protocol") in (proto, "th") and _port_match(right, port)
        elif "meta" in left and left["meta"].get("key") == "l4proto":
            hit = _in_set(right, proto)
        elif "meta" in left and left["meta"].get("key") in ("iifname", "iif"):
            hit = _in_set(right, ifname)
        elif "ct" in left and left["ct"].get("key") == "state":
            hit = _in_set(right, "new") or (isinstance(right, list) and "new" in right)
        else:
            return None
        if hit == neg:
            return False
    return True


def _verdict(exprs: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The rule's verdict and, for a jump or goto, the chain it names."""
    for e in exprs:
        for v in ("accept", "drop", "reject", "return"):
            if v in e:
                return v, ""
        for v in ("jump", "goto"):
            if v in e:
                return v, e[v]["target"]
    return None


def nft_blocks(ruleset: list[dict[str, Any]], proto: str, port: int, ifname: str) -> list[tuple[str, str, str]]:
    """(family, table, chain) of each input base chain that drops a new proto/port packet."""
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[list[dict[str, Any]]]] = {}
    for item in ruleset:
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r["expr"])

    def run(key: tuple[str, str, str], depth: int = 0) -> str | None:
        for exprs in rules.get(key, []):
            if _rule_matches(exprs, proto, port, ifname) is not True:
                continue
            v = _verdict(exprs)
            if v is None:
                continue
            if v[0] in ("accept", "drop", "reject"):
                return v[0]
            if v[0] == "return":
                return None
            if depth < 16:
                sub = run((key[0], key[1], v[1]), depth + 1)
                if sub is not None or v[0] == "goto":
                    return sub
        return None

    blocked = []
    for key, c in chains.items():
        if c.get("hook") != "input" or key[0] not in ("ip", "inet"):
            continue
        verdict = run(key) or c.get("policy", "accept")
        if verdict in ("drop", "reject"):
            blocked.append(key)
    return blocked


def check_firewall(cfg: Config) -> list[Finding]:
    if shutil.which("nft") is None:
        return [Finding(True, "nftables is not installed: no nftables rules to check")]
    p = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
    if p.returncode != 0:
        return [Finding(False, f"cannot read the nftables ruleset: {p.stderr.strip()}", "run ramboot doctor as root")]
    try:
        ruleset = [x for x in json.loads(p.stdout or '{"nftables": []}')["nftables"] if isinstance(x, dict)]
    except (ValueError, KeyError):
        ruleset = []
    ports = [(proto, port) for proto, port, _role in service_ports(cfg)]
    firewalld = shutil.which("firewall-cmd") and subprocess.run(
        ["firewall-cmd", "--state"], capture_output=True).returncode == 0
    ifname = cfg.network.interface
    out = []
    for proto, port in ports:
        for fam, table, chain in nft_blocks(ruleset, proto, port, ifname):
            if firewalld:
                fix = ("cp deploy/firewalld/ramboot.xml /etc/firewalld/services/ && firewall-cmd --reload && "
                       "firewall-cmd --permanent --add-service=ramboot && firewall-cmd --reload")
            else:
                fix = f"nft insert rule {fam} {table} {chain} iifname \"{ifname}\" {proto} dport {port} accept"
            out.append(Finding(False, f"nftables chain {fam} {table} {chain} drops {proto} port {port}", fix))
    if not out:
        out.append(Finding(True, "no nftables/iptables-nft rule drops " + ", ".join(f"{p}/{pr}" for pr, p in ports)))
    return out


# -- SELinux, boot programs, image --------------------------------------------------

def check_selinux(cfg: Config) -> list[Finding]:
    enforce = Path("/sys/fs/selinux/enforce")
    if not enforce.exists():
        return [Finding(True, "SELinux is not enabled on this host")]
    mode = "enforcing" if enforce.read_text().strip() == "1" else "permissive"
    data = Path(cfg.data_dir)
    try:
        label = os.getxattr(data, "security.selinux").decode().rstrip("\0")
    except OSError:
        return [Finding(True, f"SELinux is {mode}; {data} does not exist yet (created by the service)")]
    typ = label.split(":")[2] if label.count(":") >= 3 else label
    if mode == "enforcing" and typ not in SELINUX_READABLE:
        return [Finding(False, f"SELinux is enforcing and {data} is labelled {typ}",
                        f"semanage fcontext -a -t public_content_t '{data}(/.*)?' && restorecon -Rv {data}")]
    return [Finding(True, f"SELinux is {mode}; {data} is labelled {typ}")]


def check_boot_files(cfg: Config) -> list[Finding]:
    data = Path(cfg.data_dir)
    out = []
    for name, pkg in LOADER_PACKAGES.items():
        if (data / LOADERS_DIR / name).is_file() or Path(SYSTEM_LOADERS[name]).is_file():
            continue
        out.append(Finding(False, f"boot program {name} is missing", f"apt-get install {pkg}"))
    if not out:
        out.append(Finding(True, "boot programs present: " + ", ".join(LOADER_PACKAGES)))
    image = cfg.boot.default_image
    if (images_dir(data) / image / MANIFEST).is_file():
        out.append(Finding(True, f"default image {image} is in {images_dir(data)}"))
    else:
        out.append(Finding(False, f"default image {image} is not in {images_dir(data)}",
                           f"ramboot image build {image} --data-dir {data}"))
    return out


SECURE_BOOT_LOADERS = {"shimx64.efi": "shim-signed", "grubx64.efi": "grub-efi-amd64-signed"}


def grub_nodes(cfg: Config) -> dict[str, list[str]]:
    """image -> the nodes that boot it with loader grub ("default" for unregistered machines)."""
    from .inventory.store import Store

    out: dict[str, list[str]] = {}
    if cfg.boot.loader == "grub" and cfg.boot.unknown_nodes != "ignore":
        out.setdefault(cfg.boot.default_image, []).append("unregistered machines")
    db = Path(cfg.data_dir) / "ramboot.db"
    if cfg.database.url is None and not db.is_file():
        return out
    try:
        store = Store.for_config(cfg)
        try:
            nodes = store.nodes.all()
        finally:
            store.close()
    except Exception:  # a doctor never dies of the database it diagnoses
        return out
    for n in nodes:
        if (n.loader or cfg.boot.loader) == "grub":
            out.setdefault(n.image or cfg.boot.default_image, []).append(n.mac)
    return out


def check_secure_boot(cfg: Config) -> list[Finding]:
    users = grub_nodes(cfg)
    if not users:
        return []
    data = Path(cfg.data_dir)
    out = []
    missing = [n for n in SECURE_BOOT_LOADERS if not (data / LOADERS_DIR / n).is_file()
               and not Path(SYSTEM_LOADERS[n]).is_file()]
    if missing:
        out.append(Finding(False, f"loader grub needs {', '.join(missing)}, which is missing",
                           "apt-get install " + " ".join(SECURE_BOOT_LOADERS[n] for n in missing)))
    if cfg.dhcp.mode == "proxy":
        who = sorted({m for ms in users.values() for m in ms})
        out.append(Finding(False, f"loader grub in proxy mode ({', '.join(who)}): GRUB reads only the site DHCP "
                           "server's answer and stops at grub>", 'set dhcp.mode = "full", or loader ipxe'))
    for image, who in sorted(users.items()):
        try:
            signed = load_manifest(data, image).kernel_signed
        except ManifestError:
            continue  # the image checks above say it is missing
        if signed is False:
            out.append(Finding(False, f"image {image}: its kernel carries no signature Debian's shim accepts, so "
                               f"{', '.join(who)} (loader grub) will not boot under Secure Boot",
                               f"ramboot image build {image} with a Debian kernel (signed)"))
        elif signed is None:
            out.append(Finding(False, f"image {image}: whether its kernel is signed for shim is not recorded",
                               f"apt-get install sbsigntool, then ramboot image build {image}"))
    if not out:
        out.append(Finding(True, "loader grub: shim and GRUB present, every image it boots has a signed kernel"))
    return out


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"the server's config (default: {DEFAULT_CONFIG} if it exists)")
@click.option("--probe-seconds", type=float, default=3.0, show_default=True,
              help="how long to listen for other DHCP servers; 0 skips the probe")
def doctor(config_path: Path | None, probe_seconds: float) -> None:
    """Check this host for what would stop PXE boots, and print the fix for each problem."""
    if config_path is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    try:
        cfg = load_config(config_path) if config_path else Config()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if config_path is None:
        # No config to check the link, images and loaders against (nor to tell to edit):
        # say where it looked and how to write one; the host's ports and firewall still apply.
        findings = [Finding(False, f"no config: no --config given and {DEFAULT_CONFIG} does not exist",
                            "ramboot init --interface IF writes one for the provisioning link")]
        findings += check_ports(cfg) + check_firewall(cfg) + check_selinux(cfg)
    else:
        where = str(config_path)
        findings = check_interface(cfg, where) + check_ports(cfg)
        if probe_seconds > 0:
            findings += check_other_dhcp(cfg, where, probe_seconds) + check_other_dhcp6(cfg, where, probe_seconds)
        findings += check_firewall(cfg) + check_selinux(cfg) + check_boot_files(cfg) + check_secure_boot(cfg)
    for f in findings:
        click.echo(f.line())
    failed = sum(not f.ok for f in findings)
    click.echo(f"{failed} problem(s) found" if failed else "all checks passed")
    raise SystemExit(1 if failed else 0)
