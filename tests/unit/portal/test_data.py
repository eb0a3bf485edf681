"""The portal's ledger reader against a real ledger written through the ledger's API."""

import hashlib

import pytest

from flows.errors import LedgerError
from portal.data import LedgerReader, Roots, find_result


def test_scans_newest_first_with_counts_and_median_stage_seconds(site):
    reader = LedgerReader(site.ledger)
    scans = reader.scans()
    assert [s.folder for s in scans] == ["scan101", "scan100"]
    scan100 = scans[1]
    assert scan100.scan_id == 100
    assert scan100.counts == {"queued": 1, "running": 1, "succeeded": 2, "failed": 1}
    assert scan100.finished is None  # two views are unfinished
    # Finished views 0, 1, 2 computed for 10, 11 and 12 s: the median is 11.
    assert scan100.median_stage_seconds["compute"] == pytest.approx(11.0)
    assert scan100.median_stage_seconds["transfer_in"] == pytest.approx(2.0)
    views = reader.views("scan100")
    assert [v.view_name for v in views] == [f"view00{i}" for i in range(5)]
    assert [v.state for v in views] == ["succeeded", "succeeded", "failed", "running", "queued"]
    assert views[3].stage == "transfer_out"
    assert reader.view("scan100", "view009") is None
    assert reader.scan("scan999") is None
    reader.close()


def test_reader_never_creates_or_writes_the_ledger(site, tmp_path):
    missing = tmp_path / "nowhere" / "ledger.sqlite"
    reader = LedgerReader(missing)
    assert reader.scans() == [] and reader.views() == []
    assert not missing.parent.exists()

    before = hashlib.sha256(site.ledger.read_bytes()).hexdigest()
    reader = LedgerReader(site.ledger)
    reader.scans()
    reader.signature()
    ledger = reader._open()
    assert ledger is not None and ledger.read_only
    with pytest.raises(LedgerError, match="readonly"):
        ledger._read(lambda db: db.execute("DELETE FROM runs"))
    reader.close()
    assert hashlib.sha256(site.ledger.read_bytes()).hexdigest() == before


def test_signature_changes_when_a_view_changes(site):
    from flows.backend import RunProgress, RunStatus
    from flows.ledger import Ledger

    reader = LedgerReader(site.ledger)
    before, other = reader.signature("scan100"), reader.signature("scan101")
    ledger = Ledger(site.ledger)
    ledger.update_progress(
        "scan100", "view003.cxi", RunProgress(RunStatus.SUCCEEDED, None, {"compute": 3.0})
    )
    ledger.close()
    assert reader.signature("scan100") != before
    assert reader.signature() != other
    reader.close()


def test_result_files_outside_the_roots_are_not_served(site, tmp_path):
    reader = LedgerReader(site.ledger)
    view = reader.view("scan100", "view000")
    roots = Roots([site.acquisition_root])
    found = find_result(view, site.acquisition_root, roots)
    assert found == (site.acquisition_root / "recon" / "100" / "view000.h5").resolve()
    # The same file reached through a link that leaves the roots is refused.
    outside = tmp_path / "elsewhere"
    (site.acquisition_root / "recon" / "100").rename(outside)
    (site.acquisition_root / "recon" / "100").symlink_to(outside)
    assert find_result(view, site.acquisition_root, roots) is None
    assert find_result(reader.view("scan100", "view002"), site.acquisition_root, roots) is None
    reader.close()


def test_inactive_and_unknown_views_show_as_running_and_say_so(tmp_path):
    """An INACTIVE run waits for a person; an unknown one cannot be followed. Both are
    still running at Globus: the card says which, beside the state, with the reason."""
    from flows.backend import RunProgress, RunStatus, StartedRun, ViewRequest
    from flows.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    for view, status in (("view000.cxi", RunStatus.INACTIVE), ("view001.cxi", RunStatus.UNKNOWN)):
        request = ViewRequest(scan_id=100, view_file=view, scan_folder="scan100", recon={})
        ledger.claim(request, "globus")
        ledger.mark_submitting("scan100", view)
        ledger.mark_started("scan100", view, StartedRun("r-" + view))
        ledger.update_progress("scan100", view, RunProgress(status, error=f"{status.value}: fix"))
    ledger.close()
    views = LedgerReader(tmp_path / "ledger.sqlite").views("scan100")
    assert [(v.state, v.status) for v in views] == [
        ("running", "inactive"),
        ("running", "unknown"),
    ]
    import jinja2

    from portal import app as portal_app

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(portal_app.__file__.rsplit("/", 1)[0] + "/templates"),
        autoescape=True,
    )
    badge = env.get_template("macros.html").module.state_badge(views[0])
    assert "inactive" in str(badge) and "running" in str(badge)


def test_a_damaged_ledger_is_named_not_shown_as_empty(tmp_path):
    """Issue 16: a damaged or unreadable ledger showed "No scans in the ledger yet"."""
    from portal.data import LedgerReader

    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not an SQLite database" * 100)
    reader = LedgerReader(path)
    try:
        assert reader.scans() == []
        assert reader.problem is not None and str(path) in reader.problem
    finally:
        reader.close()
