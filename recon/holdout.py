"""Stopping on held-out patterns: early stopping by validation, against fitting noise.

A maximum-likelihood fit that runs long enough follows the photon noise of the patterns
it fits: the cost keeps falling while the object gains grain that is not in the sample.
The patterns it does not fit are a fair judge: a small random share of them
(``ReconOptions.holdout_fraction``, e.g. 5 %) is left out of the fit, and after every
iteration their cost under the current object and probe (the same noise model) is
evaluated. That held-out cost falls while the fit learns the sample and rises once it
learns the noise; the iterate with the lowest held-out cost is kept, and the solver stops
after ``holdout_patience`` iterations without a new lowest one. This is early stopping
on a validation set, the standard guard in iterative inverse problems and machine
learning; in ptychography see e.g. the "cross-validation" stopping of the Poisson ML
solvers (Thibault & Guizar-Sicairos 2012 discuss the over-fitting it prevents).

Held-out patterns are chosen at random (fixed seed, so reruns agree) away from the
scan's outermost rows and columns, so the object grid of the fitted patterns still
holds them. They do not contribute to the image: the price is that share of the dose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from recon.backend import COMPLEX, REAL, to_host
from recon.cost import make_cost
from recon.errors import InputError
from recon.operators import Ptycho
from recon.options import ReconOptions
from recon.ptycho import IterationMonitor, ProgressCallback, ReconResult, reconstruct
from recon.scan import ScanData

#: Seed of the random choice of held-out patterns.
HOLDOUT_SEED = 0
#: Patterns whose row or column is within this share of the scan's extent from its
#: largest or smallest value are never held out.
EDGE_SHARE = 0.05


@dataclasses.dataclass
class HoldoutReport:
    """What stopping on held-out patterns saw.

    indices : (N_HELD,) int, the held-out patterns (indices into the full scan).
    cost : (N_DONE + 1,) float64, held-out mean cost per pixel; cost[0] is the start.
    best_iteration : the iteration whose object and probe were returned.
    iterations_run : iterations the solver ran before stopping.
    """

    indices: np.ndarray
    cost: np.ndarray
    best_iteration: int
    iterations_run: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "patterns": len(self.indices),
            "best_iteration": int(self.best_iteration),
            "iterations_run": int(self.iterations_run),
            "cost": [float(c) for c in self.cost],
        }


def choose_holdout(positions: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of about ``fraction`` x N_POS patterns to hold out, sorted.

    positions : (N_POS, 2) (row, col). At least one pattern is held out; patterns near
    the scan's outer edges are not. Raises InputError when too few are left to choose.
    """
    n_positions = len(positions)
    count = max(1, round(fraction * n_positions))
    low, high = positions.min(axis=0), positions.max(axis=0)
    margin = EDGE_SHARE * (high - low)
    interior = np.all((positions > low + margin) & (positions < high - margin), axis=1)
    candidates = np.flatnonzero(interior)
    if len(candidates) < count or n_positions - count < 1:
        raise InputError(
            f"cannot hold out {count} of {n_positions} patterns (holdout_fraction "
            f"{fraction}); use a smaller fraction or 0"
        )
    rng = np.random.default_rng(HOLDOUT_SEED)
    return np.sort(rng.choice(candidates, size=count, replace=False))


