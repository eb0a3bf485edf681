"""The shared dot-product adjoint test: <A x, y> == <x, A^H y>."""

from __future__ import annotations

import numpy as np


def random_complex(xp, shape, seed):
    rng = np.random.default_rng(seed)
    host = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return xp.asarray(host)


def assert_adjoint(fwd, adj, x, y, rtol=1e-5):
    """Check that ``adj`` is the adjoint of the linear map ``fwd`` at random x and y."""
    xp_inner = complex((fwd(x).conj() * y).sum())
    adj_inner = complex((x.conj() * adj(y)).sum())
    scale = max(abs(xp_inner), abs(adj_inner))
    assert abs(xp_inner - adj_inner) <= rtol * scale, (xp_inner, adj_inner)
