"""Local Compute engine start-up: prints a table, asserts nothing.

For each of ``--repeat`` fresh engines (the local backend's ``LocalComputeEngine``
built from ``endpoint_config/local``) it measures the time ``start()`` takes, the
time from then to the first task's result (the first block of workers has to come
up), and the time ``shutdown()`` takes to leave no process behind.

    python bench/engine_startup.py
    python bench/engine_startup.py --repeat 5
    python bench/engine_startup.py --config path/to/endpoint_folder
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

from flows.local.compute import LocalComputeEngine  # noqa: E402


def double(x: int) -> int:
    return 2 * x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", help="endpoint config (default: endpoint_config/local)")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-engine-") as tmp:
        for i in range(args.repeat):
            began = time.perf_counter()
            engine = LocalComputeEngine(args.config, run_dir=pathlib.Path(tmp) / f"run{i}")
            engine.start()
            started = time.perf_counter()
            try:
                assert engine.submit(double, 21).result(timeout=120) == 42
                first = time.perf_counter()
            finally:
                engine.shutdown()
            stopped = time.perf_counter()
            rows.append((started - began, first - started, stopped - first))

    print(f"{'engine':>6} {'start() s':>10} {'first result s':>15} {'shutdown s':>11}")
    for i, (start_s, first_s, stop_s) in enumerate(rows):
        print(f"{i:>6} {start_s:>10.2f} {first_s:>15.2f} {stop_s:>11.2f}")
    columns = list(zip(*rows, strict=True))
    print(
        f"{'median':>6} {statistics.median(columns[0]):>10.2f} "
        f"{statistics.median(columns[1]):>15.2f} {statistics.median(columns[2]):>11.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
