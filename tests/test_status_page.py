"""The status page in headless Chromium (Debian's package, driven by Playwright): a node's row goes live to "booted"."""

from __future__ import annotations

import os
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from conftest import write_fake_image
from httpserver import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
MAC = "52:54:00:c0:ff:ee"
assert os.access(CHROMIUM, os.X_OK), "Debian's chromium is a required test peer (make setup installs it)"


def enter_token(page, token: str) -> None:
    """What an operator does when the page asks: type the API token, submit."""
    page.wait_for_selector("#auth:not([hidden])", timeout=10_000)
    page.fill("#token", token)
    page.click("#auth button[type=submit]")


def test_without_a_token_the_page_asks_and_shows_no_node(data_dir):
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir)
    try:
        srv.run(lambda: srv.events.record(MAC, "dhcp-offer"))
        srv.run(srv.events.flush)
        assert [r["mac"] for r in srv.request("GET", "/api/v1/status")[1]] == [MAC]  # there is node data
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(srv.base + "/")
            page.wait_for_selector("#auth:not([hidden])", timeout=10_000)
            assert page.locator("#conn").inner_text() == "a token is needed to read"
            assert page.locator("#nodes tbody tr").count() == 0 and MAC not in page.content()
            enter_token(page, "not-the-token")  # a wrong token: asked again, still nothing shown
            page.wait_for_selector("#conn:text('that token was refused')", timeout=10_000)
            assert page.locator("#auth").is_visible() and page.locator("#nodes tbody tr").count() == 0
            assert page.evaluate("sessionStorage.getItem('ramboot-token')") is None
            enter_token(page, srv.token)
            page.wait_for_selector(f'tr[data-mac="{MAC}"]', timeout=10_000)
            assert page.evaluate("sessionStorage.getItem('ramboot-token')") == srv.token
            page.reload()  # the session keeps it: no second prompt
            page.wait_for_selector("#conn:text('live')", timeout=10_000)
            assert not page.locator("#auth").is_visible() and page.locator(f'tr[data-mac="{MAC}"]').count() == 1
            browser.close()
    finally:
        srv.close()


def test_row_reaches_booted_live(data_dir):
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.base + "/")
            enter_token(page, srv.token)
            page.wait_for_selector("#conn:text('live')", timeout=10_000)
            assert page.locator("#empty").is_visible()
            page.evaluate("window.__notReloaded = true")

            srv.run(lambda: srv.events.record(MAC, "dhcp-offer"))
            row = page.locator(f'tr[data-mac="{MAC}"]')
            row.wait_for(timeout=10_000)
            assert row.locator(".stage").inner_text() == "dhcp-offer"
            for stage in ("dhcp-ack", "script", "kernel", "initrd"):
                if stage == "script":  # the node fetches its script: the server records the stage
                    srv.tokens[MAC] = srv.node_token(MAC)
                else:
                    srv.run(lambda s=stage: srv.events.record(MAC, s))
                time.sleep(0.05)
            for stage, detail in [
                ("initramfs", {}),
                ("download-start", {"url": "http://x/rootfs.squashfs"}),
                ("download-done", {"url": "http://x/rootfs.squashfs", "bytes": 120_000_000, "seconds": 1.2}),
                ("verified", {}),
                ("switch-root", {}),
            ]:
                assert srv.report(MAC, "events", {"stage": stage, "detail": detail})[0] == 202
                time.sleep(0.05)
            inv = {"cpu": {"model": "QEMU Virtual CPU", "count": 2}, "memory_kib": 2097152,
                   "nics": [{"name": "eth0", "mac": MAC, "speed_mbps": 1000}], "disks": [],
                   "dmi": {"vendor": "QEMU", "product": "Standard PC (i440FX)", "serial": "", "uuid": None}}
            assert srv.report(MAC, "inventory", inv)[0] == 202
            assert srv.report(MAC, "events", {"stage": "booted"})[0] == 202

            page.wait_for_selector(f'tr[data-mac="{MAC}"] .stage[data-stage="booted"]', timeout=10_000)
            assert page.evaluate("window.__notReloaded") is True
            assert "800 Mb/s" in row.inner_text()
            assert "QEMU Virtual CPU" in row.inner_text()
            assert row.locator(".seg").count() == 11
            assert "booted in" in row.inner_text()
            # accessible: a captioned table with column headers, live region on the body
            assert page.locator("#nodes caption").count() == 1
            assert page.locator("#nodes thead th[scope=col]").count() == 8
            assert page.locator("#nodes tbody").get_attribute("aria-live") == "polite"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
            assert not errors, errors
            browser.close()
    finally:
        srv.close()
