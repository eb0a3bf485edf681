"""The portal during a beamtime, in a real browser (headless Debian Chromium through
Playwright, as test_portal_browser.py): a page opened before its scan exists turns live,
progress appears while a view computes, the badge says when the portal went away, the
viewer zooms and stretches contrast, a 168-view scan page stays usable, and the scans
list fits a phone. Screenshots go to $PTYCHOFLOW_TEST_ARTEFACTS (default tests/artefacts/)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow
from tests.functional.test_portal_browser import ARTEFACTS, CHROMIUM, CHROMIUM_ARGS, CONFIG

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextlib.contextmanager
def serving(folder):
    """`ptychoflow serve --port 0` run in ``folder``; yields (url, process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", "0"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PTYCHOFLOW_PORTAL_TOKEN"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("portal at http://127.0.0.1:"), line + process.stderr.read()
        yield line.split()[2].rstrip("/"), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
        assert "Traceback" not in stderr, stderr


@contextlib.contextmanager
def browser_page(width=1280, height=900):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "console",
                lambda m: (
                    m.type == "error"
                    and "Failed to load resource" not in m.text  # the 404 of a waiting page
                    and problems.append(m.text)
                ),
            )
            yield page, problems
        finally:
            browser.close()


def test_waiting_page_turns_live_progress_appears_and_the_badge_says_disconnected(tmp_path):
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    # Long enough a solve (a few seconds) for progress to show while it runs.
    write_simulated_scan(
        tmp_path / "acquisition" / "scan100",
        n_views=1,
        detector=64,
        n_positions=100,
        photons=1e5,
        seed=3,
    )
    with serving(tmp_path) as (url, server), browser_page() as (page, problems):
        page.goto(url + "/scans/scan100/views/view000")
        assert "waiting for scan100 / view000" in page.locator("main").inner_text()
        page.screenshot(path=ARTEFACTS / "portal-waiting.png")
        page.evaluate("window.notReloaded = true")
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--scan", "100", "--iterations", "400"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            page.wait_for_selector(".progress progress", timeout=60000)
            page.wait_for_function(
                "() => /iteration \\d+\\/400/.test(document.querySelector('.progress').innerText)",
                timeout=30000,
            )
            page.wait_for_selector(".progress-image img", timeout=30000)
            # a later image than the first (a flat start): written every 3 s at most
            page.wait_for_function(
                "() => { const i = document.querySelector('.progress-image img');"
                " return i && i.complete && i.naturalWidth > 0"
                " && parseInt(new URL(i.src).searchParams.get('i'), 10) > 1; }",
                timeout=30000,
            )
            page.screenshot(path=ARTEFACTS / "portal-progress.png", full_page=True)
            out, err = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        assert run.returncode == 0, out + err
        assert "results in" in out
        page.wait_for_selector("[data-viewer][data-loaded]", timeout=20000)
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("#live-status").inner_text() == "live"

        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        page.wait_for_function(
            "() => document.getElementById('live-status').innerText"
            ".startsWith('disconnected since ')",
            timeout=10000,
        )
        assert page.locator("#live-status").get_attribute("class") == "live stale"
        page.screenshot(path=ARTEFACTS / "portal-disconnected.png")
        assert problems == []


CANVAS_SUM = (
    "n => { const c = document.querySelector(`[data-viewer][data-name=${n}] canvas[data-canvas]`);"
    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2];"
    " return s; }"
)


