"""Reconstruction benchmark: prints tables, asserts nothing.

1. Seconds per iteration and peak memory for the real Siemens-star view
   (516 x 128 x 128) and a simulated view of 1800 x 128 x 128 (one view of the
   paper's catalyst dataset), at 1, 2 and 4 partitions, on NumPy, and on CuPy
   when a GPU is usable.
2. Our solver against Pty-chi's LSQML (PyTorch, CPU) on a simulated noisy view,
   same data, same probe guess, same iteration budget: seconds per iteration,
   total seconds and phase SSIM against the known object.

    python bench/recon.py                       # everything (about 15 min on 2 cores)
    python bench/recon.py --skip-ptychi         # table 1 only
    python bench/recon.py --compare-positions 1800 --compare-detector 128

Pty-chi needs the bench extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import tracemalloc

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recon.backend import cupy_module, gpu_count  # noqa: E402
from recon.metrics import compare_objects, illuminated_region  # noqa: E402
from recon.options import ReconOptions  # noqa: E402
from recon.ptycho import reconstruct  # noqa: E402
from recon.simulate import simulate_view  # noqa: E402

SIEMENS_STAR = REPO.parent / "shared" / "data" / "siemens-star-small.npz.bz2"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def time_solver(scan, backend: str, partitions: int, iterations: int) -> tuple[float, float]:
    """(median seconds per iteration after the first, peak memory in MiB)."""
    options = ReconOptions(iterations=iterations, backend=backend, devices=partitions)
    if backend == "cupy":
        cp = cupy_module()
        pools = []
        for device in range(partitions):
            with cp.cuda.Device(device):
                pool = cp.get_default_memory_pool()
                pool.free_all_blocks()
                pools.append(pool)
        result = reconstruct(scan, options)
        peak = sum(pool.total_bytes() for pool in pools) / 2**20
    else:
        tracemalloc.start()
        result = reconstruct(scan, options)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    seconds = result.seconds_per_iteration[1:] or result.seconds_per_iteration
    return statistics.median(seconds), peak


def speed_table(args: argparse.Namespace) -> None:
    from recon.cxi import load_scan

    views = []
    if SIEMENS_STAR.exists():
        views.append(("Siemens star (real) 516x128x128", load_scan(SIEMENS_STAR)))
    simulated = simulate_view(detector=128, n_positions=1800, photons=1e6, seed=0)
    views.append(("simulated 1800x128x128", simulated.scan))
    backends = ["numpy"] + (["cupy"] if gpu_count() else [])
    rows = []
    for name, scan in views:
        for backend in backends:
            for partitions in args.partitions:
                if backend == "cupy" and partitions > gpu_count():
                    continue
                per_iteration, peak = time_solver(scan, backend, partitions, args.iterations)
                rows.append(
                    [name, backend, str(partitions), f"{per_iteration * 1000:.0f}", f"{peak:.0f}"]
                )
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print_table(
        f"Solver speed ({args.iterations} iterations, median ms/iteration after the first)",
        ["view", "backend", "partitions", "ms/iteration", "peak MiB"],
        rows,
    )


def poisson_noise_floor(scan, result, seed: int = 0) -> float:
    """Mean Poisson deviance per pixel that counts drawn from the fitted model itself
    would have: the lowest cost any model can expect on data with this noise."""
    from recon.cost import PoissonCost
    from recon.operators import Ptycho

    rng = np.random.default_rng(seed)
    total = 0.0
    for first in range(0, scan.n_positions, 64):
        block = slice(first, first + 64)
        sub = Ptycho(result.refined_positions[block], result.object.shape, scan.detector_shape)
        intensity = sub.intensity(result.object, result.probe).astype(np.float32)
        drawn = rng.poisson(intensity).astype(np.float32)
        total += PoissonCost(drawn).value(intensity)
    return total / (scan.n_positions * scan.detector_shape[0] * scan.detector_shape[1])


def real_data_table(args: argparse.Namespace) -> None:
    from recon.cxi import load_scan

    if not SIEMENS_STAR.exists():
        return
    scan = load_scan(SIEMENS_STAR)
    result = reconstruct(scan, ReconOptions(iterations=args.real_iterations, backend="numpy"))
    floor = poisson_noise_floor(scan, result)
    cost = result.cost
    rows = [
        [
            str(args.real_iterations),
            f"{cost[0]:.3f}",
            f"{cost[10]:.3f}",
            f"{cost[-1]:.3f}",
            f"{cost[0] / cost[-1]:.1f}x",
            f"{floor:.3f}",
            f"{(cost[0] - floor) / (cost[-1] - floor):.1f}x",
        ]
    ]
    print_table(
        "Real Siemens star, Poisson deviance per pixel (0 = perfect fit)",
        ["iterations", "first", "after 10", "last", "fall", "noise floor", "fall above floor"],
        rows,
    )


def comparison_table(args: argparse.Namespace) -> None:
    simulated = simulate_view(
        detector=args.compare_detector,
        n_positions=args.compare_positions,
        photons=args.compare_photons,
        seed=7,
    )
    scan = simulated.scan
    truth = simulated.true_object
    region = illuminated_region(scan.positions, simulated.true_probe, truth.shape)
    h, w = truth.shape

    def ssim(obj: np.ndarray) -> float:
        return compare_objects(obj[:h, :w], truth, region)["phase_ssim"]

    rows = []
    start = time.perf_counter()
    ours = reconstruct(scan, ReconOptions(iterations=args.compare_iterations, backend="numpy"))
    total = time.perf_counter() - start
    rows.append(
        [
            "ptychoflow ML-CG (Poisson)",
            str(args.compare_iterations),
            f"{statistics.mean(ours.seconds_per_iteration) * 1000:.0f}",
            f"{total:.1f}",
            f"{ssim(ours.object):.3f}",
        ]
    )
    print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    try:
        from bench.ptychi_runner import run_lsqml
    except ImportError as err:  # the bench extra is not installed
        print(f"\nPty-chi is not installed ({err}); pip install -e '.[bench]'")
    else:
        theirs = run_lsqml(
            scan.data, scan.positions, initial_probe_for(scan), iterations=args.compare_iterations
        )
        rows.append(
            [
                "Pty-chi LSQML (Gaussian)",
                str(args.compare_iterations),
                f"{theirs.seconds_per_iteration * 1000:.0f}",
                f"{theirs.seconds_total:.1f}",
                f"{ssim(theirs.object):.3f}",
            ]
        )
    print_table(
        f"Noisy simulated view {args.compare_positions}x{args.compare_detector}x"
        f"{args.compare_detector}, {args.compare_photons:.0e} photons/pattern, same probe guess",
        ["solver", "iterations", "ms/iteration", "total s", "phase SSIM"],
        rows,
    )


def initial_probe_for(scan) -> np.ndarray:
    """The same starting probe our solver uses (the file's guess, scaled to the data)."""
    from recon.ptycho import initial_probe

    return initial_probe(scan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5, help="iterations per speed row")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-ptychi", action="store_true", help="no comparison table")
    parser.add_argument("--skip-real", action="store_true", help="no real-data convergence table")
    parser.add_argument("--real-iterations", type=int, default=100)
    parser.add_argument("--compare-iterations", type=int, default=100)
    parser.add_argument("--compare-positions", type=int, default=516)
    parser.add_argument("--compare-detector", type=int, default=128)
    parser.add_argument("--compare-photons", type=float, default=1e6)
    args = parser.parse_args(argv)
    if not args.skip_speed:
        speed_table(args)
    if not args.skip_real:
        real_data_table(args)
    if not args.skip_ptychi:
        comparison_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
