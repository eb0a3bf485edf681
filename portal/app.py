"""The portal's web application: pages, JSON and files, read-only.

Routes (GET and HEAD only; anything else is 405):

- ``/``: scans, newest first; ``?state=failed`` and ``?scans=100-120,130`` filter.
- ``/scans/<folder>``: the scan's views as cards.
- ``/scans/<folder>/views/<view>``: one view in full.
- ``/scans/<folder>/views/<view>/result.h5``: the result file (download).
- ``/scans/<folder>/views/<view>/images/<name>.png``: cached images of the result.
- ``/scans/<folder>/views/<view>/data/<phase|amplitude>.f32``: the values behind the
  view page's viewer (float32, little-endian, row-major).
- ``/scans/<folder>/views/<view>/progress.png``: the latest intermediate phase image of a
  view that is computing (local backend).
- ``/scans/<folder>/strip.png``: every succeeded view's central phase row side by side
  (a sinogram-like overview of a tomography scan).

A scan or view page asked for before the ledger knows it says "waiting for ..." and
turns into the page once it appears (its live part polls like any other).
- ``/api/scans``, ``/api/scans/<folder>``, ``/api/scans/<folder>/views/<view>``: JSON.
- ``/login``, ``/login/callback``, ``/logout``: Globus Auth login (when configured).

A page with ``?fragment=1`` returns only its live part, with an ETag that changes
when the ledger does; ``static/live.js`` polls it every second and swaps it in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import json
import pathlib
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from portal import auth, plots
from portal.data import STAGE_COLUMNS, STATES, LedgerReader, Roots, ScanRow, ViewRow, find_result
from portal.errors import LoginError
from portal.images import ResultImages, ResultSummary
from recon.errors import PtychoflowError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
#: Encoded forms that have no business in a portal URL: dots, slashes, backslashes and
#: percent signs (double encoding) after decoding.
_SUSPICIOUS_RAW = re.compile(rb"%(2e|2f|5c|25|00)", re.IGNORECASE)
#: How often a live page asks for changes, milliseconds (shown in the page for live.js).
POLL_MILLISECONDS = 1000
#: Scans with more views than this open only result files whose images are cached when
#: their page renders (the 168 views of a tomography scan); their thumbnails load lazily
#: and make the rest one by one.
FULL_CARDS_MAX = 24
#: Scans per page of the scans page and /api/scans (?page=N; newest first).
SCANS_PER_PAGE = 100
#: Longest scan-range filter accepted (characters).
MAX_FILTER_LENGTH = 200


@dataclasses.dataclass
class PortalSettings:
    """What the portal serves and who may see it."""

    ledger: pathlib.Path
    acquisition_root: pathlib.Path
    roots: list[pathlib.Path]
    """Only files under these folders are served (results, resolved)."""
    cache_dir: pathlib.Path
    policy: auth.AccessPolicy = dataclasses.field(default_factory=auth.AccessPolicy)
    title: str = "ptychoflow"
    loopback_hosts_only: bool = False
    """Answer only requests whose Host header names this machine (localhost, 127.0.0.1,
    ::1): set when the portal is open to local users, so that a web page elsewhere
    cannot read it through a DNS name rebound to 127.0.0.1."""


# -- the guard: methods, paths, credentials, headers ------------------------------------------


class Guard:
    """Outermost ASGI layer: security headers on every response (errors included), GET and
    HEAD only, suspicious paths refused, credentials checked."""

    def __init__(
        self, app: ASGIApp, policy: auth.AccessPolicy, loopback_hosts_only: bool = False
    ) -> None:
        self.app = app
        self.policy = policy
        self.loopback_hosts_only = loopback_hosts_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                headers.extend(SECURITY_HEADERS)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        api = path.startswith("/api/")
        if scope["method"] not in ("GET", "HEAD"):
            response = error_response(405, "this portal is read-only: GET only", api)
            response.headers["allow"] = "GET, HEAD"
            await response(scope, receive, send_with_headers)
            return
        if _suspicious(path, raw_path):
            await error_response(404, "not found", api)(scope, receive, send_with_headers)
            return
        request = Request(scope)
        if self.loopback_hosts_only and not auth.is_loopback(_host_name(request)):
            response = error_response(400, "unexpected Host header", api)
            await response(scope, receive, send_with_headers)
            return
        token = request.query_params.get("token")
        if token is not None and self.policy.token is not None:
            if not self.policy.token_matches(token):
                await _unauthorized(api)(scope, receive, send_with_headers)
                return
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = path + ("?" + urllib.parse.urlencode(query) if query else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                auth.TOKEN_COOKIE,
                auth.token_cookie_value(self.policy.token),
                httponly=True,
                samesite="strict",
                path="/",
            )
            await redirect(scope, receive, send_with_headers)
            return
        if not path.startswith(auth.OPEN_PREFIXES) and not self.policy.allows(
            {k.lower(): v for k, v in request.headers.items()}, dict(request.cookies)
        ):
            if self.policy.globus is not None and not api:
                await RedirectResponse("/login", status_code=303)(scope, receive, send_with_headers)
                return
            await _unauthorized(api)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _host_name(request: Request) -> str:
    """The host name of the request's Host header, without the port or brackets."""
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _suspicious(path: str, raw_path: bytes) -> bool:
    if _SUSPICIOUS_RAW.search(raw_path):
        return True
    if "\\" in path or "\x00" in path or "//" in path:
        return True
    return any(part in (".", "..") for part in path.split("/"))


