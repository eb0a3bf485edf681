"""The portal in a real browser: headless Chromium (Debian's package) driven by Playwright,
against `ptychoflow serve` running as a process over results that `run-flow` made on the
local backend. A view reconstructed while the scan page is open must appear on it without
a reload. Screenshots of the three pages go to $PTYCHOFLOW_TEST_ARTEFACTS (default
tests/artefacts/)."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow

CHROMIUM = pathlib.Path(os.environ.get("PTYCHOFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTEFACTS = pathlib.Path(
    os.environ.get(
        "PTYCHOFLOW_TEST_ARTEFACTS", pathlib.Path(__file__).resolve().parents[1] / "artefacts"
    )
)
CONFIG = """
backend = "local"
acquisition_root = "acquisition"
compute_root = "compute"
ledger = "ledger.sqlite"
state_dir = "state"
[recon]
iterations = 40
backend = "numpy"
"""
SIMULATION = {"detector": 32, "n_positions": 49, "photons": 1e5, "seed": 3}

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PTYCHOFLOW_CHROMIUM)",
        allow_module_level=True,
    )


@pytest.fixture
def site(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    write_simulated_scan(tmp_path / "acquisition" / "scan100", n_views=3, **SIMULATION)
    run = ptychoflow("run", "--scan", "100", "--wait", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    return tmp_path


@pytest.fixture
def portal_url(site):
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", "0"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PTYCHOFLOW_PORTAL_TOKEN"},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("portal at http://127.0.0.1:"), line + process.stderr.read()
        yield line.split()[2]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def loaded_images(page, selector):
    """Widths of the images the browser decoded (0 for a broken image)."""
    return page.eval_on_selector_all(
        selector, "images => images.map(i => i.complete ? i.naturalWidth : 0)"
    )


def test_pages_show_the_scan_and_a_new_view_appears_without_reload(site, portal_url):
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(portal_url)
            row = page.locator("tr.scan-row", has_text="scan100")
            assert row.count() == 1
            assert row.locator("td.succeeded").inner_text() == "3"
            page.screenshot(path=ARTEFACTS / "portal-scans.png", full_page=True)

            row.get_by_role("link", name="scan100", exact=True).click()
            page.wait_for_url("**/scans/scan100")
            cards = page.locator("section.card")
            assert cards.count() == 3
            page.wait_for_function(
                "() => [...document.querySelectorAll('.card img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            widths = loaded_images(page, ".card .thumbs img")
            assert len(widths) == 6 and all(w > 0 for w in widths), widths
            assert page.locator(".card svg.cost polyline").count() == 3
            page.evaluate("window.notReloaded = true")

            # One more view arrives and is reconstructed while the page is open.
            extra = site / "extra"
            write_simulated_scan(extra, n_views=4, **SIMULATION)
            shutil.copy(extra / "view003.cxi", site / "acquisition" / "scan100" / "view003.cxi")
            run = ptychoflow("run", "--scan", "100", "--wait", cwd=site)
            assert run.returncode == 0, run.stdout + run.stderr
            finished = time.monotonic()
            page.wait_for_function(
                "() => { const c = document.querySelector('.card[data-view=\"view003\"]');"
                " return c && c.dataset.state === 'succeeded'"
                " && [...c.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0);"
                " }",
                timeout=5000,
            )
            appeared = time.monotonic() - finished
            assert page.evaluate("window.notReloaded") is True  # the same page, no reload
            assert cards.count() == 4
            assert appeared < 2.5, f"the new view appeared {appeared:.1f} s after it finished"
            page.screenshot(path=ARTEFACTS / "portal-scan.png", full_page=True)

            page.locator(".card[data-view='view003'] h2 a").click()
            page.wait_for_url("**/scans/scan100/views/view003")
            page.wait_for_function(
                "() => [...document.querySelectorAll('img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert all(w > 0 for w in loaded_images(page, "img.full-image"))
            assert page.locator("svg.positions circle").count() == SIMULATION["n_positions"]
            assert "nm" in page.locator(".scalebar-label").first.inner_text()
            page.screenshot(path=ARTEFACTS / "portal-view.png", full_page=True)
            assert problems == []  # no CSP violations or script errors
        finally:
            browser.close()
