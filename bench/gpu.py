#!/usr/bin/env python3
"""One prepared script for a GPU machine: the ``gpu`` tests, then tables of speed, memory,
NumPy-CuPy differences and kernel time. Prints tables, asserts nothing; writes its numbers
to a JSON file. About 3 minutes on one H200.

    python bench/gpu.py                       # everything, numbers to gpu-bench.json
    python bench/gpu.py --json $OUT/gpu.json --skip-tests
    python bench/gpu.py --star PATH           # the real Siemens star (516 x 128 x 128)
    python bench/gpu.py --dry-run             # no GPU: every part, small, on NumPy

``--dry-run`` checks this script on a machine without a GPU, so that the short GPU time is
not spent on a bug in it: every part runs, on small views, with the GPU's algorithmic path
on NumPy (``PTYCHOFLOW_GPU_PATH_ON_CPU=1``) in place of CuPy, tracemalloc in place of the
memory pool, and no kernel profiler. Its numbers say nothing about a GPU.

1. ``pytest -m gpu`` on the GPU test files (CuPy against the NumPy twins, the solver step
   by step, whole runs against the simulated truth, partitions sharing one GPU).
2. Speed and memory: median ms per iteration after warm-up, and the CuPy memory pool's
   peak (bytes held, which the pool never returns during a run), for the real star
   516 x 128^2, a simulated 1800 x 128^2 view (the paper's catalyst view) and a simulated
   8192 x 256^2 view, each with default options, two probe modes, and positions refined.
3. NumPy-CuPy differences after 1 and 30 iterations, with the textbook costs (default)
   and with a dark floor (``recon.cost``): relative object and probe differences, cost,
   and phase SSIM against the simulated truth.
4. Kernel time per iteration of the 1800 x 128^2 view (CUPTI through torch.profiler when
   PyTorch is installed): GPU-busy milliseconds and kernel launches per iteration.
5. The largest view (issue 20): 32768 x 256^2 (the paper's eight-GPU Siemens star),
   simulated on the GPU, with as many of its patterns as ``recon.memory``'s GPU estimate
   fits in the free memory (all of them at 40 bytes per pattern pixel on a 141 GB H200):
   ms per iteration, the memory pool's peak against the estimate.

Predictions per version are in ``bench/gpu_notes.md``; add each run's numbers there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Appended, not prepended: bench/recon.py must not shadow the recon package.
sys.path.append(str(REPO / "bench"))

from tables import print_table  # noqa: E402  (bench/tables.py, beside this script)

from recon.backend import cupy_module, to_host  # noqa: E402
from recon.options import ReconOptions  # noqa: E402
from recon.primitives import FUSED_KERNELS_ENV  # noqa: E402
from recon.ptycho import reconstruct  # noqa: E402

STAR_CANDIDATES = (
    REPO.parent / "shared" / "data" / "siemens-star-small.npz.bz2",
    REPO / ".gpu_data" / "siemens-star-small.npz.bz2",
)
GPU_TEST_FILES = (
    "tests/unit/test_gpu_equivalence.py",
    "tests/unit/test_operators.py",
    "tests/unit/test_cost.py",
)
VARIANTS = (
    ("defaults", {}),
    ("2 modes", {"probe_modes": 2, "modes_start": 0}),
    ("positions", {"refine_positions": True, "position_start": 0}),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The views of each part: the GPU's, or the dry run's small ones."""

    medium: tuple[int, int] = (1800, 128)  # patterns, detector: the paper's catalyst view
    large: tuple[int, int] = (8192, 256)
    largest: tuple[int, int] = (32768, 256)  # the paper's eight-GPU Siemens star
    speed_iterations: tuple[int, int] = (12, 5)  # medium views, the large view
    differences_detector: int = 64
    differences_positions: int = 120
    differences_iterations: tuple[int, int] = (1, 30)
    largest_iterations: int = 4


