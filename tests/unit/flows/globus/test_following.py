"""Following Globus Flows runs from the launcher: what the watcher does with a run that
goes INACTIVE, one it can no longer read, a start whose answer is lost, and how often it
asks. The real GlobusBackend, Launcher and Ledger; HTTP mocked at the transport.

Service behaviour relied on (Globus Flows API, OpenAPI ``RunStatus`` and
``GET /runs/{run_id}``; Globus Flows docs, "Run statuses"): a run is ACTIVE, INACTIVE,
SUCCEEDED, FAILED, ENDING or ENDED; an INACTIVE run waits for a person (its ``details``
carry ``code`` such as ``ConsentRequired``, a ``description`` and the
``required_scope``) and goes on after ``POST /runs/{run_id}/resume``. A 401 means the
caller's token is not accepted (a rotated client secret), not that the run ended.
"""

from __future__ import annotations

import logging

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse

from flows.backend import RunStatus, Trigger, ViewRequest
from flows.config import Config, GlobusSettings
from flows.globus import auth
from flows.globus.backend import GlobusBackend
from flows.launcher import Launcher, RetryPolicy, ViewAction
from flows.ledger import Ledger
from tests.functional.recording_backend import write_scan
from tests.unit.flows.globus.sent import sent_requests
from tests.unit.flows.globus.test_launcher_on_globus import FakeClock

FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ID = "7c1d9a3e-5b2f-4e8a-9c0d-1e2f3a4b5c6d"
COLLECTION = "c0ffee00-1234-4c61-8d0a-6a1e5b7c9d20"
RUNS = "https://flows.automate.globus.org/runs"


@pytest.fixture
def rig(tmp_path, mocked_responses):
    config = Config(
        backend="globus",
        acquisition_root=tmp_path / "acquisition",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
        concurrency=1,
        globus=GlobusSettings(compute_collection=COLLECTION, compute_base="/p"),
    )
    write_scan(config.acquisition_root, 100, views=1)
    null = globus_sdk.NullAuthorizer()
    backend = GlobusBackend(
        config,
        flow_id=FLOW_ID,
        input_builder=lambda request: {"view": request.view_file},
        flows_client=auth.flows_client(authorizer=null),
        run_client=auth.specific_flow_client(FLOW_ID, authorizer=null),
        transfer_client=auth.transfer_client(authorizer=null),
    )
    ledger = Ledger(config.ledger)
    clock = FakeClock()
    launcher = Launcher(
        config,
        backend,
        ledger,
        start_retry=RetryPolicy(attempts=3, first_delay_s=30.0, max_delay_s=120.0),
        retry=RetryPolicy(attempts=2),
        sleep=clock.sleep,
        clock=clock,
    )
    RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{COLLECTION}/mkdir",
        method="POST",
        json={"code": "DirectoryCreated"},
    ).add()
    yield launcher, ledger, clock
    ledger.close()


def start_one(launcher, run_id=RUN_ID):
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        json={"run_id": run_id, "status": "ACTIVE"},
    ).add()
    outcomes = launcher.start_scan("scan100", views=None, trigger=Trigger.AUTO)
    return outcomes


def set_run(status, details=None, run_id=RUN_ID):
    responses.upsert(
        responses.GET,
        f"{RUNS}/{run_id}",
        json={"run_id": run_id, "status": status, "details": details or {}},
    )
    responses.upsert(
        responses.GET,
        f"{RUNS}/{run_id}/log",
        json={"entries": [], "has_next_page": False},
    )


def requests_to(path):
    return [r for r in sent_requests() if r.path_url.split("?")[0] == path]


def test_a_401_while_following_leaves_the_view_unknown_not_failed(rig):
    """A rotated secret's 401 says nothing about the run: it goes on at Globus. The view
    is ``unknown``, and neither the watcher nor a forced run-flow starts it a second time."""
    launcher, ledger, clock = rig
    start_one(launcher)
    responses.upsert(
        responses.GET,
        f"{RUNS}/{RUN_ID}",
        status=401,
        json={"error": {"code": "AUTHENTICATION_ERROR", "detail": "token invalid"}},
    )
    clock.advance(15)
    launcher.refresh()
    row = ledger.get("scan100", "view000.cxi")
    assert row.status is RunStatus.UNKNOWN, [r.url for r in sent_requests()]
    assert row.error.startswith("unknown, run still at Globus: cannot follow run")
    assert "ptychoflow login --force" in row.error
    assert launcher.in_flight, "still followed: the next poll may work again"
    assert launcher.slots_taken() == 0, "an unknown run holds no concurrency slot"
    request = ViewRequest(scan_id=100, view_file="view000.cxi", scan_folder="scan100", recon={})
    assert not ledger.claim(request, "globus", force=True), "run-flow --force must not rerun it"

    set_run("ACTIVE")  # the secret is put back: the run is followed again
    clock.advance(60)
    launcher.refresh()
    assert ledger.get("scan100", "view000.cxi").status is RunStatus.ACTIVE


