"""The real GlobusBackend (HTTP mocked at the transport) inside the real Launcher and Ledger.

The bug these guard against: a 503 when starting a run failed the view with no retry,
and a network error while polling marked a still-running Globus run failed for good.
"""

from __future__ import annotations

import json

import globus_sdk
import pytest
from globus_sdk.testing import RegisteredResponse

from flows.backend import RunStatus, Trigger
from flows.config import Config, GlobusSettings
from flows.globus import auth
from flows.globus.backend import GlobusBackend
from flows.launcher import Launcher, RetryPolicy, ViewAction
from flows.ledger import Ledger
from tests.functional.recording_backend import write_scan
from tests.unit.flows.globus.sent import register_run_flow_unavailable, sent_requests

FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ID = "7c1d9a3e-5b2f-4e8a-9c0d-1e2f3a4b5c6d"
COLLECTION = "c0ffee00-1234-4c61-8d0a-6a1e5b7c9d20"


@pytest.fixture
def setup(tmp_path, mocked_responses):
    config = Config(
        backend="globus",
        acquisition_root=tmp_path / "acquisition",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
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
        retry=RetryPolicy(attempts=3),
        sleep=clock.sleep,
        clock=clock,
    )
    yield config, launcher, ledger, clock.sleeps
    ledger.close()


class FakeClock:
    """Monotonic seconds that move only when the code under test sleeps (or a test
    calls :meth:`advance`)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def register_mkdirs() -> None:
    for _ in range(3):  # /p/input, /p/input/100, /p/recon/100 ... "exists" is fine too
        RegisteredResponse(
            service="transfer",
            path=f"/v0.10/operation/endpoint/{COLLECTION}/mkdir",
            method="POST",
            json={"code": "DirectoryCreated"},
        ).add()


def register_no_runs_found() -> None:
    RegisteredResponse(
        service="flows", path="/runs", json={"runs": [], "has_next_page": False}
    ).add()


def run_posts() -> list:
    return [r for r in sent_requests() if r.path_url == f"/flows/{FLOW_ID}/run"]


def test_a_503_on_start_is_retried_by_the_launcher_and_the_run_starts(setup, mocked_responses):
    _, launcher, ledger, sleeps = setup
    register_mkdirs()
    register_run_flow_unavailable(FLOW_ID)
    register_no_runs_found()
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        json={"run_id": RUN_ID, "status": "ACTIVE", "label": "scan100-view000"},
    ).add()

    (outcome,) = launcher.start_scan("scan100", trigger=Trigger.AUTO)

    assert outcome.action is ViewAction.STARTED
    assert outcome.run_id == RUN_ID
    row = ledger.get("scan100", "view000.cxi")
    assert row is not None and row.status is RunStatus.ACTIVE and row.run_id == RUN_ID
    # Two POSTs: the 503 (the SDK did not retry it by itself) and the launcher's retry,
    # after it looked for a run the first POST might have started.
    assert len(run_posts()) == 2
    assert mocked_responses == [], "globus-sdk retried run_flow itself"
    order = [r.path_url.split("?")[0] for r in sent_requests() if "mkdir" not in r.path_url]
    # ... looked before and after its wait (a run a slow answer started may be listed late)
    assert order == [f"/flows/{FLOW_ID}/run", "/runs", "/runs", f"/flows/{FLOW_ID}/run"]
    assert sleeps == [0.5], "one backoff sleep between the two tries"
    assert "attempt:1" in json.loads(run_posts()[-1].body)["tags"]


def test_a_network_error_while_polling_keeps_the_row_active(setup, mocked_responses):
    _, launcher, ledger, _ = setup
    register_mkdirs()
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        json={"run_id": RUN_ID, "status": "ACTIVE"},
    ).add()
    launcher.start_scan("scan100")

    # Nothing registered for GET /runs/<id>: the connection is refused, as on a dead network.
    launcher._clock.advance(15)
    launcher.refresh()

    row = ledger.get("scan100", "view000.cxi")
    assert row is not None
    assert row.status is RunStatus.ACTIVE, row.error
    assert row.error is None
    assert launcher.in_flight == {("scan100", "view000.cxi"): RUN_ID}, (
        "still followed; the next poll may succeed"
    )

    RegisteredResponse(
        service="flows", path=f"/runs/{RUN_ID}", json={"run_id": RUN_ID, "status": "SUCCEEDED"}
    ).add()
    RegisteredResponse(
        service="flows", path=f"/runs/{RUN_ID}/log", json={"entries": [], "has_next_page": False}
    ).add()
    launcher._clock.advance(30)
    launcher.refresh()
    row = ledger.get("scan100", "view000.cxi")
    assert row is not None and row.status is RunStatus.SUCCEEDED
