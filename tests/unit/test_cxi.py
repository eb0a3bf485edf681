"""CXI and npz loading: the round trip, the layouts the contract allows, and every
kind of bad input getting a message that names the file and the dataset."""

from __future__ import annotations

import bz2
import io
import re

import h5py
import numpy as np
import pytest

from recon.cxi import (
    DATA_PATH,
    ENERGY_PATH,
    MASK_PATH,
    POSITION_MARGIN,
    TRANSLATION_PATH,
    X_PIXEL_SIZE_PATH,
    load_cxi,
    load_npz,
    load_scan,
    validated_scan,
    wavelength_from_energy,
    write_cxi,
)
from recon.errors import InputError, InputFileNotFound, PtychoflowError

ENERGY_J = 8.8e3 * 1.602176634e-19
DISTANCE_M = 1.5
PIXEL_SIZE = 20e-9


def make_view(n=12, size=16, seed=0):
    """Small counts, positions with the smallest at POSITION_MARGIN, a probe and a mask."""
    rng = np.random.default_rng(seed)
    data = rng.poisson(50.0, size=(n, size, size)).astype(np.uint16)
    positions = rng.uniform(0, 30, size=(n, 2))
    positions = positions - positions.min(axis=0) + POSITION_MARGIN
    probe = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))).astype(
        np.complex64
    )
    mask = np.ones((size, size), dtype=bool)
    mask[3, 5] = False
    return data, positions, probe, mask


@pytest.fixture
def cxi_path(tmp_path):
    data, positions, probe, mask = make_view()
    path = tmp_path / "view000.cxi"
    write_cxi(
        path,
        data,
        positions,
        PIXEL_SIZE,
        energy_j=ENERGY_J,
        distance_m=DISTANCE_M,
        probe=probe,
        mask=mask,
    )
    return path


def rewrite(path, name, value):
    """Replace (or, with value None, delete) one dataset of an existing file."""
    with h5py.File(path, "r+") as handle:
        del handle[name]
        if value is not None:
            handle[name] = value


def test_round_trip_gives_back_data_positions_pixel_size_probe_and_mask(cxi_path):
    data, positions, probe, mask = make_view()
    scan = load_cxi(cxi_path)
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    np.testing.assert_allclose(scan.positions, positions, atol=1e-4)
    assert scan.pixel_size == pytest.approx(PIXEL_SIZE, rel=1e-9)
    assert scan.wavelength == pytest.approx(wavelength_from_energy(ENERGY_J))
    assert scan.wavelength == pytest.approx(1.4089e-10, rel=1e-3)  # 8.8 keV
    np.testing.assert_array_equal(scan.probe, probe)
    np.testing.assert_array_equal(scan.mask, mask)
    assert scan.data.dtype == np.float32 and scan.data.flags.c_contiguous
    assert scan.positions.dtype == np.float32 and scan.positions.flags.c_contiguous
    assert scan.probe.dtype == np.complex64
    assert scan.source == str(cxi_path)
    assert load_scan(cxi_path).n_positions == 12


def test_positions_are_shifted_to_the_margin(tmp_path):
    data, positions, _, _ = make_view()
    path = tmp_path / "far.cxi"
    write_cxi(
        path,
        data,
        positions + np.array([1000.5, -40.25]),
        PIXEL_SIZE,
        energy_j=ENERGY_J,
        distance_m=DISTANCE_M,
    )
    scan = load_cxi(path)
    np.testing.assert_allclose(scan.positions.min(axis=0), [POSITION_MARGIN] * 2)
    np.testing.assert_allclose(scan.positions, positions, atol=1e-3)
    assert scan.probe is None and scan.mask is None


def test_translation_stored_three_by_n_reads_like_n_by_three(cxi_path):
    reference = load_cxi(cxi_path)
    with h5py.File(cxi_path, "r") as handle:
        translation = handle[TRANSLATION_PATH][()]
    rewrite(cxi_path, TRANSLATION_PATH, translation.T)
    np.testing.assert_allclose(load_cxi(cxi_path).positions, reference.positions)


