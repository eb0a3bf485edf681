"""Noise models: cost value and gradient with respect to the far field.

For a cost ``f = sum g(I)`` of the modelled intensity ``I = |psi|^2``, the
Wirtinger gradient is ``df/dconj(psi) = g'(I) * psi``; each cost returns the
real factor ``g'(I)`` so the caller multiplies once. Costs are written so a
perfect fit costs 0, which makes "the cost fell 100x" meaningful.

**Numerically dark pixels** (why the CuPy and NumPy solvers part on a rough start).
Where the model leaves a pixel dark but the data has counts (a probe guess whose
spectrum does not reach the detector's edge), the textbook gradients
``(1 - d / I) psi`` (Poisson) and ``(1 - sqrt(d / I)) psi`` (amplitude) pull with
``d psi / I`` and ``sqrt(d) psi / |psi|`` along the phase of ``psi``. In such a pixel
``psi`` is the rounding noise of the float32 FFT, about 1e-6 of the far field's RMS
amplitude, so the pull points where rounding chose. Measured on the first object step
of a simulated view (``recon.simulate.simulate_view``, 156 x 64 x 64, Gaussian probe
guess): half of the pixels were that dark, their terms made up almost all of the
gradient, and two correct CPU FFT libraries, FFTW and pocketfft, gave gradients 108 %
apart, as cuFFT and the CPU did on the GPU (73 % apart after one step). Every FFT is
right; the textbook gradient there is not determined by the data.

With ``dark_floor = 0`` (the default) the costs are the textbook ones with an absolute
``EPSILON``. The rounding-driven pulls are part of what the staged start has been tuned
with: measured on the independent simulator's tomography views, 60 iterations, they
reach phase SSIM 0.99 with FFTW and with pocketfft alike, and every deterministic
replacement tried (floors from 1e-11 to 1e-3, seeded kicks, object or probe noise) ended
at 0.79-0.98 (``bench/recon.py --cases tomo``). So the default stays, and two backends
agree there in quality (phase SSIM against the truth), not iterate by iterate.

With ``dark_floor = f > 0`` both costs fade the pull in smoothly below ``tau = f`` times
the data's mean intensity per measured pixel (one value for the whole view, whatever the
chunks and devices): the pull becomes quadratic in ``psi`` below ``tau``, so rounding
noise enters squared, and the two FFT libraries' first gradients agree to 3e-7. Above
``tau`` the costs are the textbook ones up to ``(tau / I)^2`` (Poisson) and ``2 tau / I``
(amplitude) at the optimum. This is the mode in which the GPU and CPU solvers are proven
equal step by step (``tests/unit/test_gpu_equivalence.py``).

- Poisson: ``g(I) = I - d - (d / 2) log((I^2 + tau^2) / (d^2 + tau^2))``,
  ``g'(I) = 1 - d I / (I^2 + tau^2)``.
- Amplitude: ``g(I) = I - d - 2 sqrt(d) (a(I) - a(d))`` with
  ``a(I) = sqrt(I) - sqrt(tau) arctan(sqrt(I / tau))``, ``g'(I) = 1 - sqrt(d I) / (I + tau)``;
  with ``tau = 0`` it is ``(sqrt(I) - sqrt(d))^2``.

Arrays: intensity and data (N_POS, H, W) float32 on one device; values are
summed in float64 and returned as Python floats.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from recon.backend import get_array_module
from recon.options import CostFunction

#: Keeps logarithms and divisions finite where the model has no intensity (textbook costs).
EPSILON = 1e-6


def dark_floor(data: Any, mask: Any, fraction: float) -> float:
    """``tau``: ``fraction`` times the mean of ``data`` over measured pixels (0 if 0)."""
    if not fraction:
        return 0.0
    xp = get_array_module(data)
    if mask is None:
        mean = float(xp.mean(data, dtype=xp.float64))
    else:
        measured = float(xp.sum(mask, dtype=xp.float64)) * data.shape[0]
        mean = float(xp.sum(data * mask, dtype=xp.float64)) / max(measured, 1.0)
    return fraction * mean if mean > 0 else fraction


def _masked(factor: Any, mask: Any) -> Any:
    if mask is not None:
        factor *= mask
    return factor


def _amplitude_factor(amplitude: Any, intensity: Any, tau: float) -> Any:
    """The amplitude cost's gradient factor; the far field times it is also the exit-wave
    residual of an amplitude projection. ``1 - sqrt(d I) / (I + tau)``, or the textbook
    ``1 - sqrt(d) / (sqrt(I) + EPSILON)`` when ``tau`` is 0."""
    xp = get_array_module(intensity)
    if not tau:
        return 1 - amplitude / (xp.sqrt(intensity) + EPSILON)
    factor = xp.sqrt(intensity)
    factor *= amplitude
    factor /= intensity + tau
    return 1 - factor


class PoissonCost:
    """Poisson deviance ``sum I - d - d log(I / d)`` (the d = 0 terms reduce to I).

    Evaluated term by term as a log of a ratio, not as ``I - d log I`` plus a constant:
    in float32 that difference of large numbers cancels to noise once the fit is good.
    ``tau``: the dark floor (module docstring), 0 for the textbook cost.
    """

    def __init__(self, data: Any, mask: Any = None, tau: float = 0.0):
        self.data = data
        self.mask = mask
        self.tau = tau
        self._data2 = data * data + tau * tau if tau else None

    def value(self, intensity: Any) -> float:
        xp = get_array_module(intensity)
        d = self.data
        if self.tau:
            ratio = intensity * intensity
            ratio += self.tau * self.tau
            ratio /= self._data2
            terms = intensity - d - 0.5 * d * xp.log(ratio)
        else:
            terms = intensity - d - d * xp.log((intensity + EPSILON) / (d + EPSILON))
        if self.mask is not None:
            terms *= self.mask
        return float(xp.sum(terms, dtype=xp.float64))

    def gradient_factor(self, intensity: Any) -> Any:
        if self.tau:
            denominator = intensity * intensity
            denominator += self.tau * self.tau
            return _masked(1 - self.data * intensity / denominator, self.mask)
        return _masked(1 - self.data / (intensity + EPSILON), self.mask)

    def projection_factor(self, intensity: Any) -> Any:
        xp = get_array_module(intensity)
        return _masked(_amplitude_factor(xp.sqrt(self.data), intensity, self.tau), self.mask)


class GaussianCost:
    """Least squares on amplitudes ``sum (|psi| - sqrt(d))^2``.

    With a dark floor it is evaluated as ``r^2 + 2 sqrt(d tau) arctan(sqrt(tau) r /
    (tau + sqrt(I d)))`` with ``r = sqrt(I) - sqrt(d)`` (the floor part of ``a(I) - a(d)``
    by the arctan difference formula), so no difference of large numbers is rounded.
    """

    def __init__(self, data: Any, mask: Any = None, tau: float = 0.0):
        # The counts, not their square roots: those are formed where they are used (a
        # pass of one chunk on the CPU, in registers in the GPU's fused kernels), so a
        # staged start holds no second pattern-sized array for this cost.
        self.data = data
        self.mask = mask
        self.tau = tau

    @property
    def amplitude(self) -> Any:
        """``sqrt(d)``, a new array on each call."""
        return get_array_module(self.data).sqrt(self.data)

    def value(self, intensity: Any) -> float:
        xp = get_array_module(intensity)
        amplitude = self.amplitude
        root = xp.sqrt(intensity)
        residual = root - amplitude
        if self.tau:
            root *= amplitude  # sqrt(I d)
            root += self.tau
            angle = xp.arctan(self.tau**0.5 * residual / root)
            angle *= 2 * self.tau**0.5
            angle *= amplitude
        residual *= residual
        if self.tau:
            residual += angle
        if self.mask is not None:
            residual *= self.mask
        return float(xp.sum(residual, dtype=xp.float64))

    def gradient_factor(self, intensity: Any) -> Any:
        return _masked(_amplitude_factor(self.amplitude, intensity, self.tau), self.mask)

    def projection_factor(self, intensity: Any) -> Any:
        return self.gradient_factor(intensity)


def make_cost(
    kind: CostFunction | str, data: Any, mask: Any = None, tau: float = 0.0
) -> PoissonCost | GaussianCost:
    """The cost object for ``kind`` over ``data`` (with an optional 0/1 float ``mask``).

    ``tau``: the dark floor in counts (module docstring; :func:`dark_floor` makes it from
    the ``dark_floor`` option); 0 for the textbook costs. A solver that splits a view into
    chunks passes the whole view's.
    """
    kind = CostFunction(kind)
    if kind is CostFunction.POISSON:
        return PoissonCost(data, mask, tau)
    return GaussianCost(data, mask, tau)


# -- the cost that Poisson noise alone leaves ---------------------------------------------

#: Above this mean count the expected deviance term is ``1/2 + 1/(12 I) + 1/(12 I^2)``
#: within 3e-5 (measured against the exact sum); below it, a table of the exact sum.
_NOISE_TABLE_MAX = 20.0
_NOISE_TABLE_POINTS = 2001


@functools.cache
def _noise_table() -> tuple[np.ndarray, np.ndarray]:
    """(sqrt of the mean counts, the expected deviance term there): the exact sum over
    Poisson counts, on a grid even in ``sqrt(I)`` (the term changes fastest near 0)."""
    from scipy.special import gammaln

    roots = np.linspace(0.0, np.sqrt(_NOISE_TABLE_MAX), _NOISE_TABLE_POINTS)
    counts = np.arange(0, 80)[None, :].astype(np.float64)
    mean = np.maximum(roots**2, 1e-300)[:, None]
    log_pmf = counts * np.log(mean) - mean - gammaln(counts + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = mean - counts - np.where(counts > 0, counts * np.log(mean / counts), 0.0)
    values = (np.exp(log_pmf) * terms).sum(axis=1)
    values[0] = 0.0
    return roots, values


def poisson_noise_terms(intensity: Any) -> Any:
    """Per pixel, the expected Poisson deviance term ``I - d - d log(I / d)`` of counts
    ``d`` drawn with mean ``intensity`` (float32, any backend): what a model that is
    exactly right still costs, from shot noise alone. About 1/2 from a few counts up, less
    for darker pixels (0.05 at 0.01 counts). Summed over the pixels and compared with
    the cost reached, it says how far a fit is from the noise: about 1 for a model that
    explains the counts, several for one that does not (wrong positions, probe or
    sample). Meaningful only where the patterns are photon counts."""
    xp = get_array_module(intensity)
    roots, values = _noise_table()
    intensity = xp.maximum(intensity, 0)
    root = xp.sqrt(intensity)
    low = xp.interp(root, xp.asarray(roots, dtype=np.float32), xp.asarray(values, np.float32))
    safe = xp.maximum(intensity, np.float32(_NOISE_TABLE_MAX))
    high = 0.5 + 1 / (12 * safe) + 1 / (12 * safe * safe)
    return xp.where(intensity < _NOISE_TABLE_MAX, low, high).astype(np.float32)
