"""Geometry of the small plots the pages draw as inline SVG (numbers only; the
templates turn them into markup, so nothing here needs escaping)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class LinePlot:
    """A polyline in a ``width`` x ``height`` box with its axis labels."""

    width: int
    height: int
    points: str
    """SVG ``points``: "x,y x,y ..." in the box's coordinates."""
    y_top: str
    y_bottom: str
    x_right: str
    log: bool


def cost_plot(
    iterations: Sequence[int], cost: Sequence[float], width: int = 240, height: int = 90
) -> LinePlot | None:
    """The cost curve: log scale when every value is positive. None without two points."""
    pairs = [(i, c) for i, c in zip(iterations, cost, strict=False) if math.isfinite(c)]
    if len(pairs) < 2:
        return None
    log = all(c > 0 for _, c in pairs)
    values = [math.log10(c) if log else c for _, c in pairs]
    low, high = min(values), max(values)
    span = high - low or 1.0
    last = max(i for i, _ in pairs) or 1
    margin = 4
    points = " ".join(
        f"{margin + (width - 2 * margin) * i / last:.1f},"
        f"{margin + (height - 2 * margin) * (high - v) / span:.1f}"
        for (i, _), v in zip(pairs, values, strict=True)
    )
    top = max(c for _, c in pairs)
    bottom = min(c for _, c in pairs)
    return LinePlot(width, height, points, f"{top:.3g}", f"{bottom:.3g}", str(last), log)


@dataclasses.dataclass(frozen=True)
class ScatterPlot:
    width: int
    height: int
    points: list[tuple[float, float]]
    initial: list[tuple[float, float]]
    """Positions before refinement (drawn under the refined ones), may be empty."""
    radius: float


def positions_plot(
    positions: Sequence[tuple[float, float]],
    initial: Sequence[tuple[float, float]] = (),
    size: int = 360,
) -> ScatterPlot | None:
    """Scan positions (row, col) scaled into a square box, rows downwards like the image."""
    everything = [*positions, *initial]
    if not everything:
        return None
    rows = [p[0] for p in everything]
    cols = [p[1] for p in everything]
    span = max(max(rows) - min(rows), max(cols) - min(cols)) or 1.0
    margin = 6
    scale = (size - 2 * margin) / span

    def place(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [
            (round(margin + (c - min(cols)) * scale, 1), round(margin + (r - min(rows)) * scale, 1))
            for r, c in points
        ]

    radius = 2.0 if len(positions) < 1000 else 1.0
    return ScatterPlot(size, size, place(positions), place(initial), radius)


def positions_extent(
    positions: Sequence[tuple[float, float]],
    initial: Sequence[tuple[float, float]] = (),
    pixel_size: float | None = None,
) -> str:
    """The span the positions plot's box stands for: "3.2 µm" (or "41 px" without a
    pixel size), the same span :func:`positions_plot` scales to its box."""
    everything = [*positions, *initial]
    if not everything:
        return ""
    rows = [p[0] for p in everything]
    cols = [p[1] for p in everything]
    span = max(max(rows) - min(rows), max(cols) - min(cols)) or 1.0
    if pixel_size and math.isfinite(pixel_size) and pixel_size > 0:
        return f"{span * pixel_size * 1e6:.3g} µm"
    return f"{span:.3g} px"


@dataclasses.dataclass(frozen=True)
class ScaleBar:
    fraction: float
    """Length of the bar as a fraction of the image width."""
    label: str


def scale_bar(pixel_size: float | None, image_width: int) -> ScaleBar | None:
    """A round length (1, 2 or 5 x 10^k m) about a fifth of the image wide: the same bar
    as the preview beside the result file (:func:`recon.preview.scale_bar`)."""
    from recon.preview import scale_bar as preview_scale_bar

    bar = preview_scale_bar(pixel_size, image_width)
    if bar is None:
        return None
    pixels, label = bar
    return ScaleBar(fraction=min(1.0, pixels / image_width), label=label)


def seconds(value: float | None) -> str:
    """Human-readable duration: 25 ms, 0.4 s, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if value is None or not math.isfinite(value):
        return "-"
    if value < 0.1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