def _unauthorized(api: bool) -> Response:
    response = error_response(
        401, "sign in: pass the portal token once as ?token=..., or log in", api
    )
    response.headers["www-authenticate"] = 'Bearer realm="ptychoflow"'
    return response


def error_response(status: int, message: str, api: bool) -> Response:
    """A short error page (or JSON under /api/): never a stack trace."""
    if api:
        return JSONResponse({"error": message, "status": status}, status_code=status)
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{status}</title><link rel=stylesheet href=/static/portal.css>"
        f"<main class=error><h1>{status}</h1><p>{html.escape(message)}</p>"
        "<p><a href=/>all scans</a></p></main></html>"
    )
    return HTMLResponse(body, status_code=status)


# -- the application ----------------------------------------------------------------------------


def _template_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["seconds"] = plots.seconds
    environment.filters["when"] = lambda t: (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"
    )
    environment.filters["percent"] = lambda f: f"{100 * f:.1f} %"
    environment.filters["clock"] = lambda t: (
        time.strftime("%H:%M:%S %Z", time.localtime(t)) if t else "-"
    )
    environment.filters["zoned"] = lambda t: (
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t)) if t else "-"
    )
    environment.globals["backend_text"] = backend_text
    environment.globals["COLOUR_MAPS_JSON"] = _colour_maps_json()
    environment.globals["scan_url"] = scan_url
    environment.globals["view_url"] = view_url
    environment.globals["STATES"] = list(STATES)
    environment.globals["STAGES"] = STAGE_COLUMNS
    environment.globals["POLL_MILLISECONDS"] = POLL_MILLISECONDS
    return environment


def _colour_maps_json() -> str:
    """The colour maps of :mod:`recon.preview` as JSON ({name: [r, g, b, r, g, b, ...]}),
    for the view page's viewer: the same colours as the preview PNGs."""
    from recon.preview import COLOUR_MAPS, colour_map

    return json.dumps({name: colour_map(name).reshape(-1).tolist() for name in COLOUR_MAPS})


def backend_text(backend: str | None, devices: list[Any]) -> str:
    """What actually ran: "numpy (2 partitions)", "cupy on GPU 0, 1", "numpy-gpu-path"."""
    if not backend:
        return "-"
    ids = ", ".join(str(d) for d in devices)
    if backend == "cupy":
        return f"cupy on GPU {ids}" if ids else "cupy"
    if len(devices) > 1:
        return f"{backend} ({len(devices)} partitions)"
    return backend


