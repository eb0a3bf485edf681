"""The ledger's disk fills mid-scan (issue 16, item 7): write-ahead, and a clean stop.

A real, small tmpfs holds the ledger (root only; skipped elsewhere with the reason), and
a real file fills it while the scan is being handed over.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import pytest

import flows.launcher
from flows.backend import RunStatus
from flows.commands import EXIT_LEDGER_UNWRITABLE, run_command
from flows.errors import LedgerUnwritableError
from flows.ledger import Ledger
from tests.functional.recording_backend import RecordingBackend, write_config, write_scan


@pytest.fixture
def small_disk(small_tmpfs):
    return small_tmpfs


def fill(folder: pathlib.Path) -> None:
    """Write a file until the file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


class FillingBackend(RecordingBackend):
    """Fills the ledger's disk as view001 is handed over; runs die with run-flow."""

    def __init__(self, log_path, disk):
        super().__init__(log_path, finish_after_s=30.0, runs_die_with_owner=True)
        self.disk = disk
        self.closed_with_cancel = None

    def start_view(self, request):
        started = super().start_view(request)
        if request.view == "view001":
            fill(self.disk)
        return started

    def close(self, *, cancel=False):
        self.closed_with_cancel = cancel
        super().close(cancel=cancel)


def test_run_flow_stops_cleanly_when_the_ledger_cannot_be_written(
    small_disk, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "acquisition"
    write_scan(root, 100, views=6)
    config = write_config(
        tmp_path / "ptychoflow.toml", root, ledger=str(small_disk / "ledger.sqlite")
    )
    backend = FillingBackend(tmp_path / "runs.jsonl", small_disk)
    monkeypatch.setattr(flows.launcher, "make_backend", lambda config: backend)
    args = argparse.Namespace(
        config=str(config), scan="100", views=None, iterations=None, devices=None,
        force=False, wait=False, backend=None,
    )  # fmt: skip
    code = run_command(args)
    err = capsys.readouterr().err
    assert code == EXIT_LEDGER_UNWRITABLE, err
    assert "cannot be written" in err or "bytes free" in err
    assert "started nothing more" in err and "Traceback" not in err
    # Nothing started after the disk filled, and nothing waited on: the runs in flight
    # were abandoned (runs die with run-flow), not computed without being recorded.
    assert [s["view"] for s in backend.starts()] == ["view000", "view001"]
    assert backend.closed_with_cancel is True
    os.unlink(small_disk / "filler")
    ledger = Ledger(small_disk / "ledger.sqlite")
    try:
        rows = {r.view_file: r.status for r in ledger.runs("scan100")}
    finally:
        ledger.close()
    # Every started view was recorded before it was started (write-ahead).
    assert rows["view000.cxi"] is RunStatus.ACTIVE
    assert rows["view001.cxi"] in (RunStatus.SUBMITTING, RunStatus.ACTIVE)
    assert "view002.cxi" not in rows


def test_no_view_is_claimed_on_a_full_disk(small_disk, tmp_path):
    """The free-space check comes before the first write: SQLite may still fit a row in
    its WAL on a full disk, but the next one would not."""
    root = tmp_path / "acquisition"
    write_scan(root, 100, views=2)
    from flows.config import Config

    config = Config(
        acquisition_root=root,
        compute_root=tmp_path / "compute",
        ledger=small_disk / "ledger.sqlite",
        state_dir=tmp_path / "state",
    )
    ledger = Ledger(config.ledger)
    fill(small_disk)
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = flows.launcher.Launcher(config, backend, ledger)
    with pytest.raises(LedgerUnwritableError, match="nothing more is started"):
        launcher.start_scan("scan100")
    assert backend.starts() == []
    ledger.close()
