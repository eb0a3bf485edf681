"""SIGKILL the watcher in the middle of a burst, start it again: nothing lost, nothing doubled."""

from __future__ import annotations

import collections
import signal

from flows.ledger import Ledger
from tests.functional.recording_backend import (
    WatcherProcess,
    read_log,
    wait_until,
    write_config,
    write_scan,
)

SCANS = range(400, 420)
LATE_SCANS = range(420, 425)  # written while no watcher runs
VIEWS = 3


def starts(log_path):
    return [r for r in read_log(log_path) if r["event"] == "start"] if log_path.exists() else []


def test_sigkill_mid_burst_then_restart_gives_exactly_one_run_per_view(tmp_path):
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(tmp_path / "ptychoflow.toml", root, marker="scan.done")
    log_path = tmp_path / "runs.jsonl"
    ledger_path = tmp_path / "ledger.sqlite"

    # Slow starts (20 ms each) so the kill lands while views are being submitted.
    with WatcherProcess(config, log_path, backend={"start_delay_s": 0.02}) as first:
        first.wait_for_line("watching")
        for scan_id in SCANS:
            write_scan(root, scan_id, views=VIEWS)
        wait_until(lambda: len(starts(log_path)) >= 12, what="a dozen runs started")
        first.process.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    started_by_first = len(starts(log_path))
    assert started_by_first < len(SCANS) * VIEWS  # killed mid-burst indeed

    for scan_id in LATE_SCANS:
        write_scan(root, scan_id, views=VIEWS)

    expected = {f"scan{s}-view{v:03d}" for s in (*SCANS, *LATE_SCANS) for v in range(VIEWS)}
    with WatcherProcess(config, log_path) as second:
        wait_until(lambda: len(starts(log_path)) >= len(expected), what="all views started")
        second.wait_for_line("scan424: 3 started")  # its summary line
        second.signal(signal.SIGTERM)
        assert second.wait() == 0

    counts = collections.Counter(r["label"] for r in starts(log_path))
    assert set(counts) == expected  # none lost
    assert set(counts.values()) == {1}  # none doubled
    assert {r["pid"] for r in starts(log_path)} == {first.process.pid, second.process.pid}

    ledger = Ledger(ledger_path)
    rows = ledger.runs()
    ledger.close()
    assert len(rows) == len(expected)
    run_ids = {r["label"]: r["run_id"] for r in starts(log_path)}
    assert {row.label: row.run_id for row in rows} == run_ids  # ledger and backend agree
