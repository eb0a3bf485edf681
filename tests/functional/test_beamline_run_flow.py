"""A beamline's own scan folders through `run-flow` on the local backend (issue 17).

The folders are written in each Ptychodus reader's layout (``tests/beamline_layouts.py``);
the config's ``[beamline]`` section names the readers. The flow copies the files the
reader needs and nothing else, the compute function (in the local Globus Compute
engine) reads them through the same layer, and the reconstruction is compared with the
simulated truth (the slow tests). Skipped without the ``interop`` extra.
"""

import json

import h5py
import numpy as np
import pytest

from flows.backend import RunStatus
from flows.ledger import Ledger
from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import coarse_levels_for
from recon.result import read_result
from tests.beamline_layouts import (
    SETTINGS,
    simulated,
    simulated_zone_plate,
    write_isn,
    write_nanomax,
    write_velociprobe,
)
from tests.functional.cli import ptychoflow

pytest.importorskip("ptychodus", reason="the interop extra (Ptychodus) is not installed")


def toml_value(value):
    return json.dumps(value)  # strings, numbers, lists of strings: the same in TOML


def write_config(site, beamline, iterations):
    lines = [
        'backend = "local"',
        'acquisition_root = "acquisition"',
        'compute_root = "compute"',
        'ledger = "ledger.sqlite"',
        'state_dir = "state"',
        "[recon]",
        f"iterations = {iterations}",
        'backend = "numpy"',
        "[beamline]",
        *(f"{key} = {toml_value(value)}" for key, value in beamline.items()),
    ]
    (site / "ptychoflow.toml").write_text("\n".join(lines) + "\n")


def test_velociprobe_scan_runs_and_only_its_files_are_copied(tmp_path):
    scan = tmp_path / "acquisition" / "scan100"
    layout = write_velociprobe(scan, simulated(detector=32, n_positions=36))
    (scan / "camera_snapshot.png").write_bytes(b"\x89PNG not needed")
    (scan / "other_detector.h5").write_bytes(b"not needed either")
    write_config(tmp_path, SETTINGS["velociprobe"], iterations=2)

    run = ptychoflow("run", "--scan", "100", "--wait", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

    copied = sorted(p.name for p in (tmp_path / "compute" / "input" / "100").iterdir())
    assert copied == sorted(p.name for p in layout.files)
    result = tmp_path / "acquisition" / "recon" / "100" / "fly042_master.h5"
    with h5py.File(result) as handle:
        assert json.loads(handle.attrs["beamline"])["reader"] == "APS_Velociprobe"
        assert handle.attrs["pixel_size"] == pytest.approx(layout.view.scan.pixel_size)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    (row,) = ledger.runs(100)
    ledger.close()
    assert row.status is RunStatus.SUCCEEDED and row.view_file == "fly042_master.h5"


def test_a_missing_reader_fails_the_view_with_its_name(tmp_path):
    scan = tmp_path / "acquisition" / "scan101"
    write_velociprobe(scan, simulated(detector=32, n_positions=36))
    write_config(tmp_path, {**SETTINGS["velociprobe"], "reader": "APS_Velociprob"}, 2)
    run = ptychoflow("run", "--scan", "101", "--wait", cwd=tmp_path)
    assert run.returncode == 1
    ledger = Ledger(tmp_path / "ledger.sqlite")
    (row,) = ledger.runs(101)
    ledger.close()
    assert row.status is RunStatus.FAILED
    assert "no Ptychodus diffraction reader named 'APS_Velociprob'" in row.error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "writer"),
    [("velociprobe", write_velociprobe), ("isn", write_isn), ("nanomax", write_nanomax)],
)
def test_reconstruction_matches_the_simulated_truth(tmp_path, name, writer):
    """A zone-plate beam 400 um out of focus (the beamline's optics); the probe guess is
    the same preset with a 10 % defocus error. 64x64 crops, 100 positions."""
    view = simulated_zone_plate(detector=64, n_positions=100)
    # The defocused pupil fills the detector (22 % of the counts in its central half):
    # no coarse start by default (with one it fell from 0.80 to 0.10 phase SSIM).
    assert coarse_levels_for(view.scan, ReconOptions()) == 0
    scan = tmp_path / "acquisition" / "scan102"
    writer(scan, view)
    settings = {
        **SETTINGS[name],
        "crop": 64,
        "probe_zone_plate": "APS_Velociprobe",
        "probe_defocus_m": 440e-6,
    }
    write_config(tmp_path, settings, iterations=60)
    run = ptychoflow("run", "--scan", "102", "--wait", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    (result_path,) = (tmp_path / "acquisition" / "recon" / "102").glob("*.h5")
    result = read_result(result_path)
    h, w = view.true_object.shape
    region = illuminated_region(view.scan.positions, view.true_probe, (h, w))
    score = compare_objects(np.asarray(result["object"])[:h, :w], view.true_object, region)
    assert score["phase_ssim"] > 0.7, score
