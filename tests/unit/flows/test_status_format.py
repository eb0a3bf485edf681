"""What run-flow and status print: 80 columns on the local backend, the run id only with
--wide, progress under a computing view, "already succeeded; use --force"."""

from __future__ import annotations

import pytest

from flows.backend import RunProgress, RunStatus, StartedRun, ViewRequest
from flows.commands import _describe_outcome, describe_progress, format_status
from flows.launcher import ViewAction, ViewOutcome
from flows.ledger import Ledger


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger
    ledger.close()


def _row(ledger, view, progress):
    request = ViewRequest(scan_id=100, view_file=view, scan_folder="flyscan100", recon={})
    ledger.claim(request, "local")
    ledger.mark_started("flyscan100", view, StartedRun(run_id="6f1c3e0a-" + "0" * 27))
    return ledger.update_progress("flyscan100", view, progress)


def test_local_status_fits_80_columns_and_wide_adds_the_run_id(ledger):
    done = _row(
        ledger,
        "view000.cxi",
        RunProgress(
            RunStatus.SUCCEEDED,
            stage_seconds={"transfer_in": 0.4, "compute": 123.4, "transfer_out": 0.2},
            output={"output": "/x/view000.h5"},
        ),
    )
    computing = _row(
        ledger,
        "view001.cxi",
        RunProgress(
            RunStatus.ACTIVE,
            stage="compute",
            stage_seconds={"transfer_in": 0.5},
            output={"progress": {"iteration": 40, "iterations": 100, "cost": 0.0123, "eta": 18}},
        ),
    )
    text = format_status([done, computing])
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "6f1c3e0a" not in text
    assert "iteration 40/100, cost 0.0123, about 18 s left" in text
    wide = format_status([done, computing], wide=True)
    assert "RUN ID" in wide and "6f1c3e0a" in wide


def test_progress_says_the_stage_and_how_long_it_has_run(ledger):
    row = _row(ledger, "view002.cxi", RunProgress(RunStatus.ACTIVE, stage="transfer_out"))
    assert describe_progress(row, now=row.submitted_at + 75).startswith("transfer_out 1 min 15 s")


def test_a_skipped_view_says_why_and_what_to_do():
    succeeded = ViewOutcome("scan100", "view000.cxi", ViewAction.SKIPPED, RunStatus.SUCCEEDED)
    assert _describe_outcome(succeeded) == "already succeeded; use --force to run again"
    running = ViewOutcome("scan100", "view000.cxi", ViewAction.SKIPPED, RunStatus.ACTIVE)
    assert _describe_outcome(running) == "already active; not started again"


def test_printed_commands_run_as_printed_without_the_venv_on_path(monkeypatch, tmp_path):
    """Outside the venv the commands are printed with their path; the PATH the local
    backend changes later (for the Compute engine) does not count."""
    import os
    import sys

    import flows.commands

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flows.commands, "_STARTUP_PATH", "/nonexistent")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + "/usr/bin")
    name = flows.commands.command_name("ptychoflow")
    assert name == os.path.join(os.path.dirname(sys.executable), "ptychoflow")
    monkeypatch.setattr(flows.commands, "_STARTUP_PATH", os.path.dirname(sys.executable))
    assert flows.commands.command_name("ptychoflow") == "ptychoflow"
