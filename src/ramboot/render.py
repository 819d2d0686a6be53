"""Boot scripts and configs: pure renderers of a `policy.Decision`, side by side.

Each takes a decision and returns text; none looks anything up. The decision
already holds the served names, the command line and the root URLs.
"""

from __future__ import annotations

from .names import SCRIPTS
from .policy import Decision


def ipxe_script(d: Decision) -> str:
    """`boot/<mac>[/<uuid>].ipxe`: the kernel and initrd over HTTP, then boot.

    With several servers holding the image, each fetch falls back across them
    (`kernel URL1 … || kernel URL2 …`): a server that died after handing out this
    script costs one failed request, not the boot.
    """
    bases = d.mirrors or (d.http_base,)
    name = d.initrd.rsplit("/", 1)[-1]
    kernel = " || ".join(f"kernel {b}/{d.kernel} initrd={name} {d.cmdline}" for b in bases)
    initrd = " || ".join(f"initrd {b}/{d.initrd}" for b in bases)
    return (
        "#!ipxe\n"
        f"echo ramboot: booting {d.image} on {d.mac}\n"
        f"{kernel}\n"
        f"{initrd}\n"
        "boot\n"
    )


def entry_script(http_base: str) -> str:
    """`/boot.ipxe`: for clients another DHCP server pointed here. It chains to the
    machine's own script, naming its UUID when the firmware knows one."""
    base = f"{http_base}/{SCRIPTS}/${{netX/mac:hexhyp}}"
    return (
        "#!ipxe\n"
        f"isset ${{uuid}} && chain {base}/${{uuid}}.ipxe ||\n"
        f"chain {base}.ipxe || shell\n"
    )


def pxelinux_config(d: Decision) -> str:
    """`pxelinux.cfg/...`: the kernel and initrd over TFTP. Without a MAC in the
    decision (the `default` and UUID names), pxelinux appends BOOTIF itself."""
    return (
        "DEFAULT ramboot\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL ramboot\n"
        f"  KERNEL {d.kernel}\n"
        f"  INITRD {d.initrd}\n"
        f"  APPEND {d.cmdline}\n"
        + ("" if d.mac else "  IPAPPEND 2\n")
    )
