"""Boot scripts and configs: pure renderers of a `policy.Decision`, side by side.

Each takes a decision and returns text; none looks anything up. The decision
already holds the served names, the command line and the root URLs.
"""

from __future__ import annotations

from .names import GRUB_CFG_SUFFIX, SCRIPTS
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


def grub_entry() -> str:
    """`grub/grub.cfg`: what Debian's signed GRUB netboot image reads first (its prefix
    is `(tftp,<server>)/grub`). It hands each machine to its own config: by MAC and
    SMBIOS UUID, else by MAC. `$net_default_mac` is GRUB's (lower case, colons)."""
    own = "$prefix/$net_default_mac"
    return (
        "# ramboot: hands this machine to its own config (grub/<mac>[/<uuid>].cfg)\n"
        "smbios --type 1 --get-uuid 8 --set ramboot_uuid\n"
        f'if [ -n "$ramboot_uuid" ]; then source "{own}/$ramboot_uuid{GRUB_CFG_SUFFIX}"; fi\n'
        f'source "{own}{GRUB_CFG_SUFFIX}"\n'
        'echo "ramboot: FAILED no GRUB config for $net_default_mac from $net_default_server"\n'
    )


def grub_cfg(d: Decision) -> str:
    """`grub/<mac>[/<uuid>].cfg`: the signed kernel and the initrd over TFTP (GRUB has no
    http under lockdown), then boot. Under Secure Boot GRUB's `linux` has shim verify
    the kernel; nothing verifies the initrd, so the command line names its sha256.
    Every kernel argument is single-quoted: GRUB's script expands nothing inside."""
    args = " ".join(_grub_quote(a) for a in d.cmdline.split())
    return (
        f"# ramboot: {d.image} for {d.mac or 'an unknown machine'}\n"
        f"echo {_grub_quote(f'ramboot: booting {d.image} on {d.mac}')}\n"
        f"linux /{d.kernel} {args}\n"
        f"initrd /{d.initrd}\n"
        "boot\n"
    )


def _grub_quote(word: str) -> str:
    """One GRUB script word, literally: inside single quotes, a quote is '\\''."""
    return "'" + word.replace("'", "'\\''") + "'"
