"""Beamline files read through Ptychodus's reader registry (issue 17).

The folders are written by ``tests/beamline_layouts.py`` the way each Ptychodus reader
expects them (its code is the reference), from a simulated view whose patterns,
positions and geometry are known: what comes out must be exactly those patterns on the
valid pixels, the bad pixels masked, the same positions and the same pixel size.
Tests that need Ptychodus skip when the ``interop`` extra is not installed.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from recon.errors import InputError, InputFileNotFound, InputTooLargeError, OptionsError
from recon.hdf5_confined import ExternalReferenceRefused
from tests.beamline_layouts import (
    SETTINGS,
    simulated,
    write_isn,
    write_nanomax,
    write_velociprobe,
)

pytest.importorskip("ptychodus", reason="the interop extra (Ptychodus) is not installed")

from recon.beamline import (
    BeamlineSettings,
    load_beamline_scan,
    missing_parts,
    needed_files,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def view():
    return simulated()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, view):
    root = tmp_path_factory.mktemp("beamline")
    return {
        "velociprobe": write_velociprobe(root / "fly042", view),
        "isn": write_isn(root / "scan042", view),
        "nanomax": write_nanomax(root / "scan000042", view),
    }


def settings(name: str, **changes) -> BeamlineSettings:
    return BeamlineSettings.from_dict({**SETTINGS[name], **changes})


@pytest.mark.parametrize("name", ["velociprobe", "isn", "nanomax"])
def test_each_layout_reads_back_the_simulated_view(layouts, name):
    layout = layouts[name]
    scan = load_beamline_scan(layout.folder, settings(name))
    truth = layout.view.scan
    valid = ~layout.bad
    assert scan.data.shape == truth.data.shape
    np.testing.assert_array_equal(scan.data[:, valid], np.rint(truth.data[:, valid]))
    np.testing.assert_array_equal(scan.mask, valid)
    assert np.all(scan.data[:, layout.bad] == 0)  # never counts
    # Positions to a small fraction of a pixel (the text file holds whole nanometres).
    np.testing.assert_allclose(scan.positions, truth.positions, atol=0.02)
    assert scan.pixel_size == pytest.approx(truth.pixel_size, rel=1e-9)
    assert scan.wavelength == pytest.approx(truth.wavelength, rel=1e-9)


def test_velociprobe_encoder_positions_and_the_beam_centre_from_the_file(layouts):
    """APS_Velociprobe_PE reads column 5, negated; the centre comes from beam_center_x/y."""
    layout = layouts["velociprobe"]
    scan = load_beamline_scan(
        layout.folder, settings("velociprobe", positions_reader="APS_Velociprobe_PE")
    )
    np.testing.assert_allclose(scan.positions, layout.view.scan.positions, atol=0.02)


def test_a_wrong_centre_gives_other_data_and_an_absent_one_is_found(layouts):
    layout = layouts["nanomax"]  # the file gives no centre: found from the counts
    row, col = layout.center
    shifted = load_beamline_scan(layout.folder, settings("nanomax", center=[row + 2, col]))
    found = load_beamline_scan(layout.folder, settings("nanomax"))
    assert not np.array_equal(shifted.data, found.data)


def test_geometry_the_files_lack_must_be_given(layouts):
    layout = layouts["nanomax"]
    bare = {k: v for k, v in SETTINGS["nanomax"].items() if k not in ("distance_m", "energy_ev")}
    with pytest.raises(InputError, match="does not give distance_m, energy_ev") as info:
        load_beamline_scan(layout.folder, BeamlineSettings.from_dict(bare))
    assert "scan_000042.h5" in str(info.value)


def test_settings_override_the_files_geometry(layouts):
    layout = layouts["velociprobe"]
    scan = load_beamline_scan(layout.folder, settings("velociprobe", distance_m=4.0))
    assert scan.pixel_size == pytest.approx(2 * layout.view.scan.pixel_size)


def test_binning_and_threshold(layouts):
    layout = layouts["isn"]
    scan = load_beamline_scan(layout.folder, settings("isn", binning=2, photon_threshold=3))
    assert scan.data.shape[1:] == (16, 16)
    assert scan.pixel_size == pytest.approx(layout.view.scan.pixel_size)  # same field of view
    bad = layout.bad.reshape(16, 2, 16, 2).any(axis=(1, 3))
    np.testing.assert_array_equal(scan.mask, ~bad)


def test_needed_files_are_the_roles_and_the_link_targets_only(layouts):
    layout = layouts["velociprobe"]
    (layout.folder / "notes.txt.bak").write_text("not needed")
    (layout.folder / "preview.png").write_bytes(b"png")
    found = needed_files(layout.folder, settings("velociprobe"))
    assert found[0].name == "fly042_master.h5"
    assert sorted(p.name for p in found) == sorted(p.name for p in layout.files)
    # 19-ID: the reader lists the folder for the series' other members; they are needed.
    isn = layouts["isn"]
    found = needed_files(isn.folder, settings("isn"))
    assert found[0].name == "scan_0042_00001.h5"
    assert sorted(p.name for p in found) == sorted(p.name for p in isn.files)


def test_link_out_of_the_roots_is_refused_through_the_reader(tmp_path, view):
    """A data file beside the master that is a symbolic link to another group's data:
    Ptychodus's own check (no absolute path, no ``..``) lets it through; ours does not."""
    layout = write_velociprobe(tmp_path / "root" / "fly042", view)
    elsewhere = tmp_path / "other_group"
    elsewhere.mkdir()
    data_file = layout.folder / "fly042_data_000001.h5"
    data_file.rename(elsewhere / data_file.name)
    data_file.symlink_to(elsewhere / data_file.name)
    with pytest.raises(ExternalReferenceRefused) as info:
        load_beamline_scan(
            layout.folder, settings("velociprobe"), allowed_roots=[tmp_path / "root"]
        )
    message = str(info.value)
    assert "/entry/data/data_000001" in message and "fly042_data_000001.h5" in message
    assert "fly042_master.h5" in message and "outside the allowed roots" in message
    load_beamline_scan(layout.folder, settings("velociprobe"))  # unconfined: reads


