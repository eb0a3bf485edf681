"""Result images and summaries: deramped, made once per result file, probe modes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from portal.images import ResultImages, cache_key
from tests.unit.portal.site import write_sample_result


@pytest.fixture
def result(tmp_path):
    return write_sample_result(tmp_path / "recon" / "100" / "view000.h5", modes=3)


def test_phase_is_shown_without_global_phase_and_ramp(result, tmp_path):
    # The sample object has a 0.5 rad disc on a ramp of 0.3 and -0.2 rad per pixel
    # (about 14 rad across the image) and a global phase of 1 rad.
    summary = ResultImages(tmp_path / "cache").summary(result)
    low, high = summary.phase_range
    assert 0.3 < high - low < 0.8  # just the disc's 0.5 rad step is left
    phase = np.asarray(Image.open(tmp_path / "cache" / summary.key / "phase.png"), dtype=float)
    rows, cols = phase.shape
    corners = [phase[2, 2], phase[2, cols - 3], phase[rows - 3, 2], phase[rows - 3, cols - 3]]
    centre = phase[rows // 2, cols // 2]
    assert max(corners) - min(corners) < 40  # a flat background (out of 255)
    assert abs(centre - np.mean(corners)) > 150  # the disc stands out of it
    thumb = Image.open(tmp_path / "cache" / summary.key / "phase-thumb.png")
    assert max(thumb.size) <= 160


def test_images_are_made_once_and_again_when_the_result_changes(result, tmp_path):
    images = ResultImages(tmp_path / "cache")
    first = images.summary(result)
    images.summary(result)
    assert images.made == 1
    # A second portal process finds them on disk.
    other = ResultImages(tmp_path / "cache")
    assert other.summary(result) == first and other.made == 0
    # A rewritten result file is a new cache entry.
    write_sample_result(result, modes=1)
    os.utime(result, ns=(1, 2_000_000_000))
    assert cache_key(result) != first.key
    assert other.summary(result).probe_fractions == [1.0]
    assert other.made == 1


def test_probe_modes_and_their_power_fractions(result, tmp_path):
    images = ResultImages(tmp_path / "cache")
    summary = images.summary(result)
    # Modes with powers 1 : 0.5 : 0.25.
    assert summary.probe_fractions == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert summary.probe_shape == (16, 16)
    assert images.image(result, "probe-2") is not None
    assert images.image(result, "probe-3") is None
    assert images.image(result, "../summary") is None
    assert summary.pixel_size == pytest.approx(10e-9)
    assert summary.cost[0] == pytest.approx(10.0) and summary.cost[-1] == pytest.approx(1.0)
    assert len(summary.positions) == 81  # a 9 x 9 grid
    stored = json.loads((tmp_path / "cache" / summary.key / "summary.json").read_text())
    assert stored["iterations"] == 30


def test_an_unreadable_result_is_a_clear_error(tmp_path):
    from recon.errors import InputError

    broken = tmp_path / "view000.h5"
    broken.write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(InputError, match=r"view000\.h5"):
        ResultImages(tmp_path / "cache").summary(broken)
    assert not any((tmp_path / "cache").glob("*/summary.json"))


def test_refined_positions_are_plotted_over_the_reported_ones(tmp_path):
    import h5py

    path = write_sample_result(tmp_path / "view000.h5")
    with h5py.File(path, "a") as handle:
        reported = handle["positions"][()]
        handle.create_dataset("refined_positions", data=reported + 0.5)
    summary = ResultImages(tmp_path / "cache").summary(path)
    assert summary.positions[0] == pytest.approx(tuple(reported[0] + 0.5))
    assert summary.initial_positions[0] == pytest.approx(tuple(reported[0]))
    plain = ResultImages(tmp_path / "cache2").summary(write_sample_result(tmp_path / "v1.h5"))
    assert plain.initial_positions == []


def test_the_portal_preview_is_drawn_by_the_preview_code(tmp_path):
    """One drawing code: the portal's preview.png equals what recon.preview draws for the
    same result (and the PNG beside the result file is drawn by it too)."""
    import numpy as np
    from PIL import Image

    from portal.images import ResultImages
    from recon.preview import draw_preview
    from recon.result import read_result
    from tests.unit.portal.site import write_sample_result

    result_path = write_sample_result(tmp_path / "view000.h5", modes=2)
    images = ResultImages(tmp_path / "cache")
    served = images.image(result_path, "preview")
    result = read_result(result_path)
    drawn = draw_preview(
        result["object"], result["positions"], result["probe"], pixel_size=result["pixel_size"]
    )
    with Image.open(served) as portal, Image.open(result_path.with_suffix(".png")) as beside:
        assert np.array_equal(np.asarray(portal), np.asarray(drawn))
        assert np.array_equal(np.asarray(beside), np.asarray(drawn))


def test_a_deleted_cache_is_made_again(result, tmp_path):
    """Issue 16: deleting the thumbnail cache made images 404 until a restart."""
    import shutil

    images = ResultImages(tmp_path / "cache")
    first = images.image(result, "phase-thumb")
    assert first is not None and first.is_file()
    shutil.rmtree(tmp_path / "cache")  # e.g. a clean-up job
    again = images.image(result, "phase-thumb")
    assert again is not None and again.is_file()
    assert images.made == 2
    (tmp_path / "cache" / images.summary(result).key / "amplitude.png").unlink()  # one file
    assert images.image(result, "amplitude").is_file()


def test_a_summary_cached_before_fit_to_noise_still_reads(result, tmp_path):
    """Summaries cached on disk by an earlier portal lack ``fit_to_noise``: they are read,
    without it, instead of failing the view page."""
    images = ResultImages(tmp_path / "cache")
    summary = images.summary(result)
    assert summary.fit_to_noise == 1.25  # the result file's attribute
    cached = tmp_path / "cache" / summary.key / "summary.json"
    older = json.loads(cached.read_text())
    del older["fit_to_noise"]
    cached.write_text(json.dumps(older))
    again = ResultImages(tmp_path / "cache").summary(result)
    assert again.fit_to_noise is None and again.probe_fractions == summary.probe_fractions
