"""What a person looks at: the object and probe of a result drawn as images.

One implementation for both places that draw a result: the PNG preview written beside
each result file (:func:`recon.result.save_preview`) and the portal's images
(``portal.images``). Steps, each a function here:

- :func:`display_region`: crop the object to the illuminated region (where the scan
  lit it: elsewhere the object is unconstrained noise) and remove the global phase and
  the fitted linear phase ramp (both ambiguities of ptychography);
- :func:`grey_levels`: a robust contrast stretch, between the 1st and 99th percentile
  inside the region, so a few hot pixels do not flatten the image;
- :func:`colour_map`: grey, a perceptual map (``viridis``) and a cyclic one
  (``twilight``, for phase: -pi and pi look the same);
- :func:`draw_preview`: panels with a title, a colour bar with its unit and a scale bar
  from the pixel size, and each probe mode's amplitude and phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Contrast stretch: each image spans these percentiles inside the illuminated region.
PERCENTILES = (1.0, 99.0)
#: Panels are enlarged (nearest neighbour) to at least this many pixels tall ...
PANEL_MIN_SIZE = 256
#: ... and reduced to at most this many pixels on their longer side.
PANEL_MAX_SIZE = 1024
#: White space between and around the panels, pixels.
GAP = 8
#: Height of the title strip above each panel, pixels.
LABEL_HEIGHT = 22
#: Height of the colour bar and of the scale bar strip under each panel, pixels.
BAR_HEIGHT = 10
BAR_STRIP = 40

#: Anchor colours of the maps (evenly spaced from 0 to 1), interpolated to 256 levels.
#: viridis (perceptually uniform; matplotlib's, CC0) and twilight (cyclic, for phase;
#: matplotlib's, MIT), sampled at 9 points. The portal's viewer (static/viewer.js) is
#: given the same 256-level tables by the view page, so both draw the same colours.
_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    "grey": [(0, 0, 0), (255, 255, 255)],
    "viridis": [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    "twilight": [
        (226, 217, 226),
        (160, 178, 206),
        (97, 119, 186),
        (84, 57, 150),
        (47, 20, 54),
        (120, 35, 80),
        (178, 88, 86),
        (208, 160, 143),
        (226, 217, 226),
    ],
}
COLOUR_MAPS = tuple(_ANCHORS)


def colour_map(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of the map ``name`` (one of :data:`COLOUR_MAPS`)."""
    try:
        anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; choose one of {COLOUR_MAPS}") from None
    where = np.linspace(0, 1, len(anchors))
    levels = np.linspace(0, 1, 256)
    table = np.stack([np.interp(levels, where, anchors[:, c]) for c in range(3)], axis=1)
    return (table + 0.5).astype(np.uint8)


