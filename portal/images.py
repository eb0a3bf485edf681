"""Images and numbers the portal shows for one result file, made once and cached.

For each result file (``recon/<scan>/<view>.h5``) the cache holds a folder named
by a hash of the file's resolved path, modification time and size, with:

- ``phase.png``, ``amplitude.png``: the scanned region at full resolution, the
  phase deramped (global phase and fitted linear ramp removed: both are
  ambiguities of ptychography), each grey scale spanning the 1st..99th
  percentile inside the illuminated region;
- ``phase-thumb.png``, ``amplitude-thumb.png``: the same, at most
  :data:`THUMB_SIZE` pixels on the longer side;
- ``probe-<i>.png``, ``probe-phase-<i>.png``: the amplitude (grey) and phase (cyclic
  colour map) of each probe mode;
- ``preview.png`` (made when first asked for): the same picture as the PNG beside the
  result file (one drawing code, :mod:`recon.preview`);
- ``phase.f32``, ``amplitude.f32``: the values of the full-size images (float32), for
  the view page's viewer;
- ``summary.json``: cost curve, probe-mode power fractions, positions, options,
  timings, pixel size and the grey-scale ranges.

A rewritten result file has a new modification time, hence a new folder. A
folder appears complete or not at all (written under a temporary name, then
renamed), so two portal processes can share one cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image

from recon.preview import coloured, display_region, draw_preview, grey_levels
from recon.result import read_result

#: Longest side of a card thumbnail, pixels.
THUMB_SIZE = 160
#: Points kept of a cost curve or a positions plot (evenly subsampled beyond that).
MAX_COST_POINTS = 400
MAX_POSITIONS = 4000
#: Grey scale of each panel spans these percentiles inside the illuminated region.
PERCENTILES = (1.0, 99.0)
#: Height of the sinogram-like strip (pixels) and the width of each view's column.
STRIP_HEIGHT = 128
STRIP_COLUMN = 4
#: Summaries kept in memory.
MEMORY_ENTRIES = 2048
#: Image names a view may be asked for; probe modes are ``probe-0``, ``probe-1``, ...
IMAGE_NAMES = ("phase", "amplitude", "phase-thumb", "amplitude-thumb", "preview")
#: Raw data a view may be asked for (float32, little-endian, ``image_shape``).
DATA_NAMES = ("phase", "amplitude")


@dataclasses.dataclass(frozen=True)
class ResultSummary:
    """What the pages show about one result file (JSON-ready)."""

    key: str
    image_shape: tuple[int, int]
    """(rows, cols) of the full-size phase and amplitude images (the scanned region)."""
    object_shape: tuple[int, int]
    pixel_size: float | None
    """Object pixel size in metres (None when the result does not know it)."""
    iterations: int | None
    cost: list[float]
    """Cost per iteration (``cost[0]`` is the start), subsampled to MAX_COST_POINTS."""
    cost_iterations: list[int]
    """The iteration of each kept cost value."""
    probe_shape: tuple[int, int]
    probe_fractions: list[float]
    """Power of each probe mode over the total, in the file's mode order."""
    positions: list[tuple[float, float]]
    """Scan positions (row, col) in object pixels (refined ones when the solver refined them)."""
    initial_positions: list[tuple[float, float]]
    """Positions before refinement, when the result file holds them; else empty."""
    phase_range: tuple[float, float]
    amplitude_range: tuple[float, float]
    options: dict[str, Any]
    timings: dict[str, float]
    devices: list[Any]
    backend: str | None
    created: str | None
    fit_to_noise: float | None = None
    """The final cost over what shot noise alone would leave (``recon`` results since
    2026-12; None in older files, cached summaries and with the Gaussian cost)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultSummary:
        data = dict(data)
        for name in (
            "image_shape",
            "object_shape",
            "probe_shape",
            "phase_range",
            "amplitude_range",
        ):
            data[name] = tuple(data[name])
        for name in ("positions", "initial_positions"):
            data[name] = [tuple(p) for p in data[name]]
        return cls(**data)


def cache_key(path: pathlib.Path) -> str:
    """The cache folder name of a result file: its resolved path, mtime and size."""
    resolved = path.resolve()
    stat = resolved.stat()
    text = f"{resolved}\0{stat.st_mtime_ns}\0{stat.st_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ResultImages:
    """The cache of result images and summaries under ``folder`` (created on first use)."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = pathlib.Path(folder)
        self._memory: OrderedDict[str, ResultSummary] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.made = 0
        """How many result files this process turned into images (for tests and benches)."""

    def summary(self, result_path: pathlib.Path) -> ResultSummary:
        """The summary of ``result_path``, making its images first if they are not cached.

        Raises recon.errors.InputError / InputFileNotFound for an unreadable result.
        """
        key = cache_key(result_path)
        with self._lock:
            cached = self._memory.get(key)
            if cached is not None:
                self._memory.move_to_end(key)
                return cached
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            summary_file = self.folder / key / "summary.json"
            if not summary_file.is_file():
                self._make(result_path, key)
            summary = ResultSummary.from_json(json.loads(summary_file.read_text()))
        with self._lock:
            self._memory[key] = summary
            while len(self._memory) > MEMORY_ENTRIES:
                self._memory.popitem(last=False)
            self._key_locks.pop(key, None)
        return summary

    def cached_summary(self, result_path: pathlib.Path) -> ResultSummary | None:
        """The summary of ``result_path`` if its images were already made (in memory or
        on disk), else None; never makes them."""
        key = cache_key(result_path)
        with self._lock:
            cached = self._memory.get(key)
        if cached is not None:
            return cached
        if not (self.folder / key / "summary.json").is_file():
            return None
        return self.summary(result_path)

    def strip(self, result_paths: list[pathlib.Path]) -> pathlib.Path:
        """A PNG with one column per result (in the given order): the central row of its
        deramped phase image, resampled to :data:`STRIP_HEIGHT` pixels, :data:`STRIP_COLUMN`
        pixels wide, all columns on one grey scale (1st..99th percentile). In a
        tomography scan this is a sinogram of the middle slice: a view that failed to
        converge, or was shifted, stands out as a column unlike its neighbours.
        Makes missing images first; cached under a name from the results' keys."""
        summaries = [self.summary(path) for path in result_paths]
        key = hashlib.sha256("\0".join(s.key for s in summaries).encode()).hexdigest()[:32]
        path = self.folder / "strips" / f"{key}.png"
        if path.is_file():
            return path
        columns = []
        for summary in summaries:
            rows, cols = summary.image_shape
            raw = (self.folder / summary.key / "phase.f32").read_bytes()
            phase = np.frombuffer(raw, dtype="<f4").reshape(rows, cols)
            line = phase[rows // 2].astype(np.float64)
            columns.append(np.interp(np.linspace(0, cols - 1, STRIP_HEIGHT), np.arange(cols), line))
        values = np.stack(columns, axis=1)
        grey, _, _ = grey_levels(values)
        image = Image.fromarray(np.repeat(grey, STRIP_COLUMN, axis=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
        return path

    def image(self, result_path: pathlib.Path, name: str) -> pathlib.Path | None:
        """The cached PNG ``name`` (one of IMAGE_NAMES or ``probe-<i>``) of a result file,
        or None when there is no such image."""
        summary = self.summary(result_path)
        modes = range(len(summary.probe_fractions))
        allowed = set(IMAGE_NAMES) | {f"probe-{i}" for i in modes}
        allowed |= {f"probe-phase-{i}" for i in modes}
        if name not in allowed:
            return None
        path = self.folder / summary.key / f"{name}.png"
        if not path.parent.is_dir() or (name != "preview" and not path.is_file()):
            # The cache was deleted (or pruned) under a running portal: make it again
            # instead of answering 404 until a restart (issue 16).
            summary = self._remake(result_path, summary)
            path = self.folder / summary.key / f"{name}.png"
        if name == "preview" and not path.is_file():
            self._make_preview(result_path, path)
        return path if path.is_file() else None

    def _remake(self, result_path: pathlib.Path, summary: Any) -> Any:
        """Forget a result's cached images and make them again (the summary anew)."""
        with self._lock:
            self._memory.pop(summary.key, None)
        shutil.rmtree(self.folder / summary.key, ignore_errors=True)
        return self.summary(result_path)

    def _make_preview(self, result_path: pathlib.Path, path: pathlib.Path) -> None:
        """The preview PNG, made when first asked for (the code that draws the PNG
        beside the result file), written under a temporary name and renamed."""
        result = read_result(result_path)
        object_ = np.asarray(result["object"])
        object_ = object_.reshape(-1, *object_.shape[-2:])[0]
        positions = result.get("refined_positions")
        if positions is None:
            positions = result["positions"]
        raw_pixel_size = result.get("pixel_size")
        image = draw_preview(
            object_,
            np.asarray(positions, dtype=np.float64).reshape(-1, 2),
            probe_modes(result["probe"]),
            pixel_size=float(raw_pixel_size) if isinstance(raw_pixel_size, int | float) else None,
        )
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        image.save(temporary, format="PNG")
        os.replace(temporary, path)

    def data(self, result_path: pathlib.Path, name: str) -> pathlib.Path | None:
        """The cached float32 values ``name`` (one of DATA_NAMES) of a result file: the
        cropped, deramped image, row-major (``image_shape``), or None."""
        summary = self.summary(result_path)
        if name not in DATA_NAMES:
            return None
        path = self.folder / summary.key / f"{name}.f32"
        if not path.is_file():
            summary = self._remake(result_path, summary)
            path = self.folder / summary.key / f"{name}.f32"
        return path if path.is_file() else None

    # -- making ----------------------------------------------------------------------------

    def _make(self, result_path: pathlib.Path, key: str) -> None:
        result = read_result(result_path)
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.folder))
        try:
            summary = _render(result, result_path, key, staging)
            (staging / "summary.json").write_text(json.dumps(summary.to_json()))
            try:
                os.rename(staging, self.folder / key)
            except OSError:
                if not (self.folder / key / "summary.json").is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # another process made it first
            self.made += 1
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def probe_modes(probe: np.ndarray) -> np.ndarray:
    """The probe as (MODES, H, W): a 2D probe is one mode; leading axes are flattened."""
    probe = np.asarray(probe)
    if probe.ndim < 2:
        raise ValueError(f"probe has shape {probe.shape}; expected (H, W) or (MODES, H, W)")
    return probe.reshape(-1, *probe.shape[-2:])


def mode_fractions(modes: np.ndarray) -> list[float]:
    """Power of each mode of (MODES, H, W) over the total power."""
    power = np.sum(np.abs(modes) ** 2, axis=(-2, -1)).astype(np.float64)
    total = float(power.sum())
    return [float(p / total) if total > 0 else 0.0 for p in power]


def _render(
    result: dict[str, Any], result_path: pathlib.Path, key: str, folder: pathlib.Path
) -> ResultSummary:
    object_ = np.asarray(result["object"])
    if object_.ndim != 2:
        object_ = object_.reshape(-1, *object_.shape[-2:])[0]
    modes = probe_modes(result["probe"])
    fractions = mode_fractions(modes)
    positions = np.asarray(result["positions"], dtype=np.float64).reshape(-1, 2)
    # The same crop, deramp and contrast stretch as the preview beside the result file.
    cropped, inside = display_region(object_, positions, modes)

    ranges = {}
    for name, values in (("phase", np.angle(cropped)), ("amplitude", np.abs(cropped))):
        grey, low, high = grey_levels(values, inside, PERCENTILES)
        image = Image.fromarray(grey)
        image.save(folder / f"{name}.png", optimize=False)
        thumb = image.copy()
        if max(thumb.size) > THUMB_SIZE:
            thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        thumb.save(folder / f"{name}-thumb.png")
        # The values themselves, for the view page's viewer (colour maps, contrast,
        # value under the cursor, line profiles): float32, row-major, little-endian.
        (folder / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
        ranges[name] = (low, high)
    for index, mode in enumerate(modes):
        grey, _, _ = grey_levels(np.abs(mode), None, percentiles=(0.0, 100.0))
        Image.fromarray(grey).save(folder / f"probe-{index}.png")
        phase_levels = ((np.angle(mode) + np.pi) / (2 * np.pi) * 255 + 0.5).astype(np.uint8)
        coloured(phase_levels, "twilight").save(folder / f"probe-phase-{index}.png")
    raw_pixel_size = result.get("pixel_size")
    pixel_size = float(raw_pixel_size) if isinstance(raw_pixel_size, int | float) else None
    # With position refinement the plot shows the refined positions over the reported ones.
    refined = result.get("refined_positions")
    refined = np.asarray(refined, dtype=np.float64) if refined is not None else None

    cost = np.asarray(result["cost"], dtype=np.float64).reshape(-1)
    kept = _subsample(len(cost), MAX_COST_POINTS)
    timings = result.get("timings") or {}
    options = result.get("options") or {}
    devices = result.get("devices") or []
    return ResultSummary(
        key=key,
        image_shape=(int(cropped.shape[0]), int(cropped.shape[1])),
        object_shape=(int(object_.shape[0]), int(object_.shape[1])),
        pixel_size=pixel_size,
        iterations=int(result["iterations"]) if "iterations" in result else None,
        cost=[float(cost[i]) for i in kept],
        cost_iterations=[int(i) for i in kept],
        probe_shape=(int(modes.shape[-2]), int(modes.shape[-1])),
        probe_fractions=fractions,
        positions=_points(refined if refined is not None else positions),
        initial_positions=_points(positions) if refined is not None else [],
        phase_range=ranges["phase"],
        amplitude_range=ranges["amplitude"],
        options=options if isinstance(options, dict) else {},
        timings={str(k): float(v) for k, v in timings.items()} if isinstance(timings, dict) else {},
        devices=list(devices) if isinstance(devices, list) else [],
        backend=str(result["backend"]) if "backend" in result else None,
        created=str(result["created"]) if "created" in result else None,
        fit_to_noise=_finite_or_none(result.get("fit_to_noise")),
    )


def _finite_or_none(value: Any) -> float | None:
    """A finite number from a result file's attribute, else None (absent, or not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def _subsample(count: int, most: int) -> list[int]:
    if count <= most:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, most).round().astype(int).tolist()))


def _points(positions: np.ndarray) -> list[tuple[float, float]]:
    kept = _subsample(len(positions), MAX_POSITIONS)
    return [(round(float(positions[i, 0]), 3), round(float(positions[i, 1]), 3)) for i in kept]
