"""Noise models: cost value and gradient with respect to the far field.

For a cost ``f = sum g(I)`` of the modelled intensity ``I = |psi|^2``, the
Wirtinger gradient is ``df/dconj(psi) = g'(I) * psi``; each cost returns the
real factor ``g'(I)`` so the caller multiplies once. Costs are written so a
perfect fit costs 0, which makes "the cost fell 100x" meaningful.

Arrays: intensity and data (N_POS, H, W) float32 on one device; values are
summed in float64 and returned as Python floats.
"""

from __future__ import annotations

from typing import Any

from recon.backend import get_array_module
from recon.options import CostFunction

#: Keeps logarithms and divisions finite where the model has no intensity.
EPSILON = 1e-6


def _projection_factor(data: Any, mask: Any, intensity: Any) -> Any:
    """``1 - sqrt(d / I)``: the far field times this is its distance to the measured
    modulus (the exit-wave residual of an amplitude projection), masked."""
    xp = get_array_module(intensity)
    factor = 1 - xp.sqrt(data / (intensity + EPSILON))
    return factor if mask is None else factor * mask


class PoissonCost:
    """Poisson deviance: ``sum I - d - d log(I / d)`` (the d = 0 terms reduce to I).

    Evaluated term by term as a log of the ratio, not as ``I - d log I`` plus a
    constant: in float32 that difference of large numbers cancels to noise once
    the fit is good.
    """

    def __init__(self, data: Any, mask: Any = None):
        self.data = data
        self.mask = mask

    def value(self, intensity: Any) -> float:
        xp = get_array_module(intensity)
        d = self.data
        terms = intensity - d - d * xp.log((intensity + EPSILON) / (d + EPSILON))
        if self.mask is not None:
            terms *= self.mask
        return float(xp.sum(terms, dtype=xp.float64))

    def gradient_factor(self, intensity: Any) -> Any:
        factor = 1 - self.data / (intensity + EPSILON)
        return factor if self.mask is None else factor * self.mask

    def projection_factor(self, intensity: Any) -> Any:
        return _projection_factor(self.data, self.mask, intensity)


class GaussianCost:
    """Least squares on amplitudes: ``sum (|psi| - sqrt(d))^2``."""

    def __init__(self, data: Any, mask: Any = None):
        xp = get_array_module(data)
        self.amplitude = xp.sqrt(data)
        self.mask = mask

    def value(self, intensity: Any) -> float:
        xp = get_array_module(intensity)
        residual = xp.sqrt(intensity) - self.amplitude
        residual *= residual
        if self.mask is not None:
            residual *= self.mask
        return float(xp.sum(residual, dtype=xp.float64))

    def gradient_factor(self, intensity: Any) -> Any:
        xp = get_array_module(intensity)
        factor = 1 - self.amplitude / (xp.sqrt(intensity) + EPSILON)
        return factor if self.mask is None else factor * self.mask

    def projection_factor(self, intensity: Any) -> Any:
        return _projection_factor(self.amplitude * self.amplitude, self.mask, intensity)


def make_cost(kind: CostFunction | str, data: Any, mask: Any = None) -> PoissonCost | GaussianCost:
    """The cost object for ``kind`` over ``data`` (with an optional 0/1 float ``mask``)."""
    kind = CostFunction(kind)
    if kind is CostFunction.POISSON:
        return PoissonCost(data, mask)
    return GaussianCost(data, mask)
