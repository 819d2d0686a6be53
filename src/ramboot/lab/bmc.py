"""Lab VMs behind an emulated BMC: OpenIPMI's `ipmi_sim` for IPMI (and, in the tests, the
Redfish emulator in front of libvirtd).

`ipmi_sim` serves IPMI 2.0 lanplus on the lab bridge's address, starts the VM with its
`startcmd` and drives it through QEMU's `ipmi-bmc-extern` (power off, reset, start again);
the VM's serial console is a TCP socket that `ipmi_sim` offers as Serial-over-LAN and QEMU
copies to `console.log`. Everything runs in the lab's namespace; `lab down` stops the BMC
(a spawned process) and the VM (adopted through QEMU's pidfile).
"""

from __future__ import annotations

import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..macaddr import normalize_mac
from .netns import Lab, LabError, call_in_netns
from .vm import qemu_argv, tap_name, unix_time

IPMI_USER = "admin"
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


@dataclass
class BmcVm:
    mac: str
    url: str  # what `node add --bmc` takes (with the password)
    workdir: Path
    console_log: Path
    bmc_ip: str = ""  # ipmi: the BMC's LAN address and MAC, as it tells the machine in band
    bmc_mac: str = ""

    @property
    def redacted(self) -> str:
        from ..power.bmc import parse

        return parse(self.url).redacted()


def _free_ports(lab: Lab, n: int) -> list[int]:
    """`n` ports free for both TCP and UDP in the lab's namespace (taken by the kernel, then let go)."""
    def pick() -> list[int]:
        out: list[int] = []
        while len(out) < n:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind(("127.0.0.1", 0))
                port = t.getsockname()[1]
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                        u.bind((lab.server_ip, port))
                except OSError:
                    continue
            if port not in out:
                out.append(port)
        return out

    return call_in_netns(lab.ns, pick)


# ipmi_sim's `lan_config_program`: asked `DEV get PARAM…`, it answers `PARAM:VALUE` lines; these
# are the LAN settings the BMC reports (Get LAN Configuration Parameters, in band and over LAN).
LANCONTROL = """#!/bin/sh
shift 2
for p in "$@"; do
  case $p in
    ip_addr) echo "ip_addr:{ip}" ;;
    ip_addr_src) echo "ip_addr_src:static" ;;
    mac_addr) echo "mac_addr:{mac}" ;;
    subnet_mask) echo "subnet_mask:255.255.255.0" ;;
    default_gw_ip_addr | backup_gw_ip_addr) echo "$p:0.0.0.0" ;;
    default_gw_mac_addr | backup_gw_mac_addr) echo "$p:00:00:00:00:00:00" ;;
  esac
done
"""


def bmc_mac_for(mac: str) -> str:
    """The lab BMC's own MAC, from its machine's: the same bytes, locally administered (02:…)."""
    return "02:" + normalize_mac(mac)[3:]


def lan_conf(name: str, addr: str, lan_port: int, vm_port: int, sol_port: int, password: str, startcmd: str,
             lancontrol: str = "") -> str:
    """ipmi_sim's lan.conf: one BMC, lanplus for one admin user, its LAN settings (`lancontrol`),
    the VM codec, SOL, the VM's start command."""
    config_program = f'    lan_config_program "{lancontrol} lan0"\n' if lancontrol else ""
    return f"""name "{name}"
set_working_mc 0x20
  startlan 1
    addr {addr} {lan_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {secrets.token_hex(16)}
{config_program}  endlan
  serial 15 127.0.0.1 {vm_port} codec VM
  sol "tcp:127.0.0.1:{sol_port}" 115200
  startcmd "{startcmd}"
  startnow true
  poweroff_wait 2
  kill_wait 5
  user 2 true "{IPMI_USER}" "{password}" admin 10 none md2 md5 straight
"""


