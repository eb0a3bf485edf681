"""The memory estimate that refuses oversized views must not fall below what the solver
allocates: measured here with tracemalloc (NumPy's allocations), with one and two modes."""

import os
import tracemalloc

import numpy as np
import pytest

from recon import api, backend, cxi
from recon.api import reconstruct_file
from recon.cxi import load_scan
from recon.errors import InputTooLargeError
from recon.memory import (
    GPU_BYTES_PER_EXTRA_MODE_PIXEL,
    GPU_CHUNKS_ENV,
    GPU_FIXED_OVERHEAD_BYTES,
    GPU_MEMORY_LIMIT_ENV,
    estimate_gpu_bytes,
    estimate_reconstruction_bytes,
    object_shape_estimate,
)
from recon.options import ReconOptions
from recon.primitives import GPU_PATH_ON_CPU
from recon.ptycho import _Reconstruction, reconstruct
from recon.simulate import write_simulated_scan


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    return write_simulated_scan(folder / "scan1", n_views=1, n_positions=200, detector=64)[0]


@pytest.mark.parametrize("modes", [1, 2])
def test_estimate_covers_the_solvers_allocations(view, modes, monkeypatch):
    monkeypatch.delenv(GPU_PATH_ON_CPU, raising=False)  # the host's estimate: the CPU path
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


# -- GPU memory (issue 20) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("modes", "devices", "chunks"),
    [(1, [0], 1), (2, [0], 1), (1, [0, 0], 1), (1, [0], 4), (2, [0], 8)],
    ids=["one-mode", "two-modes", "2x1", "4-chunks", "two-modes-8-chunks"],
)
def test_gpu_estimate_covers_the_gpu_paths_traced_allocations(
    view, monkeypatch, request, modes, devices, chunks
):
    """The GPU path on NumPy allocates what the CuPy path allocates (the twins of
    ``recon.primitives``); its traced peak must stay under the GPU estimate, and the
    estimate less its fixed part must not be loose by more than 40 % (partitions sharing a
    device: the sum). With pocketfft: FFTW's plan cache keeps arrays on the host that
    cuFFT does not (its work areas have their own allowance in the estimate)."""
    monkeypatch.setenv(GPU_PATH_ON_CPU, "1")
    monkeypatch.delenv(GPU_MEMORY_LIMIT_ENV, raising=False)
    monkeypatch.setenv("PTYCHOFLOW_FFT", "scipy")
    monkeypatch.setenv(GPU_CHUNKS_ENV, str(chunks))
    backend._cpu_fft.cache_clear()
    request.addfinalizer(backend._cpu_fft.cache_clear)
    scan = load_scan(view)
    n, h, w = scan.data.shape
    extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
    estimate = sum(
        estimate_gpu_bytes(
            n,
            (h, w),
            object_shape_estimate(extent, (h, w)),
            probe_modes=modes,
            devices=devices,
            chunks=chunks,
        ).values()
    )
    options = ReconOptions(
        iterations=2, backend="numpy", probe_modes=modes, modes_start=0, devices=len(devices)
    )
    tracemalloc.start()
    try:
        reconstruct(scan, options, device_ids=devices)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    fixed = len(devices) * GPU_FIXED_OVERHEAD_BYTES
    assert peak <= estimate and estimate - fixed <= 1.4 * peak, (peak / 2**20, estimate / 2**20)


def test_gpu_estimate_per_device():
    one = estimate_gpu_bytes(1000, (64, 64), (300, 300), devices=[0])
    two = estimate_gpu_bytes(1000, (64, 64), (300, 300), devices=[0, 1])
    shared = estimate_gpu_bytes(1000, (64, 64), (300, 300), devices=[3, 3])
    assert set(two) == {0, 1} and two[0] == two[1] < one[0]
    assert set(shared) == {3} and shared[3] > one[0]  # two partitions, two object copies
    modes = estimate_gpu_bytes(1000, (64, 64), (300, 300), probe_modes=3, devices=[0])
    assert modes[0] - one[0] == 2 * 1000 * 64 * 64 * GPU_BYTES_PER_EXTRA_MODE_PIXEL


