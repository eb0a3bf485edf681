"""Far-field ptychography operators: small classes with ``fwd`` and ``adj``.

Every operator is linear in the argument of ``fwd`` and ``adj`` is its exact
adjoint (checked by the dot-product test in ``tests/unit/test_operators.py``).
All arrays of one operator live on one device; the array module is taken from
the inputs. What the GPU computes differently (window gather and scatter, FFT) is in
:mod:`recon.primitives`.

Two patch models place a probe at a sub-pixel scan position:

``fourier`` (the default, band-limited)
    Each position ``p`` is split into an integer corner ``round(p)`` and a
    sub-pixel rest ``delta`` in [-0.5, 0.5). The object is read in integer
    windows (:class:`WindowPatches`) and the probe is moved by ``-delta`` with a
    Fourier phase ramp (:class:`FourierShift`). Shifting the whole exit wave
    ``probe(x) * object(x + p)`` by ``-delta`` changes its far field only by a
    phase ramp, so the measured intensities are those of the band-limited
    sub-pixel model, at the price of one FFT pair per probe change instead of
    one per patch.
``bilinear``
    Patches interpolated bilinearly from the object (:class:`BilinearPatches`),
    the probe unshifted.
"""

from __future__ import annotations

import math
from typing import Any

from recon.backend import get_array_module
from recon.primitives import (
    apply_ramp,
    fft2,
    gather_windows,
    ifft2,
    ifft2_into,
    multiply_conj,
    scatter_windows,
    sum_modes,
    window_blocks,
)

#: The patch models, by option value.
PATCH_MODELS = ("fourier", "bilinear")


def _check_shape(name: str, array: Any, expected: tuple[int | None, ...], what: str) -> None:
    if array.ndim != len(expected) or any(
        e is not None and s != e for s, e in zip(array.shape, expected, strict=True)
    ):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: {what} has shape {array.shape}, expected {shown}")


def _check_fits(name: str, corner: Any, object_shape: tuple[int, int], window: tuple[int, int]):
    if not len(corner):
        return
    low = int(corner.min())
    high = (int(corner[:, 0].max()) + window[0], int(corner[:, 1].max()) + window[1])
    if low < 0 or high[0] > object_shape[0] or high[1] > object_shape[1]:
        raise ValueError(
            f"{name}: positions need an object of at least {high} pixels with all "
            f"positions >= 0, got object {object_shape} and smallest corner {low}"
        )


class WindowPatches:
    """Integer-pixel windows of the object, and their adjoint (overlaps summed).

    ``fwd``: object (OBJ_H, OBJ_W) complex -> patches (N_POS, PATCH_H, PATCH_W).
    ``adj``: patches (N_POS, PATCH_H, PATCH_W) -> object (OBJ_H, OBJ_W).

    corner : (N_POS, 2) int64, (row, col) of each window's top-left object pixel.
    """

    def __init__(self, corner: Any, object_shape: tuple[int, int], patch_shape: tuple[int, int]):
        xp = get_array_module(corner)
        _check_shape("WindowPatches", corner, (None, 2), "corner")
        self.xp = xp
        self.object_shape = tuple(int(s) for s in object_shape)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        self.corner = corner.astype(xp.int64)
        self.n = int(corner.shape[0])
        _check_fits("WindowPatches", self.corner, self.object_shape, self.patch_shape)

    def fwd(self, obj: Any, part: slice | None = None) -> Any:
        """The patches (N_POS, PATCH_H, PATCH_W), or those of the positions ``part``."""
        _check_shape("WindowPatches.fwd", obj, self.object_shape, "object")
        corner = self.corner if part is None else self.corner[part]
        return gather_windows(self.xp, obj, corner, self.patch_shape)

    def adj(self, patches: Any, out: Any = None) -> Any:
        """Sum the patches back into an object; adds into ``out`` when given.

        ``out`` may have a wider dtype (complex128) than the patches: overlapping
        contributions are then accumulated in double precision.
        """
        xp = self.xp
        _check_shape("WindowPatches.adj", patches, (self.n, *self.patch_shape), "patches")
        if out is None:
            out = xp.zeros(self.object_shape, dtype=patches.dtype)
        _check_shape("WindowPatches.adj", out, self.object_shape, "out")
        scatter_windows(xp, out, patches, self.corner)
        return out


