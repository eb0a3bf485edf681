"""Do 2 and 4 partitions reproduce the single-partition run? Prints tables, asserts nothing.

The partitions share one device (NumPy, or the GPU's algorithmic path on NumPy with
``PTYCHOFLOW_GPU_PATH_ON_CPU=1``), so every difference is the partition layout's: the
order of the float64 sums gathered across partitions, and anything that depends on a
partition's origin. Runs with refined positions, with the integer position search (its
padded solver grid, the default) and without it (``position_search=0``, no pad).
Columns: the largest relative cost difference over the iterations and the first
iteration where it exceeds 1e-12, the largest refined-position difference (pixels), and
the relative object and probe differences at the end.

    python bench/partitions.py
    python bench/partitions.py --detector 64 --positions 100 --iterations 20 --seed 5
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tables import print_table  # noqa: E402  (bench/tables.py, beside this script)

from recon.options import ReconOptions  # noqa: E402
from recon.ptycho import reconstruct  # noqa: E402
from recon.simulate_fourier import simulate_scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=int, default=32)
    parser.add_argument("--positions", type=int, default=60)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--position-error", type=float, default=1.0, help="pixels (RMS)")
    args = parser.parse_args()

    simulation = simulate_scan(
        detector=args.detector,
        n_positions=args.positions,
        seed=args.seed,
        mode_powers=(0.8, 0.2),
        position_error_px=args.position_error,
    )
    base = ReconOptions(
        iterations=args.iterations,
        probe_modes=2,
        probe_warmup=2,
        refine_positions=True,
        position_start=4,
        coarse_levels=0,
        backend="numpy",
    )
    rows = []
    for label, changes in (
        ("search (padded grid)", {}),
        ("position_search=0", {"position_search": 0}),
    ):
        results = {
            n: reconstruct(simulation.to_scan(), base.replace(devices=n, **changes))
            for n in (1, 2, 4)
        }
        one = results[1]
        for n in (2, 4):
            other = results[n]
            cost = np.abs(np.asarray(other.cost) / np.asarray(one.cost) - 1)
            first = int(np.argmax(cost > 1e-12)) if (cost > 1e-12).any() else "-"
            moved = np.abs(other.refined_positions - one.refined_positions).max()
            obj = np.linalg.norm(other.object - one.object) / np.linalg.norm(one.object)
            probe = np.linalg.norm(other.probe - one.probe) / np.linalg.norm(one.probe)
            row = [label, f"1 vs {n}", f"{cost.max():.1e}", first, f"{moved:.1e}"]
            rows.append([*row, f"{obj:.1e}", f"{probe:.1e}"])
    print_table(
        f"Partitions against one ({args.detector} px, {args.positions} positions, "
        f"{args.iterations} iterations, seed {args.seed})",
        [
            "positions",
            "partitions",
            "cost (max rel)",
            "first > 1e-12",
            "positions (px)",
            "object (rel)",
            "probe (rel)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
