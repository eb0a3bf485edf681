"""End-to-end flow benchmark on the local backend: prints a table, asserts nothing.

For scans of N = 1, 8 and 32 small simulated views it measures the end-to-end
time from ``start_scan`` to every view's results being back at the acquisition
side, and splits each run's time into transfer in, compute, transfer out and
"other" (orchestration: interpreter, ledger, polling, queueing between states),
as in the paper's Fig. 5. The Compute engine is started once beforehand, as a
running watcher or run-flow has it; its start-up time is printed separately.

    python bench/flow.py                  # N = 1, 8, 32
    python bench/flow.py --views 1 8 --iterations 20
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.backend import STAGES, Trigger  # noqa: E402
from flows.config import Config, resolve_paths  # noqa: E402
from flows.launcher import Launcher, make_backend  # noqa: E402
from flows.ledger import Ledger  # noqa: E402
from recon.options import ReconOptions  # noqa: E402
from recon.simulate import write_simulated_scan  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--detector", type=int, default=64)
    parser.add_argument("--positions", type=int, default=100)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-") as tmp:
        root = pathlib.Path(tmp)
        config = resolve_paths(
            Config(recon=ReconOptions(iterations=args.iterations, backend="numpy")), root
        )
        start = time.perf_counter()
        backend = make_backend(config)
        startup = time.perf_counter() - start
        ledger = Ledger(config.ledger)
        rows_out = []
        try:
            launcher = Launcher(config, backend, ledger, poll_interval_s=0.05)
            for scan_id, n_views in enumerate(args.views, start=100):
                write_simulated_scan(
                    config.acquisition_root / f"scan{scan_id}",
                    n_views=n_views,
                    detector=args.detector,
                    n_positions=args.positions,
                    photons=1e6,
                    seed=scan_id,
                )
                begin = time.perf_counter()
                launcher.start_scan(f"scan{scan_id}", trigger=Trigger.MANUAL)
                rows = launcher.wait(f"scan{scan_id}", poll_interval_s=0.05)
                wall = time.perf_counter() - begin
                failed = [r.label for r in rows if r.status.value != "succeeded"]
                if failed:
                    print(f"failed runs: {failed}", file=sys.stderr)
                per_stage = {
                    stage: statistics.mean(r.stage_seconds.get(stage, 0.0) for r in rows)
                    for stage in (*STAGES, "other")
                }
                run_total = sum(per_stage.values())
                rows_out.append(
                    [
                        str(n_views),
                        f"{wall:.2f}",
                        *(f"{per_stage[s]:.3f}" for s in (*STAGES, "other")),
                        f"{100 * per_stage['other'] / run_total:.1f}%",
                    ]
                )
                print(f"  {rows_out[-1]}", file=sys.stderr, flush=True)
        finally:
            backend.close()
            ledger.close()

    header = [
        "views",
        "end-to-end s",
        "transfer in s",
        "compute s",
        "transfer out s",
        "other s",
        "other share",
    ]
    widths = [max(len(r[i]) for r in [header, *rows_out]) for i in range(len(header))]
    print(
        f"\nLocal backend, views of {args.positions}x{args.detector}x{args.detector}, "
        f"{args.iterations} iterations; stage columns are means per run "
        f"(compute includes waiting for a free worker); engine start-up {startup:.1f} s"
    )
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows_out:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
