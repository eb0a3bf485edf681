"""Progress files of a running reconstruction (recon.progress): throttled, atomic, and
gone when it ends; the real solver drives them through its callbacks."""

import json

import numpy as np
from PIL import Image

from recon.options import ReconOptions
from recon.progress import ProgressFiles, progress_paths, read_progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_json_is_written_at_most_once_per_interval_and_always_at_the_end(tmp_path):
    clock = Clock()
    files = ProgressFiles(tmp_path, "view000", 10, clock=clock, wall=lambda: 5.0)
    writes = []
    original = files._write_json

    def counting():
        writes.append(files._latest["iteration"])
        original()

    files._write_json = counting
    for iteration in range(1, 11):
        clock.now += 0.3
        files.progress(iteration, 1.0 / iteration, 0.3)
    # 0.3 s per iteration, 1 s interval: iterations 1, 5, 9 and the last one
    assert writes == [1, 5, 9, 10]
    record = read_progress(tmp_path, "view000")
    assert record["iteration"] == 10 and record["iterations"] == 10
    assert record["eta"] == 0 and record["elapsed"] == 3.0 and record["updated"] == 5.0
    files.close()
    assert read_progress(tmp_path, "view000") is None
    assert list(tmp_path.iterdir()) == []


def test_eta_from_the_mean_iteration_time(tmp_path):
    clock = Clock()
    files = ProgressFiles(tmp_path, "v", 100, clock=clock)
    clock.now += 20.0
    files.progress(40, 0.5, 0.5)
    record = read_progress(tmp_path, "v")
    assert record["eta"] == 30.0  # 20 s for 40 iterations: 60 more take 30 s


def test_intermediate_image_is_throttled_and_named_in_the_json(tmp_path):
    clock = Clock()
    files = ProgressFiles(tmp_path, "v", 100, clock=clock, image_interval_s=3.0)
    object_ = np.exp(1j * np.linspace(0, 1, 64 * 64).reshape(64, 64)).astype(np.complex64)
    files.progress(1, 1.0, 0.1)
    assert files.monitor(1, object_, None) is False
    _, image_path = progress_paths(tmp_path, "v")
    first = image_path.stat().st_mtime_ns
    clock.now += 1.0
    files.monitor(2, object_ * 1j, None)
    assert image_path.stat().st_mtime_ns == first  # too soon: not rewritten
    assert read_progress(tmp_path, "v")["image"] == str(image_path)
    with Image.open(image_path) as image:
        assert image.size == (64, 64) and image.mode == "L"


def test_a_damaged_progress_file_reads_as_none(tmp_path):
    json_path, _ = progress_paths(tmp_path, "v")
    json_path.write_text("{not json")
    assert read_progress(tmp_path, "v") is None
    json_path.write_text(json.dumps({"iteration": "x"}))
    assert read_progress(tmp_path, "v") is None


def test_the_solver_drives_the_progress_files(tmp_path):
    """recon.api.reconstruct_file with progress files: they exist while it runs (seen
    from the solver's own callback) and are removed at the end."""
    from recon.api import reconstruct_file
    from recon.simulate import write_simulated_scan

    write_simulated_scan(tmp_path / "scan", n_views=1, detector=32, n_positions=30, seed=1)
    view = next((tmp_path / "scan").glob("*.cxi"))
    seen = []

    def watch(iteration, cost, seconds):
        seen.append(read_progress(tmp_path / "out", view.stem))

    (tmp_path / "out").mkdir()
    reconstruct_file(
        view,
        tmp_path / "out" / f"{view.stem}.h5",
        ReconOptions(iterations=4),
        progress=watch,
        progress_folder=tmp_path / "out",
    )
    assert seen[-1] is not None and seen[-1]["iteration"] >= 3
    assert seen[-1]["iterations"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{view.stem}.h5",
        f"{view.stem}.png",
    ]


def test_an_image_written_through_a_pinned_folder_is_named_by_its_real_path(tmp_path):
    """The compute function writes through the output folder's descriptor
    (/proc/self/fd/N, functions.pinned_paths); the portal, another process, reads the image
    by the name the JSON gives, so that name must be the folder's real one."""
    import os

    from functions.pinned_paths import PinnedFolder

    with PinnedFolder(tmp_path, "output folder", [tmp_path]) as pinned:
        files = ProgressFiles(pinned.path(), "v", 100, clock=Clock(), image_interval_s=3.0)
        object_ = np.ones((32, 32), np.complex64)
        files.progress(1, 1.0, 0.1)
        files.monitor(1, object_, None)
        record = read_progress(tmp_path, "v")
        assert record["image"] == str(tmp_path / ".v.progress.png")
        assert os.path.isfile(record["image"])
        files.close()