def test_inactive_is_logged_once_with_its_reason_and_holds_no_slot(rig, caplog):
    launcher, ledger, clock = rig
    start_one(launcher)  # concurrency 1: this run takes the only slot
    assert launcher.slots_taken() == 1
    set_run(
        "INACTIVE",
        {
            "code": "ConsentRequired",
            "description": "The run requires consent",
            "required_scope": "https://auth.globus.org/scopes/abc/data_access",
        },
    )
    caplog.set_level(logging.WARNING, "ptychoflow.launcher")
    for _ in range(3):
        clock.advance(60)
        launcher.refresh()
    warnings = [r.getMessage() for r in caplog.records if "inactive" in r.getMessage()]
    assert len(warnings) == 1, warnings  # on the change, not on every poll
    (message,) = warnings
    assert "ConsentRequired" in message
    assert "ptychoflow login --force" in message and "ptychoflow resume" in message
    assert f"https://app.globus.org/runs/{RUN_ID}" in message
    row = ledger.get("scan100", "view000.cxi")
    assert row.status is RunStatus.INACTIVE and "data_access" in row.error
    assert launcher.slots_taken() == 0, "an INACTIVE run must not hold its slot forever"


def test_each_run_is_polled_at_most_every_15_s_backing_off_to_60_s(rig):
    """Two refreshes a second for ten minutes on one ACTIVE run: GET /runs/{id} 15 s
    after the start, 15 s later (the first poll was a change: the stage became known),
    then after 30 s and every 60 s; the run log read once (the status never changed)."""
    launcher, ledger, clock = rig
    start_one(launcher)
    set_run("ACTIVE", {"code": "ActionStarted", "details": {"state_name": "Reconstruct"}})
    polled_at = []
    for _ in range(1200):
        clock.advance(0.5)
        before = len(requests_to(f"/runs/{RUN_ID}"))
        launcher.refresh()
        if len(requests_to(f"/runs/{RUN_ID}")) > before:
            polled_at.append(clock.now)
    start = polled_at[0] - 15
    gaps = [b - a for a, b in zip([start, *polled_at], polled_at, strict=False)]
    assert gaps[:5] == [15, 15, 30, 60, 60], gaps
    assert max(gaps) == 60 and min(gaps) == 15
    assert len(polled_at) <= 12  # at most one request per 15 s, and far fewer
    assert len(requests_to(f"/runs/{RUN_ID}/log")) == 1
    assert ledger.get("scan100", "view000.cxi").stage == "compute"

    set_run("SUCCEEDED")  # a change: its log is read again for the stage times
    clock.advance(60)
    launcher.refresh()
    assert ledger.get("scan100", "view000.cxi").status is RunStatus.SUCCEEDED
    assert len(requests_to(f"/runs/{RUN_ID}/log")) == 2


def test_a_slow_504_whose_run_shows_late_is_adopted_not_started_twice(rig):
    """The start times out with a 504 but the service made the run; the run list shows it
    only later. The launcher looks before and after its 30 s wait, and adopts it."""
    launcher, _ledger, clock = rig
    launcher.config.concurrency = 4
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        status=504,
        json={"error": {"code": "GATEWAY_TIMEOUT"}},
    ).add()
    listed = {"runs": [], "has_next_page": False}

    def run_list(request):
        import json

        return 200, {}, json.dumps(listed)

    responses.add_callback(responses.GET, RUNS, callback=run_list)
    original_sleep = clock.sleep

    def sleep_then_appear(seconds):
        original_sleep(seconds)
        listed["runs"] = [
            {
                "run_id": RUN_ID,
                "label": "scan100-view000",
                "tags": ["ptychography", "scan:100", "folder:scan100", "view:view000", "attempt:1"],
                "start_time": "2026-12-04T18:00:00+00:00",
            }
        ]

    launcher._sleep = sleep_then_appear
    outcomes = launcher.start_scan("scan100", views=None, trigger=Trigger.AUTO)
    assert outcomes[0].action is ViewAction.ADOPTED
    assert outcomes[0].run_id == RUN_ID
    assert len(requests_to(f"/flows/{FLOW_ID}/run")) == 1, "one POST: no second run"
    assert clock.sleeps[0] >= 30, "tens of seconds before a start is posted again"
