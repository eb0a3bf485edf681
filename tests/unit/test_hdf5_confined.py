"""HDF5 files that point outside the allowed roots (issue 16, item 1).

h5py follows what a file says: an external link, a virtual dataset's source, external
raw storage. These tests build each on real files, one folder inside the roots and one
outside, and check that the loaders refuse before reading, naming the dataset and the
target, while links that stay inside the roots (an Eiger master file and its data files)
still read.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from recon.cxi import DATA_PATH, TRANSLATION_PATH, load_cxi, load_scan, peek_view_shape
from recon.errors import InputError
from recon.hdf5_confined import (
    ExternalReferenceRefused,
    reachable_files,
    roots_from_environment,
)
from recon.result import read_result, write_result
from tests.unit.functions.test_reconstruct_function import write_cxi

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path):
    """(root, outside, view): a view inside the only root, a folder beside the root."""
    root = tmp_path / "compute"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    view = pathlib.Path(write_cxi(root / "input" / "100" / "view003.cxi", n_side=3, det=16))
    return root, outside, view


def move_out(view: pathlib.Path, dataset: str, target: pathlib.Path, link_name: str) -> None:
    """Move ``dataset`` of ``view`` into ``target`` and leave an external link to it,
    written as ``link_name`` (absolute, or relative to the view's folder)."""
    with h5py.File(view, "r+") as handle:
        values = handle[dataset][()]
        del handle[dataset]
        with h5py.File(target, "a") as other:
            other["stolen"] = values * 2  # "another group's data": not the view's own
        handle[dataset] = h5py.ExternalLink(link_name, "/stolen")


@pytest.mark.parametrize("dataset", [DATA_PATH, TRANSLATION_PATH])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "dotdot"])
def test_external_link_out_of_the_roots_is_refused(site, dataset, relative):
    root, outside, view = site
    target = outside / "other_group.h5"
    name = os.path.relpath(target, view.parent) if relative else str(target)
    if relative:
        assert name.startswith("../../..")
    move_out(view, dataset, target, name)
    with h5py.File(view, "r") as handle:  # today's h5py reads it happily
        assert handle[dataset].shape

    for load in (load_cxi, load_scan):
        with pytest.raises(ExternalReferenceRefused) as info:
            load(view, allowed_roots=[root])
        message = str(info.value)
        assert str(view) in message and dataset in message and name in message
        assert "outside the allowed roots" in message and str(root) in message
        assert isinstance(info.value, InputError)
    with pytest.raises(ExternalReferenceRefused):
        peek_view_shape(view, allowed_roots=[root])
    load_cxi(view)  # without roots (ptychoflow recon on one's own files) it still reads


def test_virtual_dataset_out_of_the_roots_is_refused(site):
    root, outside, view = site
    target = outside / "other_group.h5"
    with h5py.File(view, "r+") as handle:
        data = handle[DATA_PATH][()]
        del handle[DATA_PATH]
        with h5py.File(target, "w") as other:
            other["frames"] = data
        layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
        layout[:] = h5py.VirtualSource(str(target), "frames", shape=data.shape)
        handle.create_virtual_dataset(DATA_PATH, layout)
    with h5py.File(view, "r") as handle:
        assert np.array_equal(handle[DATA_PATH][()], data)  # h5py follows it

    with pytest.raises(ExternalReferenceRefused) as info:
        load_cxi(view, allowed_roots=[root])
    message = str(info.value)
    assert DATA_PATH in message and "virtual dataset" in message and str(target) in message


def test_external_raw_storage_is_refused_before_a_byte_is_read(site):
    """The probe's bytes taken from a text file: the leak the attack recovered exactly."""
    root, outside, view = site
    secret = outside / "secret.txt"
    secret.write_bytes(bytes(range(33, 127)) * 11)  # 1034 bytes of text
    with h5py.File(view, "r+") as handle:
        del handle["/entry_1/instrument_1/source_1/probe"]
        handle.create_dataset(
            "/entry_1/instrument_1/source_1/probe",
            shape=(16, 16),
            dtype=np.complex64,
            external=[(str(secret), 0, 16 * 16 * 8)],
        )
    with h5py.File(view, "r") as handle:  # today's h5py hands out the text file's bytes
        raw = handle["/entry_1/instrument_1/source_1/probe"][()].tobytes()
        assert raw[:100] == secret.read_bytes()[:100]

    with pytest.raises(ExternalReferenceRefused) as info:
        load_cxi(view, allowed_roots=[root])
    message = str(info.value)
    assert "/entry_1/instrument_1/source_1/probe" in message and "secret.txt" in message
    assert "external raw storage" in message
    # Refused inside the roots too: HDF5 reads it relative to the working directory.
    inside_copy = view.parent / "raw.bin"
    inside_copy.write_bytes(secret.read_bytes())
    with h5py.File(view, "r+") as handle:
        del handle["/entry_1/instrument_1/source_1/probe"]
        handle.create_dataset(
            "/entry_1/instrument_1/source_1/probe",
            shape=(4,),
            dtype=np.uint8,
            external=[(str(inside_copy), 0, 4)],
        )
    with pytest.raises(ExternalReferenceRefused, match="external raw storage"):
        load_cxi(view, allowed_roots=[root])


