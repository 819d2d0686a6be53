"""Would shim boot this kernel? Read off the kernel's Authenticode signature with `sbverify`.

Under Secure Boot, Debian's signed GRUB hands the kernel to shim's verifier
(`shim_lock`), which accepts an image signed by a certificate chaining to the
one shim carries in its `.vendor_cert` section (Debian Secure Boot CA), or to
the firmware's `db` or a Machine Owner Key. ramboot checks the first: the
certificate is read out of Debian's own `shimx64.efi.signed`, the one ramboot
serves, and `sbverify --cert` checks the kernel against it. `sbverify` also
passes an image whose signature carries its own chain up to a self-signed root
(shim's own, from Microsoft), so the signature's issuer must in addition be the
certificate shim carries.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIM = Path("/usr/lib/shim/shimx64.efi.signed")


@dataclass(frozen=True)
class Signature:
    shim_accepts: bool | None  # None: cannot tell here (no sbverify, no shim)
    signer: str  # the signing certificate's subject, "" if unsigned
    why: str  # one line for the manifest's reader and `doctor`


def pe_section(data: bytes, wanted: str) -> bytes | None:
    """A PE/COFF image's section by name (long names live in the COFF string table)."""
    try:
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[pe:pe + 4] != b"PE\0\0":
            return None
        nsec, = struct.unpack_from("<H", data, pe + 6)
        symptr, nsym = struct.unpack_from("<II", data, pe + 12)
        optsz, = struct.unpack_from("<H", data, pe + 20)
        table = pe + 24 + optsz
        for i in range(nsec):
            raw, vsize, _va, rsize, rptr = struct.unpack_from("<8sIIII", data, table + 40 * i)
            name = raw.rstrip(b"\0")
            if name.startswith(b"/") and name[1:].isdigit():
                at = symptr + nsym * 18 + int(name[1:])
                name = data[at:data.index(b"\0", at)]
            if name.decode(errors="replace") == wanted:
                return data[rptr:rptr + min(vsize, rsize)]
    except (struct.error, ValueError):
        return None
    return None


def shim_vendor_cert(shim: Path = SHIM) -> bytes | None:
    """The DER certificate shim trusts besides the firmware's db (its `.vendor_cert`)."""
    try:
        sec = pe_section(shim.read_bytes(), ".vendor_cert")
    except OSError:
        return None
    if sec is None or len(sec) < 16:
        return None
    size, _deny_size, offset, _deny_offset = struct.unpack_from("<IIII", sec, 0)
    cert = sec[offset:offset + size]
    return cert if size and cert[:1] == b"\x30" else None  # an X.509 DER SEQUENCE


def _pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)) + \
        "\n-----END CERTIFICATE-----\n"


def kernel_signature(kernel: Path, shim: Path = SHIM) -> Signature:
    """Whether shim would accept `kernel`, and who signed it."""
    if shutil.which("sbverify") is None:
        return Signature(None, "", "sbverify is not installed (apt-get install sbsigntool)")
    listing = subprocess.run(["sbverify", "--list", str(kernel)], capture_output=True, text=True)
    lines = listing.stdout.splitlines()
    signer = next((ln.split("subject:", 1)[1].strip() for ln in lines if "subject:" in ln), "")
    issuers = [ln.split("- ", 1)[1].strip() for i, ln in enumerate(lines)
               if ln.lstrip().startswith("- /") and i and "issuers" in lines[i - 1]]
    if listing.returncode != 0 or "signature 1" not in listing.stdout:
        return Signature(False, "", "the kernel carries no Authenticode signature")
    cert = shim_vendor_cert(shim)
    if cert is None:
        return Signature(None, signer, f"signed by {signer or 'someone'}; no shim at {shim} to check it against")
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(_pem(cert))
        f.flush()
        ok = subprocess.run(["sbverify", "--cert", f.name, str(kernel)], capture_output=True).returncode == 0
    cn = [part[3:] for issuer in issuers for part in issuer.split("/") if part.startswith("CN=")]
    ok = ok and any(name.encode() in cert for name in cn)  # issued by the certificate shim carries
    if ok:
        return Signature(True, signer, f"signed by {signer}, which shim's certificate vouches for")
    return Signature(False, signer, f"signed by {signer or 'an unknown key'}, not by a key Debian's shim carries")