def using_the_results() -> str:
    """The "Using the results" section of the README shipped with the package."""
    import importlib.metadata

    source = pathlib.Path(__file__).resolve().parents[1] / "README.md"  # a source checkout
    readme = ""
    if source.is_file():
        readme = source.read_text(encoding="utf-8")
    else:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            description = importlib.metadata.metadata("ptychoflow")["Description"]
            readme = description if isinstance(description, str) else ""
    start = readme.find("## Using the results")
    if start < 0:
        return "See the section 'Using the results' of README.md in the ptychoflow sources."
    end = readme.find("\n## ", start + 3)
    return readme[start : end if end > 0 else len(readme)].strip()


def scan_url(folder: str) -> str:
    return "/scans/" + urllib.parse.quote(folder, safe="")


def view_url(folder: str, view: str) -> str:
    return scan_url(folder) + "/views/" + urllib.parse.quote(view, safe="")


def parse_scan_range(text: str) -> list[tuple[int, int]]:
    """``"100-120,130"`` -> [(100, 120), (130, 130)]; ValueError with the reason."""
    if len(text) > MAX_FILTER_LENGTH:
        raise ValueError("scan range is too long")
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,12})\s*(?:-\s*(\d{1,12})\s*)?", part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a scan id or a range like 100-120")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first:
            raise ValueError(f"range {part.strip()!r} runs backwards")
        ranges.append((first, last))
    return ranges


@dataclasses.dataclass
class ViewCard:
    """A view with what its card shows."""

    view: ViewRow
    result: pathlib.Path | None
    summary: ResultSummary | None
    problem: str | None
    """Why a succeeded view has no images (result missing or unreadable)."""
    cost: plots.LinePlot | None

    def to_json(self, detail: bool = False) -> dict[str, Any]:
        view = self.view
        base = view_url(view.scan_folder, view.view_name)
        data: dict[str, Any] = {
            "scan": view.scan_folder,
            "scan_id": view.scan_id,
            "view": view.view_name,
            "view_file": view.view_file,
            "state": view.state,
            "stage": view.stage,
            "stage_seconds": view.stage_seconds,
            "progress": view.progress,
            "error": view.error,
            "backend": view.backend,
            "run_id": view.run_id,
            "web_url": view.web_url,
            "attempt": view.attempt,
            "created_at": view.created_at,
            "finished_at": view.finished_at,
            "url": base,
            "result_url": base + "/result.h5" if self.result else None,
            "problem": self.problem,
        }
        if self.summary is not None:
            summary = self.summary
            data["images"] = {
                "phase": base + "/images/phase.png",
                "amplitude": base + "/images/amplitude.png",
                "phase_thumb": base + "/images/phase-thumb.png",
                "amplitude_thumb": base + "/images/amplitude-thumb.png",
                "probe_modes": [
                    base + f"/images/probe-{i}.png" for i in range(len(summary.probe_fractions))
                ],
            }
            data["probe_fractions"] = summary.probe_fractions
            data["final_cost"] = summary.cost[-1] if summary.cost else None
            data["fit_to_noise"] = summary.fit_to_noise
            data["pixel_size"] = summary.pixel_size
            data["iterations"] = summary.iterations
            if detail:
                data["summary"] = summary.to_json()
        return data


