import numpy as np
import pytest

from recon.operators import Patches, Propagation, Ptycho
from tests.unit.adjoint import assert_adjoint, random_complex


def _positions(xp, n=23, seed=3, span=20.0):
    rng = np.random.default_rng(seed)
    return xp.asarray((rng.random((n, 2)) * span + 0.5).astype(np.float32))


def test_patches_adjoint(xp):
    pos = _positions(xp)
    op = Patches(pos, (40, 44), (12, 16))
    x = random_complex(xp, (40, 44), 0)
    y = random_complex(xp, (23, 12, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


def test_propagation_adjoint(xp):
    op = Propagation()
    x = random_complex(xp, (5, 16, 16), 0)
    y = random_complex(xp, (5, 16, 16), 1)
    assert_adjoint(op.fwd, op.adj, x, y)


def test_ptycho_adjoints_for_object_and_probe(xp):
    pos = _positions(xp)
    model = Ptycho(Patches(pos, (40, 44), (12, 16)))
    probe = random_complex(xp, (12, 16), 2)
    obj = random_complex(xp, (40, 44), 3)
    far = random_complex(xp, (23, 12, 16), 4)
    assert_adjoint(
        lambda o: model.fwd_object(o, probe), lambda f: model.adj_object(f, probe), obj, far
    )
    patches = model.patches.fwd(obj)
    assert_adjoint(
        lambda p: model.fwd_probe(p, patches), lambda f: model.adj_probe(f, patches), probe, far
    )


def test_integer_positions_extract_exact_windows(xp):
    obj = random_complex(xp, (30, 30), 5)
    pos = xp.asarray(np.array([[0, 0], [3, 7], [10, 2]], dtype=np.float32))
    patches = Patches(pos, (30, 30), (8, 9)).fwd(obj)
    np.testing.assert_array_equal(patches[1], obj[3:11, 7:16])


def test_subpixel_position_interpolates_linearly(xp):
    # A linear ramp is reproduced exactly by bilinear interpolation.
    rows = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 20), np.float32)
    obj = xp.asarray(rows.astype(np.complex64))
    pos = xp.asarray(np.array([[2.25, 1.5]], dtype=np.float32))
    patch = Patches(pos, (20, 20), (4, 4)).fwd(obj)
    np.testing.assert_allclose(patch[0, :, 0].real, 2.25 + np.arange(4), rtol=1e-6)


def test_shape_errors_name_the_expected_shape(xp):
    op = Patches(_positions(xp), (40, 44), (12, 16))
    with pytest.raises(ValueError, match=r"object has shape \(40, 40\), expected \(40, 44\)"):
        op.fwd(random_complex(xp, (40, 40), 0))
    with pytest.raises(ValueError, match="positions need an object of at least"):
        Patches(_positions(xp, span=40.0), (40, 44), (12, 16))