def test_the_viewer_zooms_stretches_contrast_and_draws_a_profile(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    write_simulated_scan(
        tmp_path / "acquisition" / "scan100",
        n_views=1,
        detector=32,
        n_positions=49,
        photons=1e5,
        seed=3,
    )
    run = ptychoflow("run", "--scan", "100", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    with serving(tmp_path) as (url, _), browser_page() as (page, problems):
        page.goto(url + "/scans/scan100/views/view000")
        page.wait_for_selector("[data-viewer][data-name=phase][data-loaded]")
        viewer = page.locator("[data-viewer][data-name=phase]")
        before = page.evaluate(CANVAS_SUM, "phase")

        # contrast: a narrower stretch changes the drawn pixels
        viewer.locator("[data-high-pct]").fill("60")
        page.wait_for_function(
            "() => document.querySelector('[data-viewer][data-name=phase]').dataset.drawn"
            " === 'grey:1:60'"
        )
        stretched = page.evaluate(CANVAS_SUM, "phase")
        assert stretched > before
        # colour map: twilight has colour
        viewer.locator("[data-cmap]").select_option("twilight")
        coloured = page.evaluate(
            "() => { const c = document.querySelector("
            "'[data-viewer][data-name=phase] canvas[data-canvas]');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let m = 0;"
            " for (let i = 0; i < d.length; i += 4) m = Math.max(m, Math.abs(d[i] - d[i + 2]));"
            " return m; }"
        )
        assert coloured > 30

        # the value under the cursor, in radians
        canvas = viewer.locator("canvas[data-canvas]")
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        readout = viewer.locator("[data-value]").inner_text()
        assert readout.startswith("row ") and readout.endswith(" rad") and "µm" in readout

        # zoom with the wheel: the canvas grows on screen
        for _ in range(4):  # four wheel notches, about 1.22x each
            page.mouse.wheel(0, -100)
        page.wait_for_function(
            "() => parseFloat(document.querySelector('[data-viewer][data-name=phase]')"
            ".dataset.scale || '1') > 1.5"
        )
        assert canvas.bounding_box()["width"] > 1.5 * box["width"]
        viewer.locator("[data-reset]").click()

        # a line profile across the image
        viewer.locator("[data-profile-toggle]").click()
        box = canvas.bounding_box()
        page.mouse.click(box["x"] + 5, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] - 5, box["y"] + box["height"] / 2)
        profile = viewer.locator("[data-profile]")
        profile.wait_for(state="visible")
        assert profile.locator("polyline").count() == 1
        assert int(profile.get_attribute("data-samples")) > 10
        assert "µm" in profile.inner_text()
        page.screenshot(path=ARTEFACTS / "portal-viewer.png", full_page=True)
        assert problems == []


def test_a_168_view_scan_and_the_scans_list_on_a_phone(tmp_path):
    from tests.unit.portal.site import sample_tomography_site

    sample_tomography_site(tmp_path, views=168, bad=(100,))
    with serving(tmp_path) as (url, _), browser_page() as (page, problems):
        page.goto(url + "/scans/scan300")
        cards = page.locator("section.card")
        assert cards.count() == 168
        # lazy thumbnails: those far below the first screen are not fetched yet
        loaded = page.evaluate(
            "() => [...document.querySelectorAll('.card img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert loaded < 100, loaded
        page.wait_for_function(
            "() => { const i = document.querySelector('img.strip-image');"
            " return i && i.complete && i.naturalWidth === 168 * 4; }",
            timeout=60000,
        )
        # sort by angle (known for every view), then show only failed ones: none
        page.select_option("[data-sort]", "angle")
        first = cards.first.get_attribute("data-view")
        assert first == "view000"
        page.select_option("[data-filter-state]", "failed")
        assert page.locator("section.card:not([hidden])").count() == 0
        assert page.locator("[data-shown]").inner_text() == "0 of 168 views shown"
        page.select_option("[data-filter-state]", "succeeded")
        assert page.locator("section.card:not([hidden])").count() == 168
        page.screenshot(path=ARTEFACTS / "portal-168-views.png")

        phone = page.context.browser.new_page(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        phone.goto(url + "/")
        scroller = phone.locator(".table-scroll")
        assert phone.evaluate(
            "() => { const s = document.querySelector('.table-scroll');"
            " return s.scrollWidth > s.clientWidth; }"
        )
        assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert scroller.locator("img").count() == 1
        phone.screenshot(path=ARTEFACTS / "portal-phone.png", full_page=True)
        phone.goto(url + "/scans/scan300/views/view100")
        phone.wait_for_selector("[data-viewer][data-loaded]")
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 391
        phone.screenshot(path=ARTEFACTS / "portal-phone-view.png", full_page=True)
        assert problems == []