GPU_SIZES = Sizes()
DRY_SIZES = Sizes(
    medium=(96, 32),
    large=(48, 64),
    largest=(1024, 32),
    speed_iterations=(4, 3),
    differences_detector=64,
    differences_positions=120,
    differences_iterations=(1, 3),
    largest_iterations=2,
)
#: "Free GPU memory" in the dry run: small enough that the largest view needs chunks.
DRY_FREE_BYTES = 48 * 2**20


class DryRunPool:
    """CuPy's memory pool, as the dry run measures it: tracemalloc's peak since the last
    ``free_all_blocks`` (the GPU path on NumPy allocates what the GPU would hold)."""

    def __init__(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        self._base = 0

    def free_all_blocks(self) -> None:
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]

    def total_bytes(self) -> int:
        return max(0, tracemalloc.get_traced_memory()[1] - self._base)


def dry_run_cupy() -> Any:
    """What this script uses of CuPy, for ``--dry-run``: the arrays are NumPy's (``xp``),
    the solver runs on NumPy with the GPU's algorithmic path."""
    pool = DryRunPool()
    runtime = SimpleNamespace(
        memGetInfo=lambda: (DRY_FREE_BYTES, DRY_FREE_BYTES),
        getDeviceProperties=lambda device: {"name": "none: dry run, GPU path on NumPy"},
        runtimeGetVersion=lambda: 0,
    )
    return SimpleNamespace(
        __version__="none (dry run)",
        xp=np,
        backend="numpy",
        dry_run=True,
        get_default_memory_pool=lambda: pool,
        cuda=SimpleNamespace(
            Device=lambda device: SimpleNamespace(synchronize=lambda: None), runtime=runtime
        ),
    )


def array_module(cp: Any) -> Any:
    """The module of the arrays: CuPy, or NumPy in the dry run."""
    return getattr(cp, "xp", cp)


def backend_of(cp: Any) -> str:
    return getattr(cp, "backend", "cupy")


@contextmanager
def environment(name: str, value: str | None) -> Iterator[None]:
    """Within: ``name`` set to ``value`` (None: left as it is); restored after."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def gpu_side(cp: Any) -> Any:
    """Within: the solver runs the GPU's path (CuPy; in the dry run, NumPy with
    ``PTYCHOFLOW_GPU_PATH_ON_CPU=1``)."""
    from recon.primitives import GPU_PATH_ON_CPU

    return environment(GPU_PATH_ON_CPU, "1" if getattr(cp, "dry_run", False) else None)


def run_tests() -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *GPU_TEST_FILES], cwd=REPO, capture_output=True, text=True, check=False
    )
    print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
    last = [line for line in done.stdout.splitlines() if line.strip()][-1:] or [""]
    return {
        "returncode": done.returncode,
        "summary": last[0],
        "seconds": time.perf_counter() - started,
    }


class Timer:
    """Per-iteration wall times with a device sync (the solver synchronises each iteration)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, iteration: int, cost: float, seconds: float) -> None:
        self.seconds.append(seconds)


def time_view(cp: Any, scan: Any, changes: dict[str, Any], iterations: int) -> dict[str, Any]:
    pool = cp.get_default_memory_pool()
    cp.cuda.Device(0).synchronize()
    pool.free_all_blocks()
    timer = Timer()
    options = ReconOptions(
        iterations=iterations,
        backend=backend_of(cp),
        probe_warmup=0,
        amplitude_start=0.0,
        **changes,
    )
    started = time.perf_counter()
    with gpu_side(cp):
        reconstruct(scan, options, progress=timer)
    total = time.perf_counter() - started
    warm = timer.seconds[2:] or timer.seconds
    peak = pool.total_bytes()
    pixels = scan.data.size
    pool.free_all_blocks()
    return {
        "ms_per_iteration": 1e3 * statistics.median(warm),
        "peak_bytes": int(peak),
        "bytes_per_pattern_pixel": peak / pixels,
        "total_s": total,
    }


