"""Result files: write/read round trip, atomic creation, the PNG preview."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from PIL import Image

from recon.errors import InputError, InputFileNotFound
from recon.result import (
    PREVIEW_GAP,
    PREVIEW_LABEL_HEIGHT,
    probe_power_fractions,
    read_result,
    save_preview,
    write_result,
)


def make_object(shape=(90, 80)):
    rows, cols = np.indices(shape)
    phase = np.sin(rows / 7.0) * np.cos(cols / 5.0)
    amplitude = 0.8 + 0.1 * np.cos(rows / 3.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def write_example(path, **overrides):
    rng = np.random.default_rng(0)
    arguments = dict(
        object=make_object(),
        probe=(rng.normal(size=(32, 32)) + 1j).astype(np.complex64),
        cost=[10.0, 5.0, 2.5],
        positions=rng.uniform(2, 40, size=(20, 2)),
        options={"iterations": 3, "cost": "poisson", "devices": None},
        pixel_size=2.5e-8,
        iterations=3,
        devices=[0, 1],
        timings={"load": 0.1, "solve": 2.0, "write": 0.05},
        backend="numpy",
    )
    arguments.update(overrides)
    return write_result(path, **arguments), arguments


def test_round_trip(tmp_path):
    (h5_path, png_path), written = write_example(
        tmp_path / "recon" / "view000.h5",
        extra_attrs={"input": "scan100/view000.cxi", "ssim": {"phase": 0.97}},
    )
    assert h5_path == tmp_path / "recon" / "view000.h5"
    assert png_path == tmp_path / "recon" / "view000.png"
    result = read_result(h5_path)
    np.testing.assert_array_equal(result["object"], written["object"])
    assert result["object"].dtype == np.complex64
    np.testing.assert_array_equal(result["probe"], written["probe"])
    np.testing.assert_array_equal(result["cost"], [10.0, 5.0, 2.5])
    assert result["cost"].dtype == np.float64
    np.testing.assert_allclose(result["positions"], written["positions"], rtol=1e-6)
    assert result["options"] == written["options"]
    assert result["devices"] == [0, 1]
    assert result["timings"] == written["timings"]
    assert result["pixel_size"] == 2.5e-8
    assert result["iterations"] == 3
    assert result["backend"] == "numpy"
    assert result["input"] == "scan100/view000.cxi"
    assert result["ssim"] == {"phase": 0.97}
    assert result["created"].startswith("20") and result["ptychoflow_version"]
    # Only the result and its preview are left: the temporary file was renamed.
    assert sorted(p.name for p in h5_path.parent.iterdir()) == ["view000.h5", "view000.png"]


def test_unknown_pixel_size_is_nan_in_the_file_and_none_when_read(tmp_path):
    (h5_path, _), _ = write_example(tmp_path / "v.h5", pixel_size=None)
    with h5py.File(h5_path, "r") as handle:
        assert math.isnan(handle.attrs["pixel_size"])
    assert read_result(h5_path)["pixel_size"] is None


def test_extra_attribute_may_not_overwrite_a_standard_one(tmp_path):
    with pytest.raises(ValueError, match="'backend'"):
        write_example(tmp_path / "v.h5", extra_attrs={"backend": "x"})
    assert not list(tmp_path.iterdir())


def test_preview_has_two_panels_of_sane_size(tmp_path):
    (_, png_path), _ = write_example(tmp_path / "v.h5")
    with Image.open(png_path) as image:
        image.load()
    assert image.mode == "RGB"
    # Cropped to the scanned region (about 38 + 32 pixels), enlarged to >= 256 tall,
    # panels side by side: wider than tall, and not huge.
    assert 256 <= image.height <= 1200
    assert 2 * 256 <= image.width <= 3000
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 20  # not a blank image
    # The label strip at the top is mostly white with some dark text.
    strip = pixels[:20]
    assert (strip > 200).mean() > 0.8 and (strip < 100).any()


def test_preview_crops_to_the_scanned_region(tmp_path):
    object_ = np.ones((400, 400), np.complex64)
    object_[100:200, 100:200] = np.exp(1j * np.linspace(0, 1, 100))[None, :]
    full = save_preview(tmp_path / "full.png", object_)
    cropped = save_preview(
        tmp_path / "cropped.png",
        object_,
        positions=np.array([[100, 100], [150, 150]]),
        probe_shape=(50, 50),
        deramp=False,
    )
    with Image.open(full) as a, Image.open(cropped) as b:
        # 400 px panels stay 400 tall; the 100 px crop is enlarged 3x to 300.
        assert a.height > b.height
        cropped_pixels = np.asarray(b.convert("L"))
    # The phase panel of the crop is a ramp across its width.
    row = cropped_pixels[cropped_pixels.shape[0] // 2, 8:300].astype(int)
    assert row[-5] - row[5] > 150


def test_read_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputFileNotFound):
        read_result(tmp_path / "none.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(InputError, match=r"bad\.h5: not a readable HDF5 file"):
        read_result(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["object"] = np.ones((4, 4))
    with pytest.raises(InputError, match="not a ptychoflow result file"):
        read_result(other)


def test_preview_removes_a_phase_ramp_by_default(tmp_path):
    """A phase ramp (an ambiguity of the data) wraps the display; deramping shows the
    object's structure instead: a bright square on a dark field."""
    rows, cols = np.indices((120, 120))
    phase = 0.8 * ((rows > 40) & (rows < 80) & (cols > 40) & (cols < 80))
    object_ = np.exp(1j * (phase + 0.4 * rows + 0.25 * cols)).astype(np.complex64)
    panels = {}
    for deramp in (True, False):
        path = save_preview(tmp_path / f"{deramp}.png", object_, deramp=deramp)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L")).astype(float)
        top = PREVIEW_GAP + PREVIEW_LABEL_HEIGHT
        # 120 px enlarged 3x to reach 256: the square spans 123..237 of 360.
        panels[deramp] = pixels[top : top + 360, PREVIEW_GAP : PREVIEW_GAP + 360]
    flat = panels[True]
    inside, outside = flat[150:210, 150:210], flat[:100, :100]
    assert inside.mean() - outside.mean() > 150 and outside.std() < 10
    wrapped = panels[False]
    assert wrapped[:100, :100].std() > 50  # the ramp's stripes