def display_region(
    object_: np.ndarray,
    positions: np.ndarray | None = None,
    probe: np.ndarray | None = None,
    probe_shape: Sequence[int] | None = None,
    *,
    deramp: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The part of the object to show, and where it was lit.

    object_ : (OBJ_H, OBJ_W) complex. positions : (N_POS, 2) (row, col) top-left corners
    in object pixels. With ``probe`` ((H, W) or (MODES, H, W)) the region is where the
    dominant mode's summed intensity exceeds a tenth of its maximum
    (:func:`recon.metrics.illuminated_region`); with only ``probe_shape``, the box the
    positions and the probe span; with neither, the whole object.
    Returns (cropped object (ROWS, COLS) complex with the global phase removed and, with
    ``deramp``, the fitted linear phase ramp; inside (ROWS, COLS) bool).
    """
    from recon.metrics import deramp_phase, illuminated_region

    object_ = np.asarray(object_)
    if object_.ndim != 2:
        raise ValueError(f"object has shape {object_.shape}; expected (OBJ_H, OBJ_W)")
    region = np.ones(object_.shape, dtype=bool)
    if positions is not None and len(positions):
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        if probe is not None:
            modes = np.asarray(probe).reshape(-1, *np.asarray(probe).shape[-2:])
            power = np.sum(np.abs(modes) ** 2, axis=(-2, -1))
            region = illuminated_region(positions, modes[int(np.argmax(power))], object_.shape)
        elif probe_shape is not None:
            top, left = np.floor(positions.min(axis=0)).astype(int)
            bottom, right = np.ceil(positions.max(axis=0)).astype(int) + np.asarray(probe_shape)
            region = np.zeros(object_.shape, dtype=bool)
            region[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
        if not region.any():
            region = np.ones(object_.shape, dtype=bool)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    cropped, inside = object_[box], region[box]
    if deramp:
        cropped, _, _ = deramp_phase(cropped, inside)
    else:
        total = complex(np.sum(cropped[inside]))
        if total != 0:
            cropped = cropped * np.exp(-1j * np.angle(total))
    return cropped, inside


def grey_levels(
    values: np.ndarray,
    inside: np.ndarray | None = None,
    percentiles: tuple[float, float] = PERCENTILES,
) -> tuple[np.ndarray, float, float]:
    """uint8 levels of ``values`` stretched between percentiles of the finite values
    inside the mask (everywhere without one), mid-grey when they are flat (within a
    millionth); returns (levels, low, high)."""
    values = np.asarray(values, dtype=np.float64)
    sample = values[inside] if inside is not None else values.reshape(-1)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.uint8), 0.0, 0.0
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high - low <= 1e-6 * max(abs(low), abs(high), 1e-30):
        # A flat image (a start value, a constant amplitude): mid-grey, not rounding noise
        # stretched to full contrast.
        return np.full(values.shape, 128, dtype=np.uint8), low, high
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)
    return (scaled * 255 + 0.5).astype(np.uint8), low, high


def coloured(levels: np.ndarray, name: str = "grey") -> Image.Image:
    """An RGB image of uint8 ``levels`` through the colour map ``name``."""
    return Image.fromarray(colour_map(name)[levels])


def scale_bar(pixel_size: float | None, width_px: int) -> tuple[float, str] | None:
    """A round length (1, 2 or 5 x 10^k m, the nearest) to a fifth of an image
    ``width_px`` object pixels wide: (length in object pixels, label such as "2 µm");
    None without a pixel size."""
    if not pixel_size or not math.isfinite(pixel_size) or pixel_size <= 0 or width_px < 1:
        return None
    target = pixel_size * width_px / 5
    exponent = math.floor(math.log10(target))
    length = min((m * 10.0**exponent for m in (1, 2, 5, 10)), key=lambda v: abs(v - target))
    for unit, factor in (("m", 1.0), ("mm", 1e-3), ("µm", 1e-6), ("nm", 1e-9), ("pm", 1e-12)):
        if length >= factor * 0.999 or unit == "pm":
            return length / pixel_size, f"{round(length / factor, 6):g} {unit}"
    raise AssertionError("unreachable")


def draw_preview(
    object_: np.ndarray,
    positions: np.ndarray | None = None,
    probe: np.ndarray | None = None,
    *,
    probe_shape: Sequence[int] | None = None,
    pixel_size: float | None = None,
    deramp: bool = True,
) -> Image.Image:
    """The preview image of a result (RGB): the phase (rad) and amplitude of the
    illuminated region, each with a colour bar with its range and unit and a scale bar
    (from ``pixel_size`` in metres; "pixel size unknown" without it); then each probe
    mode's amplitude and phase, titled with its share of the power."""
    cropped, inside = display_region(object_, positions, probe, probe_shape, deramp=deramp)
    panels: list[tuple[str, Image.Image, str, tuple[float, float], str, int]] = []
    for name, values, unit, cmap in (
        ("phase", np.angle(cropped), "rad", "grey"),
        ("amplitude", np.abs(cropped), "(no unit)", "grey"),
    ):
        levels, low, high = grey_levels(values, inside)
        panels.append(
            (name, _resized(coloured(levels, cmap)), unit, (low, high), cmap, cropped.shape[1])
        )
    if probe is not None:
        modes = np.asarray(probe).reshape(-1, *np.asarray(probe).shape[-2:])
        power = np.sum(np.abs(modes) ** 2, axis=(-2, -1)).astype(np.float64)
        fractions = power / power.sum() if power.sum() > 0 else np.zeros_like(power)
        height = panels[0][1].height
        for index, (mode, fraction) in enumerate(zip(modes, fractions, strict=True)):
            amplitude = np.abs(mode)
            peak = float(amplitude.max()) or 1.0
            levels = (np.clip(amplitude / peak, 0, 1) * 255 + 0.5).astype(np.uint8)
            title = f"probe {index + 1} ({100 * fraction:.1f} %)"
            panels.append(
                (
                    title + " amplitude",
                    _to_height(coloured(levels), height),
                    "(no unit)",
                    (0.0, peak),
                    "grey",
                    mode.shape[1],
                )
            )
            phase = np.angle(mode)
            levels = ((phase + np.pi) / (2 * np.pi) * 255 + 0.5).astype(np.uint8)
            panels.append(
                (
                    title + " phase",
                    _to_height(coloured(levels, "twilight"), height),
                    "rad",
                    (-np.pi, np.pi),
                    "twilight",
                    mode.shape[1],
                )
            )
    font = _font()
    width = GAP + sum(image.width + GAP for _, image, *_ in panels)
    tallest = max(image.height for _, image, *_ in panels)
    height = LABEL_HEIGHT + tallest + 2 * BAR_STRIP + 2 * GAP
    canvas = Image.new("RGB", (width, height), color=(255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for title, image, unit, (low, high), cmap, object_width in panels:
        draw.text((x, GAP // 2), title, fill=(0, 0, 0), font=font)
        top = GAP + LABEL_HEIGHT
        canvas.paste(image, (x, top))
        # colour bar: the map from low to high, with its range and unit
        bar_top = top + image.height + 4
        bar = Image.fromarray(np.repeat(colour_map(cmap)[None, :, :], BAR_HEIGHT, axis=0))
        canvas.paste(bar.resize((image.width, BAR_HEIGHT)), (x, bar_top))
        draw.rectangle((x, bar_top, x + image.width - 1, bar_top + BAR_HEIGHT - 1), outline=0)
        draw.text((x, bar_top + BAR_HEIGHT + 2), f"{low:.3g}", fill=(0, 0, 0), font=font)
        right = f"{high:.3g} {unit}"
        draw.text(
            (x + image.width - draw.textlength(right, font=font), bar_top + BAR_HEIGHT + 2),
            right,
            fill=(0, 0, 0),
            font=font,
        )
        # scale bar: a round length from the pixel size
        scale_top = bar_top + BAR_STRIP
        bar_length = scale_bar(pixel_size, object_width)
        if bar_length is None:
            draw.text((x, scale_top), "pixel size unknown", fill=(90, 90, 90), font=font)
        else:
            pixels = bar_length[0] * image.width / object_width
            draw.rectangle((x, scale_top, x + max(pixels, 1) - 1, scale_top + 5), fill=(0, 0, 0))
            draw.text((x, scale_top + 8), bar_length[1], fill=(0, 0, 0), font=font)
        x += image.width + GAP
    return canvas


def _resized(image: Image.Image) -> Image.Image:
    longest = max(image.width, image.height)
    if image.height < PANEL_MIN_SIZE:
        factor = math.ceil(PANEL_MIN_SIZE / image.height)
        factor = max(1, min(factor, PANEL_MAX_SIZE // max(longest, 1)))
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    if longest > PANEL_MAX_SIZE:
        scale = PANEL_MAX_SIZE / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.LANCZOS)
    return image


def _to_height(image: Image.Image, height: int) -> Image.Image:
    side = max(1, round(image.width * height / image.height))
    return image.resize((side, height), Image.NEAREST)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=14)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()
