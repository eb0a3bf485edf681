"""Portal render times: a ledger of N scans x V views (default 200 x 3, every view with a
real result file), pages rendered in-process by the real application; then the paper's
tomography case, one scan of --tomography views (default 168), measured for its page's
server time and weight (its HTML; thumbnails load lazily, one request each, measured
too) and for its sinogram-like strip.

Prints a table: for each page, the median and worst of --repeat renders (server side:
request in, response body out, through Starlette's test client), plus the one-off cost of
making a result's images for the cache. The goals: the scans page under 300 ms; the
168-view scan page under 300 ms of server time and 500 kB of HTML.

    .venv/bin/python bench/portal.py [--scans 200] [--views 3] [--repeat 20] [--tomography 168]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time
import warnings

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

warnings.filterwarnings("ignore", category=DeprecationWarning)

from starlette.testclient import TestClient  # noqa: E402

from portal.app import PortalSettings, create_app  # noqa: E402
from tests.unit.portal.site import SampleView, sample_site, sample_tomography_site  # noqa: E402


def timed(client: TestClient, url: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tomography", type=int, default=168, help="views of the tomography")
    args = parser.parse_args()
    many_scans(args)
    tomography(args)
    return 0


def tomography(args: argparse.Namespace) -> None:
    """The 168-view scan page: server time, HTML weight, a lazy thumbnail, the strip."""
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        config = sample_tomography_site(root, views=args.tomography, bad=(args.tomography // 2,))
        settings = PortalSettings(
            ledger=config.ledger,
            acquisition_root=config.acquisition_root,
            roots=[config.acquisition_root],
            cache_dir=config.state_dir / "portal-cache",
        )
        with TestClient(create_app(settings)) as client:
            page = client.get("/scans/scan300")
            weight = len(page.content)
            times = timed(client, "/scans/scan300", args.repeat)
            fragment = timed(client, "/scans/scan300?fragment=1", args.repeat)
            start = time.perf_counter()
            thumb = client.get("/scans/scan300/views/view007/images/phase-thumb.png")
            thumb_cold = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            client.get("/scans/scan300/strip.png")
            strip_cold = (time.perf_counter() - start) * 1000
            strip = timed(client, "/scans/scan300/strip.png", args.repeat)
        lazy = page.text.count('loading="lazy"')
        print(f"\ntomography scan, {args.tomography} views ({lazy} lazy images in the page)\n")
        print(f"{'page':58} {'median ms':>10} {'max ms':>8}")
        rows = [
            (f"scan page ({weight / 1024:.0f} kB of HTML)", times),
            ("scan page, fragment (live poll, changed)", fragment),
            ("strip (cached)", strip),
        ]
        for name, values in rows:
            print(f"{name:58} {statistics.median(values):10.1f} {max(values):8.1f}")
        thumb_name = "one thumbnail, first request (makes its view's images)"
        strip_name = f"strip, first request (makes {args.tomography} views' images)"
        print(f"{thumb_name:58} {thumb_cold:10.1f}")
        print(f"{strip_name:58} {strip_cold:10.1f}")
        print(f"(thumbnail {len(thumb.content) / 1024:.1f} kB each)")


def many_scans(args: argparse.Namespace) -> None:

    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        start = time.perf_counter()
        scans = {f"scan{1000 + i}": [SampleView()] * args.views for i in range(args.scans)}
        config = sample_site(root, scans)
        setup = time.perf_counter() - start
        settings = PortalSettings(
            ledger=config.ledger,
            acquisition_root=config.acquisition_root,
            roots=[config.acquisition_root],
            cache_dir=config.state_dir / "portal-cache",
        )
        app = create_app(settings)
        rows = []
        with TestClient(app) as client:
            newest = f"scan{1000 + args.scans - 1}"
            # First visit of a scan page: its views' images are made and cached.
            start = time.perf_counter()
            client.get(f"/scans/{newest}")
            cold = (time.perf_counter() - start) * 1000
            for name, url in (
                (f"scans page ({args.scans} scans x {args.views} views)", "/"),
                ("scans page, fragment (live poll, changed)", "/?fragment=1"),
                ("scans JSON (/api/scans)", "/api/scans"),
                ("scans page filtered (state=failed: none)", "/?state=failed"),
                (f"scan page ({args.views} cards, cached images)", f"/scans/{newest}"),
                ("view page (cached images)", f"/scans/{newest}/views/view000"),
                (
                    "phase thumbnail (cached PNG)",
                    f"/scans/{newest}/views/view000/images/phase-thumb.png",
                ),
            ):
                times = timed(client, url, args.repeat)
                rows.append((name, statistics.median(times), max(times)))
            etag = client.get("/?fragment=1").headers["etag"]
            start = time.perf_counter()
            for _ in range(args.repeat):
                assert (
                    client.get("/?fragment=1", headers={"If-None-Match": etag}).status_code == 304
                )
            unchanged = (time.perf_counter() - start) * 1000 / args.repeat
        print(f"ledger and {args.scans * args.views} result files written in {setup:.1f} s\n")
        print(f"{'page':58} {'median ms':>10} {'max ms':>8}")
        for name, median, worst in rows:
            print(f"{name:58} {median:10.1f} {worst:8.1f}")
        print(f"{'scans page, fragment (live poll, unchanged: 304)':58} {unchanged:10.1f} {'':>8}")
        first_visit = f"scan page, first visit (making {args.views} views' images)"
        print(f"{first_visit:58} {cold:10.1f}")


if __name__ == "__main__":
    sys.exit(main())
