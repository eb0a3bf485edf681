"""The portal's pages, JSON and files over a sample installation (in-process)."""

import re

import pytest

from tests.unit.portal.conftest import GLOBUS_URL

PAGES = [
    "/",
    "/scans/scan100",
    "/scans/scan100/views/view001",
    "/api/scans",
    "/api/scans/scan100",
    "/api/scans/scan100/views/view001",
]


def test_scans_page_lists_scans_newest_first_with_counts(client):
    page = client.get("/")
    assert page.status_code == 200
    rows = re.findall(r'<tr class="scan-row" data-folder="(\w+)">', page.text)
    assert rows == ["scan101", "scan100"]
    scans = client.get("/api/scans").json()["scans"]
    assert scans[1]["counts"] == {"queued": 1, "running": 1, "succeeded": 2, "failed": 1}
    assert scans[1]["median_stage_seconds"]["compute"] == pytest.approx(11.0)


@pytest.mark.parametrize(
    ("query", "folders"),
    [
        ("state=failed", ["scan100"]),
        ("state=succeeded", ["scan101", "scan100"]),
        ("scans=101", ["scan101"]),
        ("scans=90-100", ["scan100"]),
        ("scans=102-200", []),
    ],
)
def test_scans_filter_by_state_and_range(client, query, folders):
    body = client.get(f"/api/scans?{query}").json()
    assert [s["folder"] for s in body["scans"]] == folders


def test_a_bad_filter_says_what_is_wrong(client):
    page = client.get("/?scans=100-abc")
    assert page.status_code == 400 and "not a scan id or a range" in page.text
    assert client.get("/api/scans?state=sleeping").status_code == 400


def test_scan_page_shows_one_card_per_view(client):
    page = client.get("/scans/scan100").text
    cards = re.findall(r'<section class="card (\w+)" data-view="(\w+)"', page)
    assert cards == [
        ("succeeded", "view000"),
        ("succeeded", "view001"),
        ("failed", "view002"),
        ("running", "view003"),
        ("queued", "view004"),
    ]
    assert page.count("/images/phase-thumb.png") == 2
    assert page.count("/images/amplitude-thumb.png") == 2
    assert page.count('class="curve"') == 2  # cost curves
    assert "probe modes: 57.1 %, 28.6 %, 14.3 %" in page
    assert "running · transfer out" in page
    assert page.count("/result.h5") == 2
    assert "data contains NaN" in page  # the failed view's error


def test_globus_runs_link_to_the_web_app(client):
    assert f'href="{GLOBUS_URL}"' in client.get("/scans/scan101").text
    view = client.get("/api/scans/scan101/views/view000").json()
    assert view["web_url"] == GLOBUS_URL and view["backend"] == "globus"


def test_view_page_has_images_scale_bar_positions_and_options(client):
    page = client.get("/scans/scan100/views/view001").text
    # The viewer's values, with a plain image for a browser without scripts.
    assert 'data-src="/scans/scan100/views/view001/data/phase.f32"' in page
    assert 'src="/scans/scan100/views/view001/images/phase.png"' in page
    assert "/images/probe-2.png" in page and "/images/probe-phase-2.png" in page
    # Pixel 10 nm, scanned region 41 pixels wide: a round 100 nm bar.
    assert "100 nm at zoom 1 (pixel 10 nm)" in page
    assert "numpy" in page and "/help/using-the-results" in page
    assert page.count("<circle") == 81
    assert "&#34;cost&#34;: &#34;poisson&#34;" in page  # options, escaped
    detail = client.get("/api/scans/scan100/views/view001").json()
    assert detail["summary"]["probe_fractions"] == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert detail["summary"]["timings"]["solve"] == 2.0
    # how far the fit is from the shot noise (recon's fit_to_noise attribute)
    assert "1.25 × the shot noise" in page
    assert detail["fit_to_noise"] == detail["summary"]["fit_to_noise"] == 1.25


def test_files_download_and_images(client, shared_site):
    download = client.get("/scans/scan100/views/view000/result.h5")
    assert download.status_code == 200
    assert download.content == (shared_site.acquisition_root / "recon/100/view000.h5").read_bytes()
    assert "attachment" in download.headers["content-disposition"]
    image = client.get("/scans/scan100/views/view000/images/amplitude-thumb.png")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    for missing in (
        "/scans/scan100/views/view002/result.h5",  # failed: no result
        "/scans/scan100/views/view000/images/summary.png",
        "/scans/scan100/views/view000/images/probe-1.png",  # one mode only
    ):
        assert client.get(missing).status_code == 404, missing


