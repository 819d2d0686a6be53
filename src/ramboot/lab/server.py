"""The lab's server: its config, its image, and `ramboot serve` run inside the lab namespace.

Shared by `ramboot lab up` and the end-to-end tests, so both start the server
exactly the way a user would: the real CLI in its own process, logging to a file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..config import Config, load_config
from ..images.manifest import MANIFEST, images_dir
from .netns import PREFIX6, RANGE6, Lab, LabError

SERVER_KEY = "server"


def ramboot_cmd() -> list[str]:
    """The `ramboot` entry point of the running interpreter's environment."""
    script = Path(sys.executable).parent / "ramboot"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ramboot.cli import main; sys.exit(main())"]


# The serial console last, so /dev/console is ttyS0: the initramfs's markers then
# reach `lab vm`, which reads the serial line.
LAB_KERNEL_ARGS = "console=tty0 console=ttyS0,115200"


def lab_config_text(lab: Lab, data_dir: Path, dhcp: str | None = None, boot: dict[str, str] | None = None) -> str:
    """The lab's default config: full DHCP for the lab subnet, standard ports, serial console."""
    net = lab.server_ip.rsplit(".", 1)[0]
    if lab.ipv6 == "only":  # no IPv4 anywhere: DHCPv4 off, the server named by its IPv6 address
        dhcp = 'mode = "off"\n'
        address = f'address6 = "{lab.server_ip6}"\n'
    else:
        dhcp = dhcp if dhcp is not None else f'mode = "full"\nrange = "{net}.100-{net}.200"\n'
        address = f'address = "{lab.server_ip}"\n' + (f'address6 = "{lab.server_ip6}"\n' if lab.ipv6 else "")
    # A default route to the server (router_lifetime): edk2's PXE waits 10 s for a gateway in
    # its route table before it uses its address (PxeBcCheckRouteTable); the lab is isolated,
    # so the route leads nowhere else.
    dhcp6 = (f'[dhcp6]\nmode = "full"\nrange6 = "{RANGE6}"\nprefix = "{PREFIX6}"\nrouter_lifetime = 1800\n'
             if lab.ipv6 else "")
    boot = {"kernel_args": LAB_KERNEL_ARGS, **(boot or {})}
    return (
        f'data_dir = "{data_dir}"\n'
        f"[network]\ninterface = \"{lab.bridge}\"\n{address}"
        f"[dhcp]\n{dhcp}{dhcp6}"
        "[tftp]\nport = 69\n"
        "[http]\nport = 80\n"
        "[boot]\n" + "".join(f'{k} = "{v}"\n' for k, v in boot.items())
    )


def has_image(data_dir: Path, name: str) -> bool:
    return (images_dir(data_dir) / name / MANIFEST).is_file()


def build_image(data_dir: Path, name: str, log: Path | None = None, echo: bool = True) -> None:
    """`ramboot image build NAME --data-dir DIR` (the built-in busybox root), via the real CLI."""
    cmd = [*ramboot_cmd(), "image", "build", name, "--data-dir", str(data_dir)]
    out = None if echo else open(log or os.devnull, "ab")
    try:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL)
    finally:
        if out:
            out.close()
    if p.returncode != 0:
        raise LabError(f"building image {name} failed (exit {p.returncode}): {' '.join(cmd)}")


def link_image(src_dir: Path, dest_data_dir: Path, name: str, copy: bool = False) -> Path:
    """Put an already built image into another data dir: hard links (or copies, to alter it)."""
    dest = images_dir(dest_data_dir) / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(src_dir).iterdir():
        target = dest / f.name
        target.unlink(missing_ok=True)
        if copy:
            shutil.copyfile(f, target)
        else:
            try:
                os.link(f, target)
            except OSError:
                shutil.copyfile(f, target)
    return dest


def http_base(config: Config, lab: Lab) -> str:
    if config.network.address is None and config.network.address6 is not None and lab.ipv6 == "only":
        host = f"[{config.network.address6}]"
    else:
        host = str(config.network.address or lab.server_ip)
    return f"http://{host}" + ("" if config.http.port == 80 else f":{config.http.port}")


def start_server(lab: Lab, config_path: Path, log: Path, wait: float = 30.0) -> str:
    """Start `ramboot serve` in the lab namespace and wait until its API answers; returns its base URL."""
    config = load_config(config_path)
    base = http_base(config, lab)
    if lab.alive(SERVER_KEY):
        return base
    lab.spawn(SERVER_KEY, [*ramboot_cmd(), "serve", "--config", str(config_path)], log=log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status, _ = lab.http(f"{base}/api/v1/nodes", timeout=1.0)
        if status:
            return base
        if not lab.alive(SERVER_KEY):
            lab.forget(SERVER_KEY)
            raise LabError(f"ramboot serve exited at start:\n{tail(log)}")
        time.sleep(0.2)
    lab.stop(SERVER_KEY)
    raise LabError(f"ramboot serve did not answer on {base} within {wait:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
