"""``ptychoflow replay`` and the ``watch`` command's error path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from flows.cli import main
from recon.errors import InputError, InputFileNotFound
from tests.functional.recording_backend import write_config
from watcher.replay import replay


def make_source(path):
    rng = np.random.default_rng(0)
    data = rng.random((10, 8, 8), dtype=np.float32)
    positions = rng.random((10, 3))
    with h5py.File(path, "w") as file:
        file["/entry_1/data_1/data"] = data
        file["/entry_1/data_1/data"].attrs["units"] = "counts"
        file["/entry_1/sample_1/geometry_1/translation"] = positions
        file["/entry_1/instrument_1/source_1/energy"] = 1.6e-15
        file.attrs["creator"] = "test"
    return data, positions


def test_replay_copies_a_view_incrementally_at_the_rate_and_writes_the_marker_last(tmp_path):
    data, positions = make_source(tmp_path / "source.cxi")
    sleeps = []
    folders = replay(
        tmp_path / "source.cxi",
        tmp_path / "acq",
        [5, 6],
        rate_hz=50,  # batches of 5 patterns (0.1 s each)
        sleep=sleeps.append,
    )
    assert [f.name for f in folders] == ["scan5", "scan6"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["scan.done", "source.cxi"]
        marker_time = (folder / "scan.done").stat().st_mtime_ns
        assert marker_time >= (folder / "source.cxi").stat().st_mtime_ns
        with h5py.File(folder / "source.cxi", "r") as file:
            copied = file["/entry_1/data_1/data"]
            assert copied.maxshape == (None, 8, 8)  # written as a growing dataset
            np.testing.assert_array_equal(copied[...], data)
            assert copied.attrs["units"] == "counts"
            np.testing.assert_array_equal(
                file["/entry_1/sample_1/geometry_1/translation"][...], positions
            )
            assert file["/entry_1/instrument_1/source_1/energy"][()] == 1.6e-15
            assert file.attrs["creator"] == "test"
    # Two batches per scan, each written, then waited for until its time slot (at 0.1 s and
    # 0.2 s after the view started; the injected sleep does not advance the clock).
    assert sleeps == pytest.approx([0.1, 0.2, 0.1, 0.2], abs=0.03)


def test_replay_refuses_bad_sources_and_existing_scans(tmp_path):
    with pytest.raises(InputFileNotFound, match="does not exist"):
        replay(tmp_path / "nope", tmp_path / "acq", [1], rate_hz=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no view files"):
        replay(tmp_path / "empty", tmp_path / "acq", [1], rate_hz=None)
    make_source(tmp_path / "source.cxi")
    (tmp_path / "acq" / "scan1").mkdir(parents=True)
    with pytest.raises(InputError, match="exists already"):
        replay(tmp_path / "source.cxi", tmp_path / "acq", [1], rate_hz=None)


def test_watch_command_reports_a_missing_acquisition_root(tmp_path, capsys):
    config = write_config(tmp_path / "ptychoflow.toml", tmp_path / "missing")
    assert main(["watch", "--config", str(config)]) == 1
    assert "acquisition root" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rate", ["nan", "inf", "-inf", "-5", "1e-9", "1e12", "fast"], ids=lambda r: f"rate={r}"
)
def test_replay_refuses_a_rate_it_cannot_keep_in_one_line(tmp_path, rate):
    """Issue 16: nan and inf raised tracebacks, -5 was accepted and 1e-9 hung."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "replay", str(tmp_path / "src"),
         "--to", str(tmp_path / "acq"), "--scans", "1", f"--rate={rate}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        "--rate" in done.stderr and "patterns per second" in done.stderr
    ) or "not a number" in done.stderr
    assert not (tmp_path / "acq").exists()


def test_replay_function_refuses_a_rate_too(tmp_path):
    from recon.errors import OptionsError
    from watcher.replay import replay

    with pytest.raises(OptionsError, match=r"at least 0\.01 patterns per second"):
        replay(tmp_path / "src", tmp_path / "acq", [1], rate_hz=float("nan"))
