import numpy as np
import pytest

from recon.backend import to_host
from recon.cost import make_cost


@pytest.mark.parametrize("kind", ["poisson", "gaussian"])
def test_cost_is_zero_at_a_perfect_fit_and_gradient_matches_finite_differences(kind, xp):
    rng = np.random.default_rng(0)
    psi = (rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))) * 3
    data = np.abs(psi) ** 2
    cost = make_cost(kind, xp.asarray(data))
    assert cost.value(xp.asarray(data)) == pytest.approx(0, abs=1e-9)

    model = psi * 1.2 + 0.3
    direction = rng.standard_normal(psi.shape) + 1j * rng.standard_normal(psi.shape)
    value = lambda z: cost.value(xp.asarray(np.abs(z) ** 2))  # noqa: E731
    h = 1e-6
    numeric = (value(model + h * direction) - value(model - h * direction)) / (2 * h)
    factor = to_host(cost.gradient_factor(xp.asarray(np.abs(model) ** 2)))
    # Wirtinger gradient g = factor * psi; directional derivative = 2 Re <g, d>.
    analytic = 2 * np.real(np.vdot(factor * model, direction))
    assert numeric == pytest.approx(analytic, rel=1e-5)


def test_mask_removes_pixels_from_cost_and_gradient(xp):
    data = np.ones((2, 4, 4))
    mask = np.ones((4, 4))
    mask[0, 0] = 0
    cost = make_cost("poisson", xp.asarray(data), xp.asarray(mask))
    model = np.ones((2, 4, 4))
    model[:, 0, 0] = 50.0  # wrong only where masked
    assert cost.value(xp.asarray(model)) == pytest.approx(0, abs=1e-9)
    factor = to_host(cost.gradient_factor(xp.asarray(model)))
    assert np.all(factor[:, 0, 0] == 0)
    assert float(abs(factor).max()) < 1e-5
