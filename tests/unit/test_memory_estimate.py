"""The memory estimate that refuses oversized views must not fall below what the solver
allocates: measured here with tracemalloc (NumPy's allocations), with one and two modes."""

import tracemalloc

import numpy as np
import pytest

from recon.api import reconstruct_file
from recon.cxi import load_scan
from recon.errors import InputTooLargeError
from recon.memory import estimate_reconstruction_bytes, object_shape_estimate
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate import write_simulated_scan


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    return write_simulated_scan(folder / "scan1", n_views=1, n_positions=200, detector=64)[0]


@pytest.mark.parametrize("modes", [1, 2])
def test_estimate_covers_the_solvers_allocations(view, modes):
    scan = load_scan(view)
    n, h, w = scan.data.shape
    extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
    estimate = estimate_reconstruction_bytes(
        n, (h, w), object_shape_estimate(extent, (h, w)), probe_modes=modes
    )
    options = ReconOptions(iterations=2, backend="numpy", probe_modes=modes, modes_start=0)
    tracemalloc.start()
    try:
        reconstruct(scan, options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate, (peak / 2**20, estimate / 2**20)


def test_more_probe_modes_than_memory_allows_are_refused_before_the_solve(view, tmp_path):
    scan = load_scan(view)
    n, h, w = scan.data.shape
    extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
    shape = object_shape_estimate(extent, (h, w))
    one = estimate_reconstruction_bytes(n, (h, w), shape, probe_modes=1)
    four = estimate_reconstruction_bytes(n, (h, w), shape, probe_modes=4)
    limit = int((one + four) / 2)
    with pytest.raises(InputTooLargeError, match="4 probe modes") as refused:
        reconstruct_file(
            view,
            tmp_path / "out.h5",
            ReconOptions(iterations=2, backend="numpy", probe_modes=4),
            memory_limit=limit,
        )
    assert "view000.cxi" in str(refused.value)
    assert not (tmp_path / "out.h5").exists()
    # One mode fits under the same limit.
    summary = reconstruct_file(
        view, tmp_path / "out.h5", ReconOptions(iterations=2, backend="numpy"), memory_limit=limit
    )
    assert (tmp_path / "out.h5").exists() and summary["iterations"] == 2