def test_memory_is_checked_before_anything_is_decompressed(tmp_path, view):
    """A data file declaring 200000 frames (stored nowhere: the file is small) is refused
    from its declared shape."""
    layout = write_velociprobe(tmp_path / "fly042", view)
    with h5py.File(layout.folder / "fly042_data_000002.h5", "r+") as handle:
        del handle["entry/data/data"]
        handle.create_dataset(
            "entry/data/data", shape=(200_000, 514, 1030), dtype=np.uint32,
            chunks=(1, 64, 64), compression="gzip",
        )  # fmt: skip
    lines = (layout.folder / "fly042_0.txt").read_text().splitlines()
    lines.append("0,0,0,0,0,0,0,200019")
    (layout.folder / "fly042_0.txt").write_text("\n".join(lines) + "\n")
    assert (layout.folder / "fly042_data_000002.h5").stat().st_size < 1_000_000
    with pytest.raises(InputTooLargeError, match="200020 patterns of 32x32"):
        load_beamline_scan(layout.folder, settings("velociprobe"), memory_limit=2**30)


def test_completeness_from_the_beamline_files(tmp_path, view):
    layout = write_velociprobe(tmp_path / "fly042", view)
    config = settings("velociprobe")
    assert missing_parts(layout.folder, config) is None
    data_file = layout.folder / "fly042_data_000002.h5"
    data_file.rename(tmp_path / "later.h5")
    assert "fly042_data_000002.h5" in missing_parts(layout.folder, config)
    (tmp_path / "later.h5").rename(data_file)
    (layout.folder / "fly042_0.txt").unlink()
    assert "no positions file matching '*.txt'" in missing_parts(layout.folder, config)


def test_missing_roles_and_unknown_readers_are_named(tmp_path, layouts):
    with pytest.raises(InputFileNotFound, match=r"no diffraction file matching '\*_master.h5'"):
        load_beamline_scan(tmp_path, settings("velociprobe"))
    with pytest.raises(OptionsError, match="no Ptychodus diffraction reader named 'Nope'"):
        load_beamline_scan(layouts["velociprobe"].folder, settings("velociprobe", reader="Nope"))
    with pytest.raises(OptionsError, match="unknown key"):
        BeamlineSettings.from_dict({"reader": "APS_Velociprobe", "cropp": 3})
    with pytest.raises(OptionsError, match="crop"):
        BeamlineSettings.from_dict({"reader": "APS_Velociprobe", "crop": 2})


