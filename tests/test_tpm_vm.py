"""Issue 21 on real boots: VMs with a TPM 2.0 (swtpm) PXE-boot through `ramboot serve`.

A node enrols its TPM (manual: pending, no secret; then `ramboot node trust`), boots with its
host key, and has the same one at its next boot; a second VM with another TPM and the same
MAC and UUID boots but reaches no secret, and the server records `untrusted-tpm`. The dracut
image (`--initramfs dracut`) does the same with the same TPM client (first-boot enrolment).
With `tpm_measured`, two boots: the first one's PCRs are kept, the second quotes the same and
gets its key, and every report of a trusted TPM's boot is signed by its attestation key.
Under UEFI (OVMF, iPXE's EFI build) the script loads the image's UKI: a boot after the operator
changed the node's kernel arguments, or after the image's initrd changed, is refused its key.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

from ramboot import uki
from ramboot.identity import Identities
from ramboot.inventory.store import Store
from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import boot_vm, random_mac, unix_time
from test_e2e_lab import BOOT_TIMEOUT, LabRun, _explain
from test_identity_vm import _probe, probe_image  # noqa: F401  (a fixture)
from test_node_modules_vm import module_images  # noqa: F401  (a fixture)
from tpm_sim import need_tools

pytestmark = [pytest.mark.vm, pytest.mark.netns]


def _boot(run: LabRun, mac: str, uuid: str, state: Path, firmware: str = "bios"):
    r = boot_vm(run.lab, firmware, mac, BOOT_TIMEOUT, echo=sys.stdout.buffer, api_base=run.base, accel=run.accel,
                uuid=uuid, tpm=state)
    run.keep(r)
    assert r.ok, _explain(r)
    return r, _probe(r.console_log.read_text(errors="replace"))


def _cli(run: LabRun, *args: str) -> str:
    p = subprocess.run([*ramboot_cmd(), "node", *args, "--config", str(run.config)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.timeout(1200)  # four boots, and the probe image built once per run
def test_tpm_enrols_then_only_that_tpm_opens_the_nodes_secrets(request, tmp_path: Path, probe_image) -> None:  # noqa: F811
    need_tools()
    run = LabRun("tpm", tmp_path, *probe_image)
    request.addfinalizer(run.close)
    run.start()
    mac, uuid = random_mac(), str(uuidlib.uuid4())
    run.node_add(mac, "--hostname", "tpm-1", "--uuid", uuid)
    mine, other = tmp_path / "tpm-mine", tmp_path / "tpm-other"

    # 1. first boot: the TPM is enrolled, pending; the node boots without its secrets.
    _, one = _boot(run, mac, uuid, mine)
    assert one["hostkey"] == [""], one  # no host key in its root
    stages = [e["stage"] for e in run.events(mac)]
    assert "tpm-pending" in stages and "overlay" not in stages, stages
    assert "tpm: pending" in _cli(run, "show", mac)

    # 2. the operator trusts it; the next boots recover the boot key and open the overlay.
    fp = _cli(run, "trust", mac).split("EK ")[-1].strip()
    assert fp.startswith("sha256:")
    r2, two = _boot(run, mac, uuid, mine)
    assert two["hostkey"] != [""] and two["hostname"] == ["tpm-1"], two
    tpm_stage = [e for e in run.events(mac) if e["stage"] == "tpm" and unix_time(e["at"]) >= r2.started]
    overlay = [e for e in run.events(mac) if e["stage"] == "overlay" and unix_time(e["at"]) >= r2.started]
    assert tpm_stage and overlay and overlay[-1]["detail"]["tpm"] is True, (tpm_stage, overlay)
    _, three = _boot(run, mac, uuid, mine)
    assert three["hostkey"] == two["hostkey"] and three["machine-id"] == two["machine-id"], (two, three)

    # 3. another TPM, the same MAC and UUID: it boots, but reaches no secret; recorded loudly.
    before = run.metric("ramboot_tpm_attestations_total", outcome="untrusted-tpm")
    r4, four = _boot(run, mac, uuid, other)
    assert four["hostkey"] == [""], four
    untrusted = [e for e in run.events(mac) if e["stage"] == "untrusted-tpm" and unix_time(e["at"]) >= r4.started]
    assert untrusted and untrusted[-1]["detail"]["ek"] != fp, untrusted
    assert run.metric("ramboot_tpm_attestations_total", outcome="untrusted-tpm") - before == 1
    show = _cli(run, "show", mac)
    assert "tpm: trusted" in show and fp in show and "REFUSED" in show, show
    tpm_secs = float(tpm_stage[-1]["detail"]["seconds"])
    print(f"\nTPM steps (createek, createak, quote, ActivateCredential) took {tpm_secs:.2f} s on {run.accel.upper()}")


@pytest.mark.timeout(1200)  # a dracut image built once per run, and one slow systemd initramfs
def test_dracut_image_opens_the_overlay_sealed_to_its_tpm(module_images, tmp_path: Path) -> None:  # noqa: F811
    need_tools()
    data, accel = module_images
    run = LabRun("tpm-dracut", tmp_path, data / "images/drm", accel)
    run.start(dhcp='mode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\ntpm_enroll = "first-boot"\n')
    try:
        mac = random_mac()
        run.node_add(mac, "--hostname", "drac-tpm")
        # dracut's systemd initramfs is three times ramboot's (31 MB) and slow under TCG on a busy machine.
        r = boot_vm(run.lab, "bios", mac, 2 * BOOT_TIMEOUT, echo=sys.stdout.buffer, api_base=run.base, accel=accel,
                    tpm=tmp_path / "tpm")
        run.keep(r)
        assert r.ok, _explain(r)
        console = r.console_log.read_text(errors="replace").replace("\r", "")
        events = run.events(mac)
        stages = [e["stage"] for e in events]
        assert "tpm-enrolled" in stages and "tpm" in stages, stages
        overlay = [e for e in events if e["stage"] == "overlay"]
        assert overlay and overlay[-1]["detail"]["tpm"] is True, overlay
        store = Store(f"sqlite:///{run.lab.data_dir / 'ramboot.db'}", run.lab.data_dir / "secrets.key")
        try:
            want = Identities(store.secrets).machine_id(mac)
        finally:
            store.close()
        assert f"mod-test: machine-id {want}\n" in console, console[-3000:]
    finally:
        run.close()


@pytest.mark.timeout(1200)  # two boots under TCG
def test_signed_reports_and_measured_boot(request, tmp_path: Path, probe_image) -> None:  # noqa: F811
    """`tpm_measured` and first-boot enrolment: the first boot's PCRs (its quote verified, the
    firmware's event log replayed for PCRs 8 and 9) are kept and every report of it, `booted`
    from the RAM root among them, is signed by its AK; the next boot quotes the same and gets
    its key. SeaBIOS and iPXE: the firmware measures, nothing measures the command line
    (docs/security.md#a-nodes-tpm says why the GRUB path is not booted here)."""
    need_tools()
    run = LabRun("tpm-measured", tmp_path, *probe_image)
    request.addfinalizer(run.close)
    run.start(dhcp='mode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\ntpm_enroll = "first-boot"\n'
                   'tpm_measured = true\n')
    mac, uuid = random_mac(), str(uuidlib.uuid4())
    run.node_add(mac, "--hostname", "tpm-m", "--uuid", uuid)
    state = tmp_path / "tpm-m"

    r1, one = _boot(run, mac, uuid, state)
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r1.started]
    stages = [e["stage"] for e in events]
    assert "tpm-enrolled" in stages and "booted" in stages, stages
    assert "untrusted-report" not in stages and "untrusted-boot" not in stages, events
    assert one["hostkey"] != [""], one
    show = _cli(run, "show", mac)
    assert "tpm reports: signed" in show and "trusted PCR values for demo" in show, show
    r2, two = _boot(run, mac, uuid, state)
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r2.started]
    stages = [e["stage"] for e in events]
    assert "tpm-attested" in stages and "booted" in stages, stages
    assert "untrusted-report" not in stages and "untrusted-boot" not in stages, events
    assert two["hostkey"] == one["hostkey"], (one, two)
    tpm_secs = [float(e["detail"]["seconds"]) for e in events if e["stage"] == "tpm"]
    print(f"\nTPM steps (createek, createak, quote, event log, ActivateCredential) took {tpm_secs} s "
          f"on {run.accel.upper()}")


