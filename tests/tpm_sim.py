"""A software TPM for tests: Debian's swtpm on a socket in a temporary folder, driven by tpm2-tools."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOLS = ("swtpm", "swtpm_setup", "tpm2_createek", "tpm2_createak", "tpm2_activatecredential", "tpm2_nvread",
         "tpm2_sign", "tpm2_quote", "tpm2_pcrread", "tpm2_pcrextend", "tpm2_startup", "tpm2_shutdown", "swtpm_ioctl")


def need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make setup` (swtpm swtpm-tools tpm2-tools)")


class Tpm:
    """One swtpm with its own state (an EK certificate in NV, as swtpm_setup makes it)."""

    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "sock"

    def env(self) -> dict[str, str]:
        return {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:path={self.sock}"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """A tpm2-tools command, then flush its transient objects (no resource manager here)."""
        p = subprocess.run(args, cwd=self.root, env=self.env(), capture_output=True)
        subprocess.run(["tpm2_flushcontext", "-t"], cwd=self.root, env=self.env(), capture_output=True)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {p.stderr.decode(errors='replace')[-2000:]}")
        return p

    def ek_ak(self, alg: str = "rsa", ak_alg: str | None = None) -> tuple[bytes, bytes]:
        """Create the EK and an AK (contexts ek.ctx, ak.ctx); their TPM2B_PUBLIC bytes."""
        ak_alg = ak_alg or alg
        self.run("tpm2_createek", "-c", "ek.ctx", "-G", alg, "-u", "ek.pub")
        self.run("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", ak_alg, "-g", "sha256", "-s",
                 "rsassa" if ak_alg == "rsa" else "ecdsa", "-u", "ak.pub", "-n", "ak.name")
        return (self.root / "ek.pub").read_bytes(), (self.root / "ak.pub").read_bytes()

    def sign(self, message: bytes) -> bytes:
        """`tpm2_sign` by the AK (a restricted key: the TPM hashes the message itself)."""
        (self.root / "sign.in").write_bytes(message)
        self.run("tpm2_sign", "-c", "ak.ctx", "-g", "sha256", "-o", "sign.out", "sign.in")
        return (self.root / "sign.out").read_bytes()

    def extend(self, pcr: int, data: bytes) -> None:
        """What a boot loader does with what it loads: its sha256 into a PCR."""
        self.run("tpm2_pcrextend", f"{pcr}:sha256={hashlib.sha256(data).hexdigest()}")

    def reboot(self) -> None:
        """The machine resets (after an orderly shutdown, else the TPM counts a possible attack):
        TPM_Init then Startup(CLEAR), the PCRs back to zero."""
        self.run("tpm2_shutdown", "-c")
        p = subprocess.run(["swtpm_ioctl", "--unix", f"{self.sock}.ctrl", "-i"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        self.run("tpm2_startup", "-c")

    def quote(self, pcrs: str, nonce: bytes) -> tuple[bytes, bytes, bytes]:
        """`tpm2_quote` by the AK over `nonce`, and `tpm2_pcrread -o` of the same PCRs: the
        TPMS_ATTEST, its TPMT_SIGNATURE and the values, as the initramfs sends them."""
        self.run("tpm2_quote", "-c", "ak.ctx", "-l", f"sha256:{pcrs}", "-q", nonce.hex(), "-g", "sha256",
                 "-m", "quote.msg", "-s", "quote.sig")
        self.run("tpm2_pcrread", "-o", "pcrs.bin", f"sha256:{pcrs}")
        return tuple((self.root / f).read_bytes() for f in ("quote.msg", "quote.sig", "pcrs.bin"))  # type: ignore[return-value]

    def activate(self, blob: bytes) -> bytes | None:
        """TPM2_ActivateCredential with the EK's policy session: the secret, or None if refused."""
        (self.root / "cred.in").write_bytes(blob)
        (self.root / "cred.out").unlink(missing_ok=True)
        self.run("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
        self.run("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
        p = self.run("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.in", "-o", "cred.out",
                     "-P", "session:s.ctx", check=False)
        self.run("tpm2_flushcontext", "s.ctx", check=False)
        return (self.root / "cred.out").read_bytes() if p.returncode == 0 else None


def setup_state(state: Path) -> None:
    """A TPM's state with its EK certificates in NV (swtpm_setup, as a manufacturer would)."""
    state.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--createek", "--create-ek-cert",
                        "--create-platform-cert", "--lock-nvram", "--overwrite", "--display"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


@contextlib.contextmanager
def swtpm(root: Path) -> Iterator[Tpm]:
    need_tools()
    root.mkdir(parents=True, exist_ok=True)
    setup_state(root / "state")
    tpm = Tpm(root)
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={root / 'state'}",
                             "--server", f"type=unixio,path={tpm.sock}",
                             "--ctrl", f"type=unixio,path={tpm.sock}.ctrl",
                             "--flags", "not-need-init,startup-clear"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if tpm.sock.exists() and Path(f"{tpm.sock}.ctrl").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("swtpm did not open its sockets")
        yield tpm
    finally:
        proc.terminate()
        proc.wait(10)