class Portal:
    """The request handlers over one ledger, one result cache and one set of roots."""

    def __init__(self, settings: PortalSettings) -> None:
        self.settings = settings
        self.reader = LedgerReader(settings.ledger)
        self.images = ResultImages(settings.cache_dir)
        self.roots = Roots(settings.roots)
        self.templates = _template_environment()

    # -- helpers -----------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("title", self.settings.title)
        context.setdefault("login", self.settings.policy.globus is not None)
        text = self.templates.get_template(name).render(**context)
        return HTMLResponse(text, status_code=status)

    def card(self, view: ViewRow, cached_only: bool = False) -> ViewCard:
        """The view's card. ``cached_only``: use the result's summary only when its
        images were made before (a scan page of hundreds of views must not open every
        result file; its lazy thumbnails make the images one by one)."""
        result = find_result(view, self.settings.acquisition_root, self.roots)
        summary = None
        problem = None
        if view.state == "succeeded":
            if result is None:
                problem = "result file not found under the acquisition root"
            else:
                try:
                    if cached_only:
                        summary = self.images.cached_summary(result)
                    else:
                        summary = self.images.summary(result)
                except (PtychoflowError, OSError, ValueError, KeyError) as err:
                    problem = f"result file unreadable: {err}"
        cost = plots.cost_plot(summary.cost_iterations, summary.cost) if summary else None
        return ViewCard(view, result, summary, problem, cost)

    def scan_or_404(self, folder: str) -> ScanRow:
        scan = self.reader.scan(folder)
        if scan is None:
            raise HTTPException(404, f"no scan {folder!r} in the ledger")
        return scan

    def view_or_404(self, folder: str, view_name: str) -> ViewRow:
        view = self.reader.view(folder, view_name)
        if view is None:
            raise HTTPException(404, f"no view {view_name!r} of scan {folder!r} in the ledger")
        return view

    @staticmethod
    def etag(*parts: Any) -> str:
        return '"' + hashlib.sha256(repr(parts).encode()).hexdigest()[:24] + '"'

    @staticmethod
    def not_modified(request: Request, etag: str) -> Response | None:
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"etag": etag})
        return None

    # -- scans ---------------------------------------------------------------------------------

    def filtered_scans(self, request: Request) -> tuple[list[ScanRow], dict[str, str], str | None]:
        state = request.query_params.get("state", "")
        text = request.query_params.get("scans", "").strip()
        problem = None
        scans = self.reader.scans()
        if state in STATES:
            scans = [s for s in scans if s.has_state(state)]
        elif state:
            problem = f"unknown state {state!r}; choose one of {', '.join(STATES)}"
            state = ""
        if text:
            try:
                ranges = parse_scan_range(text)
            except ValueError as err:
                problem = f"scan range not understood: {err}"
            else:
                scans = [
                    s
                    for s in scans
                    if s.scan_id is not None and any(a <= s.scan_id <= b for a, b in ranges)
                ]
        return scans, {"state": state, "scans": text}, problem

    @staticmethod
    def page_of(
        request: Request, scans: list[ScanRow]
    ) -> tuple[list[ScanRow], dict[str, int], str | None]:
        """The ``?page=`` slice of ``scans`` (:data:`SCANS_PER_PAGE` each, newest first)."""
        text = request.query_params.get("page", "1")
        pages = max(1, -(-len(scans) // SCANS_PER_PAGE))
        problem = None
        try:
            page = int(text)
        except ValueError:
            page, problem = 1, f"page {text!r} is not a number"
        if not 1 <= page <= pages:
            problem = problem or f"page {page} does not exist; there are {pages}"
            page = min(max(page, 1), pages)
        start = (page - 1) * SCANS_PER_PAGE
        return (
            scans[start : start + SCANS_PER_PAGE],
            {"page": page, "pages": pages, "total": len(scans)},
            problem,
        )

    def scans_page(self, request: Request) -> Response:
        fragment = request.query_params.get("fragment") == "1"
        etag = self.etag(self.reader.signature(), str(request.query_params))
        if fragment and (unchanged := self.not_modified(request, etag)):
            return unchanged
        scans, filters, problem = self.filtered_scans(request)
        scans, paging, page_problem = self.page_of(request, scans)
        problem = problem or page_problem
        context = {
            "paging": paging,
            "page_url": lambda page: (
                "/?"
                + urllib.parse.urlencode({**{k: v for k, v in filters.items() if v}, "page": page})
            ),
            "scans": scans,
            "filters": filters,
            "problem": problem,
            "now": time.time(),
            "ledger_problem": self.reader.problem,
            "ledger_path": str(self.reader.path),
        }
        response = self.render(
            "_scan_rows.html" if fragment else "scans.html",
            status=400 if problem else 200,
            etag=etag,
            **context,
        )
        response.headers["etag"] = etag
        return response

    def scans_api(self, request: Request) -> Response:
        etag = self.etag(self.reader.signature(), str(request.query_params))
        if unchanged := self.not_modified(request, etag):
            return unchanged
        scans, filters, problem = self.filtered_scans(request)
        scans, paging, page_problem = self.page_of(request, scans)
        problem = problem or page_problem
        if problem:
            return error_response(400, problem, api=True)
        now = time.time()
        body = {
            "filters": filters,
            **paging,
            "ledger_problem": self.reader.problem,
            "scans": [
                {
                    "folder": s.folder,
                    "scan_id": s.scan_id,
                    "counts": s.counts,
                    "views": s.total,
                    "started": s.started,
                    "finished": s.finished,
                    "elapsed_seconds": s.elapsed(now),
                    "median_stage_seconds": s.median_stage_seconds,
                    "error": s.error,
                    "url": scan_url(s.folder),
                }
                for s in scans
            ],
        }
        return JSONResponse(body, headers={"etag": etag})

    # -- one scan ------------------------------------------------------------------------------

    def scan_page(self, request: Request) -> Response:
        folder = request.path_params["folder"]
        fragment = request.query_params.get("fragment") == "1"
        etag = self.etag(self.reader.signature(folder), folder)
        if fragment and (unchanged := self.not_modified(request, etag)):
            return unchanged
        scan = self.reader.scan(folder)
        if scan is None:
            return self.waiting(folder, None, fragment, etag)
        views = self.reader.views(folder)
        cached_only = len(views) > FULL_CARDS_MAX
        cards = [self.card(view, cached_only=cached_only) for view in views]
        response = self.render(
            "_cards.html" if fragment else "scan.html",
            scan=scan,
            cards=cards,
            now=time.time(),
            etag=etag,
        )
        response.headers["etag"] = etag
        return response

    def waiting(self, folder: str, view: str | None, fragment: bool, etag: str) -> Response:
        """The page of a scan or view the ledger does not know yet: "waiting for ...",
        live, so it turns into the real page when the ledger has it. The full page is a
        404 (nothing is there yet); its live part answers 200 while it waits."""
        response = self.render(
            "_waiting.html" if fragment else "waiting.html",
            status=200 if fragment else 404,
            folder=folder,
            view_name=view,
            now=time.time(),
            etag=etag,
        )
        response.headers["etag"] = etag
        return response

    def scan_api(self, request: Request) -> Response:
        folder = request.path_params["folder"]
        etag = self.etag(self.reader.signature(folder), folder, "api")
        if unchanged := self.not_modified(request, etag):
            return unchanged
        scan = self.scan_or_404(folder)
        cards = [self.card(view) for view in self.reader.views(folder)]
        body = {
            "folder": scan.folder,
            "scan_id": scan.scan_id,
            "counts": scan.counts,
            "started": scan.started,
            "finished": scan.finished,
            "elapsed_seconds": scan.elapsed(time.time()),
            "median_stage_seconds": scan.median_stage_seconds,
            "error": scan.error,
            "views": [card.to_json() for card in cards],
        }
        return JSONResponse(body, headers={"etag": etag})

    # -- one view ------------------------------------------------------------------------------

    def view_page(self, request: Request) -> Response:
        folder, name = request.path_params["folder"], request.path_params["view"]
        fragment = request.query_params.get("fragment") == "1"
        etag = self.etag(self.reader.signature(folder), folder, name)
        if fragment and (unchanged := self.not_modified(request, etag)):
            return unchanged
        found = self.reader.view(folder, name)
        if found is None:
            return self.waiting(folder, name, fragment, etag)
        card = self.card(found)
        summary = card.summary
        context: dict[str, Any] = {
            "card": card,
            "view": card.view,
            "summary": summary,
            "cost": plots.cost_plot(summary.cost_iterations, summary.cost, 480, 200)
            if summary
            else None,
            "positions": plots.positions_plot(summary.positions, summary.initial_positions)
            if summary
            else None,
            "scale": plots.scale_bar(summary.pixel_size, summary.image_shape[1])
            if summary
            else None,
            "positions_extent": plots.positions_extent(
                summary.positions, summary.initial_positions, summary.pixel_size
            )
            if summary
            else "",
            "now": time.time(),
            "etag": etag,
            "options_json": json.dumps(
                (summary.options if summary and summary.options else card.view.recon),
                indent=2,
                sort_keys=True,
            ),
        }
        response = self.render("_view_body.html" if fragment else "view.html", **context)
        response.headers["etag"] = etag
        return response

    def view_api(self, request: Request) -> Response:
        folder, name = request.path_params["folder"], request.path_params["view"]
        card = self.card(self.view_or_404(folder, name))
        return JSONResponse(card.to_json(detail=True))

    def result_file(self, request: Request) -> Response:
        folder, name = request.path_params["folder"], request.path_params["view"]
        view = self.view_or_404(folder, name)
        result = find_result(view, self.settings.acquisition_root, self.roots)
        if result is None:
            raise HTTPException(404, "no result file for this view")
        return FileResponse(
            result,
            media_type="application/x-hdf5",
            filename=f"{view.scan_folder}-{view.view_name}.h5",
            headers={"cache-control": "private, no-cache"},
        )

    def result_image(self, request: Request) -> Response:
        return self._cached_result_file(
            request,
            lambda result: self.images.image(result, request.path_params["image"]),
            "image/png",
            "no such image",
        )

    def result_data(self, request: Request) -> Response:
        """The float32 values behind the viewer (phase or amplitude of the result)."""
        return self._cached_result_file(
            request,
            lambda result: self.images.data(result, request.path_params["name"]),
            "application/octet-stream",
            "no such data",
        )

    def _cached_result_file(
        self,
        request: Request,
        fetch: Callable[[pathlib.Path], pathlib.Path | None],
        media_type: str,
        missing: str,
    ) -> Response:
        """A file the image cache makes from a view's result file, or a 404 saying why."""
        folder, name = request.path_params["folder"], request.path_params["view"]
        view = self.view_or_404(folder, name)
        result = find_result(view, self.settings.acquisition_root, self.roots)
        if result is None:
            raise HTTPException(404, "no result file for this view")
        try:
            path = fetch(result)
        except (PtychoflowError, OSError, ValueError, KeyError) as err:
            raise HTTPException(404, f"result file unreadable: {err}") from err
        if path is None:
            raise HTTPException(404, missing)
        return FileResponse(
            path, media_type=media_type, headers={"cache-control": "private, max-age=3600"}
        )

    def progress_image(self, request: Request) -> Response:
        """The latest intermediate phase image of a computing view (local backend): the
        file the ledger row names, served only inside the roots."""
        folder, name = request.path_params["folder"], request.path_params["view"]
        view = self.view_or_404(folder, name)
        progress = view.progress or {}
        image = progress.get("image")
        if not isinstance(image, str) or not image.endswith(".progress.png"):
            raise HTTPException(404, "no intermediate image for this view now")
        path = pathlib.Path(image)
        try:
            if not (path.is_file() and self.roots.contains(path)):
                raise HTTPException(404, "no intermediate image for this view now")
            body = path.read_bytes()
        except OSError as err:
            raise HTTPException(404, "no intermediate image for this view now") from err
        return Response(body, media_type="image/png")

    def scan_strip(self, request: Request) -> Response:
        """Every succeeded view's central phase row, side by side (a sinogram-like strip)."""
        folder = request.path_params["folder"]
        self.scan_or_404(folder)
        results = []
        for view in self.reader.views(folder):
            result = find_result(view, self.settings.acquisition_root, self.roots)
            if result is not None:
                results.append(result)
        if not results:
            raise HTTPException(404, "no results in this scan yet")
        try:
            strip = self.images.strip(results)
        except (PtychoflowError, OSError, ValueError, KeyError) as err:
            raise HTTPException(404, f"a result file is unreadable: {err}") from err
        return FileResponse(
            strip, media_type="image/png", headers={"cache-control": "private, max-age=3600"}
        )

    def help_results(self, request: Request) -> Response:
        """The README's "Using the results" section (from the installed package's
        metadata), so the view page can link to it on a machine without the sources."""
        text = using_the_results()
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<title>Using the results</title><link rel=stylesheet href=/static/portal.css>"
            f"<main class=help><pre>{html.escape(text)}</pre>"
            "<p><a href=/>all scans</a></p></main></html>"
        )
        return HTMLResponse(body)

    # -- login (Globus Auth) -------------------------------------------------------------------

    def login(self, request: Request) -> Response:
        globus = self.settings.policy.globus
        if globus is None:
            raise HTTPException(404, "this portal has no Globus login")
        state = secrets.token_urlsafe(24)
        response = RedirectResponse(globus.authorize_url(state), status_code=303)
        response.set_cookie(
            auth.STATE_COOKIE,
            state,
            max_age=auth.LOGIN_SECONDS,
            httponly=True,
            samesite="lax",
            path="/login",
            secure=globus.redirect_uri.startswith("https://"),
        )
        return response

    def login_callback(self, request: Request) -> Response:
        globus = self.settings.policy.globus
        if globus is None:
            raise HTTPException(404, "this portal has no Globus login")
        state = request.query_params.get("state", "")
        expected = request.cookies.get(auth.STATE_COOKIE, "")
        code = request.query_params.get("code", "")
        if not code or not expected or not secrets.compare_digest(state, expected):
            return error_response(401, "login expired or not started here; try again", False)
        try:
            user = globus.complete(code, state)
        except LoginError as err:
            return error_response(403, str(err), False)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            self.settings.policy.new_session(user),
            max_age=auth.SESSION_SECONDS,
            httponly=True,
            samesite="lax",
            path="/",
            secure=globus.redirect_uri.startswith("https://"),
        )
        response.delete_cookie(auth.STATE_COOKIE, path="/login")
        return response