def start_ipmi_vm(lab: Lab, mac: str, accel: str, firmware: str = "bios", memory_mb: int = 1024) -> BmcVm:
    """The VM behind its own ipmi_sim, powered on; returns at once (the boot goes on)."""
    if not lab.exists():
        raise LabError(f"the lab network {lab.ns} is not up; run: ramboot lab up")
    mac = normalize_mac(mac)
    tap = tap_name(mac)
    workdir = lab.root / "vms" / mac.replace(":", "")
    workdir.mkdir(parents=True, exist_ok=True)
    lan_port, vm_port, sol_port = _free_ports(lab, 3)
    password = secrets.token_hex(8)
    lab.add_tap(tap)
    console = workdir / "console.log"
    pidfile = workdir / "qemu.pid"
    argv = [a for a in qemu_argv(firmware, mac, tap, accel, workdir, memory_mb) if a != "-no-reboot"]
    i = argv.index("-nographic")
    argv[i:i + 1] = ["-display", "none",
                     "-chardev", f"socket,id=ser0,host=127.0.0.1,port={sol_port},server=on,wait=off,"
                                 f"logfile={console},logappend=on",
                     "-serial", "chardev:ser0"]
    argv += ["-pidfile", str(pidfile),
             "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=10",
             "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
             "-device", "isa-ipmi-kcs,bmc=bmc0"]
    start = workdir / "start-vm.sh"
    start.write_text("#!/bin/sh\nexec " + shlex.join(argv) + f" >>{shlex.quote(str(workdir / 'qemu.log'))} 2>&1\n")
    start.chmod(0o755)
    lancontrol = workdir / "lancontrol"
    lancontrol.write_text(LANCONTROL.format(ip=lab.server_ip, mac=bmc_mac_for(mac)))
    lancontrol.chmod(0o755)
    conf = workdir / "lan.conf"
    conf.write_text(lan_conf(f"rb{mac.replace(':', '')[6:]}", lab.server_ip, lan_port, vm_port, sol_port, password,
                             str(start), str(lancontrol)))
    (workdir / "bmc.emu").write_text(EMU)
    state = workdir / "ipmi-state"
    state.mkdir(exist_ok=True)
    log = workdir / "ipmi_sim.log"
    proc = lab.spawn(f"bmc-{mac}", ["ipmi_sim", "-n", "-c", str(conf), "-f", str(workdir / "bmc.emu"),
                                    "-s", str(state)], log=log)
    lab.adopt(f"vm-{mac}", pidfile)
    deadline = time.monotonic() + 15
    while not pidfile.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"ipmi_sim did not start the VM: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.1)
    url = f"ipmi://{IPMI_USER}:{password}@{lab.server_ip}:{lan_port}"
    return BmcVm(mac, url, workdir, console, lab.server_ip, bmc_mac_for(mac))


def wait_booted(lab: Lab, mac: str, since: float, timeout: float, base: str | None = None,
                token: str | None = None) -> tuple[bool, str]:
    """Until the server has a `booted` event of `mac` after `since`; (ok, the last stage seen)."""
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    while time.monotonic() < deadline:
        events = lab.api(f"/api/v1/nodes/{mac}/events", base, token)
        mine = [e for e in events if isinstance(e, dict) and unix_time(e.get("at", 0)) >= since] \
            if isinstance(events, list) else []
        if mine:
            last = str(mine[-1].get("stage"))
            if any(e.get("stage") == "booted" for e in mine):
                return True, "booted"
            if last == "failed":
                return False, "failed"
        time.sleep(1.0)
    return False, last


# -- libvirtd and the Redfish emulator in front of it ---------------------------------------

QEMU_CONF = """# ramboot lab: a private libvirtd (its own runtime, state and config, in its own mount namespace)
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
remember_owner = 0
"""

DOMAIN_XML = """<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <features><acpi/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><log file='{console}' append='on'/></serial>
    <console type='pty'/>
  </devices>
</domain>
"""


@dataclass
class Libvirtd:
    """A libvirtd of the lab's own: `uri` reaches it (through its own socket)."""

    root: Path
    uri: str


