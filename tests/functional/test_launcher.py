"""The launcher with a real file-backed backend, real files and a real SQLite ledger."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.backend import RunStatus, StartedRun, Trigger
from flows.config import Config
from flows.errors import ConfigError, LaunchError, TransientBackendError
from flows.launcher import (
    Launcher,
    RetryPolicy,
    ViewAction,
    make_backend,
)
from flows.ledger import Ledger, Owner, ScanState
from flows.scans import discover_views, parse_views
from recon.errors import InputError, InputFileNotFound, OptionsError
from tests.functional.recording_backend import RecordingBackend, write_scan, write_view_file

NO_WAIT = RetryPolicy(attempts=3, first_delay_s=0.0)


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "acquisition"
    root.mkdir()
    return Config(
        acquisition_root=root,
        compute_root=tmp_path / "compute",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def ledger(config):
    ledger = Ledger(config.ledger)
    yield ledger
    ledger.close()


def make_launcher(config, ledger, backend, **kwargs):
    kwargs.setdefault("retry", NO_WAIT)
    kwargs.setdefault("poll_interval_s", 0.01)
    return Launcher(config, backend, ledger, **kwargs)


def test_parse_views():
    assert parse_views("0,3-5") == [0, 3, 4, 5]
    assert parse_views(" 2 , 1,2 ") == [1, 2]
    with pytest.raises(OptionsError, match="'x'"):
        parse_views("1,x")
    with pytest.raises(OptionsError, match="backwards"):
        parse_views("5-3")


def test_discover_views_and_its_errors(config):
    write_scan(config.acquisition_root, 100, views=3)
    (config.acquisition_root / "recon").mkdir()
    folder, views = discover_views(config, 100)
    assert folder.name == "scan100"
    assert views == [(0, "view000.cxi"), (1, "view001.cxi"), (2, "view002.cxi")]
    with pytest.raises(InputFileNotFound, match=r"scan 7: no folder .* ids found there: 100"):
        discover_views(config, 7)
    (config.acquisition_root / "scan101").mkdir()
    (config.acquisition_root / "scan101" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"scan101: no view files matching '\*.cxi' .*notes.txt"):
        discover_views(config, 101)
    write_view_file(config.acquisition_root / "flyscan100" / "view000.cxi")
    with pytest.raises(InputError, match="several folders"):
        discover_views(config, 100)


def test_start_scan_once_then_skips_then_force(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=3)
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.start_scan(100, recon_overrides={"iterations": 7}, trigger=Trigger.AUTO)
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 3
    starts = backend.starts()
    assert [s["label"] for s in starts] == ["scan100-v000", "scan100-v001", "scan100-v002"]
    assert starts[0]["tags"] == ["ptychography", "scan:100", "view:0", "trigger:auto", "attempt:1"]
    assert starts[0]["recon"]["iterations"] == 7
    assert [r["event"] for r in backend.records()].count("prepare") == 1
    rows = ledger.runs(100)
    assert all(r.status is RunStatus.ACTIVE and r.run_id for r in rows)
    assert ledger.scan(100).status is ScanState.SUBMITTED

    again = launcher.start_scan(100)
    assert [o.action for o in again] == [ViewAction.SKIPPED] * 3
    assert len(backend.starts()) == 3

    rows = launcher.wait(100)
    assert all(r.status is RunStatus.SUCCEEDED for r in rows)
    assert set(rows[0].stage_seconds) == {"transfer_in", "compute", "transfer_out", "other"}
    assert launcher.start_scan(100, views=[1])[0].action is ViewAction.SKIPPED
    forced = launcher.start_scan(100, views=[1], force=True)
    assert [o.action for o in forced] == [ViewAction.STARTED]
    assert ledger.get(100, 1).attempt == 2
    assert len(backend.starts()) == 4
    assert backend.starts()[-1]["tags"][-1] == "attempt:2", "the forced re-run is attempt 2"


def test_bad_view_file_and_refused_view_fail_while_others_start(config, ledger, tmp_path):
    folder = write_scan(config.acquisition_root, 100, views=4)
    (folder / "view001.cxi").write_bytes(b"\x00not hdf5")
    backend = RecordingBackend(tmp_path / "runs.jsonl", reject_views=[2], fail_views=[3])
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.start_scan(100)
    assert [o.action for o in outcomes] == [
        ViewAction.STARTED,
        ViewAction.FAILED,
        ViewAction.FAILED,
        ViewAction.STARTED,
    ]
    assert "scan100/view001.cxi: not a readable HDF5/CXI file" in ledger.get(100, 1).error
    assert "refused by the recording backend" in ledger.get(100, 2).error
    rows = launcher.wait(100)
    assert [r.status for r in rows] == [
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.FAILED,
    ]
    assert "reconstruction failed" in rows[3].error
    assert sorted(s["view"] for s in backend.starts()) == [0, 3]


def test_view_without_patterns_dataset_is_named(config, ledger, tmp_path):
    import h5py

    folder = write_scan(config.acquisition_root, 100, views=1)
    with h5py.File(folder / "view000.cxi", "w") as file:
        file["/entry_1/other"] = 1
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    (outcome,) = launcher.start_scan(100)
    assert outcome.error == "scan100/view000.cxi: /entry_1/data_1/data is missing"


def test_transient_errors_are_retried_with_backoff(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)
    backend = RecordingBackend(tmp_path / "runs.jsonl", transient_errors=2)
    sleeps = []
    retry = RetryPolicy(attempts=4, first_delay_s=0.25, factor=2.0)
    launcher = make_launcher(config, ledger, backend, retry=retry, sleep=sleeps.append)
    outcomes = launcher.start_scan(100)
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 2
    assert sleeps == [0.25, 0.5]
    assert len(backend.starts()) == 2


def test_transient_errors_exhausted_fail_the_view_only(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)
    backend = RecordingBackend(tmp_path / "runs.jsonl", transient_errors=3)
    launcher = make_launcher(config, ledger, backend)  # 3 attempts
    outcomes = launcher.start_scan(100)
    assert [o.action for o in outcomes] == [ViewAction.FAILED, ViewAction.STARTED]
    assert "still unavailable after 3 attempts" in outcomes[0].error


def test_transient_error_after_the_run_was_created_adopts_it(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=1)

    class TimesOutAfterStarting(RecordingBackend):
        def start_view(self, request):
            super().start_view(request)
            raise TransientBackendError("read timed out")

    backend = TimesOutAfterStarting(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    (outcome,) = launcher.start_scan(100)
    assert outcome.action is ViewAction.ADOPTED
    assert len(backend.starts()) == 1
    assert ledger.get(100, 0).run_id == backend.starts()[0]["run_id"]


def test_prepare_failure_fails_the_scan_with_its_reason(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)

    class NoFolders(RecordingBackend):
        def prepare_scan(self, scan_id):
            raise PermissionError(f"mkdir input/{scan_id}: permission denied")

    launcher = make_launcher(config, ledger, NoFolders(tmp_path / "runs.jsonl"))
    with pytest.raises(LaunchError, match="permission denied"):
        launcher.start_scan(100)
    assert ledger.scan(100).status is ScanState.FAILED
    assert all(r.status is RunStatus.FAILED for r in ledger.runs(100))
    assert "input/100 and recon/100" in ledger.get(100, 1).error


def test_scan_without_views_is_recorded(config, ledger, tmp_path):
    (config.acquisition_root / "scan100").mkdir()
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    with pytest.raises(InputError, match="an empty folder"):
        launcher.start_scan(100)
    assert "no view files" in ledger.scan(100).error


def test_concurrency_cap_limits_runs_in_flight(config, ledger, tmp_path):
    config.concurrency = 2
    write_scan(config.acquisition_root, 100, views=6)
    backend = RecordingBackend(tmp_path / "runs.jsonl", finish_after_s=0.15)
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan(100)
    launcher.wait(100)
    starts = sorted(s["time"] for s in backend.starts())
    # A run occupies its slot for at least finish_after_s: any three consecutive starts
    # must span more than that.
    assert all(starts[i + 2] - starts[i] >= 0.15 for i in range(len(starts) - 2))
    assert all(r.status is RunStatus.SUCCEEDED for r in ledger.runs(100))


def test_stop_event_interrupts_between_views(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=3)
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    launcher.stop_event.set()
    outcomes = launcher.start_scan(100)
    assert [o.action for o in outcomes] == [ViewAction.INTERRUPTED] * 3
    assert ledger.scan(100).status is ScanState.SEEN  # a later start picks it up


def _dead_owner() -> Owner:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return Owner(process.pid, Owner.current().host, None)


def _orphan_rows(config, tmp_path, backend_name, states):
    """Rows written by a process that died, in the given states (view -> state)."""
    write_scan(config.acquisition_root, 100, views=len(states))
    dead = Ledger(config.ledger)
    dead.owner = _dead_owner()
    from flows.backend import ViewRequest

    for view, state in states.items():
        request = ViewRequest(100, view, f"view{view:03d}.cxi", "scan100", {"iterations": 3})
        dead.claim(request, backend_name)
        if state in ("submitting", "active"):
            dead.mark_submitting(100, view)
        if state == "active":
            dead.mark_started(100, view, StartedRun(f"old-run-{view}"))
    dead.close()


def test_recover_adopts_starts_and_follows(config, ledger, tmp_path):
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    _orphan_rows(
        config, tmp_path, "recording", {0: "pending", 1: "submitting", 2: "submitting", 3: "active"}
    )
    # The dead process got view 2 to the backend before it died.
    from flows.backend import ViewRequest

    backend.start_view(ViewRequest(100, 2, "view002.cxi", "scan100", {"iterations": 3}))
    launcher = make_launcher(config, ledger, backend)
    outcomes = {o.view: o.action for o in launcher.recover()}
    assert outcomes == {
        0: ViewAction.STARTED,
        1: ViewAction.STARTED,
        2: ViewAction.ADOPTED,
        3: ViewAction.ADOPTED,
    }
    assert sorted(s["view"] for s in backend.starts()) == [0, 1, 2]  # nothing doubled
    assert ledger.get(100, 0).recon == {"iterations": 3}
    assert launcher.recover() == []  # all owned by this live process now
    assert set(launcher.in_flight) == {(100, 0), (100, 1), (100, 2), (100, 3)}


def test_recover_restarts_active_runs_of_an_in_process_backend(config, ledger, tmp_path):
    backend = RecordingBackend(tmp_path / "runs.jsonl", runs_die_with_owner=True)
    _orphan_rows(config, tmp_path, "recording", {0: "active", 1: "active"})
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.recover()
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 2
    row = ledger.get(100, 0)
    assert row.attempt == 2 and row.run_id == backend.starts()[0]["run_id"]


def test_make_backend_unknown_name(config):
    config.backend = "carrier-pigeon"
    with pytest.raises(ConfigError, match="'carrier-pigeon' is not known"):
        make_backend(config)