def create_app(settings: PortalSettings) -> ASGIApp:
    """The portal as an ASGI application (wrapped in the :class:`Guard`)."""
    portal = Portal(settings)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") if status != 500 else "internal error"
        api = request.url.path.startswith("/api/")
        return error_response(status, str(detail or "error"), api)

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal error (see the portal's log)", False)

    static = pathlib.Path(__file__).parent / "static"
    view = "/scans/{folder}/views/{view}"
    routes = [
        Route("/", portal.scans_page),
        Route("/scans/{folder}", portal.scan_page),
        Route(view, portal.view_page),
        Route(view + "/result.h5", portal.result_file),
        Route(view + "/images/{image}.png", portal.result_image),
        Route(view + "/data/{name}.f32", portal.result_data),
        Route(view + "/progress.png", portal.progress_image),
        Route("/scans/{folder}/strip.png", portal.scan_strip),
        Route("/api/scans", portal.scans_api),
        Route("/api/scans/{folder}", portal.scan_api),
        Route("/api" + view, portal.view_api),
        Route("/help/using-the-results", portal.help_results),
        Route("/login", portal.login),
        Route("/login/callback", portal.login_callback),
        Route("/favicon.ico", lambda request: PlainTextResponse("", status_code=404)),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    app = Starlette(
        debug=False,
        routes=routes,
        exception_handlers={HTTPException: http_error, 500: server_error},
    )
    app.state.portal = portal
    return Guard(app, settings.policy, settings.loopback_hosts_only)