def test_strings_from_the_ledger_are_escaped(client):
    page = client.get("/scans/scan100").text
    assert "<img src=x onerror" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_security_headers_on_every_response(client):
    for url in [*PAGES, "/scans/nothing", "/static/portal.css", "/static/live.js"]:
        response = client.get(url)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, url
        assert response.headers["x-content-type-options"] == "nosniff", url
        assert "server" not in response.headers
    assert "<script>" not in client.get("/").text  # scripts only from static files


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("url", ["/", "/scans/scan100", "/api/scans", "/static/live.js"])
def test_no_write_endpoints(client, method, url):
    response = client.request(method, url)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "url",
    [
        "/scans/scan999",
        "/scans/scan100/views/view999",
        "/scans/scan100/views/view999/result.h5",
        "/api/scans/scan999",
        "/api/scans/scan100/views/view999",
        "/no/such/page",
    ],
)
def test_unknown_ids_are_404_without_a_trace(client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "Traceback" not in response.text and 'File "' not in response.text
    if url.startswith("/api/"):
        assert response.json()["status"] == 404


def test_fragments_answer_304_until_the_ledger_changes(site):
    from starlette.testclient import TestClient

    from flows.backend import RunProgress, RunStatus
    from flows.ledger import Ledger
    from portal.app import create_app
    from tests.unit.portal.conftest import settings_for

    client = TestClient(create_app(settings_for(site)))

    first = client.get("/scans/scan100?fragment=1")
    assert first.status_code == 200 and "<html" not in first.text
    etag = first.headers["etag"]
    assert (
        client.get("/scans/scan100?fragment=1", headers={"If-None-Match": etag}).status_code == 304
    )
    ledger = Ledger(site.ledger)
    ledger.update_progress(
        "scan100", "view004.cxi", RunProgress(RunStatus.ACTIVE, "transfer_in", {})
    )
    ledger.close()
    changed = client.get("/scans/scan100?fragment=1", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert 'data-view="view004" data-state="running"' in changed.text


def test_a_damaged_ledger_says_so_and_how_to_recover(site):
    """Issue 16: a damaged ledger showed "No scans in the ledger yet"."""
    from starlette.testclient import TestClient

    from portal.app import create_app
    from tests.unit.portal.conftest import settings_for

    with open(site.ledger, "r+b") as ledger:
        ledger.write(b"garbage, not SQLite" * 10)
    for name in ("-wal", "-shm"):
        path = site.ledger.with_name(site.ledger.name + name)
        if path.exists():
            path.unlink()
    with TestClient(create_app(settings_for(site))) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "damaged or unreadable" in page.text and "ptychoflow ledger rebuild" in page.text
        assert "in the ledger yet" not in page.text
        assert client.get("/api/scans").json()["ledger_problem"]


def test_many_scans_are_paginated_and_an_unchanged_poll_is_cheap(tmp_path):
    """Issue 16: with 3293 scans "/" was 1.7 MB and each poll took 2.8 s. Pages hold 100
    scans; the live poll's ETag comes from row counts and the latest update only."""
    from starlette.testclient import TestClient

    from flows.config import Config
    from flows.ledger import Ledger
    from portal.app import SCANS_PER_PAGE, create_app
    from tests.unit.portal.conftest import settings_for

    config = Config(
        acquisition_root=tmp_path / "acquisition",
        compute_root=tmp_path / "compute",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
    )
    ledger = Ledger(config.ledger)
    count = 2 * SCANS_PER_PAGE + 50
    for scan_id in range(count):
        ledger.scan_seen(f"scan{scan_id}", scan_id)
    ledger.close()
    with TestClient(create_app(settings_for(config))) as client:
        first = client.get("/")
        assert first.text.count('class="scan-row"') == SCANS_PER_PAGE
        assert "Page 1 of 3 (250 scans)" in first.text and "page=2" in first.text
        last = client.get("/?page=3")
        assert last.text.count('class="scan-row"') == 50
        assert client.get("/?page=9").status_code == 400
        api = client.get("/api/scans?page=2").json()
        assert (api["page"], api["pages"], api["total"]) == (2, 3, count)
        assert len(api["scans"]) == SCANS_PER_PAGE
        fragment = client.get("/?fragment=1")
        again = client.get("/?fragment=1", headers={"if-none-match": fragment.headers["etag"]})
        assert again.status_code == 304
        ledger = Ledger(config.ledger)
        ledger.scan_failed("scan7", 7, "changed")
        ledger.close()
        changed = client.get("/?fragment=1", headers={"if-none-match": fragment.headers["etag"]})
        assert changed.status_code == 200
