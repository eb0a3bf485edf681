import os

import numpy as np
import pytest

from recon.backend import to_host
from recon.operators import (
    BilinearPatches,
    FourierShift,
    Propagation,
    Ptycho,
    WindowPatches,
    split_positions,
)
from tests.unit.adjoint import assert_adjoint, random_complex


def _positions(xp, n=23, seed=3, span=20.0):
    rng = np.random.default_rng(seed)
    return xp.asarray((rng.random((n, 2)) * span + 0.5).astype(np.float32))


def test_bilinear_patches_adjoint(xp):
    op = BilinearPatches(_positions(xp), (40, 44), (12, 16))
    x = random_complex(xp, (40, 44), 0)
    y = random_complex(xp, (23, 12, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


def test_window_patches_adjoint(xp):
    corner, _ = split_positions(_positions(xp))
    op = WindowPatches(corner, (40, 44), (12, 16))
    x = random_complex(xp, (40, 44), 0)
    y = random_complex(xp, (23, 12, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


def test_fourier_shift_adjoint(xp):
    _, rest = split_positions(_positions(xp))
    op = FourierShift(rest, (12, 16))
    x = random_complex(xp, (3, 12, 16), 0)
    y = random_complex(xp, (23, 3, 12, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


def test_propagation_adjoint(xp):
    op = Propagation()
    x = random_complex(xp, (5, 2, 16, 16), 0)
    y = random_complex(xp, (5, 2, 16, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


@pytest.mark.parametrize("patch_model", ["fourier", "bilinear"])
@pytest.mark.parametrize("modes", [1, 3])
def test_ptycho_adjoints_for_object_and_probe(xp, patch_model, modes):
    model = Ptycho(_positions(xp), (40, 44), (12, 16), patch_model)
    probe = random_complex(xp, (modes, 12, 16), 2)
    obj = random_complex(xp, (40, 44), 3)
    far = random_complex(xp, (23, modes, 12, 16), 4)
    probes_at = model.probes_at(probe)
    assert_adjoint(
        lambda o: model.fwd_object(o, probes_at),
        lambda f: model.adj_object(f, probes_at),
        obj,
        far,
    )
    patches = model.patches.fwd(obj)
    assert_adjoint(
        lambda p: model.fwd_probe(p, patches), lambda f: model.adj_probe(f, patches), probe, far
    )


def test_integer_positions_extract_exact_windows(xp):
    obj = random_complex(xp, (30, 30), 5)
    pos = xp.asarray(np.array([[0, 0], [3, 7], [10, 2]], dtype=np.float32))
    for patch_model in ("fourier", "bilinear"):
        model = Ptycho(pos, (30, 30), (8, 9), patch_model)
        np.testing.assert_array_equal(to_host(model.patches.fwd(obj)[1]), to_host(obj[3:11, 7:16]))
        probe = random_complex(xp, (1, 8, 9), 6)
        np.testing.assert_allclose(to_host(model.probes_at(probe)[-1]), to_host(probe), atol=1e-6)


def test_subpixel_position_interpolates_linearly(xp):
    # A linear ramp is reproduced exactly by bilinear interpolation.
    rows = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 20), np.float32)
    obj = xp.asarray(rows.astype(np.complex64))
    pos = xp.asarray(np.array([[2.25, 1.5]], dtype=np.float32))
    patch = BilinearPatches(pos, (20, 20), (4, 4)).fwd(obj)
    np.testing.assert_allclose(to_host(patch[0, :, 0].real), 2.25 + np.arange(4), rtol=1e-6)


def test_fourier_shift_moves_a_band_limited_probe_by_a_fraction_of_a_pixel(xp):
    # A smooth Gaussian shifted by 0.3 px equals the Gaussian evaluated 0.3 px further.
    grid = np.arange(32, dtype=np.float64)
    rr, cc = np.meshgrid(grid, grid, indexing="ij")

    def gaussian(r0, c0):
        return np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * 3.0**2)).astype(np.complex64)

    shift = xp.asarray(np.array([[0.3, -0.45]], dtype=np.float32))
    moved = FourierShift(shift, (32, 32)).fwd(xp.asarray(gaussian(16, 16))[None])
    np.testing.assert_allclose(to_host(moved[0, 0]), gaussian(16.3, 15.55), atol=1e-5)


def test_fourier_shift_derivative_matches_finite_differences(xp):
    probe = random_complex(xp, (2, 12, 16), 7)
    rest = np.array([[0.2, -0.1]], dtype=np.float32)
    derivative = FourierShift(xp.asarray(rest), (12, 16)).derivative(probe)
    h = 1e-2
    for axis in range(2):
        step = np.zeros_like(rest)
        step[0, axis] = h
        plus = FourierShift(xp.asarray(rest + step), (12, 16)).fwd(probe)
        minus = FourierShift(xp.asarray(rest - step), (12, 16)).fwd(probe)
        numeric = (plus - minus) / (2 * h)
        assert float(abs(numeric - derivative[axis]).max()) < 2e-2 * float(abs(numeric).max())


def test_shape_errors_name_the_expected_shape(xp):
    op = BilinearPatches(_positions(xp), (40, 44), (12, 16))
    with pytest.raises(ValueError, match=r"object has shape \(40, 40\), expected \(40, 44\)"):
        op.fwd(random_complex(xp, (40, 40), 0))
    with pytest.raises(ValueError, match="positions need an object of at least"):
        Ptycho(_positions(xp, span=40.0), (40, 44), (12, 16))
    with pytest.raises(ValueError, match="patch_model 'cubic' is not one of"):
        Ptycho(_positions(xp), (40, 44), (12, 16), "cubic")


def test_fftw_and_scipy_give_the_same_unitary_transforms():
    """The CPU solver uses FFTW when pyFFTW is installed: its transforms must be SciPy's
    (unitary, float32 kept) to rounding."""
    pytest.importorskip("pyfftw")
    import scipy.fft

    from recon import backend

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 2, 24, 40)) + 1j * rng.standard_normal((5, 2, 24, 40))).astype(
        np.complex64
    )
    assert backend.cpu_fft_name() == "fftw"
    forward = backend.fft2(x)
    assert forward.dtype == np.complex64
    expected = scipy.fft.fft2(x.astype(np.complex128), norm="ortho")
    np.testing.assert_allclose(forward, expected, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(backend.ifft2(forward), x, atol=1e-5)


def test_ptychoflow_fft_scipy_selects_pocketfft():
    import subprocess
    import sys

    code = "from recon.backend import cpu_fft_name; print(cpu_fft_name())"
    env = {**os.environ, "PTYCHOFLOW_FFT": "scipy"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "pocketfft"
