import numpy as np
import pytest

from recon.solver import backtracking, dai_yuan_beta


def inner(a, b):
    return float(np.real(np.vdot(a, b)))


def test_dai_yuan_restarts_without_history_or_with_a_bad_denominator():
    g = np.array([1.0 + 1j, 2.0])
    assert dai_yuan_beta(g, g, None, None, inner) == 0.0
    # d_prev . (g - g_prev) <= 0 would not give a descent direction: restart.
    assert dai_yuan_beta(g, g, g, -g, inner) == 0.0


def test_dai_yuan_value():
    g, g_prev, d_prev = np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([-1.0, 1.0])
    # ||g||^2 / <d_prev, g - g_prev> = 5 / 2
    assert dai_yuan_beta(g, g, g_prev, d_prev, inner) == pytest.approx(2.5)


def test_nonlinear_cg_minimises_a_quadratic_in_n_steps():
    # With exact line search on a quadratic, CG needs at most n steps; with
    # backtracking it still gets close quickly, far faster than steepest descent would.
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 6))
    a = q @ q.T + 6 * np.eye(6)
    b = rng.standard_normal(6)
    x = np.zeros(6)
    prev_g = prev_d = None
    step = 1.0
    for _ in range(60):
        g = a @ x - b
        beta = dai_yuan_beta(g, g, prev_g, prev_d, inner)
        d = -g + (beta * prev_d if beta else 0)
        f = lambda t, x=x, d=d: 0.5 * (x + t * d) @ a @ (x + t * d) - b @ (x + t * d)  # noqa: E731
        search = backtracking(f, f(0.0), float(g @ d), 2 * step)
        assert search.step > 0
        x = x + search.step * d
        step, prev_g, prev_d = search.step, g, d
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-4)


def test_backtracking_refuses_an_ascent_direction():
    result = backtracking(lambda t: 1.0 + t, 1.0, slope=1.0, first_step=1.0)
    assert result.step == 0.0 and result.trials == 0
