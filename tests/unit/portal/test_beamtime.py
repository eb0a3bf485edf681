"""The portal during a beamtime: pages that wait for a scan, progress while a view
computes, the viewer's data, a 168-view tomography scan, the scans list's thumbnails."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from flows.backend import RunProgress, RunStatus, StartedRun, ViewRequest
from flows.ledger import Ledger
from portal.app import create_app
from portal.images import STRIP_COLUMN, STRIP_HEIGHT
from tests.unit.portal.conftest import settings_for
from tests.unit.portal.site import sample_tomography_site


def test_a_scan_page_waits_for_its_scan_and_turns_into_it(site):
    with TestClient(create_app(settings_for(site))) as client:
        page = client.get("/scans/scan102")
        assert page.status_code == 404
        assert "waiting for scan102…" in page.text and "data-live" in page.text
        fragment = client.get("/scans/scan102?fragment=1")
        assert fragment.status_code == 200 and "waiting for scan102" in fragment.text
        etag = fragment.headers["etag"]
        assert (
            client.get("/scans/scan102?fragment=1", headers={"If-None-Match": etag}).status_code
            == 304
        )
        view = client.get("/scans/scan102/views/view000")
        assert view.status_code == 404 and "waiting for scan102 / view000…" in view.text

        ledger = Ledger(site.ledger)
        try:
            request = ViewRequest(102, "view000.cxi", "scan102", {"iterations": 30})
            ledger.scan_seen("scan102", 102)
            ledger.claim(request, "local")
        finally:
            ledger.close()
        appeared = client.get("/scans/scan102?fragment=1", headers={"If-None-Match": etag})
        assert appeared.status_code == 200
        assert 'data-view="view000"' in appeared.text and "waiting" not in appeared.text
        assert client.get("/scans/scan102/views/view000").status_code == 200


def _computing(site, image):
    """scan200/view000 computing at iteration 40 of 100, with an intermediate image."""
    ledger = Ledger(site.ledger)
    try:
        ledger.scan_seen("scan200", 200)
        request = ViewRequest(200, "view000.cxi", "scan200", {"iterations": 100})
        ledger.claim(request, "local")
        ledger.mark_started("scan200", "view000.cxi", StartedRun("run-200"))
        progress = {
            "iteration": 40,
            "iterations": 100,
            "cost": 0.0125,
            "elapsed": 20.0,
            "eta": 30.0,
            "image": str(image),
            "image_iteration": 39,
        }
        ledger.update_progress(
            "scan200",
            "view000.cxi",
            RunProgress(
                RunStatus.ACTIVE, "compute", {"transfer_in": 0.3}, None, {"progress": progress}
            ),
        )
    finally:
        ledger.close()


def test_progress_and_the_intermediate_image_of_a_computing_view(site):
    image = site.compute_root / "recon" / "200" / ".view000.progress.png"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(image)
    _computing(site, image)
    with TestClient(create_app(settings_for(site))) as client:
        card = client.get("/scans/scan200").text
        assert "iteration 40/100, cost 0.0125, about 30.0 s left" in card
        assert '<progress max="100" value="40">' in card
        view = client.get("/scans/scan200/views/view000").text
        assert 'src="/scans/scan200/views/view000/progress.png?i=39"' in view
        detail = client.get("/api/scans/scan200/views/view000").json()
        assert detail["progress"]["iteration"] == 40 and detail["progress"]["eta"] == 30.0
        served = client.get("/scans/scan200/views/view000/progress.png")
        assert served.status_code == 200 and served.content == image.read_bytes()


def test_an_intermediate_image_outside_the_roots_is_not_served(site, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / ".secret.progress.png"
    outside.write_bytes(b"\x89PNG not ours")
    _computing(site, outside)
    with TestClient(create_app(settings_for(site))) as client:
        assert client.get("/scans/scan200/views/view000/progress.png").status_code == 404
        assert client.get("/scans/scan100/views/view000/progress.png").status_code == 404


def test_viewer_data_is_the_images_values(client):
    page = client.get("/scans/scan100/views/view000").text
    rows = int(re.search(r'data-rows="(\d+)"', page).group(1))
    cols = int(re.search(r'data-cols="(\d+)"', page).group(1))
    data = client.get("/scans/scan100/views/view000/data/phase.f32")
    assert data.status_code == 200
    phase = np.frombuffer(data.content, "<f4").reshape(rows, cols)
    # the sample disc has phase 0.5 rad over the background, ramp and global phase removed
    assert phase[rows // 2, cols // 2] - phase[2, 2] == pytest.approx(0.5, abs=0.1)
    assert client.get("/scans/scan100/views/view000/data/object.f32").status_code == 404
    assert client.get("/scans/scan100/views/view002/data/phase.f32").status_code == 404
    assert '"twilight"' in page  # the colour maps the viewer uses


def test_scans_list_shows_the_newest_result_and_time_zones(client):
    page = client.get("/").text
    assert 'src="/scans/scan100/views/view001/images/phase-thumb.png"' in page
    assert 'loading="lazy"' in page and 'class="table-scroll"' in page
    zone = re.search(r"\d\d:\d\d:\d\d (\S+)</td>", page)
    assert zone and zone.group(1) not in ("", "-")


def test_the_help_page_is_the_readme_section(client):
    page = client.get("/help/using-the-results")
    assert page.status_code == 200 and "Using the results" in page.text
    assert "read_result" in page.text


@pytest.fixture(scope="module")
def tomography(tmp_path_factory):
    root = tmp_path_factory.mktemp("tomography")
    return sample_tomography_site(root, views=168, bad=(100,), running=(167,))


def test_a_168_view_scan_page_opens_no_result_file_and_loads_thumbnails_lazily(tomography):
    app = create_app(settings_for(tomography))
    with TestClient(app) as client:
        page = client.get("/scans/scan300")
        assert page.status_code == 200
        assert page.text.count('<section class="card') == 168
        assert page.text.count('loading="lazy"') >= 2 * 167
        assert page.text.count("data-angle=") == 167  # the running view has no angle yet
        assert "iteration 12/30" in page.text
        assert app.app.state.portal.images.made == 0  # no result file opened to render it
        # a thumbnail makes its own view's images, once
        thumb = client.get("/scans/scan300/views/view005/images/phase-thumb.png")
        assert thumb.status_code == 200
        assert app.app.state.portal.images.made == 1


def test_the_strip_shows_every_view_and_the_bad_one_stands_out(tomography):
    with TestClient(create_app(settings_for(tomography))) as client:
        response = client.get("/scans/scan300/strip.png")
        assert response.status_code == 200
        with Image.open(__import__("io").BytesIO(response.content)) as image:
            strip = np.asarray(image).astype(float)
    assert strip.shape == (STRIP_HEIGHT, 167 * STRIP_COLUMN)
    columns = strip[:, ::STRIP_COLUMN]
    # neighbours differ little (the disc moves smoothly); the noise view differs a lot
    jumps = np.abs(np.diff(columns, axis=1)).mean(axis=0)
    assert jumps.argmax() in (99, 100)
    assert jumps.max() > 5 * np.median(jumps)
