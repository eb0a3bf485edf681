"""Inputs of the fused-pass tests (``test_fused_primitives.py`` on the CPU,
``test_gpu_equivalence.py`` on a GPU): counts with zeros, far fields with dark pixels,
line-search directions that drive trial intensities below zero, and every cost variant."""

from __future__ import annotations

import numpy as np

from recon.backend import get_array_module
from recon.cost import dark_floor, make_cost

#: (cost, dark floor fraction, masked): every branch of the fused kernels.
COST_CASES = [
    (kind, floor, masked)
    for kind in ("poisson", "gaussian")
    for floor in (0.0, 1e-3)
    for masked in (False, True)
]
COST_IDS = [
    f"{kind}-floor{floor:g}-{'mask' if masked else 'nomask'}" for kind, floor, masked in COST_CASES
]
#: Trial steps, as a backtracking from 4 with halving takes them.
STEPS = [4.0, 2.0, 1.0, 0.5, 0.25]


def far_fields(seed=0, n=9, modes=2, shape=(16, 12)):
    """(N, MODES, H, W) complex64 far fields, a direction's far fields and counts."""
    rng = np.random.default_rng(seed)
    size = (n, modes, *shape)
    psi = (rng.standard_normal(size) + 1j * rng.standard_normal(size)).astype(np.complex64)
    psi[:, :, :3] *= 1e-4  # numerically dark rows
    far = (0.3 * (rng.standard_normal(size) + 1j * rng.standard_normal(size))).astype(np.complex64)
    counts = rng.poisson(2.0 * modes, (n, *shape)).astype(np.float32)
    counts[:, 5] = 0  # rows with no counts
    return psi, far, counts


def cost_for(kind, floor, masked, counts):
    """The cost (``recon.cost``) of ``counts`` (NumPy or CuPy; the mask on the same device)."""
    xp = get_array_module(counts)
    mask = None
    if masked:
        mask = np.ones(counts.shape[1:], np.float32)
        mask[2:4, 3:7] = 0
        mask = xp.asarray(mask)
    tau = dark_floor(counts, mask, floor)
    return make_cost(kind, counts, mask, tau)


def plain_intensity(psi):
    """The solver's plain expression of the mode sum."""
    return (psi.real * psi.real + psi.imag * psi.imag).sum(axis=1)


def plain_trial_cost(cost, intensity, cross, far2, step):
    """The line search's plain expression (``recon.ptycho`` before the fused pass)."""
    trial = far2 * step
    trial += cross
    trial *= step
    trial += intensity
    return cost.value(np.maximum(trial, 0, out=trial))
