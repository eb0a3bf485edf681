"""The launcher with a real file-backed backend, real files and a real SQLite ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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
from flows.scans import choose_scans, choose_views, parse_selection, view_files
from recon.errors import InputError, OptionsError
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


def test_parse_selection():
    selection = parse_selection("0,3-5, view009 ")
    assert selection.ranges == ((0, 0), (3, 5)) and selection.names == ("view009",)
    assert selection.contains(4) and not selection.contains(6)
    huge = parse_selection("0-9999999999")  # never expanded
    assert huge.contains(9999999999)
    with pytest.raises(OptionsError, match="'x/y'"):
        parse_selection("1,x/y")
    with pytest.raises(OptionsError, match="backwards"):
        parse_selection("5-3")
    with pytest.raises(OptionsError, match="19 digits; at most 18"):
        parse_selection("0-9999999999999999999")


def test_view_files_and_choosing_scans(config):
    write_scan(config.acquisition_root, 100, views=3)
    (config.acquisition_root / "recon").mkdir()
    assert view_files(config, config.acquisition_root / "scan100") == [
        "view000.cxi",
        "view001.cxi",
        "view002.cxi",
    ]
    (config.acquisition_root / "scan101").mkdir()
    (config.acquisition_root / "scan101" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"scan101: no view files matching '\*.cxi' .*notes.txt"):
        view_files(config, config.acquisition_root / "scan101")
    write_scan(config.acquisition_root, 300, views=1)
    choice = choose_scans(config, parse_selection("100-300"))
    assert [f.name for f in choice.folders] == ["scan100", "scan101", "scan300"]
    assert choice.missing == ["102-299"] and not choice.missing_explicit
    choice = choose_scans(config, parse_selection("0-9999999999,7"))
    assert choice.missing == ["0-99", "102-299", "301-9999999999", "7"]
    assert choice.missing_explicit
    write_view_file(config.acquisition_root / "flyscan100" / "view000.cxi")
    with pytest.raises(InputError, match=r"several folders .*--scan scan100"):
        choose_scans(config, parse_selection("100"))
    both = choose_scans(config, parse_selection("99-100,flyscan100"))
    assert [f.name for f in both.folders] == ["flyscan100", "scan100"]


def test_choose_views_by_position_range_and_name():
    files = ["view000.cxi", "view001.cxi", "view002.cxi"]
    assert choose_views(files, parse_selection("0-9999999999"), "scan100") == files
    assert choose_views(files, parse_selection("2,view000"), "scan100") == [
        "view000.cxi",
        "view002.cxi",
    ]
    with pytest.raises(InputError, match=r"no view\(s\) 7, view9; this scan has views 0-2"):
        choose_views(files, parse_selection("7,view9"), "scan100")


def test_start_scan_once_then_skips_then_force(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=3)
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.start_scan(
        "scan100", recon_overrides={"iterations": 7}, trigger=Trigger.AUTO
    )
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 3
    starts = backend.starts()
    assert [s["label"] for s in starts] == ["scan100-view000", "scan100-view001", "scan100-view002"]
    assert starts[0]["tags"] == [
        "ptychography",
        "scan:100",
        "folder:scan100",
        "view:view000",
        "trigger:auto",
        "attempt:1",
    ]
    assert starts[0]["recon"]["iterations"] == 7
    assert [r["event"] for r in backend.records()].count("prepare") == 1
    rows = ledger.runs("scan100")
    assert all(r.status is RunStatus.ACTIVE and r.run_id for r in rows)
    assert ledger.scan("scan100").status is ScanState.SUBMITTED

    again = launcher.start_scan("scan100")
    assert [o.action for o in again] == [ViewAction.SKIPPED] * 3
    assert len(backend.starts()) == 3

    rows = launcher.wait("scan100")
    assert all(r.status is RunStatus.SUCCEEDED for r in rows)
    assert set(rows[0].stage_seconds) == {"transfer_in", "compute", "transfer_out", "other"}
    assert (
        launcher.start_scan("scan100", views=parse_selection("1"))[0].action is ViewAction.SKIPPED
    )
    forced = launcher.start_scan("scan100", views=parse_selection("1"), force=True)
    assert [o.action for o in forced] == [ViewAction.STARTED]
    assert ledger.get("scan100", "view001.cxi").attempt == 2
    assert len(backend.starts()) == 4
    assert backend.starts()[-1]["tags"][-1] == "attempt:2", "the forced re-run is attempt 2"


def test_bad_view_file_and_refused_view_fail_while_others_start(config, ledger, tmp_path):
    folder = write_scan(config.acquisition_root, 100, views=4)
    (folder / "view001.cxi").write_bytes(b"\x00not hdf5")
    backend = RecordingBackend(
        tmp_path / "runs.jsonl", reject_views=["view002"], fail_views=["view003"]
    )
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.start_scan("scan100")
    assert [o.action for o in outcomes] == [
        ViewAction.STARTED,
        ViewAction.FAILED,
        ViewAction.FAILED,
        ViewAction.STARTED,
    ]
    assert (
        "scan100/view001.cxi: not a readable HDF5/CXI file"
        in ledger.get("scan100", "view001.cxi").error
    )
    assert "refused by the recording backend" in ledger.get("scan100", "view002.cxi").error
    rows = launcher.wait("scan100")
    assert [r.status for r in rows] == [
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.FAILED,
    ]
    assert "reconstruction failed" in rows[3].error
    assert sorted(s["view"] for s in backend.starts()) == ["view000", "view003"]


def test_view_without_patterns_dataset_is_named(config, ledger, tmp_path):
    import h5py

    folder = write_scan(config.acquisition_root, 100, views=1)
    with h5py.File(folder / "view000.cxi", "w") as file:
        file["/entry_1/other"] = 1
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    (outcome,) = launcher.start_scan("scan100")
    assert outcome.error == "scan100/view000.cxi: /entry_1/data_1/data is missing"


def test_transient_errors_are_retried_with_backoff(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)
    backend = RecordingBackend(tmp_path / "runs.jsonl", transient_errors=2)
    sleeps = []
    retry = RetryPolicy(attempts=4, first_delay_s=0.25, factor=2.0)
    launcher = make_launcher(config, ledger, backend, retry=retry, sleep=sleeps.append)
    outcomes = launcher.start_scan("scan100")
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 2
    assert sleeps == [0.25, 0.5]
    assert len(backend.starts()) == 2


def test_an_outage_defers_views_and_the_next_pass_starts_them(config, ledger, tmp_path):
    """An outage longer than the retries leaves the views pending (never failed): the
    scan is not marked handed over, and the next pass starts them, looking first for a
    run the lost start may have made."""
    write_scan(config.acquisition_root, 100, views=2)
    backend = RecordingBackend(tmp_path / "runs.jsonl", transient_errors=3)
    launcher = make_launcher(config, ledger, backend)  # 3 attempts
    outcomes = launcher.start_scan("scan100")
    assert [o.action for o in outcomes] == [ViewAction.DEFERRED, ViewAction.DEFERRED]
    assert "unavailable for 3 attempts" in outcomes[0].error
    rows = {row.view_file: row for row in ledger.runs("scan100")}
    # view000's start was sent (its answer lost); view001 was never sent: no hammering.
    assert rows["view000.cxi"].status is RunStatus.SUBMITTING
    assert rows["view001.cxi"].status is RunStatus.PENDING
    assert "tried again on the next pass" in rows["view001.cxi"].error
    assert not launcher.scan_handed_over("scan100")
    assert len(backend.starts()) == 0

    outcomes = launcher.start_scan("scan100")
    assert [o.action for o in outcomes] == [ViewAction.STARTED, ViewAction.STARTED]
    assert len(backend.starts()) == 2
    assert launcher.scan_handed_over("scan100")
    assert all(row.attempt == 1 for row in ledger.runs("scan100")), "the same attempt"
    assert launcher.deferred == {}


def test_transient_error_after_the_run_was_created_adopts_it(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=1)

    class TimesOutAfterStarting(RecordingBackend):
        def start_view(self, request):
            super().start_view(request)
            raise TransientBackendError("read timed out")

    backend = TimesOutAfterStarting(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    (outcome,) = launcher.start_scan("scan100")
    assert outcome.action is ViewAction.ADOPTED
    assert len(backend.starts()) == 1
    assert ledger.get("scan100", "view000.cxi").run_id == backend.starts()[0]["run_id"]


def test_prepare_failure_fails_the_scan_with_its_reason(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)

    class NoFolders(RecordingBackend):
        def prepare_scan(self, scan_dir):
            raise PermissionError(f"mkdir input/{scan_dir}: permission denied")

    launcher = make_launcher(config, ledger, NoFolders(tmp_path / "runs.jsonl"))
    with pytest.raises(LaunchError, match="permission denied"):
        launcher.start_scan("scan100")
    assert ledger.scan("scan100").status is ScanState.FAILED
    assert all(r.status is RunStatus.FAILED for r in ledger.runs("scan100"))
    assert "input/100 and recon/100" in ledger.get("scan100", "view001.cxi").error


def test_scan_without_views_is_recorded(config, ledger, tmp_path):
    (config.acquisition_root / "scan100").mkdir()
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    with pytest.raises(InputError, match="an empty folder"):
        launcher.start_scan("scan100")
    assert "no view files" in ledger.scan("scan100").error


def test_concurrency_cap_limits_runs_in_flight(config, ledger, tmp_path):
    config.concurrency = 2
    write_scan(config.acquisition_root, 100, views=6)
    backend = RecordingBackend(tmp_path / "runs.jsonl", finish_after_s=0.15)
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan("scan100")
    launcher.wait("scan100")
    starts = sorted(s["time"] for s in backend.starts())
    # A run occupies its slot for at least finish_after_s: any three consecutive starts
    # must span more than that.
    assert all(starts[i + 2] - starts[i] >= 0.15 for i in range(len(starts) - 2))
    assert all(r.status is RunStatus.SUCCEEDED for r in ledger.runs("scan100"))


def test_stop_event_interrupts_between_views(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=3)
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    launcher.stop_event.set()
    outcomes = launcher.start_scan("scan100")
    assert [o.action for o in outcomes] == [ViewAction.INTERRUPTED] * 3
    assert ledger.scan("scan100").status is ScanState.SEEN  # a later start picks it up


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
        name = f"view{view:03d}.cxi"
        request = ViewRequest(100, name, "scan100", {"iterations": 3}, scan_dir="100")
        dead.claim(request, backend_name)
        if state in ("submitting", "active"):
            dead.mark_submitting("scan100", name)
        if state == "active":
            dead.mark_started("scan100", name, StartedRun(f"old-run-{view}"))
    dead.close()


def test_recover_adopts_starts_and_follows(config, ledger, tmp_path):
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    _orphan_rows(
        config, tmp_path, "recording", {0: "pending", 1: "submitting", 2: "submitting", 3: "active"}
    )
    # The dead process got view 2 to the backend before it died.
    from flows.backend import ViewRequest

    backend.start_view(
        ViewRequest(100, "view002.cxi", "scan100", {"iterations": 3}, scan_dir="100")
    )
    launcher = make_launcher(config, ledger, backend)
    outcomes = {o.view_file: o.action for o in launcher.recover()}
    assert outcomes == {
        "view000.cxi": ViewAction.STARTED,
        "view001.cxi": ViewAction.STARTED,
        "view002.cxi": ViewAction.ADOPTED,
        "view003.cxi": ViewAction.ADOPTED,
    }
    # nothing doubled
    assert sorted(s["view"] for s in backend.starts()) == ["view000", "view001", "view002"]
    assert ledger.get("scan100", "view000.cxi").recon == {"iterations": 3}
    assert launcher.recover() == []  # all owned by this live process now
    assert set(launcher.in_flight) == {("scan100", f"view00{v}.cxi") for v in range(4)}


def test_recover_restarts_active_runs_of_an_in_process_backend(config, ledger, tmp_path):
    backend = RecordingBackend(tmp_path / "runs.jsonl", runs_die_with_owner=True)
    _orphan_rows(config, tmp_path, "recording", {0: "active", 1: "active"})
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.recover()
    assert [o.action for o in outcomes] == [ViewAction.STARTED] * 2
    row = ledger.get("scan100", "view000.cxi")
    assert row.attempt == 2 and row.run_id == backend.starts()[0]["run_id"]


def test_make_backend_unknown_name(config):
    config.backend = "carrier-pigeon"
    with pytest.raises(ConfigError, match="'carrier-pigeon' is not known"):
        make_backend(config)


# -- identity: a view is its file name, a scan its folder name ------------------------------


def test_a_view_arriving_late_runs_once_by_its_name(config, ledger, tmp_path):
    """view000 sorts first but arrives after view001/view002 ran: it runs, and nothing
    runs twice (before: view000 never ran and view002 ran twice, all rows 'succeeded')."""
    folder = config.acquisition_root / "scan100"
    for name in ("view001.cxi", "view002.cxi"):
        write_view_file(folder / name)
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan("scan100")
    launcher.wait("scan100")
    assert launcher.scan_handed_over("scan100")

    write_view_file(folder / "view000.cxi")
    assert not launcher.scan_handed_over("scan100")  # the watcher hands it over again
    outcomes = {o.view_file: o.action for o in launcher.start_scan("scan100")}
    assert outcomes == {
        "view000.cxi": ViewAction.STARTED,
        "view001.cxi": ViewAction.SKIPPED,
        "view002.cxi": ViewAction.SKIPPED,
    }
    rows = launcher.wait("scan100")
    assert launcher.scan_handed_over("scan100")
    labels = [s["label"] for s in backend.starts()]
    assert sorted(labels) == ["scan100-view000", "scan100-view001", "scan100-view002"]
    assert {r.view_file: r.status for r in rows} == {
        f"view00{v}.cxi": RunStatus.SUCCEEDED for v in range(3)
    }
    assert [s["view_file"] for s in backend.starts()] == [
        "view001.cxi",
        "view002.cxi",
        "view000.cxi",
    ]


def test_folders_sharing_an_id_both_run_into_their_own_folders(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 1700, views=1)
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan("scan1700")
    fly = config.acquisition_root / "flyscan1700"
    write_view_file(fly / "view000.cxi")
    (fly / "scan.done").touch()
    assert not launcher.scan_handed_over("flyscan1700")  # not "handed over already"
    (outcome,) = launcher.start_scan("flyscan1700")
    assert outcome.action is ViewAction.STARTED
    assert [r["scan_dir"] for r in backend.records() if r["event"] == "prepare"] == [
        "1700",
        "flyscan1700",
    ]
    starts = {s["label"]: s["scan_dir"] for s in backend.starts()}
    assert starts == {"scan1700-view000": "1700", "flyscan1700-view000": "flyscan1700"}


def test_a_folder_with_the_same_id_never_rewrites_the_others_rows(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    launcher.start_scan("scan100")
    (config.acquisition_root / "scan00100").mkdir()  # empty: fails as a whole
    with pytest.raises(InputError, match="no view files"):
        launcher.start_scan("scan00100")
    assert ledger.scan("scan100").status is ScanState.SUBMITTED
    assert ledger.scan("scan100").error is None
    assert all(r.status is RunStatus.ACTIVE for r in ledger.runs("scan100"))
    assert ledger.scan("scan00100").status is ScanState.FAILED


def test_a_scan_id_with_too_many_digits_is_recorded_as_failed(config, ledger, tmp_path):
    name = "scan99999999999999999999"
    write_view_file(config.acquisition_root / name / "view000.cxi")
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    expected = f"{name}: scan id '[0-9]+' is not a number of 1 to 18 digits"
    with pytest.raises(InputError, match=expected):
        launcher.start_scan(name)
    record = ledger.scan(name)
    assert record.status is ScanState.FAILED and record.scan_id is None
    assert launcher.scan_handed_over(name)  # not retried on every sight


class VanishingBackend(RecordingBackend):
    """Deletes a view file, or renames the scan folder, once view000 has been handed over:
    what a user does while earlier views of the scan run."""

    def __init__(self, log_path, vanish):
        super().__init__(log_path, finish_after_s=0.05)
        self.vanish = vanish

    def start_view(self, request):
        started = super().start_view(request)
        if request.view == "view000":
            self.vanish()
        return started


@pytest.mark.parametrize("what", ["view deleted", "scan folder renamed"])
def test_a_view_that_vanishes_mid_hand_over_fails_alone(config, ledger, tmp_path, what):
    """Issue 16, item 6: the vanished view fails with its reason, every other view goes on,
    every started view is recorded and followed to its end."""
    config.concurrency = 1
    write_scan(config.acquisition_root, 100, views=3)
    scan = config.acquisition_root / "scan100"
    if what == "view deleted":
        backend = VanishingBackend(tmp_path / "runs.jsonl", (scan / "view001.cxi").unlink)
    else:
        backend = VanishingBackend(
            tmp_path / "runs.jsonl", lambda: scan.rename(scan.with_name("scan100-moved"))
        )
    launcher = make_launcher(config, ledger, backend)
    outcomes = launcher.start_scan("scan100")
    rows = {r.view_file: r for r in launcher.wait("scan100")}
    assert rows["view000.cxi"].status is RunStatus.SUCCEEDED  # finished, not left active
    assert rows["view001.cxi"].status is RunStatus.FAILED
    assert "disappeared" in rows["view001.cxi"].error
    if what == "view deleted":
        assert "view file disappeared (deleted or renamed)" in rows["view001.cxi"].error
        assert rows["view002.cxi"].status is RunStatus.SUCCEEDED  # the next one started
    else:
        assert "scan folder" in rows["view002.cxi"].error
    assert [o.action for o in outcomes][:2] == [ViewAction.STARTED, ViewAction.FAILED]


# -- transient failures are retried, bounded (issue 16, item 9) --------------------------------


def age(path, seconds=3600):
    """Make ``path`` look unchanged for ``seconds`` (its copy ended long ago)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_view_still_being_copied_is_retried_once_complete(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=2)
    view = config.acquisition_root / "scan100" / "view001.cxi"
    whole = view.read_bytes()
    view.write_bytes(whole[: len(whole) // 2])  # the marker came before the copy ended
    backend = RecordingBackend(tmp_path / "runs.jsonl")
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan("scan100", trigger=Trigger.AUTO)
    failed = ledger.get("scan100", "view001.cxi")
    assert failed.status is RunStatus.FAILED and failed.input.size == len(whole) // 2
    assert launcher.views_to_retry("scan100") == []  # unchanged since: not yet

    view.write_bytes(whole)  # the copy ends ...
    assert launcher.views_to_retry("scan100") == []  # ... but it just changed: settle first
    age(view)
    assert launcher.views_to_retry("scan100") == ["view001.cxi"]
    assert not launcher.scan_handed_over("scan100")  # so the watcher hands it over again
    outcomes = launcher.start_scan("scan100", trigger=Trigger.AUTO)
    assert [o.action for o in outcomes] == [ViewAction.SKIPPED, ViewAction.STARTED]
    row = ledger.get("scan100", "view001.cxi")
    assert (row.attempt, row.transient_retries) == (2, 1)
    assert row.input.size == len(whole)
    assert launcher.scan_handed_over("scan100")


def test_a_broken_view_that_never_changes_is_not_retried(config, ledger, tmp_path):
    write_scan(config.acquisition_root, 100, views=1)
    view = config.acquisition_root / "scan100" / "view000.cxi"
    view.write_bytes(b"not HDF5 at all" * 10)
    age(view)
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    launcher.start_scan("scan100", trigger=Trigger.AUTO)
    assert ledger.get("scan100", "view000.cxi").status is RunStatus.FAILED
    assert launcher.views_to_retry("scan100") == []
    outcomes = launcher.start_scan("scan100", trigger=Trigger.AUTO)
    assert [o.action for o in outcomes] == [ViewAction.SKIPPED]  # the watcher leaves it
    assert launcher.start_scan("scan100")[0].action is ViewAction.FAILED  # a person retries


def test_a_run_that_lost_its_backend_is_retried_a_bounded_number_of_times(
    config, ledger, tmp_path, monkeypatch
):
    """Issue 16, item 9: a run that failed because the backend was unreachable (the
    compute endpoint's 503 mid-run) is retried by the watcher's passes, each retry a new
    attempt in the ledger, at most MAX_TRANSIENT_RETRIES times; then a person decides.
    (A backend that is down when the view is started never fails it: the view is left
    pending for the next pass, test_an_outage_defers_views_and_the_next_pass_starts_them.)"""
    import flows.transient_failures

    monkeypatch.setattr(flows.transient_failures, "RETRY_BACKOFF_S", 0.0)
    write_scan(config.acquisition_root, 100, views=1)
    age(config.acquisition_root / "scan100" / "view000.cxi")
    backend = RecordingBackend(
        tmp_path / "runs.jsonl",
        fail_views={"view000"},
        fail_reason="compute endpoint unreachable: service unavailable (503)",
    )
    launcher = make_launcher(config, ledger, backend)
    launcher.start_scan("scan100", trigger=Trigger.AUTO)
    launcher.wait("scan100")
    for retry in range(1, flows.transient_failures.MAX_TRANSIENT_RETRIES + 1):
        row = ledger.get("scan100", "view000.cxi")
        assert row.status is RunStatus.FAILED and "(503)" in row.error
        assert launcher.views_to_retry("scan100") == ["view000.cxi"]
        launcher.start_scan("scan100", trigger=Trigger.AUTO)
        launcher.wait("scan100")
        row = ledger.get("scan100", "view000.cxi")
        assert (row.attempt, row.transient_retries) == (retry + 1, retry)
    assert launcher.views_to_retry("scan100") == []  # bounded: a person decides now
    assert len(backend.starts()) == flows.transient_failures.MAX_TRANSIENT_RETRIES + 1
    backend.fail_views = set()
    assert launcher.start_scan("scan100")[0].action is ViewAction.STARTED  # run-flow does


def test_a_view_replaced_after_success_is_noticed(config, ledger, tmp_path, caplog, capsys):
    import argparse

    from flows.commands import status_command

    write_scan(config.acquisition_root, 100, views=2)
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    launcher.start_scan("scan100", trigger=Trigger.AUTO)
    launcher.wait("scan100")
    first = ledger.get("scan100", "view001.cxi")
    assert first.status is RunStatus.SUCCEEDED and first.input.size > 0
    view = config.acquisition_root / "scan100" / "view001.cxi"
    write_view_file(view, patterns=3)  # same name, new data
    os.utime(config.acquisition_root / "scan100" / "view000.cxi")  # touched only: no change

    with caplog.at_level("WARNING"):
        outcomes = launcher.start_scan("scan100", trigger=Trigger.AUTO)
    assert [o.action for o in outcomes] == [ViewAction.SKIPPED, ViewAction.SKIPPED]
    assert "view001: the view file changed after its result was made" in caplog.text
    assert "view000" not in caplog.text

    toml = tmp_path / "ptychoflow.toml"
    toml.write_text(
        f'acquisition_root = "{config.acquisition_root}"\nledger = "{config.ledger}"\n'
        f'compute_root = "{config.compute_root}"\nstate_dir = "{config.state_dir}"\n'
    )
    status_command(argparse.Namespace(config=str(toml), scan=None, backend=None, wide=False))
    out = capsys.readouterr().out
    assert "warning: scan100/view001.cxi changed after its result was made" in out
    assert "scan100/view000.cxi changed" not in out

    config.rerun_changed_views = True
    outcomes = launcher.start_scan("scan100", trigger=Trigger.AUTO)
    assert [o.action for o in outcomes] == [ViewAction.SKIPPED, ViewAction.STARTED]
    assert ledger.get("scan100", "view001.cxi").attempt == 2


# -- look-alike names (issue 16, item 11) ------------------------------------------------------


def test_suffixes_match_ignoring_case_and_look_alikes_are_refused_by_name(config, ledger, tmp_path):
    from flows.terminal import printable

    scan = config.acquisition_root / "scan100"
    nfc = "v\u00efew.cxi"  # ï precomposed
    nfd = "vi\u0308ew.cxi"  # i + combining diaeresis
    names = ["view000.cxi", "view001.CXI", "view002.Cxi", "view003.cxi ", nfc, nfd]
    names.append("view\u200b004.cxi")  # a zero-width space inside
    for name in names:
        write_view_file(scan / name)
    assert sorted(view_files(config, scan)) == sorted(names)  # none silently ignored
    launcher = make_launcher(config, ledger, RecordingBackend(tmp_path / "runs.jsonl"))
    outcomes = {o.view_file: o for o in launcher.start_scan("scan100")}
    for name in ("view000.cxi", "view001.CXI", "view002.Cxi"):
        assert outcomes[name].action is ViewAction.STARTED
    assert "starts or ends with white space" in outcomes["view003.cxi "].error
    assert "invisible characters (U+200B)" in outcomes["view\u200b004.cxi"].error
    # Of the two forms of one name, one runs and the other is refused, saying which.
    first, second = sorted([nfc, nfd])
    assert outcomes[first].action is ViewAction.STARTED
    assert "looks identical to" in outcomes[second].error
    assert "NFC/NFD" in outcomes[second].error
    # What is printed tells them apart, and shows the invisible character.
    assert printable("view\u200b004.cxi") == "view\\u200b004.cxi"
    from flows.scans import printable_name

    assert printable_name(nfd) == "vi\\u0308ew.cxi" and printable_name(nfc) == nfc
    assert printable_name(nfd) in outcomes[nfc].error or printable_name(nfc) in (
        outcomes[nfd].error or ""
    )
