"""Against the real Globus services: ``ptychoflow check`` and a one-view run of the real flow.

Deselected by default; run with ``pytest -m globus_live``. Needs:

- ``PTYCHOFLOW_LIVE_CONFIG``: a deployed installation's config (``ptychoflow deploy``
  was run with it), whose ``acquisition_root`` is the folder the acquisition
  collection serves at ``acquisition_base``;
- the watcher's client credentials (``PTYCHOFLOW_CLIENT_ID``/``_SECRET`` or
  ``GLOBUS_COMPUTE_CLIENT_ID``/``_SECRET``), or a ``ptychoflow login`` token file.

Skipped when ``PTYCHOFLOW_LIVE_CONFIG`` is not set.
"""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.globus_live

LIVE_CONFIG = os.environ.get("PTYCHOFLOW_LIVE_CONFIG", "")


@pytest.fixture(scope="module")
def live_config():
    if not LIVE_CONFIG:
        pytest.skip("set PTYCHOFLOW_LIVE_CONFIG to a deployed installation's config")
    from flows.config import load_config

    config = load_config(LIVE_CONFIG)
    if config.backend != "globus":
        pytest.skip(f"{LIVE_CONFIG}: backend is {config.backend!r}, not 'globus'")
    return config


def test_check_passes_every_line(live_config):
    from flows.globus.setup import check_from_config

    lines = check_from_config(live_config)
    failures = [line.format() for line in lines if not line.ok]
    assert failures == []


def test_one_view_runs_through_the_real_flow(live_config):
    from flows.backend import RunStatus, Trigger
    from flows.launcher import Launcher, make_backend
    from flows.ledger import Ledger
    from recon.simulate import write_simulated_scan

    scan_id = 900000 + int(time.time()) % 99999
    write_simulated_scan(
        live_config.acquisition_root / f"scan{scan_id}",
        n_views=1,
        detector=32,
        n_positions=49,
        photons=1e5,
        seed=scan_id,
        marker=None,
    )
    ledger = Ledger(live_config.ledger)
    backend = make_backend(live_config)
    try:
        launcher = Launcher(live_config, backend, ledger, poll_interval_s=10)
        (outcome,) = launcher.start_scan(
            scan_id, recon_overrides={"iterations": 5}, trigger=Trigger.MANUAL
        )
        assert outcome.run_id, outcome.error
        (row,) = launcher.wait(scan_id, timeout_s=3600)
    finally:
        backend.close()
        ledger.close()
    assert row.status is RunStatus.SUCCEEDED, row.error
    assert row.output and row.output.get("code_hash"), "the summary carries the code identity"
    result = live_config.acquisition_root / "recon" / str(scan_id) / "view000.h5"
    assert result.exists()
