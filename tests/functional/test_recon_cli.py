"""``ptychoflow recon`` as a user runs it: a real process, real files."""

import h5py
import numpy as np
import pytest

from recon.result import read_result
from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan100")
    return write_simulated_scan(folder, n_views=1, n_positions=64, detector=32, photons=1e5)[0]


def test_recon_writes_result_and_preview(view, tmp_path):
    out = tmp_path / "out" / "view000.h5"
    run = ptychoflow("recon", str(view), "-o", str(out), "--iterations", "5", "--devices", "2")
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "reconstructing" in run.stderr  # the progress bar
    result = read_result(out)
    assert result["object"].dtype == np.complex64 and result["object"].ndim == 2
    assert result["cost"].shape == (6,) and result["cost"][-1] < result["cost"][0]
    assert result["devices"] == [0, 1]
    assert result["options"]["iterations"] == 5
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_input_is_one_line_on_stderr_with_nonzero_exit(tmp_path):
    bad = tmp_path / "scan101" / "view000.cxi"
    bad.parent.mkdir()
    with h5py.File(bad, "w") as f:
        f["/entry_1/data_1/data"] = np.ones((4, 16, 16), np.float32)
    run = ptychoflow("recon", str(bad), "-o", str(tmp_path / "x.h5"), "--quiet")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "view000.cxi" in lines[0] and "translation" in lines[0]
    assert "Traceback" not in run.stderr

    missing = ptychoflow("recon", str(tmp_path / "nope.cxi"), "-o", str(tmp_path / "x.h5"))
    assert missing.returncode == 1 and "nope.cxi" in missing.stderr


def test_unknown_option_value_is_rejected_by_the_parser(view, tmp_path):
    run = ptychoflow("recon", str(view), "-o", str(tmp_path / "x.h5"), "--cost", "l1")
    assert run.returncode == 2 and "invalid choice" in run.stderr


def test_real_siemens_star_data_reconstructs(siemens_star_path, tmp_path):
    """The shared measured dataset: the cost falls steadily and the result is written."""
    from recon.api import reconstruct_file
    from recon.options import ReconOptions

    options = ReconOptions(iterations=40, backend="numpy")
    summary = reconstruct_file(siemens_star_path, tmp_path / "star.h5", options)
    result = read_result(summary["output"])
    cost = result["cost"]  # the Poisson cost, also while the staged start fits amplitudes
    switch = round(options.amplitude_start * options.iterations)
    assert cost[switch] < cost[0]
    assert np.all(np.diff(cost[switch:]) <= 0)  # never rises once Poisson is minimised
    assert cost[-1] < cost[0] / 5
    # The phase carries the star: strong contrast between spokes in the scanned area.
    phase = np.angle(result["object"][150:350, 150:350])
    assert np.ptp(np.percentile(phase, [5, 95])) > 1.0


def test_preview_deramp_flag(view, tmp_path):
    pngs = []
    for flag in ("--preview-deramp", "--no-preview-deramp"):
        out = tmp_path / flag.strip("-") / "view000.h5"
        run = ptychoflow("recon", str(view), "-o", str(out), "--iterations", "3", "--quiet", flag)
        assert run.returncode == 0, run.stderr
        pngs.append(out.with_suffix(".png").read_bytes())
    assert pngs[0] != pngs[1]