class HeldOutCost:
    """The cost of held-out patterns under an object and probe, on the host.

    data : (N_HELD, H, W) counts, zero frequency centred; positions : (N_HELD, 2);
    object_shape : the solver's object grid; probe : (H, W) or (MODES, H, W) at call time
    (intensities of modes add). Returns the mean cost per measured pixel.
    """

    def __init__(
        self,
        data: np.ndarray,
        positions: np.ndarray,
        object_shape: tuple[int, int],
        options: ReconOptions,
        mask: np.ndarray | None = None,
    ):
        corner = np.fft.ifftshift(data, axes=(-2, -1)).astype(REAL)
        mask_corner = None if mask is None else np.fft.ifftshift(mask.astype(REAL))
        self.cost = make_cost(options.cost, corner, mask_corner)
        self.positions = np.asarray(positions, REAL)
        self.patch_shape = data.shape[-2:]
        self.patch_model = options.patch_model.value
        self.models: dict[tuple[int, int], Ptycho] = {}
        measured = data.shape[-2] * data.shape[-1] if mask is None else int(mask.sum())
        self.n_measured = len(data) * measured

    def __call__(self, object_: Any, probe: Any) -> float:
        object_ = np.asarray(to_host(object_), dtype=COMPLEX)
        modes = np.asarray(to_host(probe), dtype=COMPLEX)
        # The solver's object grows when it refines positions: one model per object shape.
        model = self.models.get(object_.shape)
        if model is None:
            model = Ptycho(self.positions, object_.shape, self.patch_shape, self.patch_model)
            self.models[object_.shape] = model
        intensity = model.intensity(object_, modes.reshape(-1, *modes.shape[-2:]))
        return self.cost.value(intensity) / self.n_measured


def reconstruct_with_holdout(
    scan: ScanData,
    options: ReconOptions,
    *,
    device_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    watch: IterationMonitor | None = None,
) -> tuple[ReconResult, HoldoutReport]:
    """Reconstruct with ``options.holdout_fraction`` of the patterns held out, stopping
    on their cost; returns the best iterate (object and probe) and a report.

    The result's ``positions`` are the full scan's (the image is on the same grid as
    without holding out); its ``cost`` is the fitted patterns' history up to the stop.
    ``watch(iteration, object, probe)`` sees every iterate first (its answer is ignored:
    only the held-out cost stops the fit), e.g. for progress images.
    """
    from recon.ptycho import initial_probe, object_shape_for, staged_start_end

    held = choose_holdout(scan.positions, options.holdout_fraction)
    fitted = np.setdiff1d(np.arange(scan.n_positions), held)
    fit_scan = dataclasses.replace(scan, data=scan.data[fitted], positions=scan.positions[fitted])
    object_shape = object_shape_for(fit_scan.positions, scan.detector_shape)
    judge = HeldOutCost(scan.data[held], scan.positions[held], object_shape, options, scan.mask)
    best: dict[str, Any] = {"cost": np.inf, "iteration": 0, "object": None, "probe": None}
    history = [judge(np.ones(object_shape, dtype=COMPLEX), initial_probe(fit_scan))]

    # Iterates up to the end of the staged start (probe warm-up, amplitude cost) are
    # recorded but not judged: the held-out cost of ``options.cost`` can rise during the
    # amplitude stage, which would stop the fit before it begins.
    staged = staged_start_end(options)

    def monitor(iteration: int, object_: Any, probe: Any) -> bool:
        if watch is not None:
            watch(iteration, object_, probe)
        value = judge(object_, probe)
        history.append(value)
        if iteration <= staged:
            return False
        if value < best["cost"]:
            best.update(
                cost=value,
                iteration=iteration,
                object=to_host(object_).copy(),
                probe=to_host(probe).copy(),
            )
        return iteration - max(best["iteration"], staged) >= options.holdout_patience

    result = reconstruct(
        fit_scan, options, device_ids=device_ids, progress=progress, monitor=monitor
    )
    iterations_run = len(result.cost) - 1
    refined = scan.positions.copy()
    if result.refined_positions is not None:
        refined[fitted] = result.refined_positions
    result = dataclasses.replace(result, positions=scan.positions, refined_positions=refined)
    if best["object"] is not None:
        # fit_to_noise described the last iterate, not the one kept
        result = dataclasses.replace(
            result, object=best["object"], probe=best["probe"], fit_to_noise=None
        )
    report = HoldoutReport(
        indices=held,
        cost=np.asarray(history, dtype=np.float64),
        best_iteration=int(best["iteration"]),
        iterations_run=iterations_run,
    )
    return result, report
