"""The status page as the operator's console, in headless Chromium (Debian's, driven by Playwright)
against a real server holding a made-up fleet (tests/status_fleet.py).

The operator finds a node by host name, opens its page, reads what it really boots (image and
where that comes from, address) and changes its image there; the API has the change. Also:
filters, sort, the legend, the other views, delete, the favicon, and a phone's width."""

from __future__ import annotations

import urllib.request

from playwright.sync_api import sync_playwright

from httpserver import LiveServer
from status_fleet import mac_of, populate
from test_status_page import ARGS, CHROMIUM, enter_token


def _open(p, srv, viewport=None):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport=viewport or {"width": 1366, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and r.status != 401 and problems.append(f"{r.status} {r.url}"))
    page.goto(srv.base + "/")
    enter_token(page, srv.token)
    page.wait_for_selector("#conn:text('live')", timeout=10_000)
    return browser, page, problems


def test_operator_finds_a_node_reads_what_it_boots_and_changes_its_image(data_dir):
    srv = LiveServer(data_dir)
    try:
        populate(srv, 20)
        target = mac_of(3)  # cn03: compute profile, so debian-12 from the profile, address from its lease
        with sync_playwright() as p:
            browser, page, problems = _open(p, srv)
            page.wait_for_selector("#nodes tbody tr >> nth=21", timeout=10_000)
            assert page.locator("#nodes tbody tr").count() == 22  # 20 registered, 2 only seen
            page.fill("#search", "cn03")
            page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 1")
            row = page.locator(f'tr[data-mac="{target}"]')
            assert "10.0.0.102" in row.inner_text() and "debian-12" in row.inner_text(), row.inner_text()
            row.locator("a.host").click()
            page.wait_for_selector("#eff-image", timeout=10_000)
            assert page.url.endswith(f"#/node/{target}")
            assert page.locator("#eff-image").inner_text().split("\n")[0].startswith("debian-12")
            assert "from profile compute" in page.locator("#eff-image").inner_text()
            assert "10.0.0.102" in page.locator("#eff-ip").inner_text()
            assert page.locator("#events tbody tr").count() == 11  # its boot, every stage
            assert "AMD EPYC" in page.inner_text("#view-node") or "Intel Xeon" in page.inner_text("#view-node")

            page.select_option("#set-image", "rocky-9")
            page.click("#set-image-form button[type=submit]")
            page.wait_for_selector("#action-msg:text('saved')", timeout=10_000)
            status, node = srv.request("GET", f"/api/v1/nodes/{target}")
            assert status == 200 and node["image"] == "rocky-9", node
            assert node["effective"]["image"] == "rocky-9" and node["effective"]["image_from"] == "node", node
            shown = page.locator("#eff-image").inner_text()  # the page drawn again from the server's answer
            assert shown.startswith("rocky-9") and "set on the node" in shown, shown
            assert not problems, problems
            browser.close()
    finally:
        srv.close()


def test_filters_sort_legend_views_and_delete(data_dir):
    srv = LiveServer(data_dir)
    try:
        populate(srv, 20)
        with sync_playwright() as p:
            browser, page, problems = _open(p, srv)
            page.wait_for_selector("#nodes tbody tr >> nth=21", timeout=10_000)
            rows = page.locator("#nodes tbody tr")

            def shown() -> list[str]:
                return [r.get_attribute("data-mac") for r in rows.all()]

            page.select_option("#f-state", "failed")
            assert sorted(shown()) == sorted([mac_of(7), mac_of(13)])
            page.select_option("#f-state", "seen")
            assert sorted(shown()) == ["52:54:00:ff:00:01", "52:54:00:ff:00:02"]
            page.select_option("#f-state", "")
            page.select_option("#f-profile", "storage")
            assert len(shown()) == 4 and all("st" in r.inner_text() for r in rows.all())
            page.select_option("#f-image", "demo")  # cn08 is set to demo on the node itself
            assert shown() == []
            page.select_option("#f-profile", "")  # cn08 set on the node; the two unregistered boot the default
            assert sorted(shown()) == [mac_of(8), "52:54:00:ff:00:01", "52:54:00:ff:00:02"]
            page.select_option("#f-image", "")
            page.fill("#f-label", "rack=r3")
            assert len(shown()) == 4
            page.fill("#f-label", "")
            page.click("th[data-sort=ip]")  # by address, ascending: the fixed storage ones (10.0.0.1x) first
            assert page.get_attribute("th[data-sort=ip]", "aria-sort") == "ascending"
            assert shown()[0] == mac_of(5)
            page.click("th[data-sort=ip]")
            assert page.get_attribute("th[data-sort=ip]", "aria-sort") == "descending"
            assert shown()[-1] == mac_of(5)
            assert page.locator("#legend li").count() == 8 and page.locator("#legend").is_visible()

            page.click("nav a[data-view=images]")
            page.wait_for_selector("#images tbody tr >> nth=2")
            assert "rocky-9" in page.inner_text("#images")
            page.click("nav a[data-view=leases]")
            page.wait_for_selector("#leases tbody tr")
            assert page.locator("#leases tbody tr").count() == 16
            page.click("nav a[data-view=servers]")
            page.wait_for_selector("#view-servers h2")
            page.click("nav a[data-view=failures]")
            page.wait_for_selector("#failures tbody tr")
            assert page.locator("#failures tbody tr").count() == 2
            assert "sha256 does not match" in page.inner_text("#failures")

            page.on("dialog", lambda d: d.accept())
            page.goto(f"{srv.base}/#/node/{mac_of(2)}")
            page.click("#delete-node")
            page.wait_for_function("location.hash === '#/'")
            gone = srv.request("GET", f"/api/v1/nodes/{mac_of(2)}")
            assert gone[0] == 404 or gone[1]["state"] == "seen", gone  # its events stay: a machine seen
            assert not problems, problems
            browser.close()
        for path in ("/favicon.ico", "/static/favicon.svg"):  # the browser's guess and the page's link
            with urllib.request.urlopen(srv.base + path, timeout=10) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml")
                assert r.read().startswith(b"<svg")
    finally:
        srv.close()


def test_a_phone_reads_rows_as_cards(data_dir):
    srv = LiveServer(data_dir)
    try:
        populate(srv, 5)
        with sync_playwright() as p:
            browser, page, problems = _open(p, srv, {"width": 390, "height": 844})
            row = page.locator(f'tr[data-mac="{mac_of(1)}"]')
            row.wait_for(timeout=10_000)
            assert not page.locator("#nodes thead").is_visible() or page.locator("#nodes thead").bounding_box()["x"] < 0
            box = row.bounding_box()
            assert box and box["width"] <= 390, box
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sideways
            label = page.evaluate(f"getComputedStyle(document.querySelector('tr[data-mac=\"{mac_of(1)}\"] td.ip'),"
                                  " '::before').content")
            assert label == '"Address"', label  # each cell says what it is
            assert not problems, problems
            browser.close()
    finally:
        srv.close()