def speed(
    cp: Any, star: pathlib.Path | None, quick: bool, sizes: Sizes = GPU_SIZES
) -> list[dict[str, Any]]:
    from recon.cxi import load_scan
    from recon.simulate import simulate_view

    medium_iterations, large_iterations = sizes.speed_iterations
    views = []
    if star is not None:
        views.append(("real star 516x128^2", lambda: load_scan(star), medium_iterations))
    else:
        print("the real Siemens star was not found (--star PATH): its row is left out")
    n, d = sizes.medium
    views.append(
        (
            f"{n}x{d}^2",
            lambda: simulate_view(detector=d, n_positions=n, photons=1e6, seed=0).scan,
            medium_iterations,
        )
    )
    if not quick:
        n_large, d_large = sizes.large
        views.append(
            (
                f"{n_large}x{d_large}^2",
                # simulated on the GPU: the CPU simulator's loop takes about a minute here
                lambda: simulate_on_gpu(array_module(cp), n_large, d_large, photons=1e7),
                large_iterations,
            )
        )
    rows = []
    for name, make, iterations in views:
        started = time.perf_counter()
        scan = make()
        made = time.perf_counter() - started
        variants = list(VARIANTS)
        if name.startswith(f"{n}x"):  # the fused kernels against the same code unfused
            variants.append(("defaults, unfused", {}))
        for variant, changes in variants:
            unfused = variant.endswith("unfused")
            if unfused:
                os.environ[FUSED_KERNELS_ENV] = "0"
            try:
                numbers = time_view(cp, scan, changes, iterations)
            finally:
                os.environ.pop(FUSED_KERNELS_ENV, None)
            rows.append({"view": name, "variant": variant, "made_s": made, **numbers})
            print(f"  {name} {variant}: {numbers['ms_per_iteration']:.1f} ms/it", flush=True)
        del scan
    print_table(
        "Speed and memory (CuPy, one GPU; median after 2 warm-up iterations; memory-pool peak)",
        ["view", "options", "ms/iteration", "peak GPU memory (GiB)", "bytes/pattern pixel"],
        [
            [
                r["view"],
                r["variant"],
                f"{r['ms_per_iteration']:.1f}",
                f"{r['peak_bytes'] / 2**30:.2f}",
                f"{r['bytes_per_pattern_pixel']:.0f}",
            ]
            for r in rows
        ],
    )
    return rows


def ssim_or_nan(phase_ssim: Any, result: Any, simulation: Any) -> float:
    """Phase SSIM against the truth, or nan where it is undefined: after one iteration the
    object is still nearly flat, and locating it on the truth can leave too little overlap."""
    try:
        return float(phase_ssim(result, simulation))
    except ValueError:
        return float("nan")


def differences(cp: Any, sizes: Sizes = GPU_SIZES) -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO))
    from recon.simulate_fourier import simulate_scan
    from tests.unit.equivalence import phase_ssim, rel

    d, n = sizes.differences_detector, sizes.differences_positions
    sims = {
        "star": simulate_scan(detector=d, n_positions=n, seed=1),
        "modes, positions off 1 px": simulate_scan(
            detector=d, n_positions=n, seed=5, mode_powers=(0.8, 0.2), position_error_px=1.0
        ),
    }
    cases = (
        ("star", "defaults", {}),
        ("modes, positions off 1 px", "2 modes", {"probe_modes": 2}),
        ("modes, positions off 1 px", "positions", {"refine_positions": True}),
    )
    rows = []
    for floor in (0.0, 1e-5):
        for sim_name, variant, changes in cases:
            sim = sims[sim_name]
            for iterations in sizes.differences_iterations:
                options = ReconOptions(iterations=iterations, dark_floor=floor, **changes)
                cpu = reconstruct(sim.to_scan(), options.replace(backend="numpy"))
                with gpu_side(cp):
                    gpu = reconstruct(sim.to_scan(), options.replace(backend=backend_of(cp)))
                row = {
                    "view": sim_name,
                    "variant": variant,
                    "dark_floor": floor,
                    "iterations": iterations,
                    "object": rel(gpu.object, cpu.object),
                    "probe": rel(gpu.probe, cpu.probe),
                    "cost": abs(gpu.cost[-1] / cpu.cost[-1] - 1),
                    "ssim_cpu": ssim_or_nan(phase_ssim, cpu, sim),
                    "ssim_gpu": ssim_or_nan(phase_ssim, gpu, sim),
                }
                if cpu.refined_positions is not None:
                    row["positions_px"] = float(
                        np.abs(gpu.refined_positions - cpu.refined_positions).max()
                    )
                if changes.get("probe_modes"):
                    row["split_cpu"] = cpu.mode_power_fractions
                    row["split_gpu"] = gpu.mode_power_fractions
                rows.append(row)
    print_table(
        "NumPy against CuPy (relative differences; phase SSIM against the simulated truth)",
        ["view", "options", "dark floor", "it.", "object", "probe", "cost", "SSIM cpu / gpu"],
        [
            [
                r["view"],
                r["variant"],
                f"{r['dark_floor']:g}",
                str(r["iterations"]),
                f"{r['object']:.1e}",
                f"{r['probe']:.1e}",
                f"{r['cost']:.1e}",
                f"{r['ssim_cpu']:.3f} / {r['ssim_gpu']:.3f}",
            ]
            for r in rows
        ],
    )
    return rows