def test_two_probe_modes_refined_positions_and_the_preview(tmp_path):
    rng = np.random.default_rng(3)
    probe = (rng.normal(size=(2, 32, 32)) + 1j).astype(np.complex64)
    probe[1] *= 0.5
    positions = rng.uniform(2, 40, size=(20, 2))
    refined = positions + rng.normal(scale=0.5, size=positions.shape)
    (h5_path, png_path), _ = write_example(
        tmp_path / "modes.h5", probe=probe, positions=positions, refined_positions=refined
    )
    result = read_result(h5_path)
    np.testing.assert_array_equal(result["probe"], probe)
    np.testing.assert_allclose(result["positions"], positions, rtol=1e-6)
    np.testing.assert_allclose(result["refined_positions"], refined, rtol=1e-6)
    fractions = probe_power_fractions(probe)
    assert fractions.sum() == pytest.approx(1.0) and fractions[0] > 3 * fractions[1]
    with Image.open(png_path) as image:
        # phase, amplitude and two panels (amplitude, phase) per mode
        assert image.width > 4 * 256
    with pytest.raises(ValueError, match="refined_positions"):
        write_example(tmp_path / "bad.h5", refined_positions=refined[:5])


def test_ptychodus_reads_the_result(tmp_path):
    """The field's GUI reads our file: object, every probe mode, positions in metres at
    the probe centres, the loss history, energy and distance (ptychodus 1.7)."""
    io = pytest.importorskip("ptychodus.api.io")
    rng = np.random.default_rng(4)
    probe = (rng.normal(size=(2, 32, 32)) + 1j).astype(np.complex64)
    positions = rng.uniform(2, 40, size=(20, 2)).astype(np.float32)
    refined = (positions + 0.3).astype(np.float32)
    (h5_path, _), written = write_example(
        tmp_path / "view007.h5",
        probe=probe,
        positions=positions,
        refined_positions=refined,
        energy_j=8.8e3 * 1.602176634e-19,
        distance_m=1.9,
    )
    product = io.load_product(h5_path)
    np.testing.assert_array_equal(product.object_.get_array()[0], written["object"])
    np.testing.assert_array_equal(product.probes.get_array()[0], probe)
    assert product.probes.get_array().shape == (1, 2, 32, 32)
    geometry = product.object_.get_geometry()
    assert geometry.pixel_width_m == pytest.approx(2.5e-8)
    # Ptychodus's own mapping from metres to object pixels gives our probe centres
    # (the refined positions, top-left corner + (32 - 1) / 2).
    cols = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    rows = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    np.testing.assert_allclose(cols, refined[:, 1] + 15.5, atol=1e-4)
    np.testing.assert_allclose(rows, refined[:, 0] + 15.5, atol=1e-4)
    assert [loss.value for loss in product.losses] == [10.0, 5.0, 2.5]
    assert product.metadata.photon_energy_eV == pytest.approx(8800.0)
    assert product.metadata.detector_distance_m == pytest.approx(1.9)
    assert product.metadata.name == "view007"


def test_a_reconstructed_cxi_view_opens_in_ptychodus(tmp_path):
    """From an independently simulated CXI file through recon.api to Ptychodus: the
    energy and distance come from the input file."""
    io = pytest.importorskip("ptychodus.api.io")
    from recon.api import reconstruct_file
    from recon.options import ReconOptions
    from recon.simulate_fourier import simulate_scan

    sim = simulate_scan(tmp_path / "view000.cxi", detector=32, n_positions=30)
    summary = reconstruct_file(
        sim.path, tmp_path / "out" / "view000.h5", ReconOptions(iterations=2, backend="numpy")
    )
    product = io.load_product(summary["output"])
    assert product.metadata.photon_energy_eV == pytest.approx(8800.0, rel=1e-9)
    assert product.metadata.detector_distance_m == pytest.approx(1.9)
    assert product.object_.get_geometry().pixel_width_m == pytest.approx(sim.pixel_size)
    assert len(product.losses) == 3
    assert len(product.probe_positions) == 30
