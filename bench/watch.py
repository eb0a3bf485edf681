"""Latency from a scan becoming complete (marker written) to its runs being started.

Runs the real watcher (in this process: observer, settle stage, launcher, SQLite
ledger) on the file-backed RecordingBackend of the test suite, writes SCANS scan
folders one after another (each: VIEWS tiny CXI views, then the marker), and
reads from the backend's log when each run was started. Prints p50/p99/max of
(last view of the scan started) - (marker written), per observer mode.

    PYTHONPATH=. python bench/watch.py [--scans 100] [--views 2] [--gap 0.05]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flows.config import Config
from tests.functional.recording_backend import (
    RecordingBackend,
    read_log,
    write_view_file,
)
from watcher.service import WatcherService


def measure(polling: bool, polling_interval_s: float, scans: int, views: int, gap_s: float):
    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-watch-") as tmp:
        tmp_path = pathlib.Path(tmp)
        root = tmp_path / "acquisition"
        root.mkdir()
        config = Config(
            acquisition_root=root,
            compute_root=tmp_path / "compute",
            ledger=tmp_path / "ledger.sqlite",
            state_dir=tmp_path / "state",
            marker="scan.done",
        )
        log_path = tmp_path / "runs.jsonl"
        service = WatcherService(
            config,
            lambda c: RecordingBackend(log_path),
            polling=polling,
            polling_interval_s=polling_interval_s,
        )
        service.start()
        marker_written = {}
        try:
            for scan_id in range(1000, 1000 + scans):
                folder = root / f"scan{scan_id}"
                for view in range(views):
                    write_view_file(folder / f"view{view:03d}.cxi")
                (folder / "scan.done").touch()
                marker_written[scan_id] = time.time()
                time.sleep(gap_s)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                starts = [r for r in read_log(log_path) if r["event"] == "start"]
                if len(starts) >= scans * views:
                    break
                time.sleep(0.05)
        finally:
            service.stop()
        last_start: dict[int, float] = {}
        for record in starts:
            last_start[record["scan_id"]] = max(
                last_start.get(record["scan_id"], 0.0), record["time"]
            )
        missing = set(marker_written) - set(last_start)
        if missing:
            raise SystemExit(f"{len(missing)} scans never started: {sorted(missing)[:5]} ...")
        return np.array([last_start[s] - marker_written[s] for s in marker_written])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between scans")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    modes = [("inotify", False, 0.0), ("polling 1 s", True, 1.0), ("polling 0.25 s", True, 0.25)]
    print(
        f"marker written -> all {args.views} runs of the scan started; "
        f"{args.scans} scans, {args.gap * 1000:.0f} ms apart, RecordingBackend"
    )
    print(f"{'mode':<16}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, polling, interval in modes:
        latency = measure(polling, interval, args.scans, args.views, args.gap) * 1000
        print(
            f"{name:<16}{np.percentile(latency, 50):>10.1f}{np.percentile(latency, 99):>10.1f}"
            f"{latency.max():>10.1f}"
        )


if __name__ == "__main__":
    main()