def kernel_profile(cp: Any, sizes: Sizes = GPU_SIZES) -> dict[str, Any]:
    from recon.ptycho import _Reconstruction
    from recon.simulate import simulate_view

    dry = getattr(cp, "dry_run", False)
    if dry:
        profile = None  # no CUDA kernels to profile: the steps run, unprofiled
    else:
        try:
            from torch.profiler import ProfilerActivity, profile
        except ImportError:
            print("PyTorch is not installed: no kernel profile")
            return {}
    n, d = sizes.medium
    scan = simulate_view(detector=d, n_positions=n, photons=1e6, seed=0).scan
    iterations = 5
    with gpu_side(cp):
        state = _Reconstruction(scan, ReconOptions(backend=backend_of(cp)), array_module(cp), [0])
        for _ in range(2):  # warm-up: plans, kernels compiled
            state.object_step()
            state.probe_step()
            state.probe_step()
        cp.cuda.Device(0).synchronize()
        started = time.perf_counter()
        if profile is None:
            for _ in range(iterations):
                state.object_step()
                state.probe_step()
                state.probe_step()
            wall = (time.perf_counter() - started) / iterations
            print(f"dry run: {1e3 * wall:.1f} ms per iteration on NumPy, no kernel profile")
            return {"wall_ms": 1e3 * wall, "dry_run": True}
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iterations):
                state.object_step()
                state.probe_step()
                state.probe_step()
            cp.cuda.Device(0).synchronize()
        wall = (time.perf_counter() - started) / iterations
    by_name: dict[str, float] = {}
    launches = 0
    for event in prof.key_averages():
        if not str(getattr(event, "device_type", "")).endswith("CUDA"):
            continue
        microseconds = getattr(event, "self_device_time_total", None)
        if microseconds is None:
            microseconds = event.self_cuda_time_total
        by_name[event.key] = microseconds / 1e3 / iterations
        launches += event.count
    busy = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda item: -item[1])[:12]
    print_table(
        f"Kernel time, {n}x{d}^2, defaults: {busy:.1f} ms busy of {1e3 * wall:.1f} ms wall "
        f"per iteration, {launches / iterations:.0f} launches",
        ["kernel", "ms per iteration"],
        [[name[:70], f"{ms:.2f}"] for name, ms in top],
    )
    return {
        "busy_ms": busy,
        "wall_ms": 1e3 * wall,
        "launches": launches / iterations,
        "top": top,
    }


#: Part of the free GPU memory the largest view may be sized to (the rest: CUDA's own).
LARGEST_FREE_FRACTION = 0.92