def _limit_between(view, modes, few, many):
    """A GPU limit that the view fits on ``many`` partitions but not on ``few``."""
    scan = load_scan(view)
    n, h, w = scan.data.shape
    extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
    shape = object_shape_estimate(extent, (h, w))
    low = max(estimate_gpu_bytes(n, (h, w), shape, modes, many).values())
    high = max(estimate_gpu_bytes(n, (h, w), shape, modes, few).values())
    assert low < high
    return int((low + high) / 2)


def test_a_view_too_large_for_the_claimed_gpus_is_refused_before_it_is_loaded(
    view, tmp_path, monkeypatch
):
    """With the GPU path and a GPU memory limit, one device is refused before the patterns
    are read (the solver is never called) with what is needed, what is free and what to
    change; two devices fit."""
    monkeypatch.setenv(GPU_PATH_ON_CPU, "1")
    limit = _limit_between(view, 2, [0], [0, 1])
    monkeypatch.setenv(GPU_MEMORY_LIMIT_ENV, str(limit))
    read = []
    original = cxi.load_cxi

    def spy(*args, **kwargs):
        read.append(args)
        return original(*args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("the solver was called")

    monkeypatch.setattr(cxi, "load_cxi", spy)
    monkeypatch.setattr(api, "reconstruct", never)
    options = ReconOptions(iterations=2, backend="numpy", probe_modes=2, devices=1)
    with pytest.raises(InputTooLargeError) as refused:
        reconstruct_file(view, tmp_path / "out.h5", options)
    message = str(refused.value)
    for part in ("view000.cxi", "on GPU 0", "1 partition", "1 chunk", "2 probe modes"):
        assert part in message, message
    assert "more GPUs" in message and "fewer probe modes" in message
    assert GPU_MEMORY_LIMIT_ENV in message
    assert read and not (tmp_path / "out.h5").exists()
    # The solver refuses as well when handed the loaded view directly.
    with pytest.raises(InputTooLargeError, match="on GPU 0"):
        reconstruct(load_scan(view), options)
    # Two GPUs hold it.
    monkeypatch.undo()
    monkeypatch.setenv(GPU_PATH_ON_CPU, "1")
    monkeypatch.setenv(GPU_MEMORY_LIMIT_ENV, str(limit))
    summary = reconstruct_file(view, tmp_path / "out.h5", options.replace(devices=2))
    assert summary["iterations"] == 2 and summary["backend"] == "numpy-gpu-path"


def test_no_gpu_check_on_the_cpu_path(view, tmp_path, monkeypatch):
    monkeypatch.delenv(GPU_PATH_ON_CPU, raising=False)
    monkeypatch.setenv(GPU_MEMORY_LIMIT_ENV, "1MB")
    summary = reconstruct_file(
        view, tmp_path / "out.h5", ReconOptions(iterations=1, backend="numpy")
    )
    assert summary["backend"] == "numpy"


def test_chunks_are_one_unless_asked_for_and_do_not_change_the_estimate(view, monkeypatch):
    """Splitting a partition divides only the gradient's work array, which is not above
    the line search's peak (traced: the same B/px with 1 to 8 chunks, and the traced test
    above holds the estimate to within 40 % of each): the solver no longer splits on its
    own, whatever the GPU memory limit; ``PTYCHOFLOW_GPU_CHUNKS`` still does."""
    monkeypatch.setenv(GPU_PATH_ON_CPU, "1")
    monkeypatch.delenv(GPU_CHUNKS_ENV, raising=False)
    scan = load_scan(view)
    n, h, w = scan.data.shape
    extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
    shape = object_shape_estimate(extent, (h, w))
    one = estimate_gpu_bytes(n, (h, w), shape)[0]
    assert estimate_gpu_bytes(n, (h, w), shape, chunks=8)[0] == one
    monkeypatch.setenv(GPU_MEMORY_LIMIT_ENV, str(int(one * 1.01)))
    options = ReconOptions(iterations=1, backend="numpy")
    assert len(_Reconstruction(scan, options, np, [0]).parts[0].chunks) == 1
    monkeypatch.setenv(GPU_CHUNKS_ENV, "4")
    assert len(_Reconstruction(scan, options, np, [0]).parts[0].chunks) == 4
