"""A real VM boot seen live: status page (headless Chromium), API, CLI and /metrics.

`unknown_nodes = "discover"`: a blank VM nobody registered boots the default
image, reports its inventory, and is registered automatically. While it boots,
Chromium (run inside the lab's namespace) shows its row reach "booted" without
a reload.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from ramboot.lab.server import ramboot_cmd
from ramboot.lab.vm import random_mac
from test_e2e_lab import ARTIFACTS, LabRun, _explain, built, lab_run, shared_dir  # noqa: F401  (fixtures)
from test_status_page import ARGS, CHROMIUM, enter_token

pytestmark = [pytest.mark.vm, pytest.mark.netns]


def _chromium_in(ns: str, tmp: Path) -> str:
    """A launcher that runs Debian's Chromium inside the namespace (Playwright talks over a pipe)."""
    wrapper = tmp / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_discovered_vm_boot_is_live_in_page_api_cli_and_metrics(lab_run: LabRun, tmp_path: Path) -> None:
    lab_run.start(boot={"default_image": "demo", "unknown_nodes": "discover"})
    mac = random_mac()
    result: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium_in(lab_run.lab.ns, tmp_path), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 500})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(lab_run.base + "/")
        token = lab_run.lab.api_token()  # the DATA/api-token `serve` made at its start
        assert token, "serve made no DATA/api-token"
        enter_token(page, token)
        page.wait_for_selector("#conn:text('live')", timeout=15_000)
        page.evaluate("window.__notReloaded = true")

        vm = threading.Thread(target=lambda: result.setdefault("r", lab_run.boot("bios", mac, echo=False)))
        vm.start()
        row = page.locator(f'tr[data-mac="{mac}"]')
        row.wait_for(timeout=240_000)  # appears at the VM's first DHCP packet
        page.wait_for_selector(f'tr[data-mac="{mac}"] .stage[data-stage="booted"]', timeout=300_000)
        vm.join(timeout=60)
        assert page.evaluate("window.__notReloaded") is True
        assert re.search(r"\d+(\.\d+)? [MG]b/s", row.inner_text()), row.inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page-live-vm.png"), full_page=True)
        assert not errors, errors
        browser.close()

    r = result["r"]
    assert r.ok, _explain(r)

    # discover mode registered it, with the inventory it reported
    deadline = time.monotonic() + 15
    node = None
    while time.monotonic() < deadline:
        node = lab_run.api(f"/api/v1/nodes/{mac}")
        if node and node.get("inventory"):
            break
        time.sleep(0.5)
    assert node and node["discovered"] is True and node["image"] == "demo", node
    assert mac in [n["mac"] for n in node["inventory"]["report"]["nics"]]

    # the CLI shows the same node, its inventory and its timeline
    out = subprocess.run([*ramboot_cmd(), "node", "show", mac, "--config", str(lab_run.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "discovered" in out.stdout and "booted" in out.stdout, out.stdout

    # /metrics counted the boot
    status, body = lab_run.lab.http(f"{lab_run.base}/metrics")
    text = body.decode()
    assert status == 200
    booted = re.search(r'^ramboot_boots_total\{stage="booted"\} (\d+(\.\d+)?)', text, re.M)
    assert booted and float(booted.group(1)) >= 1, text[:3000]
    assert re.search(r"^ramboot_boot_duration_seconds_count \d", text, re.M)
    assert re.search(r'^ramboot_dhcp_packets_total\{.*type="(discover|DISCOVER)"', text, re.M | re.I)