class BilinearPatches:
    """Sub-pixel patch extraction by bilinear interpolation, and its adjoint.

    ``fwd``: object (OBJ_H, OBJ_W) complex -> patches (N_POS, PATCH_H, PATCH_W).
    ``adj``: patches (N_POS, PATCH_H, PATCH_W) -> object (OBJ_H, OBJ_W), the
    overlapping contributions summed.

    positions : (N_POS, 2) float32 or float64
        (row, col) of each patch's top-left corner in object pixels. Patch pixel
        (i, j) samples the object at (row + i, col + j) by bilinear interpolation,
        so every patch reads a (PATCH_H + 1, PATCH_W + 1) integer window.
    """

    def __init__(self, positions: Any, object_shape: tuple[int, int], patch_shape: tuple[int, int]):
        xp = get_array_module(positions)
        _check_shape("BilinearPatches", positions, (None, 2), "positions")
        self.xp = xp
        self.object_shape = tuple(int(s) for s in object_shape)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        corner = xp.floor(positions)
        frac = (positions - corner).astype(xp.float32)
        self.corner = corner.astype(xp.int64)
        window = (self.patch_shape[0] + 1, self.patch_shape[1] + 1)
        _check_fits("BilinearPatches", self.corner, self.object_shape, window)
        fr = frac[:, 0, None, None]
        fc = frac[:, 1, None, None]
        # Bilinear weights of the four neighbours, each (N_POS, 1, 1).
        self.weights = ((1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc)
        self.n = int(positions.shape[0])

    def fwd(self, obj: Any, part: slice | None = None) -> Any:
        """The patches (N_POS, PATCH_H, PATCH_W), or those of the positions ``part``."""
        _check_shape("BilinearPatches.fwd", obj, self.object_shape, "object")
        ph, pw = self.patch_shape
        corner, weights = self.corner, self.weights
        if part is not None:
            corner, weights = corner[part], tuple(weight[part] for weight in weights)
        n = corner.shape[0]
        out = self.xp.empty((n, ph, pw), dtype=obj.dtype)
        # A block of windows at a time (one block on the default CPU path): no array of
        # every (PATCH_H + 1, PATCH_W + 1) window, no pattern-sized temporaries.
        for block in window_blocks(self.xp, n, (ph + 1) * (pw + 1)):
            w00, w01, w10, w11 = (weight[block] for weight in weights)
            win = gather_windows(self.xp, obj, corner[block], (ph + 1, pw + 1))
            patches = win[:, :-1, :-1] * w00
            patches += win[:, :-1, 1:] * w01
            patches += win[:, 1:, :-1] * w10
            patches += win[:, 1:, 1:] * w11
            out[block] = patches
            del win, patches
        return out

    def adj(self, patches: Any, out: Any = None) -> Any:
        """Sum the patches back into an object; adds into ``out`` when given
        (which may be wider, e.g. complex128, to accumulate in double precision)."""
        xp = self.xp
        _check_shape("BilinearPatches.adj", patches, (self.n, *self.patch_shape), "patches")
        ph, pw = self.patch_shape
        if out is None:
            out = xp.zeros(self.object_shape, dtype=patches.dtype)
        _check_shape("BilinearPatches.adj", out, self.object_shape, "out")
        # A block of windows at a time, as in ``fwd``; the blocks are added in order.
        for block in window_blocks(xp, self.n, (ph + 1) * (pw + 1)):
            w00, w01, w10, w11 = (weight[block] for weight in self.weights)
            part = patches[block]
            win = xp.zeros((part.shape[0], ph + 1, pw + 1), dtype=patches.dtype)
            win[:, :-1, :-1] += part * w00
            win[:, :-1, 1:] += part * w01
            win[:, 1:, :-1] += part * w10
            win[:, 1:, 1:] += part * w11
            scatter_windows(xp, out, win, self.corner[block])
            del win
        return out


class FourierShift:
    """Band-limited sub-pixel shift of the probe modes to every scan position.

    ``fwd``: probe (MODES, H, W) -> (N_POS, MODES, H, W), mode m at position n equal to
    ``probe[m](x - shift[n])`` (circular, by a Fourier phase ramp).
    ``adj``: (N_POS, MODES, H, W) -> (MODES, H, W), the inverse shifts summed over positions.
    ``derivative``: d fwd / d shift, (2, N_POS, MODES, H, W) for the row and column shift.

    shift : (N_POS, 2) float32, (row, col) shifts in pixels (small: |shift| <= 0.5).
    """

    def __init__(self, shift: Any, patch_shape: tuple[int, int]):
        xp = get_array_module(shift)
        _check_shape("FourierShift", shift, (None, 2), "shift")
        self.xp = xp
        self.patch_shape = tuple(int(s) for s in patch_shape)
        self.n = int(shift.shape[0])
        h, w = self.patch_shape
        # Frequencies in cycles per pixel, float64 for accurate phases, (H,) and (W,).
        self.freq_rows = xp.fft.fftfreq(h).astype(xp.float64)
        self.freq_cols = xp.fft.fftfreq(w).astype(xp.float64)
        shift64 = shift.astype(xp.float64)
        # Separable phase ramps exp(-2 pi i k shift): (N_POS, 1, H, 1) and (N_POS, 1, 1, W).
        self.ramp_rows = xp.exp(-2j * math.pi * shift64[:, 0, None] * self.freq_rows)[
            :, None, :, None
        ].astype(xp.complex64)
        self.ramp_cols = xp.exp(-2j * math.pi * shift64[:, 1, None] * self.freq_cols)[
            :, None, None, :
        ].astype(xp.complex64)
        # The full ramps (N_POS, 1, H, W) are not stored (the memory of one far field, two
        # with their conjugates): ``apply_ramp`` forms each product where it is applied.

    def _ramp(self) -> Any:
        """The full ramps (N_POS, 1, H, W) complex64 (allocated on each call)."""
        return self.ramp_rows * self.ramp_cols

    def fwd(self, probe: Any) -> Any:
        _check_shape("FourierShift.fwd", probe, (None, *self.patch_shape), "probe")
        spectrum = apply_ramp(self.xp, fft2(probe)[None], self.ramp_rows, self.ramp_cols)
        return ifft2(spectrum, overwrite=True)

    def adj(self, shifted: Any, out: Any = None, overwrite: bool = False) -> Any:
        """Shift every position back and sum; adds into ``out`` when given (which may
        be complex128 to accumulate in double precision). ``overwrite``: ``shifted`` may
        be destroyed (the GPU path transforms it in place)."""
        _check_shape("FourierShift.adj", shifted, (self.n, None, *self.patch_shape), "shifted")
        spectrum = fft2(shifted, overwrite=overwrite)
        apply_ramp(self.xp, spectrum, self.ramp_rows, self.ramp_cols, conj=True, out=spectrum)
        dtype = out.dtype if out is not None else spectrum.dtype
        total = ifft2(spectrum.sum(axis=0, dtype=dtype))
        if out is None:
            return total
        out += total
        return out

    def derivative(self, probe: Any, part: slice | None = None) -> Any:
        """d/d shift of ``fwd(probe)``: (2, N_POS, MODES, H, W), rows then columns; or of
        the positions ``part`` only."""
        xp = self.xp
        rows, cols = self.ramp_rows, self.ramp_cols
        if part is not None:
            rows, cols = rows[part], cols[part]
        spectrum = apply_ramp(xp, fft2(probe)[None], rows, cols)
        d_rows = (-2j * math.pi * self.freq_rows).astype(xp.complex64)[None, None, :, None]
        d_cols = (-2j * math.pi * self.freq_cols).astype(xp.complex64)[None, None, None, :]
        out = xp.empty((2, *spectrum.shape), dtype=spectrum.dtype)
        xp.multiply(spectrum, d_rows, out=out[0])
        xp.multiply(spectrum, d_cols, out=out[1])
        del spectrum
        ifft2_into(out[0])
        ifft2_into(out[1])
        return out


class Propagation:
    """Far-field propagation: unitary 2-D FFT of every exit wave.

    ``fwd``: (..., H, W) complex exit waves -> far fields, zero frequency at the
    corner (data are shifted once to match, so no shifts run per iteration).
    ``adj``: the inverse FFT, which is the adjoint because the FFT is unitary.
    """

    def fwd(self, x: Any, overwrite: bool = False) -> Any:
        """``overwrite``: ``x`` may be destroyed (``recon.primitives.fft2``)."""
        return fft2(x, overwrite=overwrite)

    def adj(self, y: Any, overwrite: bool = False) -> Any:
        """``overwrite``: ``y`` may be destroyed (``recon.primitives.ifft2``)."""
        return ifft2(y, overwrite=overwrite)


def split_positions(positions: Any) -> tuple[Any, Any]:
    """Nearest integer corner (N_POS, 2) int64 and sub-pixel rest in [-0.5, 0.5) float32."""
    xp = get_array_module(positions)
    corner = xp.floor(positions + 0.5)
    return corner.astype(xp.int64), (positions - corner).astype(xp.float32)


class Ptycho:
    """The linear far-field models of ptychography for fixed probe or fixed object.

    The probe has MODES incoherent modes; every far field carries a mode axis:
    far fields (N_POS, MODES, H, W), intensity = sum over modes of |far field|^2.

    ``probes_at(probe)``: the probe modes as seen at every position, (N_POS, MODES, H, W)
    (Fourier model) or (1, MODES, H, W) (bilinear model: the same everywhere).
    ``fwd_object(obj, probes_at) = F(probes_at * S(obj))`` with adjoint ``adj_object``;
    ``fwd_probe(probe, patches) = F(shift(probe) * patches)`` with adjoint ``adj_probe``
    (``patches = S(obj)``, (N_POS, H, W)). Object (OBJ_H, OBJ_W), probe (MODES, H, W).

    positions : (N_POS, 2) float32 or float64, top-left corners in object pixels (sub-pixel).
        The split into integer corners and float32 sub-pixel rests is done in the
        positions' dtype: float64 positions give rests rounded once, independent of the
        grid's origin (the solver passes float64; ``recon.ptycho._Partition``).
    """

    def __init__(
        self,
        positions: Any,
        object_shape: tuple[int, int],
        patch_shape: tuple[int, int],
        patch_model: str = "fourier",
    ):
        if patch_model not in PATCH_MODELS:
            raise ValueError(f"patch_model {patch_model!r} is not one of {PATCH_MODELS}")
        self.patch_model = patch_model
        self.positions = positions
        self.xp = get_array_module(positions)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        self.shift: FourierShift | None
        if patch_model == "fourier":
            corner, rest = split_positions(positions)
            self.patches: WindowPatches | BilinearPatches = WindowPatches(
                corner, object_shape, patch_shape
            )
            self.shift = FourierShift(rest, patch_shape)
        else:
            self.patches = BilinearPatches(positions, object_shape, patch_shape)
            self.shift = None
        self.propagation = Propagation()

    @property
    def n(self) -> int:
        return self.patches.n

    def probes_at(self, probe: Any) -> Any:
        _check_shape("Ptycho.probes_at", probe, (None, *self.patch_shape), "probe")
        if self.shift is None:
            return probe[None]
        return self.shift.fwd(probe)

    def adj_probes_at(self, shifted: Any, out: Any = None, overwrite: bool = False) -> Any:
        """Adjoint of :meth:`probes_at`: (N_POS, MODES, H, W) -> (MODES, H, W);
        ``overwrite``: ``shifted`` may be destroyed."""
        if self.shift is None:
            total = shifted.sum(axis=0, dtype=out.dtype if out is not None else None)
            if out is None:
                return total
            out += total
            return out
        return self.shift.adj(shifted, out=out, overwrite=overwrite)

    def fwd_object(self, obj: Any, probes_at: Any) -> Any:
        if probes_at.shape[1] == 1:  # the exit waves formed in the fresh patches' memory
            return self.farfield(probes_at, self.patches.fwd(obj), overwrite_patches=True)
        # Several modes: the exit waves are a new array, into which the patches are
        # multiplied a block of patterns at a time (one block on the default CPU path).
        xp = self.xp
        exit_waves = xp.empty(
            (self.n, *probes_at.shape[1:]), dtype=xp.result_type(probes_at.dtype, obj.dtype)
        )
        h, w = self.patch_shape
        for part in window_blocks(xp, self.n, h * w):
            source = probes_at if probes_at.shape[0] == 1 else probes_at[part]
            xp.multiply(source, self.patches.fwd(obj, part)[:, None], out=exit_waves[part])
        return self.propagation.fwd(exit_waves, overwrite=True)

    def adj_object(
        self, farfield: Any, probes_at: Any, out: Any = None, overwrite: bool = False
    ) -> Any:
        """Adjoint of :meth:`fwd_object`; ``overwrite``: ``farfield`` may be destroyed."""
        back = multiply_conj(self.xp, self.propagation.adj(farfield, overwrite), probes_at)
        return self.patches.adj(sum_modes(self.xp, back), out=out)

    def fwd_probe(self, probe: Any, patches: Any) -> Any:
        return self.farfield(self.probes_at(probe), patches)

    def farfield(self, probes_at: Any, patches: Any, overwrite_patches: bool = False) -> Any:
        """Far fields (N_POS, MODES, H, W) of ``probes_at`` times object ``patches``.

        ``overwrite_patches``: ``patches`` may be destroyed; with one mode the exit waves
        are then formed in their memory (the product is the same numbers). The exit waves
        are transformed in place on the GPU path (``recon.primitives.fft2``)."""
        patches = patches[:, None]
        if overwrite_patches and probes_at.shape[1] == 1:
            exit_waves = self.xp.multiply(probes_at, patches, out=patches)
        else:
            exit_waves = probes_at * patches
        del patches
        return self.propagation.fwd(exit_waves, overwrite=True)

    def adj_probe_gathering(
        self, farfield: Any, obj: Any, out: Any = None, overwrite: bool = False, power: Any = None
    ) -> Any:
        """:meth:`adj_probe` of the object ``obj``'s patches, gathered a block of patterns at
        a time (``recon.primitives.window_blocks``) instead of passed whole: no array of
        every patch. ``power``: adds ``sum_n |patches_n|^2`` (H, W) into it when given."""
        xp = self.xp
        back = self.propagation.adj(farfield, overwrite)
        h, w = self.patch_shape
        for part in window_blocks(xp, self.n, h * w):
            patches = self.patches.fwd(obj, part)
            if power is not None:
                square = patches.real * patches.real + patches.imag * patches.imag
                power += square.sum(axis=0, dtype=power.dtype)
                del square
            multiply_conj(xp, back[part], patches[:, None])
            del patches
        return self.adj_probes_at(back, out=out, overwrite=True)

    def farfield_gathering(self, probes_at: Any, obj: Any) -> Any:
        """:meth:`farfield` of the object ``obj``'s patches, with the exit waves formed in the
        memory of ``probes_at`` (N_POS, MODES, H, W), which is destroyed, and the patches
        gathered a block of patterns at a time (``recon.primitives.window_blocks``): no
        second pattern-sized array. (1, MODES, H, W) ``probes_at`` (the bilinear model)
        is not overwritten (it may be a view of the probe)."""
        if self.shift is None:
            return self.farfield(probes_at, self.patches.fwd(obj), overwrite_patches=True)
        xp = self.xp
        h, w = self.patch_shape
        for part in window_blocks(xp, self.n, h * w):
            block = probes_at[part]
            xp.multiply(block, self.patches.fwd(obj, part)[:, None], out=block)
        return self.propagation.fwd(probes_at, overwrite=True)

    def adj_probe(
        self, farfield: Any, patches: Any, out: Any = None, overwrite: bool = False
    ) -> Any:
        """Adjoint of :meth:`fwd_probe`; ``overwrite``: ``farfield`` may be destroyed."""
        back = multiply_conj(self.xp, self.propagation.adj(farfield, overwrite), patches[:, None])
        # ``back`` is this call's own (a new array, or ``farfield`` given to overwrite).
        return self.adj_probes_at(back, out=out, overwrite=True)

    def intensity(self, obj: Any, probe: Any) -> Any:
        """Modelled intensity (N_POS, H, W), zero frequency at the corner."""
        far = self.fwd_object(obj, self.probes_at(probe))
        return (far.real**2 + far.imag**2).sum(axis=1)
