"""``ptychoflow prune``: which compute-side copies go, and the Transfer delete task sent.

Service behaviour relied on (Transfer API docs, "Submit a delete task"): ``POST
/v0.10/delete`` takes ``endpoint`` (the collection), ``DATA`` items of ``path``,
``recursive`` and ``ignore_missing``, after ``GET /v0.10/submission_id``.
"""

from __future__ import annotations

import dataclasses
import json
import time

import globus_sdk
import numpy as np
import pytest
from globus_sdk.testing import RegisteredResponse

from flows.backend import RunProgress, RunStatus, StartedRun, ViewRequest
from flows.config import Config, GlobusSettings
from flows.globus import auth, prune
from flows.ledger import Ledger
from recon.result import write_result
from tests.unit.flows.globus.sent import sent_requests

COMPUTE = "c0ffee00-1234-4c61-8d0a-6a1e5b7c9d20"
DAY = 86400.0


@pytest.fixture
def config(tmp_path):
    return Config(
        backend="globus",
        acquisition_root=tmp_path / "acquisition",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
        globus=GlobusSettings(
            compute_collection=COMPUTE, compute_base="/eagle/p", compute_retention_days=7
        ),
    )


def rows_of(config, views):
    """Ledger rows of scan100: view file -> (status, days since it finished)."""
    ledger = Ledger(config.ledger)
    try:
        for view, status in views.items():
            request = ViewRequest(scan_id=100, view_file=view, scan_folder="scan100", recon={})
            ledger.claim(request, "globus")
            ledger.mark_submitting("scan100", view)
            ledger.mark_started("scan100", view, StartedRun(f"run-{view}"))
            ledger.update_progress("scan100", view, RunProgress(status))
        return ledger.runs("scan100")
    finally:
        ledger.close()


def aged(rows, days):
    return [dataclasses.replace(row, finished_at=time.time() - days * DAY) for row in rows]


def test_only_verified_old_successes_are_planned(config):
    rows = aged(
        rows_of(
            config,
            {
                "view000.cxi": RunStatus.SUCCEEDED,
                "view001.cxi": RunStatus.SUCCEEDED,
                "view002.cxi": RunStatus.FAILED,
            },
        ),
        days=10,
    )
    rows[1] = dataclasses.replace(rows[1], finished_at=time.time() - 1 * DAY)  # too recent
    (scan,) = prune.plan(config, rows, set(), check=lambda c, r: None)
    assert scan.views == ["view000.cxi"]
    assert not scan.whole_scan
    assert scan.paths == [
        "/eagle/p/input/100/view000.cxi",
        "/eagle/p/recon/100/view000.h5",
        "/eagle/p/recon/100/view000.png",
    ]
    assert scan.kept == {
        "view001.cxi": "within compute_retention_days",
        "view002.cxi": "failed",
    }
    # A result that did not come back whole is kept on the compute side.
    assert prune.plan(config, rows, set(), check=lambda c, r: "no result") == []


def test_a_scan_wholly_done_loses_its_folders_in_one_task_on_the_compute_side(
    config, mocked_responses
):
    rows = aged(rows_of(config, {"view000.cxi": RunStatus.SUCCEEDED}), days=8)
    (scan,) = prune.plan(config, rows, set(), check=lambda c, r: None)
    assert scan.whole_scan and scan.paths == ["/eagle/p/input/100", "/eagle/p/recon/100"]
    RegisteredResponse(service="transfer", path="/v0.10/submission_id", json={"value": "s"}).add()
    RegisteredResponse(
        service="transfer",
        path="/v0.10/delete",
        method="POST",
        json={"DATA_TYPE": "delete_result", "task_id": "del-1", "code": "Accepted"},
    ).add()
    client = auth.transfer_client(authorizer=globus_sdk.NullAuthorizer())
    assert prune.submit(client, COMPUTE, scan) == "del-1"
    (sent,) = [json.loads(r.body) for r in sent_requests() if r.path_url == "/v0.10/delete"]
    assert sent["endpoint"] == COMPUTE, "never the acquisition collection"
    assert sent["recursive"] is True and sent["ignore_missing"] is True
    assert [item["path"] for item in sent["DATA"]] == scan.paths
    # Remembered: the next prune plans nothing for it.
    prune.save_pruned(config.state_dir, {"scan100/view000.cxi": "del-1"})
    assert (
        prune.plan(config, rows, prune.load_pruned(config.state_dir), check=lambda c, r: None) == []
    )


def test_verified_reads_the_result_that_came_back(config):
    (row,) = rows_of(config, {"view000.cxi": RunStatus.SUCCEEDED})
    assert "result not verified" in prune.verified(config, row)
    folder = config.acquisition_root / "recon" / "100"
    folder.mkdir(parents=True)
    write_result(
        folder / "view000.h5",
        object=np.ones((40, 40), np.complex64),
        probe=np.ones((16, 16), np.complex64),
        cost=[1.0, 0.5],
        positions=np.zeros((4, 2)),
        options={},
        pixel_size=1e-8,
        iterations=2,
        devices=[0],
        timings={},
        backend="numpy",
    )
    assert prune.verified(config, row) is None