def simulate_on_gpu(xp: Any, n_positions: int, detector: int, photons: float, seed: int = 0):
    """A simulated view (``recon.simulate``'s object, probe and raster) whose patterns are
    computed on the GPU in batches (the CPU simulator's per-pattern loop would take minutes
    at 32768 x 256^2): bilinear patches, |FFT|^2 centred, Poisson counts. Returns ScanData.
    ``xp``: CuPy, or NumPy to check the script on a machine without a GPU."""
    from recon.backend import is_cupy, to_device
    from recon.cxi import POSITION_MARGIN, validated_scan
    from recon.operators import Ptycho
    from recon.simulate import (
        OVERLAP,
        PROBE_WIDTH_FRACTION,
        focused_probe,
        known_object,
        raster_positions,
    )

    rng = np.random.default_rng(seed)
    step = (1 - OVERLAP) * PROBE_WIDTH_FRACTION * detector
    positions = raster_positions(n_positions, step, rng)
    shape = tuple(int(np.ceil(e)) + detector + POSITION_MARGIN for e in positions.max(axis=0))
    obj = to_device(known_object(shape), xp)
    probe = focused_probe(detector)
    device_probe = to_device(probe[None], xp)
    data = np.empty((n_positions, detector, detector), dtype=np.float32)
    scale = None
    batch = 1024
    for start in range(0, n_positions, batch):
        stop = min(start + batch, n_positions)
        local = to_device(positions[start:stop].astype(np.float32), xp)
        model = Ptycho(local, shape, (detector, detector), "bilinear")
        intensity = xp.fft.fftshift(model.intensity(obj, device_probe), axes=(-2, -1))
        if scale is None:
            scale = photons / float(intensity.sum(axis=(1, 2)).mean())
        counts = xp.random.poisson(intensity * scale).astype(xp.float32)
        data[start:stop] = to_host(counts)
        del intensity, counts, model
    if is_cupy(xp):
        xp.get_default_memory_pool().free_all_blocks()
    guess = (probe * np.sqrt(scale)).astype(np.complex64)
    return validated_scan(data, positions, probe=guess, source="<simulated on the GPU>")


def patterns_that_fit(
    allowed: float, patterns: int, detector: tuple[int, int], object_shape: tuple[float, float]
) -> int:
    """The most of ``patterns`` (all, or 90 % steps down) that GPU 0 holds within
    ``allowed`` bytes by the GPU estimate."""
    from recon.memory import estimate_gpu_bytes

    def needed(n: int) -> float:
        return estimate_gpu_bytes(n, detector, object_shape)[0]

    n = patterns
    while n > 256 and needed(n) > allowed:
        n = int(n * 0.9)
    return n


