"""``ptychoflow cancel``: runs cancelled at Flows and recorded, HTTP mocked at the transport.

Service behaviour relied on (Flows OpenAPI, ``POST /runs/{run_id}/cancel``, scope
``run_manage``): the answer is the run document (``status`` then ``ENDING`` or
``FAILED`` with ``details.code`` ``FlowCanceled``); a run past retention is 404.
"""

from __future__ import annotations

import globus_sdk
import pytest
from globus_sdk.testing import RegisteredResponse, load_response

from flows.backend import RunStatus, StartedRun, ViewRequest
from flows.commands import select_rows
from flows.config import Config, GlobusSettings
from flows.globus import auth
from flows.globus.backend import GlobusBackend
from flows.globus.cancel import cancel_rows
from flows.ledger import Ledger
from tests.unit.flows.globus.sent import sent_requests

FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ACTIVE = "36ad9f9a-ad29-488f-beb4-c22ab729643a"  # the SDK's cancel_run fixture's run
RUN_GONE = "9e9e9e9e-0000-4c61-8d0a-6a1e5b7c9d20"


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger
    ledger.close()


def add_row(ledger, view, status, run_id=None):
    request = ViewRequest(scan_id=100, view_file=view, scan_folder="scan100", recon={})
    assert ledger.claim(request, "globus")
    if status is RunStatus.PENDING:
        return
    ledger.mark_submitting("scan100", view)
    if run_id:
        ledger.mark_started("scan100", view, StartedRun(run_id))
    if status is RunStatus.SUCCEEDED:
        from flows.backend import RunProgress

        ledger.update_progress("scan100", view, RunProgress(RunStatus.SUCCEEDED))


def make_backend(tmp_path):
    null = globus_sdk.NullAuthorizer()
    config = Config(
        backend="globus", state_dir=tmp_path / "state", globus=GlobusSettings(compute_base="/p")
    )
    return GlobusBackend(
        config,
        flow_id=FLOW_ID,
        input_builder=lambda request: {},
        flows_client=auth.flows_client(authorizer=null),
        run_client=auth.specific_flow_client(FLOW_ID, authorizer=null),
        transfer_client=auth.transfer_client(authorizer=null),
    )


def test_cancel_stops_runs_at_globus_and_records_the_views(ledger, tmp_path, mocked_responses):
    add_row(ledger, "view000.cxi", RunStatus.ACTIVE, RUN_ACTIVE)
    add_row(ledger, "view001.cxi", RunStatus.ACTIVE, RUN_GONE)
    add_row(ledger, "view002.cxi", RunStatus.PENDING)
    add_row(ledger, "view003.cxi", RunStatus.SUCCEEDED, "1d1d1d1d-0000-4c61-8d0a-6a1e5b7c9d20")
    load_response(globus_sdk.FlowsClient.cancel_run)
    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_GONE}/cancel",
        method="POST",
        status=404,
        json={"error": {"code": "NOT_FOUND", "detail": "no such run"}},
    ).add()
    rows = [r for r in select_rows(ledger.runs(), "100", "0-2")]
    assert [r.view_file for r in rows] == ["view000.cxi", "view001.cxi", "view002.cxi"]

    outcomes = cancel_rows(ledger, make_backend(tmp_path), rows)

    assert [o.cancelled for o in outcomes] == [True, True, True]
    cancels = [r.path_url for r in sent_requests() if r.path_url.endswith("/cancel")]
    assert cancels == [f"/runs/{RUN_ACTIVE}/cancel", f"/runs/{RUN_GONE}/cancel"]
    states = {row.view_file: row for row in ledger.runs("scan100")}
    for view in ("view000.cxi", "view001.cxi", "view002.cxi"):
        assert states[view].status is RunStatus.CANCELLED
        assert "ptychoflow cancel" in states[view].error
    assert states["view003.cxi"].status is RunStatus.SUCCEEDED
    assert "already ended or is gone" in outcomes[1].detail


def test_a_refused_cancel_leaves_the_view_as_it_was(ledger, tmp_path, mocked_responses):
    add_row(ledger, "view000.cxi", RunStatus.ACTIVE, RUN_ACTIVE)
    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_ACTIVE}/cancel",
        method="POST",
        status=403,
        json={"error": {"code": "FORBIDDEN", "detail": "not a run manager"}},
    ).add()
    (outcome,) = cancel_rows(ledger, make_backend(tmp_path), ledger.runs())
    assert not outcome.cancelled and "403" in outcome.detail
    assert ledger.get("scan100", "view000.cxi").status is RunStatus.ACTIVE
