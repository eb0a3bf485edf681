"""The memory estimate that refuses oversized views must not fall below what the solver
allocates: measured here with tracemalloc (NumPy's allocations), with one and two modes."""

import os
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


# -- the process's own limits: ulimit -v and the cgroup (issue 16, item 13) -------------------

ULIMIT_SCRIPT = """
import resource, sys
from recon.memory import address_space_left, check_memory, memory_limit
from recon.errors import InputTooLargeError
with open("/proc/self/status") as status:
    size = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
limit = size + 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
allowed, where = memory_limit()
assert "ulimit -v" in where, where
assert allowed <= 512 * 2**20, allowed
try:
    check_memory("scan100/view000.cxi", 1000, (256, 256), (100.0, 100.0))  # ~6 GiB
except InputTooLargeError as err:
    print(err)
    sys.exit(0)
sys.exit("not refused")
"""


def test_ulimit_v_is_a_limit_too():
    """MemAvailable may be far more than ``ulimit -v`` lets this process map."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", ULIMIT_SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "PTYCHOFLOW_MEMORY_LIMIT": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "more than the limit of" in done.stdout and "ulimit -v" in done.stdout


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_memory_left_is_the_tightest_along_the_path(tmp_path, version):
    """Real files laid out like /sys/fs/cgroup (v1 and v2) and /proc/self/cgroup."""
    from recon.memory import cgroup_memory_left

    gib = 2**30
    if version == 2:
        base, limit_name, usage_name = tmp_path, "memory.max", "memory.current"
        proc = "0::/slice/job\n"
    else:
        base, limit_name, usage_name = (
            tmp_path / "memory",
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        )
        proc = "4:memory:/slice/job\n3:cpu:/\n"
    outer, inner = base / "slice", base / "slice" / "job"
    inner.mkdir(parents=True)
    (base / limit_name).write_text("max\n" if version == 2 else "9223372036854771712\n")
    (outer / limit_name).write_text(f"{8 * gib}\n")
    (outer / usage_name).write_text(f"{7 * gib}\n")  # the parent has 1 GiB left
    (inner / limit_name).write_text(f"{4 * gib}\n")
    (inner / usage_name).write_text(f"{gib}\n")  # this one 3 GiB
    cgroup = tmp_path / "proc-self-cgroup"
    cgroup.write_text(proc)
    assert cgroup_memory_left(str(cgroup), str(tmp_path)) == gib
    (outer / limit_name).write_text("max\n" if version == 2 else "9223372036854771712\n")
    assert cgroup_memory_left(str(cgroup), str(tmp_path)) == 3 * gib
