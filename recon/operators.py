"""Far-field ptychography operators: small classes with ``fwd`` and ``adj``.

Every operator is linear in the argument of ``fwd`` and ``adj`` is its exact
adjoint (checked by the dot-product test in ``tests/unit/test_operators.py``).
All arrays of one operator live on one device; the array module is taken from
the inputs.
"""

from __future__ import annotations

from typing import Any

from recon.backend import fft2, get_array_module, ifft2, is_cupy


def _check_shape(name: str, array: Any, expected: tuple[int | None, ...], what: str) -> None:
    if array.ndim != len(expected) or any(
        e is not None and s != e for s, e in zip(array.shape, expected, strict=True)
    ):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: {what} has shape {array.shape}, expected {shown}")


class Patches:
    """Sub-pixel patch extraction by bilinear interpolation, and its adjoint.

    ``fwd``: object (OBJ_H, OBJ_W) complex -> patches (N_POS, PATCH_H, PATCH_W).
    ``adj``: patches (N_POS, PATCH_H, PATCH_W) -> object (OBJ_H, OBJ_W), the
    overlapping contributions summed.

    positions : (N_POS, 2) float32
        (row, col) of each patch's top-left corner in object pixels. Patch pixel
        (i, j) samples the object at (row + i, col + j) by bilinear interpolation,
        so every patch reads a (PATCH_H + 1, PATCH_W + 1) integer window.
    """

    def __init__(self, positions: Any, object_shape: tuple[int, int], patch_shape: tuple[int, int]):
        xp = get_array_module(positions)
        _check_shape("Patches", positions, (None, 2), "positions")
        self.xp = xp
        self.object_shape = tuple(int(s) for s in object_shape)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        corner = xp.floor(positions)
        frac = (positions - corner).astype(xp.float32)
        self.corner = corner.astype(xp.int64)
        low, high = int(self.corner.min()) if len(positions) else 0, None
        if len(positions):
            high_r = int(self.corner[:, 0].max()) + self.patch_shape[0] + 1
            high_c = int(self.corner[:, 1].max()) + self.patch_shape[1] + 1
            high = (high_r, high_c)
            if low < 0 or high_r > self.object_shape[0] or high_c > self.object_shape[1]:
                raise ValueError(
                    f"Patches: positions need an object of at least {high} pixels with all "
                    f"positions >= 0, got object {self.object_shape} and smallest corner {low}"
                )
        fr = frac[:, 0, None, None]
        fc = frac[:, 1, None, None]
        # Bilinear weights of the four neighbours, each (N_POS, 1, 1).
        self.weights = ((1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc)
        self.n = int(positions.shape[0])
        # Index arrays of every window pixel: (N_POS, PATCH_H + 1, 1) and (N_POS, 1, PATCH_W + 1).
        self._rows = (
            self.corner[:, 0, None, None] + xp.arange(self.patch_shape[0] + 1)[None, :, None]
        )
        self._cols = (
            self.corner[:, 1, None, None] + xp.arange(self.patch_shape[1] + 1)[None, None, :]
        )

    def _windows(self, obj: Any) -> Any:
        """The (N_POS, PATCH_H + 1, PATCH_W + 1) integer windows of ``obj`` (a copy)."""
        xp = self.xp
        ph, pw = self.patch_shape
        if is_cupy(xp):
            return obj[self._rows, self._cols]
        # On the CPU a strided view indexed by corner copies whole rows: much faster
        # than per-element fancy indexing.
        s0, s1 = obj.strides
        view = xp.lib.stride_tricks.as_strided(
            obj,
            shape=(obj.shape[0] - ph, obj.shape[1] - pw, ph + 1, pw + 1),
            strides=(s0, s1, s0, s1),
            writeable=False,
        )
        return view[self.corner[:, 0], self.corner[:, 1]]

    def fwd(self, obj: Any) -> Any:
        _check_shape("Patches.fwd", obj, self.object_shape, "object")
        w00, w01, w10, w11 = self.weights
        win = self._windows(obj)
        out = win[:, :-1, :-1] * w00
        out += win[:, :-1, 1:] * w01
        out += win[:, 1:, :-1] * w10
        out += win[:, 1:, 1:] * w11
        return out

    def adj(self, patches: Any, out: Any = None) -> Any:
        """Sum the patches back into an object; adds into ``out`` when given.

        ``out`` may have a wider dtype (complex128) than the patches: overlapping
        contributions are then accumulated in double precision.
        """
        xp = self.xp
        _check_shape("Patches.adj", patches, (self.n, *self.patch_shape), "patches")
        ph, pw = self.patch_shape
        w00, w01, w10, w11 = self.weights
        win = xp.zeros((self.n, ph + 1, pw + 1), dtype=patches.dtype)
        win[:, :-1, :-1] += patches * w00
        win[:, :-1, 1:] += patches * w01
        win[:, 1:, :-1] += patches * w10
        win[:, 1:, 1:] += patches * w11
        if out is None:
            out = xp.zeros(self.object_shape, dtype=patches.dtype)
        _check_shape("Patches.adj", out, self.object_shape, "out")
        if is_cupy(xp):
            import cupyx  # type: ignore[import-not-found]

            rows = xp.broadcast_to(self._rows, win.shape)
            cols = xp.broadcast_to(self._cols, win.shape)
            win = win.astype(out.dtype, copy=False)  # e.g. accumulate in double precision
            if xp.iscomplexobj(win):
                # scatter_add has no complex atomics: add real and imaginary parts as views.
                cupyx.scatter_add(out.real, (rows, cols), win.real)
                cupyx.scatter_add(out.imag, (rows, cols), win.imag)
            else:
                cupyx.scatter_add(out, (rows, cols), win)
        else:
            # Windows overlap, so add one at a time; each add is a contiguous block.
            corner = self.corner.tolist()
            for n, (r, c) in enumerate(corner):
                out[r : r + ph + 1, c : c + pw + 1] += win[n]
        return out


class Propagation:
    """Far-field propagation: unitary 2-D FFT of every exit wave.

    ``fwd``: (N_POS, H, W) complex exit waves -> far fields, zero frequency at the
    corner (data are shifted once to match, so no shifts run per iteration).
    ``adj``: the inverse FFT, which is the adjoint because the FFT is unitary.
    """

    def fwd(self, x: Any) -> Any:
        return fft2(x)

    def adj(self, y: Any) -> Any:
        return ifft2(y)


class Ptycho:
    """The linear far-field models of ptychography for fixed probe or fixed object.

    ``fwd_object(obj) = F(probe * S(obj))`` with adjoint ``adj_object``;
    ``fwd_probe(probe, patches) = F(patches * probe)`` with adjoint ``adj_probe``
    (``patches = S(obj)``). Shapes: object (OBJ_H, OBJ_W), probe (H, W),
    far fields (N_POS, H, W), all complex64.
    """

    def __init__(self, patches: Patches):
        self.patches = patches
        self.propagation = Propagation()

    def fwd_object(self, obj: Any, probe: Any) -> Any:
        _check_shape("Ptycho.fwd_object", probe, self.patches.patch_shape, "probe")
        return self.propagation.fwd(self.patches.fwd(obj) * probe)

    def adj_object(self, farfield: Any, probe: Any, out: Any = None) -> Any:
        return self.patches.adj(self.propagation.adj(farfield) * probe.conj(), out=out)

    def fwd_probe(self, probe: Any, patches: Any) -> Any:
        _check_shape("Ptycho.fwd_probe", probe, self.patches.patch_shape, "probe")
        return self.propagation.fwd(patches * probe)

    def adj_probe(self, farfield: Any, patches: Any) -> Any:
        return (self.propagation.adj(farfield) * patches.conj()).sum(axis=0)