def test_a_file_not_in_the_readers_layout_is_a_clear_error(tmp_path, view):
    layout = write_velociprobe(tmp_path / "fly042", view)
    with h5py.File(layout.folder / "fly042_master.h5", "r+") as handle:
        del handle["entry/instrument/detector/detector_distance"]
    with pytest.raises(InputError, match="Ptychodus reader APS_Velociprobe cannot read it"):
        load_beamline_scan(layout.folder, settings("velociprobe"))


def test_zone_plate_probe_guess(layouts):
    layout = layouts["velociprobe"]
    scan = load_beamline_scan(
        layout.folder,
        settings("velociprobe", probe_zone_plate="APS_Velociprobe", probe_defocus_m=50e-6),
    )
    assert scan.probe is not None and scan.probe.shape == (32, 32)
    phase = np.angle(scan.probe[12:20, 12:20])
    assert np.ptp(phase) > 0.5  # a defocused zone-plate beam is not a flat phase


def test_cxi_and_npz_need_no_ptychodus_and_a_reader_without_it_says_what_to_install(tmp_path):
    from recon.simulate import write_simulated_scan

    (cxi,) = write_simulated_scan(tmp_path, n_views=1, detector=16, n_positions=9)
    code = f"""
import sys
sys.modules["ptychodus"] = None  # as if the interop extra were not installed
from recon.cxi import load_scan
assert load_scan({str(cxi)!r}).data.shape[0] == 9
from recon.beamline import BeamlineSettings, load_beamline_scan, InteropMissingError
try:
    load_beamline_scan({str(tmp_path)!r}, BeamlineSettings(reader="APS_Velociprobe"))
except InteropMissingError as err:
    print(err)
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "pip install 'ptychoflow[interop]'" in run.stdout


def test_recon_command_reads_a_scan_folder_by_hand(tmp_path, view):
    """The issue's command: geometry and beam centre from the files, flags over them."""
    layout = write_velociprobe(tmp_path / "fly042", view)
    out = tmp_path / "out.h5"
    command = [
        sys.executable, "-m", "flows.cli", "recon", str(layout.folder),
        "--reader", "APS_Velociprobe", "--positions-reader", "APS_Velociprobe_LI",
        "--crop", "32", "-o", str(out), "--iterations", "3", "--backend", "numpy", "--quiet",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    with h5py.File(out) as result:
        assert result["object"].ndim == 2
        assert '"reader": "APS_Velociprobe"' in result.attrs["beamline"]
        assert result.attrs["pixel_size"] == pytest.approx(view.scan.pixel_size)
    formats = subprocess.run(
        [sys.executable, "-m", "flows.cli", "formats"], capture_output=True, text=True, cwd=REPO
    )
    assert formats.returncode == 0
    for name in ("APS_Velociprobe", "APS_Velociprobe_LI", "APS_ISN", "MAX_IV_NanoMAX", "CXI"):
        assert name in formats.stdout


def test_compute_function_reads_a_beamline_scan_and_refuses_a_link_out(tmp_path, view, monkeypatch):
    """reconstruct_view with the flow's ``beamline`` argument: reads through the layer
    inside the roots, and refuses a data file that is a symbolic link out of them."""
    from functions.reconstruct import reconstruct_view

    root = tmp_path / "compute"
    layout = write_velociprobe(root / "input" / "100", view)
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(root))
    master = str(layout.folder / "fly042_master.h5")
    options = {"iterations": 1, "backend": "numpy"}
    beamline = settings("velociprobe").to_dict()
    summary = reconstruct_view(master, str(root / "recon" / "100"), options, beamline=beamline)
    assert summary["output"].endswith("recon/100/fly042_master.h5")

    elsewhere = tmp_path / "other_group"
    elsewhere.mkdir()
    data_file = layout.folder / "fly042_data_000002.h5"
    data_file.rename(elsewhere / data_file.name)
    data_file.symlink_to(elsewhere / data_file.name)
    with pytest.raises(ExternalReferenceRefused, match="/entry/data/data_000002"):
        reconstruct_view(master, str(root / "recon" / "100"), options, beamline=beamline)