def _kept_pcrs(run: LabRun, mac: str) -> dict:
    store = Store(f"sqlite:///{run.lab.data_dir / 'ramboot.db'}", run.lab.data_dir / "secrets.key")
    try:
        rec = store.tpms.get(mac)
    finally:
        store.close()
    assert rec is not None and rec.pcrs, rec
    return rec.pcrs


def _pcr11(pe: bytes) -> str:
    """What systemd-stub (252) measures of a UKI into PCR 11: for each section it knows, in its
    order, the section's name (with its NUL) and then its bytes."""
    pcr = bytes(32)
    secs = {s.name: s for s in uki.sections(pe)}
    for name in (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"):
        if name in secs:
            s = secs[name]
            for data in (name.encode() + b"\0", pe[s.offset:s.offset + s.size]):
                pcr = hashlib.sha256(pcr + hashlib.sha256(data).digest()).digest()
    return pcr.hex()


def _extra_cpio(tmp: Path) -> bytes:
    """A newc archive with one file: appended to an initrd, the kernel unpacks it too."""
    (tmp / "cpio").mkdir()
    (tmp / "cpio/tampered").write_text("added after the image was trusted\n")
    p = subprocess.run(["cpio", "-o", "-H", "newc"], input=b"tampered\n", cwd=tmp / "cpio", capture_output=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.timeout(2400)  # four UEFI boots under TCG
def test_measured_uefi_boot_refuses_a_changed_command_line_or_initrd(request, tmp_path: Path,
                                                                     probe_image) -> None:  # noqa: F811
    """OVMF + iPXE (EFI) with `tpm_measured`: the script loads the image's UKI (systemd-stub with
    the kernel and the initrd in it). The firmware measures it whole into PCR 4, the stub its
    sections into 11 and the command line into 12 (as text), the kernel the command line and the
    initrd into 9. The first boot's PCRs are kept; after the operator changes the node's kernel
    arguments the next boot is refused its key (`untrusted-boot`, `node show` names PCRs 9 and 12
    and the new argument); `node trust` takes the boot after that; then the image's initrd is
    replaced on the server's disk (a file added to it) and the next boot is refused, PCRs 4 and
    11 named."""
    need_tools()
    run = LabRun("tpm-efi", tmp_path, *probe_image)
    request.addfinalizer(run.close)
    run.start(dhcp='mode = "full"\nrange = "172.22.33.100-172.22.33.200"\n[security]\ntpm_enroll = "first-boot"\n'
                   'tpm_measured = true\n', copy_image=True)
    mac, uuid = random_mac(), str(uuidlib.uuid4())
    run.node_add(mac, "--hostname", "tpm-e", "--uuid", uuid)
    state = tmp_path / "tpm-e"

    r1, one = _boot(run, mac, uuid, state, "uefi")
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r1.started]
    stages = [e["stage"] for e in events]
    assert "tpm-enrolled" in stages and "booted" in stages and "untrusted-boot" not in stages, events
    assert one["hostkey"] != [""], one
    kept = _kept_pcrs(run, mac)["demo"]
    print("\nPCR 9:", kept["9:log"], "\nPCR 12:", kept["12:log"], "\nPCR 11:", kept["11"], "\nPCR 4:", kept["4"])
    # systemd-stub measured the command line iPXE gave the UKI, recognised as this boot's; the
    # kernel measured it too, and the initrd it got from the stub (the UKI's, CA archive first).
    assert "LoadOptions: ramboot-uki.efi " in kept["12:log"] and "ramboot.token=(this boot's)" in kept["12:log"], kept
    pe = (run.lab.data_dir / "images/demo" / uki.NAME).read_bytes()
    initrd = next(pe[s.offset:s.offset + s.size] for s in uki.sections(pe) if s.name == ".initrd")
    assert "LoadOptions: ramboot-uki.efi " in kept["9:log"], kept
    assert f"Linux initrd {hashlib.sha256(initrd).hexdigest()}" in kept["9:log"], kept
    # PCR 11 is exactly the UKI's sections as the server built them, each name then its bytes.
    assert kept["11"] == _pcr11(pe), kept

    # The operator changes the node's kernel arguments: the next boot is refused its key.
    _cli(run, "set", mac, "--kernel-args", "ramboot.extra=1")
    r2, two = _boot(run, mac, uuid, state, "uefi")
    assert "ramboot.extra=1" in r2.console_log.read_text(errors="replace")
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r2.started]
    refused = [e for e in events if e["stage"] == "untrusted-boot"]
    assert refused and "PCR 9, 12 changed" in refused[-1]["detail"]["why"], events
    assert two["hostkey"] == [""], two  # no key, no overlay: no host key in its root
    show = _cli(run, "show", mac)
    assert "BOOT REFUSED" in show and "PCR 9, 12 changed" in show and "+ramboot.extra=1" in show, show

    # The operator trusts the new command line on purpose: the next boot's values are kept, its key released.
    _cli(run, "trust", mac)
    r3, three = _boot(run, mac, uuid, state, "uefi")
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r3.started]
    stages = [e["stage"] for e in events]
    assert "tpm-attested" in stages and "untrusted-boot" not in stages, events
    assert three["hostkey"] == one["hostkey"], (one, three)
    tpm_secs = [float(e["detail"]["seconds"]) for e in events if e["stage"] == "tpm"]

    # The image's initrd is replaced on the server's disk (what a compromised image store or
    # mirror would do): one more archive in it, the command line the same. The server builds
    # the UKI again; the boot is refused, the PCRs of the UKI named.
    initrd = run.lab.data_dir / "images/demo/initrd.img"
    tampered = initrd.read_bytes()
    tampered += bytes(-len(tampered) % 4) + _extra_cpio(tmp_path)
    tmp = initrd.with_suffix(".new")
    tmp.write_bytes(tampered)
    tmp.replace(initrd)
    before = (run.lab.data_dir / "images/demo" / uki.NAME).read_bytes()
    r4, four = _boot(run, mac, uuid, state, "uefi")
    after = (run.lab.data_dir / "images/demo" / uki.NAME).read_bytes()
    assert after != before and _pcr11(after) != kept["11"]  # built again, with the new initrd
    events = [e for e in run.events(mac) if unix_time(e["at"]) >= r4.started]
    refused = [e for e in events if e["stage"] == "untrusted-boot"]
    assert refused and "PCR 4, 9, 11 changed" in refused[-1]["detail"]["why"], events
    assert four["hostkey"] == [""], four
    show = _cli(run, "show", mac)
    assert "BOOT REFUSED" in show and "PCR 4, 9, 11 changed" in show, show
    print(f"\nTPM steps (createek, createak, quote, event log, ActivateCredential) took {tpm_secs} s "
          f"on {run.accel.upper()}, OVMF + iPXE + UKI")
