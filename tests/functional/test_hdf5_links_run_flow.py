"""`run-flow` on the local backend refuses views whose HDF5 links lead out of the
compute root (issue 16, item 1): the compute function runs in the local engine with
PTYCHOFLOW_ALLOWED_ROOTS set to the compute root, and each such view fails on its own,
naming the dataset and the target, while the other views succeed."""

import h5py
import numpy as np

from flows.backend import RunStatus
from flows.ledger import Ledger
from recon.cxi import DATA_PATH, TRANSLATION_PATH
from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow

CONFIG = """
backend = "local"
acquisition_root = "acquisition"
compute_root = "compute"
ledger = "ledger.sqlite"
state_dir = "state"
[recon]
iterations = 3
backend = "numpy"
refine_probe = false
"""


def link_out(view, dataset, target, name):
    with h5py.File(view, "r+") as handle:
        with h5py.File(target, "a") as other:
            other[dataset.replace("/", "_")] = handle[dataset][()] * 2
        del handle[dataset]
        handle[dataset] = h5py.ExternalLink(name, "/" + dataset.replace("/", "_"))


def test_views_linking_out_of_the_compute_root_fail_alone(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    scan = tmp_path / "acquisition" / "scan100"
    views = write_simulated_scan(scan, n_views=3, detector=32, n_positions=25, seed=2)
    other_group = tmp_path / "other_group"
    other_group.mkdir()
    target = other_group / "their_scan.h5"
    link_out(views[1], DATA_PATH, target, str(target))  # absolute
    # Relative to where the compute function reads it: compute/input/100/view002.cxi.
    link_out(views[2], TRANSLATION_PATH, target, "../../../other_group/their_scan.h5")

    run = ptychoflow("run", "--scan", "100", "--wait", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr

    ledger = Ledger(tmp_path / "ledger.sqlite")
    rows = sorted(ledger.runs(100), key=lambda row: row.view_file)
    ledger.close()
    assert rows[0].status is RunStatus.SUCCEEDED
    assert rows[1].status is RunStatus.FAILED and rows[2].status is RunStatus.FAILED
    assert DATA_PATH in rows[1].error and str(target) in rows[1].error
    assert TRANSLATION_PATH in rows[2].error and "their_scan.h5" in rows[2].error
    for row in rows[1:]:
        assert "outside the allowed roots" in row.error
    results = tmp_path / "acquisition" / "recon" / "100"
    assert (results / "view000.h5").is_file()
    assert not (results / "view001.h5").exists() and not (results / "view002.h5").exists()
    with h5py.File(results / "view000.h5") as result:
        assert np.isfinite(result["cost"][()]).all()