def test_master_file_linking_to_data_files_beside_it_reads(site):
    """The Eiger layout: a master file whose data are external links to files beside it."""
    root, _, view = site
    expected = load_cxi(view)
    with h5py.File(view, "r+") as handle:
        data = handle[DATA_PATH][()]
        del handle[DATA_PATH]
        for index, part in enumerate(np.array_split(data, 3)):
            with h5py.File(view.parent / f"view003_data_{index:06d}.h5", "w") as part_file:
                part_file["entry/data/data"] = part
        layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
        start = 0
        for index, part in enumerate(np.array_split(data, 3)):
            layout[start : start + len(part)] = h5py.VirtualSource(
                f"view003_data_{index:06d}.h5", "entry/data/data", shape=part.shape
            )
            start += len(part)
        handle.create_virtual_dataset(DATA_PATH, layout)
        handle["/entry/data/data_000001"] = h5py.ExternalLink(
            "view003_data_000000.h5", "/entry/data/data"
        )
    scan = load_cxi(view, allowed_roots=[root])
    np.testing.assert_array_equal(scan.data, expected.data)
    files = reachable_files(view, [root])
    assert files[0] == view
    assert sorted(f.name for f in files[1:]) == [f"view003_data_{i:06d}.h5" for i in range(3)]


def test_missing_target_inside_the_roots_is_refused_not_searched_for_elsewhere(
    site, tmp_path, monkeypatch
):
    """HDF5 falls back to the working directory when the target is not beside the file;
    the check refuses instead, so what is read is what was checked."""
    root, outside, view = site
    move_out(view, DATA_PATH, outside / "decoy.h5", "frames.h5")  # not beside the view
    (outside / "decoy.h5").rename(outside / "frames.h5")
    monkeypatch.chdir(outside)
    with h5py.File(view, "r") as handle:
        assert handle[DATA_PATH].shape  # HDF5 found it in the working directory
    with pytest.raises(ExternalReferenceRefused, match="is not a file"):
        load_cxi(view, allowed_roots=[root])


def test_a_link_inside_a_linked_file_is_checked_too(site):
    root, outside, view = site
    middle = view.parent / "middle.h5"
    move_out(view, DATA_PATH, middle, "middle.h5")
    with h5py.File(middle, "r+") as handle:
        values = handle["stolen"][()]
        del handle["stolen"]
        with h5py.File(outside / "far.h5", "w") as far:
            far["stolen"] = values
        handle["stolen"] = h5py.ExternalLink(str(outside / "far.h5"), "/stolen")
    with pytest.raises(ExternalReferenceRefused) as info:
        load_cxi(view, allowed_roots=[root])
    assert str(middle) in str(info.value) and "far.h5" in str(info.value)


def test_a_symbolic_link_out_beside_the_view_is_refused(site):
    root, outside, view = site
    move_out(view, DATA_PATH, outside / "frames.h5", "frames.h5")
    (view.parent / "frames.h5").symlink_to(outside / "frames.h5")
    with pytest.raises(ExternalReferenceRefused, match="outside the allowed roots"):
        load_cxi(view, allowed_roots=[root])


def test_prefix_variables_are_refused(site, monkeypatch):
    root, _, view = site
    monkeypatch.setenv("HDF5_EXT_PREFIX", "/")
    with pytest.raises(ExternalReferenceRefused, match="HDF5_EXT_PREFIX"):
        load_cxi(view, allowed_roots=[root])


def test_result_files_are_read_only_when_self_contained(tmp_path):
    """The portal reads result files with read_result: a link in one is refused."""
    result = tmp_path / "recon" / "view000.h5"
    write_result(
        result,
        object=np.ones((20, 20), np.complex64),
        probe=np.ones((8, 8), np.complex64),
        cost=np.array([2.0, 1.0]),
        positions=np.zeros((1, 2), np.float32),
        options={},
        pixel_size=1e-8,
        iterations=1,
        devices=[0],
        timings={},
        backend="numpy",
    )
    assert read_result(result)["object"].shape == (20, 20)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["object"] = np.full((20, 20), 7, np.complex64)
    with h5py.File(result, "r+") as handle:
        del handle["object"]
        handle["object"] = h5py.ExternalLink(str(other), "/object")
    with pytest.raises(ExternalReferenceRefused, match="/object"):
        read_result(result)


def test_roots_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PTYCHOFLOW_ALLOWED_ROOTS", raising=False)
    assert roots_from_environment() is None
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", f"{tmp_path}{os.pathsep}")
    assert roots_from_environment() == (tmp_path.resolve(),)
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", "relative")
    with pytest.raises(InputError, match="relative path"):
        roots_from_environment()


def test_ptychoflow_recon_refuses_a_link_out_when_the_roots_are_set(site, tmp_path):
    root, outside, view = site
    move_out(view, DATA_PATH, outside / "other_group.h5", str(outside / "other_group.h5"))
    environment = {**os.environ, "PTYCHOFLOW_ALLOWED_ROOTS": str(root)}
    command = [sys.executable, "-m", "flows.cli", "recon", str(view), "-o", str(root / "out.h5")]
    command += ["--iterations", "1", "--backend", "numpy", "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert DATA_PATH in run.stderr and "other_group.h5" in run.stderr
    assert not (root / "out.h5").exists()
