"""Image-quality metrics of a reconstructed object against a known one.

Grid convention: a reconstruction and its truth share the object-pixel grid of the
scan positions, both with the origin at the array's top-left corner (position (r, c)
is the top-left corner of the probe patch at ``object[r:r+H, c:c+W]``). They may have
different array sizes (the solver adds its own margin); the comparison uses their
common top-left part, so only a small residual shift is expected and
:func:`compare_objects` finds it to sub-pixel accuracy.

Ptychography determines the object only up to a global phase, a linear phase ramp
(traded with a shift of the probe's far field) and, for the amplitude, a scale
factor (traded with the probe's scale); those are removed before comparing, so every
score :func:`compare_objects` reports is the ramp-free one unless asked otherwise.
:func:`deramp_phase` removes the global phase and the fitted ramp of a single image (no
truth needed): the preview uses it, since a ramp wraps the phase display.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage
import skimage.metrics
import skimage.registration

#: Pixels dropped at each edge of the common area when no region is given.
DEFAULT_BORDER = 4
#: Sub-pixel resolution of the registration (1 / UPSAMPLE_FACTOR pixels).
UPSAMPLE_FACTOR = 20
#: Registration passes after the first one (each removes most of the remaining bias).
LOCATE_REFINEMENTS = 3
#: Reflect padding (pixels) around an image before shifting it in Fourier space.
SHIFT_PADDING = 16


def illuminated_region(
    positions: np.ndarray,
    probe: np.ndarray,
    object_shape: tuple[int, int],
    threshold: float = 0.1,
) -> np.ndarray:
    """Where the scan lit the object: the sum of |probe|^2 over all positions exceeds
    ``threshold`` times its maximum.

    positions : (N_POS, 2) (row, col) top-left corners in object pixels (rounded here)
    probe : (H, W) complex; object_shape : (OBJ_H, OBJ_W)
    Returns (OBJ_H, OBJ_W) bool.
    """
    probe = np.asarray(probe)
    positions = np.asarray(positions, dtype=np.float64)
    intensity = np.abs(probe) ** 2
    height, width = intensity.shape
    total = np.zeros(object_shape, dtype=np.float64)
    for row, col in np.rint(positions).astype(int):
        top, left = max(row, 0), max(col, 0)
        bottom = min(row + height, object_shape[0])
        right = min(col + width, object_shape[1])
        if bottom > top and right > left:
            total[top:bottom, left:right] += intensity[
                top - row : bottom - row, left - col : right - col
            ]
    peak = total.max()
    if peak <= 0:
        return np.zeros(object_shape, dtype=bool)
    return total > threshold * peak


def deramp_phase(
    image: np.ndarray, region: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float], float]:
    """Remove the linear phase ramp and the global phase of one complex image.

    image : (H, W) complex; region : (H, W) bool where to fit (default: everywhere).
    The slopes are the phase of the amplitude-weighted mean lag-one products
    (image[r + 1] x conj(image[r]), and along columns), which is robust to wrapping; the
    global phase makes the region's complex sum real and positive.
    Returns (image without ramp and global phase, (row, col) radians per pixel removed,
    global phase removed in radians); the image keeps its dtype.
    """
    values = np.asarray(image)
    if values.ndim != 2:
        raise ValueError(f"image has shape {values.shape}; expected (H, W)")
    work = values.astype(np.complex128)
    inside = np.ones(work.shape, dtype=bool) if region is None else np.asarray(region, bool)
    if inside.shape != work.shape:
        raise ValueError(f"region has shape {inside.shape}; expected the image's {work.shape}")
    pair_rows = inside[1:, :] & inside[:-1, :]
    pair_cols = inside[:, 1:] & inside[:, :-1]
    slope_row = float(np.angle(np.sum((work[1:, :] * work[:-1, :].conj())[pair_rows])))
    slope_col = float(np.angle(np.sum((work[:, 1:] * work[:, :-1].conj())[pair_cols])))
    rows, cols = np.indices(work.shape, dtype=np.float64)
    work = work * np.exp(-1j * (slope_row * rows + slope_col * cols))
    offset = float(np.angle(np.sum(work[inside]))) if inside.any() else 0.0
    work = work * np.exp(-1j * offset)
    return work.astype(values.dtype, copy=False), (slope_row, slope_col), offset


def compare_objects(
    reconstructed: np.ndarray,
    truth: np.ndarray,
    region: np.ndarray | None = None,
    *,
    remove_ramp: bool = True,
) -> dict[str, Any]:
    """Phase SSIM, phase PSNR and amplitude SSIM of a reconstruction against the truth.

    reconstructed : (H1, W1) complex; truth : (H2, W2) complex, on the same grid origin
    region : bool mask on the truth's grid (e.g. :func:`illuminated_region`); default:
        the common area of both arrays less DEFAULT_BORDER pixels at each edge
    remove_ramp : remove the fitted linear phase ramp (the default, and the fair score:
        the ramp is an ambiguity of the data once the probe is refined); False removes
        only the global phase, to show what the ramp costs

    Steps: locate the reconstruction on the truth (sub-pixel phase correlation of the
    complex images inside the region) and shift it there; remove the global phase and
    the best-fit linear phase ramp, and scale the amplitude by its best-fit factor; then
    SSIM (data range: the truth's range in the region) averaged over the region's pixels,
    and PSNR over the region's pixels. The phase of the reconstruction is taken relative
    to the truth's (truth phase + angle(recon x conj(truth))), so wrapping never counts.

    Returns ``phase_ssim``, ``phase_psnr`` (dB), ``amplitude_ssim``, ``shift`` ((row, col)
    pixels the reconstruction was displaced by relative to the truth), ``phase_ramp``
    ((row, col) radians per pixel removed) and ``global_phase`` (radians removed).
    """
    reconstructed = np.asarray(reconstructed, dtype=np.complex128)
    truth = np.asarray(truth, dtype=np.complex128)
    if reconstructed.ndim != 2 or truth.ndim != 2:
        raise ValueError(
            f"objects have shapes {reconstructed.shape} and {truth.shape}; expected 2-D arrays"
        )
    common = (
        min(reconstructed.shape[0], truth.shape[0]),
        min(reconstructed.shape[1], truth.shape[1]),
    )
    if region is None:
        region = np.zeros(truth.shape, dtype=bool)
        region[
            DEFAULT_BORDER : common[0] - DEFAULT_BORDER, DEFAULT_BORDER : common[1] - DEFAULT_BORDER
        ] = True
    region = np.asarray(region, dtype=bool)
    if region.shape != truth.shape:
        raise ValueError(f"region has shape {region.shape}; expected the truth's {truth.shape}")
    region = region.copy()
    region[common[0] :, :] = False
    region[:, common[1] :] = False
    if np.count_nonzero(region) < 49:
        raise ValueError("the comparison region has fewer than 49 pixels")
    truth = truth[: common[0], : common[1]]
    recon = reconstructed[: common[0], : common[1]]
    region = region[: common[0], : common[1]]

    # Coarse phase alignment first, so the registration sees similar images.
    recon, first_ramp, first_phase = _remove_phase_ramp(recon, truth, region)
    shift = _locate(recon, truth, region)
    # The window shared by both images biases the estimate towards zero: refine
    # the residual after moving the reconstruction a few times.
    for _ in range(LOCATE_REFINEMENTS):
        if not np.any(shift):
            break
        residual = _locate(_shift_complex(recon, shift), truth, region)
        if not np.any(residual):
            break
        shift = shift + residual
    if np.any(shift):
        recon = _shift_complex(recon, shift)
        # Pixels that the shift pulled in from outside the array are not comparable.
        margin = int(np.ceil(np.abs(shift).max())) + 1
        inside = np.zeros_like(region)
        inside[margin:-margin, margin:-margin] = True
        region = region & inside
        if np.count_nonzero(region) < 49:
            raise ValueError("after locating the reconstruction, too little overlap is left")
    recon, ramp, global_phase = _remove_phase_ramp(recon, truth, region)
    ramp = (first_ramp[0] + ramp[0], first_ramp[1] + ramp[1])
    global_phase = float(np.angle(np.exp(1j * (first_phase + global_phase))))
    if not remove_ramp:
        # Put the ramp back (the shift found above stays removed), and take away only
        # the global phase over the region.
        rows, cols = np.indices(recon.shape, dtype=np.float64)
        recon = recon * np.exp(1j * (ramp[0] * rows + ramp[1] * cols))
        offset = float(np.angle(np.sum((recon * truth.conj())[region])))
        recon = recon * np.exp(-1j * offset)
        global_phase = float(np.angle(np.exp(1j * (global_phase + offset))))
        ramp = (0.0, 0.0)

    truth_phase = np.angle(truth)
    recon_phase = truth_phase + np.angle(recon * truth.conj())
    truth_amplitude = np.abs(truth)
    recon_amplitude = np.abs(recon)
    denominator = float(np.sum(recon_amplitude[region] ** 2))
    if denominator > 0:
        recon_amplitude = recon_amplitude * (
            float(np.sum(recon_amplitude[region] * truth_amplitude[region])) / denominator
        )

    phase_ssim, phase_psnr = _region_ssim_psnr(recon_phase, truth_phase, region)
    amplitude_ssim, _ = _region_ssim_psnr(recon_amplitude, truth_amplitude, region)
    return {
        "phase_ssim": phase_ssim,
        "phase_psnr": phase_psnr,
        "amplitude_ssim": amplitude_ssim,
        "shift": (float(shift[0]), float(shift[1])),
        "phase_ramp": (float(ramp[0]), float(ramp[1])),
        "global_phase": float(global_phase),
    }


def _remove_phase_ramp(
    recon: np.ndarray, truth: np.ndarray, region: np.ndarray
) -> tuple[np.ndarray, tuple[float, float], float]:
    """Remove the linear phase ramp and the global phase of recon relative to truth.

    The ramp's slopes come from the phase of the lag-one products of the normalised
    difference d = recon x conj(truth) (robust to wrapping), then are refined by a
    least-squares fit of the remaining (small) phase difference over the region.
    """
    difference = recon * truth.conj()
    difference = difference / np.maximum(np.abs(difference), 1e-30)
    pair_rows = region[1:, :] & region[:-1, :]
    pair_cols = region[:, 1:] & region[:, :-1]
    slope_row = float(np.angle(np.sum((difference[1:, :] * difference[:-1, :].conj())[pair_rows])))
    slope_col = float(np.angle(np.sum((difference[:, 1:] * difference[:, :-1].conj())[pair_cols])))
    rows, cols = np.indices(recon.shape, dtype=np.float64)
    ramp = slope_row * rows + slope_col * cols
    offset = float(np.angle(np.sum((difference * np.exp(-1j * ramp))[region])))
    residual = np.angle(difference * np.exp(-1j * (ramp + offset)))[region]
    design = np.stack([np.ones(residual.size), rows[region], cols[region]], axis=1)
    refine = np.linalg.lstsq(design, residual, rcond=None)[0]
    offset += refine[0]
    slope_row += refine[1]
    slope_col += refine[2]
    correction = np.exp(-1j * (offset + slope_row * rows + slope_col * cols))
    return recon * correction, (slope_row, slope_col), float(np.angle(np.exp(1j * offset)))


def _locate(recon: np.ndarray, truth: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Sub-pixel (row, col) displacement of recon relative to truth, found by phase
    correlation of the mean-removed complex images inside the region's bounding box."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    window = region[box].astype(np.float64)
    # Soften the window's edge so it does not dominate the correlation.
    window = scipy.ndimage.gaussian_filter(window, 2.0) * window
    images = []
    for image in (truth, recon):
        part = image[box]
        part = (part - part[region[box]].mean()) * window
        images.append(part)
    shift, _, _ = skimage.registration.phase_cross_correlation(
        images[0], images[1], upsample_factor=UPSAMPLE_FACTOR, normalization=None
    )
    # phase_cross_correlation returns the shift that moves recon onto truth.
    return -np.asarray(shift, dtype=np.float64)


def _shift_complex(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Move ``image`` by ``-displacement`` pixels (undo a displacement) with the Fourier
    shift theorem, exact for band-limited images; the image is reflect-padded first so
    the wrap-around at the edges stays in the padding."""
    pad = SHIFT_PADDING + int(np.ceil(np.abs(displacement).max()))
    padded = np.pad(image, pad, mode="reflect")
    spectrum = scipy.ndimage.fourier_shift(np.fft.fft2(padded), -np.asarray(displacement))
    return np.fft.ifft2(spectrum)[pad:-pad, pad:-pad]


def _region_ssim_psnr(
    image: np.ndarray, reference: np.ndarray, region: np.ndarray
) -> tuple[float, float]:
    """SSIM averaged over the region's pixels and PSNR over them, on the region's
    bounding box with the pixels outside the region set equal in both images."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = region[box]
    reference = reference[box]
    image = np.where(inside, image[box], reference)
    data_range = float(reference[inside].max() - reference[inside].min())
    if data_range <= 0:
        data_range = 1.0
    win_size = min(7, *(s - 1 + s % 2 for s in inside.shape))
    _, ssim_map = skimage.metrics.structural_similarity(
        reference, image, data_range=data_range, full=True, win_size=max(win_size, 3)
    )
    ssim = float(ssim_map[inside].mean())
    mse = float(np.mean((image[inside] - reference[inside]) ** 2))
    psnr = float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))
    return ssim, psnr


def remove_phase_ramp(
    object: np.ndarray, region: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float], float]:
    """The object with its global phase and best-fit linear phase ramp removed.

    The ramp is an ambiguity of ptychography (it trades with a shift of the probe's
    far field), so images meant for people are shown without it. It is fitted the way
    :func:`compare_objects` fits it, against a flat object, over ``region``.

    object : (OBJ_H, OBJ_W) complex; region : (OBJ_H, OBJ_W) bool, default everywhere.
    Returns (deramped object (OBJ_H, OBJ_W) complex128, (row, col) ramp in radians per
    pixel, global phase in radians).
    """
    object = np.asarray(object, dtype=np.complex128)
    if object.ndim != 2:
        raise ValueError(f"object has shape {object.shape}; expected (OBJ_H, OBJ_W)")
    region = np.ones(object.shape, dtype=bool) if region is None else np.asarray(region, bool)
    if region.shape != object.shape:
        raise ValueError(f"region has shape {region.shape}; expected {object.shape}")
    if np.count_nonzero(region) < 4:
        return object, (0.0, 0.0), 0.0
    return _remove_phase_ramp(object, np.ones_like(object), region)
