"""Boot scripts and configs: pure renderers of a `policy.Decision`, side by side.

Each takes a decision and returns text; none looks anything up. The decision
already holds the served names, the command line and the root URLs.
"""

from __future__ import annotations

from .names import GRUB_CFG_SUFFIX, SCRIPTS
from .policy import Decision

# The script fetches the kernel and initrd this many times before it gives up. iPXE's own
# HTTP gives up on a download that stalls or whose connection resets; a lossy link (5 %)
# does that now and then, and this level, the script, is the only one between the
# firmware's PXE (which would start over with DHCP and TFTP, if at all) and the
# initramfs (which retries the root image itself). docs/decisions.md, "Retries".
IPXE_FETCH_TRIES = 5

# ca.cpio (the CA the node pins, tls.py) goes before the image's initrd: the kernel unpacks
# the archives in order, but finds an uncompressed one's header only at a 4-byte boundary,
# and the EFI stub's `initrd=` loader lays the files end to end. ca.cpio is a multiple of
# 512 bytes, so after it any initrd starts aligned; a compressed one needs no alignment.


# Control characters as spaces: a newline in a command line would start a new script command.
_NO_CONTROL = {c: " " for c in (*range(0x20), 0x7F)}


def _cmdline(d: Decision, credential: str | None) -> str:
    """The decision's command line, with this boot's credential when the access rule minted one.

    Inputs refuse control characters (config, API, CLI); a value stored before they did
    still never breaks out of its line."""
    cmdline = d.cmdline.translate(_NO_CONTROL)
    return f"{cmdline} ramboot.token={credential}" if credential else cmdline


def ipxe_script(d: Decision, credential: str | None = None) -> str:
    """`boot/<mac>[/<uuid>].ipxe`: the kernel and initrd over HTTP, then boot.

    With several servers holding the image, each fetch falls back across them
    (`kernel URL1 … || kernel URL2 …`): a server that died after handing out this
    script costs one failed request, not the boot. A fetch that fails everywhere is
    tried again (IPXE_FETCH_TRIES in all), then the failure is on the console.

    The tries are counted in a string setting (one `x` per retry, compared with an `x`
    in front so neither side is empty): `iseq` is in every iPXE build, `inc` is not.
    Fetching an image again under the same name replaces it.

    With a UKI in the decision (measured boot) an iPXE running under UEFI (`${platform}`
    is `efi`) loads that one image, kernel and initrd inside it, with the command line alone:
    what it boots is then measured whole (uki.py). Under BIOS it has no use.
    """
    bases = d.mirrors or (d.http_base,)
    args = _ipxe_kernel_args(d, credential)
    uki = ""
    if d.uki:
        line = " || ".join(f"kernel {b}/{d.uki} {_cmdline(d, credential)}" for b in bases)
        uki = (f"iseq ${{platform}} efi || goto ramboot_kernel\n{line} || goto ramboot_retry\n"
               "boot || goto ramboot_retry\n:ramboot_kernel\n")
    kernel = " || ".join(f"kernel {b}/{d.kernel} {args}" for b in bases)
    initrd = " || ".join(f"initrd {b}/{d.initrd}" for b in bases)
    if d.ca_initrd:  # the CA the node pins, first (see above)
        initrd = " || ".join(f"initrd {b}/{d.ca_initrd}" for b in bases) + " || goto ramboot_retry\n" + initrd
    marks = "x" * (IPXE_FETCH_TRIES - 1)
    return (
        "#!ipxe\n"
        f"echo ramboot: booting {d.image} on {d.mac}\n"
        ":ramboot_fetch\n"
        f"{uki}"
        f"{kernel} || goto ramboot_retry\n"
        f"{initrd} || goto ramboot_retry\n"
        "boot || goto ramboot_retry\n"
        ":ramboot_retry\n"
        f"iseq x${{ramboot_tries}} x{marks} && goto ramboot_failed ||\n"
        "set ramboot_tries ${ramboot_tries}x\n"
        "echo ramboot: kernel or initrd download failed, trying again\n"
        "goto ramboot_fetch\n"
        ":ramboot_failed\n"
        f"echo ramboot: FAILED the kernel and initrd could not be fetched in {IPXE_FETCH_TRIES} tries\n"
        "exit 1\n"
    )


def _ipxe_kernel_args(d: Decision, credential: str | None) -> str:
    # Under UEFI this iPXE hands the kernel's EFI stub the files its `initrd=` arguments name.
    files = (f"initrd={d.ca_initrd} " if d.ca_initrd else "") + f"initrd={d.initrd.rsplit('/', 1)[-1]}"
    return f"{files} {_cmdline(d, credential)}"


def ipxe_load_options(d: Decision, credential: str | None = None) -> str:
    """The command line `ipxe_script` gives the kernel as iPXE passes it to an EFI image
    (its LoadOptions): the image's name (the URL's last part), a space, the arguments.
    Linux's EFI stub measures it into PCR 9; tpm_gate recognises this boot's by it."""
    return f"{d.kernel.rsplit('/', 1)[-1]} {_ipxe_kernel_args(d, credential)}"


def ipxe_uki_load_options(d: Decision, credential: str | None = None) -> str:
    """The same for the UKI an iPXE under UEFI loads (`d.uki`): its name, the command line.
    systemd-stub measures it into PCR 12, and hands it on to the kernel, whose stub measures
    it into PCR 9 as above."""
    return f"{(d.uki or '').rsplit('/', 1)[-1]} {_cmdline(d, credential)}"


def entry_script(http_base: str) -> str:
    """`/boot.ipxe`: for clients another DHCP server pointed here. It chains to the
    machine's own script, naming its UUID when the firmware knows one."""
    base = f"{http_base}/{SCRIPTS}/${{netX/mac:hexhyp}}"
    return (
        "#!ipxe\n"
        f"isset ${{uuid}} && chain {base}/${{uuid}}.ipxe ||\n"
        f"chain {base}.ipxe || shell\n"
    )


def pxelinux_config(d: Decision, credential: str | None = None) -> str:
    """`pxelinux.cfg/...`: the kernel and initrd over TFTP. Without a MAC in the
    decision (the `default` and UUID names), pxelinux appends BOOTIF itself."""
    return (
        "DEFAULT ramboot\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL ramboot\n"
        f"  KERNEL {d.kernel}\n"
        f"  INITRD {f'{d.ca_initrd},' if d.ca_initrd else ''}{d.initrd}\n"
        f"  APPEND {_cmdline(d, credential)}\n"
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


def grub_cfg(d: Decision, credential: str | None = None) -> str:
    """`grub/<mac>[/<uuid>].cfg`: the signed kernel and the initrd over TFTP (GRUB has no
    http under lockdown), then boot. Under Secure Boot GRUB's `linux` has shim verify
    the kernel; nothing verifies the initrd, so the command line names its sha256.
    Every kernel argument is single-quoted: GRUB's script expands nothing inside."""
    args = " ".join(_grub_quote(a) for a in _cmdline(d, credential).split())
    return (
        f"# ramboot: {d.image} for {d.mac or 'an unknown machine'}\n"
        f"echo {_grub_quote(f'ramboot: booting {d.image} on {d.mac}')}\n"
        f"linux /{d.kernel} {args}\n"
        f"initrd {f'/{d.ca_initrd} ' if d.ca_initrd else ''}/{d.initrd}\n"
        "boot\n"
    )


def _grub_quote(word: str) -> str:
    """One GRUB script word, literally: inside single quotes, a quote is '\\''."""
    return "'" + word.replace("'", "'\\''") + "'"
