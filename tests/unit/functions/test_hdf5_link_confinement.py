"""The compute function reads nothing outside the allowed roots through an HDF5 file's
own references (issue 16, item 1): external links, virtual datasets, external raw
storage, for the data and for the translations. Before the fix each of these reached
the result: another group's data reconstructed into ours, a text file's bytes in the
probe."""

from __future__ import annotations

import os
import pathlib

import h5py
import numpy as np
import pytest

from functions.reconstruct import reconstruct_view
from recon.cxi import DATA_PATH, TRANSLATION_PATH
from recon.hdf5_confined import ExternalReferenceRefused
from tests.unit.functions.test_reconstruct_function import write_cxi

PROBE_PATH = "/entry_1/instrument_1/source_1/probe"
CPU = {"iterations": 1, "backend": "numpy", "refine_probe": False}


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "compute"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    view = pathlib.Path(write_cxi(root / "input" / "100" / "view003.cxi", n_side=3, det=16))
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(root))
    return root, outside, view


def refused(root: pathlib.Path, view: pathlib.Path) -> str:
    with pytest.raises(ExternalReferenceRefused) as info:
        reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU)
    assert not (root / "recon" / "100" / "view003.h5").exists()
    return str(info.value)


@pytest.mark.parametrize("dataset", [DATA_PATH, TRANSLATION_PATH])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "dotdot"])
def test_external_link_out(site, dataset, relative):
    root, outside, view = site
    target = outside / "other_group.h5"
    with h5py.File(view, "r+") as handle:
        with h5py.File(target, "w") as other:
            other["stolen"] = handle[dataset][()]
        del handle[dataset]
        name = os.path.relpath(target, view.parent) if relative else str(target)
        handle[dataset] = h5py.ExternalLink(name, "/stolen")
    message = refused(root, view)
    assert dataset in message and name in message and "outside the allowed roots" in message


@pytest.mark.parametrize("dataset", [DATA_PATH, TRANSLATION_PATH])
def test_virtual_dataset_out(site, dataset):
    root, outside, view = site
    target = outside / "other_group.h5"
    with h5py.File(view, "r+") as handle:
        values = handle[dataset][()]
        with h5py.File(target, "w") as other:
            other["stolen"] = values
        del handle[dataset]
        layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
        layout[:] = h5py.VirtualSource(str(target), "stolen", shape=values.shape)
        handle.create_virtual_dataset(dataset, layout)
    message = refused(root, view)
    assert dataset in message and str(target) in message and "virtual dataset" in message


def test_external_raw_storage_probe_with_refine_probe_false(site):
    """The attack: the probe's storage is a text file, the probe is not refined, so the
    result's probe was that file's bytes."""
    root, outside, view = site
    secret = outside / "notes.txt"
    secret.write_bytes(b"private notes of another group\n" * 33)  # 1023 bytes
    with h5py.File(view, "r+") as handle:
        del handle[PROBE_PATH]
        handle.create_dataset(
            PROBE_PATH, shape=(16, 16), dtype=np.complex64, external=[(str(secret), 0, 16 * 16 * 8)]
        )
    message = refused(root, view)
    assert PROBE_PATH in message and "notes.txt" in message
    leaked = [p for p in root.rglob("*") if p.is_file() and b"private notes" in p.read_bytes()]
    assert leaked == []


def test_a_master_file_with_data_files_beside_it_reconstructs(site):
    root, _, view = site
    with h5py.File(view, "r+") as handle:
        with h5py.File(view.parent / "view003_data_000001.h5", "w") as data_file:
            data_file["entry/data/data"] = handle[DATA_PATH][()]
        del handle[DATA_PATH]
        handle[DATA_PATH] = h5py.ExternalLink("view003_data_000001.h5", "/entry/data/data")
    summary = reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU)
    assert pathlib.Path(summary["output"]).is_file()