def start_libvirtd(lab: Lab, root: Path) -> Libvirtd:
    """libvirtd in the lab's namespace, in a mount namespace of its own where /etc/libvirt,
    /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are this lab's
    folders: it shares no state, lock or domain with any other libvirtd on the host."""
    import shutil

    if shutil.which("libvirtd") is None:
        raise LabError("libvirtd is missing; install it with: apt-get install libvirt-daemon-system")
    root.mkdir(parents=True, exist_ok=True)
    etc = root / "etc"
    if not etc.exists():
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
    (etc / "qemu.conf").write_text(QEMU_CONF)
    sock = root / "sock"
    sock.mkdir(exist_ok=True)
    conf = root / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{sock}"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\n'
                    f'log_outputs = "3:file:{root / "libvirtd.log"}"\n')
    mounts = []
    for target, name in (("/etc/libvirt", "etc"), ("/run/libvirt", "run"), ("/var/lib/libvirt", "lib"),
                         ("/var/cache/libvirt", "cache"), ("/var/log/libvirt", "log")):
        (root / name).mkdir(exist_ok=True)
        mounts.append(f"mkdir -p {target} && mount --bind {shlex.quote(str(root / name))} {target}")
    script = " && ".join(["mount --make-rprivate /", *mounts,
                          f"exec libvirtd -f {shlex.quote(str(conf))} -p {shlex.quote(str(root / 'libvirtd.pid'))}"])
    proc = lab.spawn("libvirtd", ["unshare", "-m", "sh", "-c", script], log=root / "libvirtd.out")
    uri = f"qemu:///system?socket={sock}/libvirt-sock"
    deadline = time.monotonic() + 30
    while not (sock / "libvirt-sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError("libvirtd did not start: " + (root / "libvirtd.out").read_text(errors="replace")[-500:])
        time.sleep(0.2)
    return Libvirtd(root, uri)


def define_domain(lab: Lab, daemon: Libvirtd, mac: str, accel: str, memory_mb: int = 1024) -> tuple[str, Path]:
    """A diskless network-booting domain on the lab bridge, defined (not started); its name and console log."""
    import subprocess

    mac = normalize_mac(mac)
    name = f"rb-{mac.replace(':', '')[6:]}"
    console = daemon.root / f"{name}.console.log"
    xml = daemon.root / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(virt="kvm" if accel == "kvm" else "qemu", name=name, memory=memory_mb,
                                     bridge=lab.bridge, mac=mac, console=console))
    p = subprocess.run(["ip", "netns", "exec", lab.ns, "virsh", "-c", daemon.uri, "define", str(xml)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise LabError(f"virsh define: {p.stderr.strip()[-300:]}")
    # libvirtd leaves its domains running when it stops: the lab stops the VM itself.
    lab.adopt(f"vm-{mac}", daemon.root / "run" / "qemu" / f"{name}.pid", f"guest={name},")
    return name, console


def start_sushy(lab: Lab, daemon: Libvirtd, workdir: Path, user: str = IPMI_USER) -> str:
    """sushy-emulator (Redfish over HTTPS, basic auth) in front of `daemon`, on the lab bridge's
    address; returns its `--bmc` URL base with the password: `redfish://USER:PASS@HOST:PORT`."""
    import shutil
    import sys

    import bcrypt

    exe = Path(sys.executable).parent / "sushy-emulator"
    if not exe.exists() and shutil.which("sushy-emulator") is None:
        raise LabError("sushy-emulator is missing: pip install sushy-tools (make setup does)")
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(8)
    (workdir / "htpasswd").write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
    cert, key = _self_signed(workdir, lab.server_ip)
    (workdir / "sushy.conf").write_text(
        f"SUSHY_EMULATOR_AUTH_FILE = {str(workdir / 'htpasswd')!r}\n"
        f"SUSHY_EMULATOR_LIBVIRT_URI = {daemon.uri!r}\n"
        "SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n")
    (port,) = _free_ports(lab, 1)
    proc = lab.spawn("sushy", [str(exe) if exe.exists() else "sushy-emulator", "--config", str(workdir / "sushy.conf"),
                               "--interface", lab.server_ip, "--port", str(port),
                               "--ssl-certificate", str(cert), "--ssl-key", str(key)], log=workdir / "sushy.log")
    deadline = time.monotonic() + 30
    log = workdir / "sushy.log"
    while "Running on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError("sushy-emulator did not start: " + log.read_text(errors="replace")[-500:])
        time.sleep(0.2)
    return f"redfish://{user}:{password}@{lab.server_ip}:{port}"


def _self_signed(workdir: Path, ip: str) -> tuple[Path, Path]:
    """The emulator's own certificate (a lab BMC's: the URL says ?verify=false)."""
    import subprocess

    cert, key = workdir / "bmc.crt", workdir / "bmc.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=ramboot lab BMC", "-addext", f"subjectAltName=IP:{ip}", "-days", "7",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def start_redfish_vm(lab: Lab, mac: str, accel: str, memory_mb: int = 1024) -> BmcVm:
    """A libvirt domain behind the lab's sushy-emulator (both started once per lab), powered on
    through Redfish; returns at once (the boot goes on)."""
    import subprocess

    from ..power import driver_for
    from ..power.bmc import parse
    from .netns import call_in_netns

    st = lab.state()
    root = lab.root / "libvirt"
    if lab.alive("libvirtd") and st.get("libvirt_uri"):
        daemon = Libvirtd(root, st["libvirt_uri"])
    else:
        daemon = start_libvirtd(lab, root)
        lab.remember(libvirt_uri=daemon.uri)
    if not (lab.alive("sushy") and st.get("redfish_base")):
        lab.remember(redfish_base=start_sushy(lab, daemon, lab.root / "sushy"))
    base = lab.state()["redfish_base"]
    name, console = define_domain(lab, daemon, mac, accel, memory_mb)
    uuid = subprocess.run(["ip", "netns", "exec", lab.ns, "virsh", "-c", daemon.uri, "domuuid", name],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    url = f"{base}/redfish/v1/Systems/{uuid}?verify=false"
    driver = driver_for(parse(url))
    call_in_netns(lab.ns, lambda: driver.power("on"))
    return BmcVm(normalize_mac(mac), url, root, console)