def largest(cp: Any, sizes: Sizes = GPU_SIZES) -> dict[str, Any]:
    """The 32768 x 256^2 view, or as many of its patterns as the GPU estimate fits."""
    from recon.memory import (
        estimate_gpu_bytes,
        format_bytes,
        gpu_chunks_for,
        object_shape_estimate,
    )

    patterns, detector = sizes.largest
    det = (detector, detector)
    started = time.perf_counter()
    scan = simulate_on_gpu(array_module(cp), patterns, detector, photons=1e7)
    made = time.perf_counter() - started
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    free, total = cp.cuda.runtime.memGetInfo()
    allowed = LARGEST_FREE_FRACTION * free
    extent = np.ptp(scan.positions, axis=0)
    shape = object_shape_estimate((float(extent[0]), float(extent[1])), det)

    def chunks(n: int) -> int:
        return gpu_chunks_for(n, det, shape, 1, (0,), {0: int(allowed)})

    def needed(n: int) -> float:
        return estimate_gpu_bytes(n, det, shape, chunks=chunks(n))[0]

    n = patterns_that_fit(allowed, patterns, det, shape)
    if n < patterns:
        scan = dataclasses.replace(
            scan, data=scan.data[:n].copy(), positions=scan.positions[:n].copy()
        )
    whole = format_bytes(needed(patterns))
    print(
        f"  largest: {patterns} patterns need about {whole} by the estimate; "
        f"{format_bytes(free)} free of {format_bytes(total)}: running {n} in "
        f"{chunks(n)} chunks",
        flush=True,
    )
    # The solver judges the view against the same limit as this script (by default it
    # would take all the free memory, more than the view was sized to).
    from recon.memory import GPU_MEMORY_LIMIT_ENV

    with environment(GPU_MEMORY_LIMIT_ENV, str(int(allowed))):
        numbers = time_view(cp, scan, {}, iterations=sizes.largest_iterations)
    row = {
        "view": f"{n}x{detector}^2",
        "patterns": n,
        "fits_whole_view": n == patterns,
        "estimate_bytes": needed(n),
        "chunks_by_estimate": chunks(n),
        "free_bytes": int(free),
        "total_bytes": int(total),
        "made_s": made,
        **numbers,
    }
    print_table(
        f"The largest view on one GPU (defaults, {sizes.largest_iterations} iterations; "
        "memory-pool peak vs estimate)",
        [
            "view",
            "chunks",
            "ms/iteration",
            "peak GiB",
            "estimate GiB",
            "free GiB",
            "bytes/pattern pixel",
        ],
        [
            [
                row["view"],
                str(row["chunks_by_estimate"]),
                f"{row['ms_per_iteration']:.0f}",
                f"{row['peak_bytes'] / 2**30:.1f}",
                f"{row['estimate_bytes'] / 2**30:.1f}",
                f"{row['free_bytes'] / 2**30:.1f}",
                f"{row['bytes_per_pattern_pixel']:.0f}",
            ]
        ],
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="gpu-bench.json", help="where to write the numbers")
    parser.add_argument("--star", default=None, help="the real Siemens star (.npz.bz2)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--quick", action="store_true", help="no 8192x256^2 view")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["tests", "speed", "differences", "kernels", "largest"],
        choices=["tests", "speed", "differences", "kernels", "largest"],
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU needed: every part on small views, NumPy on the GPU's path (checks "
        "this script; its numbers say nothing about a GPU)",
    )
    args = parser.parse_args(argv)
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if args.dry_run:
        # pocketfft, as bench/gpu_memory_traced.py: FFTW's plan cache holds host arrays that
        # a GPU does not, and the traced peak stands in for the memory pool's
        os.environ["PTYCHOFLOW_FFT"] = "scipy"
    cp = dry_run_cupy() if args.dry_run else cupy_module()
    if cp is None:
        print("bench/gpu.py needs CuPy and a GPU (or --dry-run)")
        return 1
    star = pathlib.Path(args.star) if args.star else None
    if star is None and not args.dry_run:
        star = next((p for p in STAR_CANDIDATES if p.exists()), None)
    props = cp.cuda.runtime.getDeviceProperties(0)
    numbers: dict[str, Any] = {
        "dry_run": bool(args.dry_run),
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
    }
    print(json.dumps(numbers))
    started = time.perf_counter()
    parts = {
        "tests": run_tests,
        "speed": lambda: speed(cp, star, args.quick, sizes),
        "differences": lambda: differences(cp, sizes),
        "kernels": lambda: kernel_profile(cp, sizes),
        "largest": lambda: largest(cp, sizes),
    }
    if args.skip_tests or args.dry_run:  # without CuPy every gpu test skips
        parts.pop("tests")
    for name, part in parts.items():
        if name not in args.parts:
            continue
        try:
            numbers[name] = part()
        except Exception as err:  # one part failing must not lose the others' numbers
            traceback.print_exc()
            numbers[name] = {"error": repr(err)}
        pathlib.Path(args.json).write_text(json.dumps(numbers, indent=1, default=to_json))
    numbers["seconds"] = time.perf_counter() - started
    pathlib.Path(args.json).write_text(json.dumps(numbers, indent=1, default=to_json))
    print(f"numbers written to {args.json} ({numbers['seconds']:.0f} s)")
    failed = [
        name for name, value in numbers.items() if isinstance(value, dict) and "error" in value
    ]
    if failed:
        print(f"these parts failed (their tracebacks are above): {', '.join(failed)}")
        return 1
    return 0


def to_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "get"):
        return to_host(value).tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