def test_translation_x_is_columns_and_y_is_rows(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        translation = handle[TRANSLATION_PATH][()]
    translation[:, 0] = 0.0  # no horizontal motion: every column equal
    rewrite(cxi_path, TRANSLATION_PATH, translation)
    scan = load_cxi(cxi_path)
    np.testing.assert_allclose(scan.positions[:, 1], POSITION_MARGIN)
    assert np.ptp(scan.positions[:, 0]) > 10


def test_mask_convention_nonzero_is_bad(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        stored = handle[MASK_PATH][()]
    assert stored[3, 5] != 0 and np.count_nonzero(stored) == 1
    scan = load_cxi(cxi_path)
    assert not scan.mask[3, 5] and scan.mask.sum() == scan.mask.size - 1


def test_probe_with_leading_singleton_axes_and_illumination_name(cxi_path):
    _, _, probe, _ = make_view()
    rewrite(cxi_path, "/entry_1/instrument_1/source_1/probe", None)
    rewrite_path = "/entry_1/instrument_1/source_1/illumination"
    with h5py.File(cxi_path, "r+") as handle:
        handle[rewrite_path] = probe[None, None]
    np.testing.assert_array_equal(load_cxi(cxi_path).probe, probe)


def test_probe_of_wrong_shape_is_refused(cxi_path):
    rewrite(cxi_path, "/entry_1/instrument_1/source_1/probe", np.ones((2, 16, 16), complex))
    with pytest.raises(InputError, match=r"source_1/probe has shape \(2, 16, 16\)"):
        load_cxi(cxi_path)


def test_non_square_object_pixels_are_refused(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        x_pixel = float(handle[X_PIXEL_SIZE_PATH][()])
    rewrite(cxi_path, X_PIXEL_SIZE_PATH, 2 * x_pixel)
    with pytest.raises(InputError, match="non-square pixels are not supported"):
        load_cxi(cxi_path)


def test_integer_counts_are_accepted(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        assert handle[DATA_PATH].dtype == np.uint16
    assert load_cxi(cxi_path).data.dtype == np.float32


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFound, match=r"nope\.cxi: no such file"):
        load_scan(tmp_path / "nope.cxi")


def test_missing_data_dataset(cxi_path):
    rewrite(cxi_path, DATA_PATH, None)
    with pytest.raises(InputError) as info:
        load_cxi(cxi_path)
    assert str(info.value) == f"{cxi_path}: /entry_1/data_1/data is missing"


def test_missing_energy(cxi_path):
    rewrite(cxi_path, ENERGY_PATH, None)
    with pytest.raises(InputError, match=f"^{re.escape(str(cxi_path))}: {ENERGY_PATH} is missing"):
        load_cxi(cxi_path)


def test_wrong_rank_names_dataset_shape_and_expectation(cxi_path):
    rewrite(cxi_path, DATA_PATH, np.ones((4, 16), np.float32))
    with pytest.raises(InputError) as info:
        load_cxi(cxi_path)
    message = str(info.value)
    assert message.startswith(str(cxi_path))
    assert DATA_PATH in message and "(4, 16)" in message and "(N, H, W)" in message


def test_pattern_and_position_counts_differ(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        translation = handle[TRANSLATION_PATH][()]
    rewrite(cxi_path, TRANSLATION_PATH, translation[:-2])
    with pytest.raises(InputError, match=r"holds 10 positions but .* holds 12 patterns"):
        load_cxi(cxi_path)


def test_nan_counts_report_count_and_first_pattern(cxi_path):
    data = load_cxi(cxi_path).data
    data[5, 1, 1] = np.nan
    data[7, 2, 2] = np.inf
    rewrite(cxi_path, DATA_PATH, data)
    with pytest.raises(
        InputError,
        match=r"has 2 NaN, infinite or negative values \(first in "
        r"pattern 5\)",
    ):
        load_cxi(cxi_path)


def test_negative_counts(cxi_path):
    data = load_cxi(cxi_path).data
    data[3, 0, 0] = -1
    rewrite(cxi_path, DATA_PATH, data)
    with pytest.raises(
        InputError,
        match=r"1 NaN, infinite or negative values \(first in "
        r"pattern 3\)",
    ):
        load_cxi(cxi_path)


def test_nan_positions(cxi_path):
    with h5py.File(cxi_path, "r") as handle:
        translation = handle[TRANSLATION_PATH][()]
    translation[2, 0] = np.nan
    rewrite(cxi_path, TRANSLATION_PATH, translation)
    with pytest.raises(InputError, match="NaN or infinite positions"):
        load_cxi(cxi_path)


def test_empty_scan(cxi_path):
    rewrite(cxi_path, DATA_PATH, np.zeros((0, 16, 16), np.float32))
    rewrite(cxi_path, TRANSLATION_PATH, np.zeros((0, 3)))
    with pytest.raises(InputError, match="holds no patterns \\(empty scan\\)"):
        load_cxi(cxi_path)


def test_truncated_file(cxi_path):
    content = cxi_path.read_bytes()
    cxi_path.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError) as info:
        load_cxi(cxi_path)
    assert str(info.value).startswith(
        f"{cxi_path}: not a readable HDF5 file (truncated or another format): "
    )


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "view000.cxi"
    path.write_text("these are not the bytes you are looking for\n" * 10)
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        load_scan(path)


def test_errors_are_project_errors_and_builtins(cxi_path):
    rewrite(cxi_path, DATA_PATH, None)
    with pytest.raises(PtychoflowError):
        load_cxi(cxi_path)
    with pytest.raises(ValueError):
        load_cxi(cxi_path)


def test_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="unknown input format"):
        load_scan(tmp_path / "scan.tiff")


def test_validated_scan_rejects_tiny_detector():
    with pytest.raises(InputError, match="at least 8x8"):
        validated_scan(np.ones((3, 4, 4)), np.zeros((3, 2)))


# ------------------------------------------------------------------ npz


def write_npz_bz2(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(bz2.compress(buffer.getvalue()))


def test_npz_without_view_axis_is_fft_shifted(tmp_path):
    data = np.zeros((3, 16, 16), np.float32)
    data[:, 0, 0] = 100.0  # zero frequency at the corner, as stored by Tike
    path = tmp_path / "small.npz.bz2"
    write_npz_bz2(path, data=data, scan=np.array([[-5, 3], [0, 0], [7, -2.5]], np.float32))
    scan = load_scan(path)
    assert scan.data[0, 8, 8] == 100.0
    np.testing.assert_allclose(scan.positions.min(axis=0), [POSITION_MARGIN] * 2)
    assert scan.probe is None and scan.pixel_size is None and scan.wavelength is None


def test_npz_missing_key_and_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz.bz2"
    write_npz_bz2(path, data=np.ones((3, 16, 16)))
    with pytest.raises(InputError, match="key 'scan' is missing"):
        load_npz(path)
    path.write_bytes(b"BZh9 broken")
    with pytest.raises(InputError, match="not a readable npz file"):
        load_npz(path)


def test_shared_siemens_star_dataset(siemens_star_path):
    scan = load_scan(siemens_star_path)
    assert scan.data.shape == (516, 128, 128)
    assert scan.positions.shape == (516, 2)
    assert scan.probe.shape == (128, 128) and scan.probe.dtype == np.complex64
    np.testing.assert_allclose(scan.positions.min(axis=0), [POSITION_MARGIN] * 2)
    mean_pattern = scan.data.mean(axis=0)
    peak = np.unravel_index(np.argmax(mean_pattern), mean_pattern.shape)
    assert np.hypot(peak[0] - 64, peak[1] - 64) < 20  # centred, not at a corner
    rows, cols = np.indices(mean_pattern.shape)
    centroid = [np.sum(rows * mean_pattern), np.sum(cols * mean_pattern)] / mean_pattern.sum()
    np.testing.assert_allclose(centroid, [64, 64], atol=12)
