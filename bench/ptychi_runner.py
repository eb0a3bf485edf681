"""Run Pty-chi's LSQML or rPIE reconstruction on data in ptychoflow's conventions.

This is the comparison baseline for ``bench/recon.py``: the same scan, the same
initial probe, the same iteration budget, and an object that comes back on OUR
object grid so our metrics compare it with the truth directly.

Our conventions (the ``recon`` forward model)
---------------------------------------------
- ``data`` : (N_POS, DET_H, DET_W) float32 photon counts, zero frequency CENTRED
  at index (DET_H // 2, DET_W // 2) (``numpy.fft.fftshift`` order).
- ``positions`` : (N_POS, 2) float32, (row, col) of each probe patch's TOP-LEFT
  corner in object pixels, all >= 0, sub-pixel allowed.
- ``probe`` : (DET_H, DET_W) complex64 in a UNITARY-FFT model:
  ``counts = |fftshift(fft2(probe * patch, norm="ortho"))|**2``.
- object grid : shape ``(ceil(max row) + DET_H + 2, ceil(max col) + DET_W + 2)``
  (:func:`object_grid_shape`); object index (r, c) on the same grid as the positions.

Conversions to Pty-chi (ptychi 2.2) and why
-------------------------------------------
1. **Centring.** Pty-chi's far field is a bare ``fft2`` with the zero frequency
   at index (0, 0); its ``fft_shift=True`` option applies ``torch.fft.fftshift``
   to centred data. That is the exact inverse of our centring only for even
   detector sizes (for odd sizes ``fftshift`` moves the centre to the wrong
   corner). We therefore apply ``numpy.fft.ifftshift`` ourselves, the exact
   inverse of ``fftshift`` for any size, and pass ``fft_shift=False``.
2. **Probe scale.** Pty-chi's far field is UNnormalised (``norm="backward"``):
   ``fft2(x) = sqrt(DET_H * DET_W) * fft2(x, norm="ortho")``. A probe valid in our
   unitary model is divided by ``sqrt(DET_H * DET_W)`` on the way in and multiplied
   back on the way out, so the model intensities agree exactly (a test checks
   Pty-chi's own forward model reproduces our data). We do this exactly rather
   than with ``ptychi.utils.rescale_probe``, which only matches the total
   intensity under an assumed unit-amplitude object. LSQML's own
   ``rescale_probe_intensity_in_first_epoch`` (on by default, like our solver's
   probe rescaling before the first iteration) is left on.
3. **Probe shape.** Pty-chi probes are (N_OPR_MODES, N_INCOHERENT_MODES, H, W):
   ours becomes (1, 1, DET_H, DET_W) (one coherent mode, no OPR modes).
4. **Positions.** Pty-chi takes patch CENTRES, in pixels, relative to an origin
   ``pos_origin_coords`` in the object array, as two separate 1-D arrays ``y``
   (rows) and ``x`` (cols). Its patch extractor puts the patch's top-left corner
   at ``origin + centre - (DET - 1) / 2``. We pin the origin explicitly
   (``determine_position_origin_coords_by=SPECIFIED``) at the array's geometric
   centre ``((OBJ_H - 1) / 2, (OBJ_W - 1) / 2)`` instead of relying on the
   default ``SUPPORT`` rule (``round(shape / 2) - 0.5``, whose half-even
   rounding depends on the shape's parity), and pass
   ``centre = top_left + (DET - 1) / 2 - origin``. The top-left corner then lands
   exactly on our position; integer positions need no interpolation, sub-pixel
   ones use Pty-chi's Fourier-shift extractor.
5. **Object grid.** Pty-chi's object is (N_SLICES, OBJ_H, OBJ_W); we give it one
   slice of exactly our grid shape, initialised to ones like our solver, so the
   result is already on our grid: ``object[0]`` is returned as it is.
6. **Noise model.** Gaussian (Pty-chi's default for LSQML and the PtychoShelves
   LSQ-ML default; Pty-chi's examples use it): LSQML's Gaussian model is the
   amplitude-based one and converges stably from a flat object. Poisson is
   available through ``noise_model="poisson"``.
7. **Devices and dtype.** CPU, float32 / complex64. Pty-chi sets torch's default
   device and dtype globally when a task is built; we set them to the same
   values torch starts with.

The CUDA ``torchvision`` wheel the index serves fails to import beside the CPU
torch ("operator torchvision::nms does not exist"). Pty-chi imports it only for
an image-blur helper that a reconstruction never calls, so :func:`import_ptychi`
registers the two missing operator schemas with ``torch.library`` and retries.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import time
from types import ModuleType
from typing import Any, Literal

import numpy as np

from recon.errors import InputError

#: Keeps the torch.library definitions alive (they are removed when it is collected).
_TORCHVISION_SCHEMA_LIBRARY: Any = None

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def import_ptychi() -> ModuleType:
    """Import ``ptychi`` (and ``ptychi.api``), repairing a CUDA torchvision if needed.

    Raises ``ImportError`` if ``torch`` or ``ptychi`` is not installed.
    """
    global _TORCHVISION_SCHEMA_LIBRARY
    import torch

    try:
        importlib.import_module("torchvision")
    except ImportError:
        pass  # no torchvision at all: Pty-chi will say so itself
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if _TORCHVISION_SCHEMA_LIBRARY is None:
            library = torch.library.Library("torchvision", "DEF")
            for schema in _TORCHVISION_SCHEMAS:
                library.define(schema)
            _TORCHVISION_SCHEMA_LIBRARY = library
        importlib.import_module("torchvision")
    ptychi = importlib.import_module("ptychi")
    importlib.import_module("ptychi.api")
    return ptychi


@dataclasses.dataclass
class PtychiResult:
    """What one Pty-chi LSQML run produced, in our conventions.

    object : (OBJ_H, OBJ_W) complex64 on our object grid (:func:`object_grid_shape`).
    probe : (DET_H, DET_W) complex64, unitary-FFT scale (like our input probe).
    seconds_total : wall time for building the task (data to torch, options) and all
        iterations.
    seconds_per_iteration : wall time of the iterations alone divided by their number.
    cost_history : (ITERATIONS,) float64, Pty-chi's displayed cost per epoch (its
        ``MSE_SQRT`` metric: mean squared error of the amplitudes, on Pty-chi's
        unnormalised-FFT scale), for convergence plots only.
    batch_size : the minibatch size used.
    noise_model : "gaussian" or "poisson".
    """

    object: np.ndarray
    probe: np.ndarray
    seconds_total: float
    seconds_per_iteration: float
    cost_history: np.ndarray
    batch_size: int
    noise_model: str


@dataclasses.dataclass
class PtychiInputs:
    """Arrays converted to Pty-chi's conventions (see the module docstring).

    patterns : (N_POS, DET_H, DET_W) float32, zero frequency at index (0, 0).
    probe : (1, MODES, DET_H, DET_W) complex64, unnormalised-FFT scale.
    position_y_px, position_x_px : (N_POS,) float32 patch centres relative to origin.
    origin : (2,) the object pixel coordinates of the positions' origin.
    object_shape : (OBJ_H, OBJ_W), our grid.
    """

    patterns: np.ndarray
    probe: np.ndarray
    position_y_px: np.ndarray
    position_x_px: np.ndarray
    origin: tuple[float, float]
    object_shape: tuple[int, int]


def object_grid_shape(positions: np.ndarray, probe_shape: tuple[int, int]) -> tuple[int, int]:
    """Our object grid: ``(ceil(max row) + DET_H + 2, ceil(max col) + DET_W + 2)``."""
    positions = np.asarray(positions)
    return (
        math.ceil(float(positions[:, 0].max())) + int(probe_shape[0]) + 2,
        math.ceil(float(positions[:, 1].max())) + int(probe_shape[1]) + 2,
    )


def _check_inputs(data: np.ndarray, positions: np.ndarray, probe: np.ndarray) -> None:
    if data.ndim != 3:
        raise InputError(f"data: expected (N_POS, DET_H, DET_W) counts, got shape {data.shape}")
    if probe.ndim not in (2, 3) or probe.shape[-2:] != data.shape[1:]:
        raise InputError(
            f"probe: expected shape {data.shape[1:]} or (MODES, *{data.shape[1:]}) (the "
            f"detector shape), got {probe.shape}"
        )
    if positions.shape != (data.shape[0], 2):
        raise InputError(
            f"positions: expected shape ({data.shape[0]}, 2) (row, col per pattern), "
            f"got {positions.shape}"
        )
    if not np.all(np.isfinite(positions)) or positions.min() < 0:
        raise InputError("positions: expected finite top-left corners >= 0 in object pixels")
    if not np.all(np.isfinite(data)) or data.min() < 0:
        raise InputError("data: expected finite, non-negative counts")


def to_ptychi_inputs(data: np.ndarray, positions: np.ndarray, probe: np.ndarray) -> PtychiInputs:
    """Convert our arrays to Pty-chi's conventions (pure NumPy, no torch needed).

    data : (N_POS, DET_H, DET_W) counts, zero frequency centred.
    positions : (N_POS, 2) top-left (row, col) in object pixels.
    probe : (DET_H, DET_W) or (MODES, DET_H, DET_W) complex, unitary-FFT scale.
    """
    data = np.asarray(data)
    positions = np.asarray(positions, dtype=np.float64)
    probe = np.asarray(probe)
    _check_inputs(data, positions, probe)
    det_h, det_w = probe.shape[-2:]
    object_shape = object_grid_shape(positions, (det_h, det_w))
    origin = ((object_shape[0] - 1) / 2.0, (object_shape[1] - 1) / 2.0)
    patterns = np.ascontiguousarray(np.fft.ifftshift(data, axes=(-2, -1)), dtype=np.float32)
    modes = probe.reshape(-1, det_h, det_w)
    probe_ptychi = (modes / math.sqrt(det_h * det_w)).astype(np.complex64)[None]
    centre_y = positions[:, 0] + (det_h - 1) / 2.0 - origin[0]
    centre_x = positions[:, 1] + (det_w - 1) / 2.0 - origin[1]
    return PtychiInputs(
        patterns=patterns,
        probe=probe_ptychi,
        position_y_px=centre_y.astype(np.float32),
        position_x_px=centre_x.astype(np.float32),
        origin=origin,
        object_shape=object_shape,
    )


Engine = Literal["lsqml", "rpie"]


def build_task(
    engine: Engine,
    data: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    *,
    iterations: int,
    object_guess: np.ndarray | None = None,
    batch_size: int | None = None,
    noise_model: Literal["gaussian", "poisson"] = "gaussian",
    pixel_size: float = 1e-8,
    wavelength: float = 1e-10,
    seed: int = 0,
    modes: int = 1,
    refine_positions: bool = False,
    alpha: float = 0.1,
) -> Any:
    """Build a ``ptychi.api.task.PtychographyTask`` for LSQML or rPIE on our data.

    probe : (DET_H, DET_W) or (MODES, DET_H, DET_W) complex, unitary-FFT scale.
    object_guess : (OBJ_H, OBJ_W) complex on our grid; ones if None.
    batch_size : minibatch size; ``default_batch_size(N_POS)`` if None.
    noise_model : LSQML only.
    modes : incoherent probe modes; when ``probe`` has fewer, the extra ones are made
        with Pty-chi's own ``orthogonalize_initial_probe`` (Hermite modes) and the modes
        are kept orthogonal every iteration (its default).
    refine_positions : Pty-chi's gradient position correction, with the mean position
        held fixed, from the second iteration on.
    alpha : rPIE's object and probe alpha (Maiden 2017, table 1).
    Returns the built task (not yet run); ``task.run()`` iterates.
    """
    import_ptychi()
    import ptychi.api as api
    import torch
    from ptychi.api.task import PtychographyTask
    from ptychi.utils import orthogonalize_initial_probe

    inputs = to_ptychi_inputs(data, positions, probe)
    n_positions = inputs.patterns.shape[0]
    if object_guess is None:
        object_guess = np.ones(inputs.object_shape, dtype=np.complex64)
    elif tuple(object_guess.shape) != inputs.object_shape:
        raise InputError(
            f"object_guess: expected our grid shape {inputs.object_shape}, got {object_guess.shape}"
        )
    if noise_model not in ("gaussian", "poisson"):
        raise InputError(f"noise_model: expected 'gaussian' or 'poisson', got {noise_model!r}")
    if engine not in ("lsqml", "rpie"):
        raise InputError(f"engine: expected 'lsqml' or 'rpie', got {engine!r}")
    batch = default_batch_size(n_positions) if batch_size is None else int(batch_size)

    options = api.LSQMLOptions() if engine == "lsqml" else api.RPIEOptions()
    options.data_options.fft_shift = False  # we ifftshift ourselves (exact for odd sizes too)
    options.data_options.wavelength_m = wavelength
    options.object_options.pixel_size_m = pixel_size
    options.object_options.optimizable = True
    options.object_options.determine_position_origin_coords_by = (
        api.ObjectPosOriginCoordsMethods.SPECIFIED
    )
    options.object_options.position_origin_coords = list(inputs.origin)
    options.probe_options.optimizable = True
    options.probe_position_options.optimizable = bool(refine_positions)
    if refine_positions:
        options.probe_position_options.constrain_position_mean = True
        options.probe_position_options.optimization_plan.start = 1
    options.reconstructor_options.num_epochs = int(iterations)
    options.reconstructor_options.batch_size = batch
    if engine == "lsqml":
        options.reconstructor_options.noise_model = api.NoiseModels(noise_model)
    else:
        options.object_options.alpha = float(alpha)
        options.probe_options.alpha = float(alpha)
    options.reconstructor_options.default_device = api.Devices.CPU
    options.reconstructor_options.random_seed = seed

    torch.set_default_dtype(torch.float32)
    probe_tensor = torch.from_numpy(inputs.probe)
    if modes > probe_tensor.shape[1]:
        extended = torch.zeros((1, modes, *probe_tensor.shape[-2:]), dtype=probe_tensor.dtype)
        extended[:, : probe_tensor.shape[1]] = probe_tensor
        probe_tensor = orthogonalize_initial_probe(extended)
    return PtychographyTask(
        options,
        diffraction_data=torch.from_numpy(inputs.patterns),
        object_data=torch.from_numpy(np.asarray(object_guess, dtype=np.complex64)[None]),
        probe_data=probe_tensor,
        probe_position_y_px=torch.from_numpy(inputs.position_y_px),
        probe_position_x_px=torch.from_numpy(inputs.position_x_px),
    )


def default_batch_size(n_positions: int) -> int:
    """Minibatch size: about a tenth of the scan, between 32 and 100 patterns.

    LSQML updates after every minibatch; ~10 or more minibatches per epoch
    converge well (PtychoShelves' usual setting). On a 2-core CPU with 128x128
    patterns, batches above ~100 were slower per epoch (516 positions: 1.9 s at
    52, 3.4 s at 128, 4.8 s at 516; 1800 positions: 3.9 s at 100, 8.6 s at 180),
    and small ones pay a per-batch cost over the whole object (1800 positions:
    6.3 s at 32).
    """
    return int(min(n_positions, max(32, min(100, round(n_positions / 10)))))


def run_ptychi(
    engine: Engine,
    data: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    *,
    iterations: int,
    pixel_size: float = 1e-8,
    wavelength: float = 1e-10,
    threads: int | None = None,
    batch_size: int | None = None,
    noise_model: Literal["gaussian", "poisson"] = "gaussian",
    seed: int = 0,
    modes: int = 1,
    refine_positions: bool = False,
    alpha: float = 0.1,
) -> PtychiResult:
    """Reconstruct object and probe with Pty-chi's LSQML or rPIE, in our conventions.

    data : (N_POS, DET_H, DET_W) float32 counts, zero frequency centred.
    positions : (N_POS, 2) float32 top-left (row, col) in object pixels, >= 0.
    probe : (DET_H, DET_W) complex64 initial probe, unitary-FFT scale.
    iterations : epochs (each visits every pattern once, in minibatches).
    threads : torch CPU threads (``torch.set_num_threads``); unchanged if None.
    modes, refine_positions, alpha : see :func:`build_task`.
    Returns a :class:`PtychiResult` whose object is on our grid; its probe is
    (DET_H, DET_W) for one mode, else (MODES, DET_H, DET_W).
    """
    import_ptychi()
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    task = build_task(
        engine,
        data,
        positions,
        probe,
        iterations=iterations,
        batch_size=batch_size,
        noise_model=noise_model,
        pixel_size=pixel_size,
        wavelength=wavelength,
        seed=seed,
        modes=modes,
        refine_positions=refine_positions,
        alpha=alpha,
    )
    start_iterations = time.perf_counter()
    task.run()
    end = time.perf_counter()
    det_h, det_w = probe.shape[-2:]
    result_object = task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64)
    result_probe = task.get_data_to_cpu("probe", as_numpy=True)[0] * math.sqrt(det_h * det_w)
    if result_probe.shape[0] == 1:
        result_probe = result_probe[0]
    cost = task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64)
    return PtychiResult(
        object=result_object,
        probe=result_probe.astype(np.complex64),
        seconds_total=end - start,
        seconds_per_iteration=(end - start_iterations) / int(iterations),
        cost_history=cost,
        batch_size=task.options.reconstructor_options.batch_size,
        noise_model=noise_model if engine == "lsqml" else "rpie",
    )


def _timing_scan(n_positions: int, det: int, seed: int = 0):
    """Random-ish scan for timing only: raster with jitter, a random phase object."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n_positions))
    step = det // 8
    rows, cols = np.divmod(np.arange(n_positions), side)
    positions = np.stack([rows, cols], axis=1) * step + 2 + rng.uniform(-1, 1, (n_positions, 2))
    positions = positions.astype(np.float32)
    shape = object_grid_shape(positions, (det, det))
    truth = np.exp(1j * rng.uniform(-0.5, 0.5, shape)).astype(np.complex64)
    y, x = np.mgrid[:det, :det] - (det - 1) / 2
    probe = np.exp(-(y**2 + x**2) / (2 * (det / 8) ** 2)).astype(np.complex64) * 100
    data = np.empty((n_positions, det, det), np.float32)
    for i, (r, c) in enumerate(np.round(positions).astype(int)):
        far = np.fft.fft2(probe * truth[r : r + det, c : c + det], norm="ortho")
        data[i] = np.abs(np.fft.fftshift(far)) ** 2
    return data, positions, probe


def main(argv: list[str] | None = None) -> int:
    """Time Pty-chi LSQML per iteration: ``python -m bench.ptychi_runner 516 1800``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sizes", nargs="+", type=int, help="numbers of positions to time")
    parser.add_argument("--detector", type=int, default=128, help="detector side in pixels")
    parser.add_argument("--iterations", type=int, default=5, help="LSQML epochs per run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch size")
    args = parser.parse_args(argv)
    print("positions  detector  batch  threads  s/iteration  total s")
    for n_positions in args.sizes:
        data, positions, probe = _timing_scan(n_positions, args.detector)
        result = run_ptychi(
            "lsqml",
            data,
            positions,
            probe,
            iterations=args.iterations,
            threads=args.threads,
            batch_size=args.batch_size,
        )
        print(
            f"{n_positions:9d}  {args.detector:8d}  {result.batch_size:5d}  {args.threads:7d}"
            f"  {result.seconds_per_iteration:11.3f}  {result.seconds_total:7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
