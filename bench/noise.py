"""Does the solver fit the noise? Phase SSIM against the truth and the cost of held-out
patterns, iteration by iteration, on noisy independently simulated views. Prints tables,
asserts nothing.

For each photon count and variant, 5 % of the patterns are held out of the fit (as
``ReconOptions.holdout_fraction`` does); after every iteration the held-out cost is
evaluated (``recon.holdout.HeldOutCost``) and every ``--every`` iterations the ramp-free
phase SSIM against the truth. The summary compares the SSIM at the last iteration, at
the best iteration (an oracle) and at the iteration where the held-out cost was lowest
(what stopping on held-out patterns returns).

The probe starts from the true probe (refined from there; ``--guess model`` starts from
the optics model with a 20 % defocus error and no tilt instead), so that the start is not
what is measured: the question is what the late iterations do with the noise.

    python bench/noise.py                         # 64 px, 200 positions, 1e5 and 2e4 photons
    python bench/noise.py --photons 1e5 --iterations 300 --variants poisson gaussian
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tables import print_table  # noqa: E402  (bench/tables.py, beside this script)

import recon.ptycho  # noqa: E402
from recon.holdout import HeldOutCost, choose_holdout  # noqa: E402
from recon.metrics import compare_objects, illuminated_region  # noqa: E402
from recon.options import ReconOptions  # noqa: E402
from recon.ptycho import object_shape_for, reconstruct  # noqa: E402
from recon.simulate_fourier import (  # noqa: E402
    DEFOCUS_SPOT_FRACTION,
    simulate_scan,
    zone_plate_probe,
)

#: name -> (cost function, preconditioner regularisation or None for the solver's own)
VARIANTS = {
    "poisson": ("poisson", None),
    "gaussian": ("gaussian", None),
    "poisson-alpha0.3": ("poisson", 0.3),
}


def trace(args: argparse.Namespace, photons: float, variant: str) -> dict:
    sim = simulate_scan(
        detector=args.detector,
        n_positions=args.positions,
        photons=photons,
        object_kind=args.object,
        seed=11,
    )
    if args.guess == "model":
        guess = zone_plate_probe(
            args.detector, spot_fraction=0.8 * DEFOCUS_SPOT_FRACTION, tilt_px=(0.0, 0.0)
        )
    else:
        guess = sim.true_probe[0]
    scan = dataclasses.replace(sim.to_scan(), probe=guess.astype(np.complex64))
    held = choose_holdout(scan.positions, 0.05)
    fitted = np.setdiff1d(np.arange(scan.n_positions), held)
    fit_scan = dataclasses.replace(scan, data=scan.data[fitted], positions=scan.positions[fitted])
    cost, alpha = VARIANTS[variant]
    options = ReconOptions(iterations=args.iterations, backend="numpy", cost=cost)
    judge = HeldOutCost(
        scan.data[held],
        scan.positions[held],
        object_shape_for(fit_scan.positions, scan.detector_shape),
        options,
    )
    truth = sim.true_object
    height, width = truth.shape
    region = illuminated_region(
        sim.true_positions, np.sqrt(np.sum(np.abs(sim.true_probe) ** 2, axis=0)), truth.shape
    )
    held_cost, ssim = {}, {}

    def monitor(iteration, object_, probe):
        held_cost[iteration] = judge(object_, probe)
        if iteration % args.every == 0 or iteration == args.iterations:
            try:
                ssim[iteration] = compare_objects(object_[:height, :width], truth, region)[
                    "phase_ssim"
                ]
            except ValueError:
                ssim[iteration] = float("nan")
        return False

    saved = recon.ptycho.PRECONDITIONER_ALPHA
    if alpha is not None:
        recon.ptycho.PRECONDITIONER_ALPHA = alpha
    start = time.perf_counter()
    try:
        result = reconstruct(fit_scan, options, monitor=monitor)
    finally:
        recon.ptycho.PRECONDITIONER_ALPHA = saved
    seconds = time.perf_counter() - start
    stop = min(held_cost, key=held_cost.get)
    return {
        "train": result.cost,
        "held": held_cost,
        "ssim": ssim,
        "stop": stop,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=float, nargs="+", default=[1e5, 2e4])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["poisson"])
    parser.add_argument("--object", choices=["star", "spheres"], default="star")
    parser.add_argument("--detector", type=int, default=64)
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--every", type=int, default=10, help="SSIM every N iterations")
    parser.add_argument("--guess", choices=["true", "model"], default="true")
    args = parser.parse_args(argv)
    summary = []
    for photons in args.photons:
        for variant in args.variants:
            run = trace(args, photons, variant)
            rows = []
            for iteration in sorted(run["ssim"]):
                rows.append(
                    [
                        str(iteration),
                        f"{run['train'][iteration]:.5f}",
                        f"{run['held'][iteration]:.5f}",
                        f"{run['ssim'][iteration]:.4f}",
                    ]
                )
            print_table(
                f"{args.object}, {photons:.0e} photons/pattern, {variant}: cost per pixel of "
                f"the fitted and the held-out patterns, phase SSIM",
                ["iteration", "fitted cost", "held-out cost", "phase SSIM"],
                rows,
            )
            ssim = run["ssim"]
            best = max(ssim, key=lambda k: ssim[k] if np.isfinite(ssim[k]) else -1)
            stop = run["stop"]
            # SSIM at the held-out stop: the nearest measured iteration at or after it.
            at_stop = min((k for k in ssim if k >= stop), default=max(ssim))
            summary.append(
                [
                    f"{photons:.0e}",
                    variant,
                    f"{ssim[max(ssim)]:.4f}",
                    f"{ssim[best]:.4f} (it. {best})",
                    f"{ssim[at_stop]:.4f} (it. {stop}, scored at {at_stop})",
                    f"{run['seconds']:.0f}",
                ]
            )
    print_table(
        f"Summary ({args.iterations} iterations, {args.positions} positions, "
        f"{args.detector} px, 5 % held out)",
        ["photons", "variant", "SSIM last", "SSIM best (oracle)", "SSIM at held-out min", "s"],
        summary,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
