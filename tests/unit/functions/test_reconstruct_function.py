"""reconstruct_view: validation, the GPU claim around the solver call, the summary.

Tests marked in their docstring "needs recon.api" run the real reconstruction and
pass once ``recon.api.reconstruct_file`` exists.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import re
import types

import h5py
import numpy as np
import pytest

from functions.gpu_lock import GpuPool
from functions.reconstruct import reconstruct_view
from recon.backend import cupy_module
from recon.errors import DeviceError, InputError, InputFileNotFound, OptionsError
from recon.options import ReconOptions

H_PLANCK_C = 1.98644586e-25  # J m
ENERGY_J = 8.8e3 * 1.602176634e-19  # 8.8 keV
DISTANCE_M = 2.0
DET_PIXEL_M = 75e-6


def write_cxi(path, n_side: int = 6, det: int = 32, data: np.ndarray | None = None) -> str:
    """A small simulated far-field view in the project's CXI layout.

    data : (n_side**2, det, det) float32 counts, zero frequency centred; positions
    on a raster with 40 % overlap; a Gaussian probe; a weak phase object.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    wavelength = H_PLANCK_C / ENERGY_J
    pixel = wavelength * DISTANCE_M / (det * DET_PIXEL_M)
    step = int(det * 0.4)
    rows, cols = np.meshgrid(np.arange(n_side) * step, np.arange(n_side) * step, indexing="ij")
    corners = np.stack([rows.ravel(), cols.ravel()], axis=1) + 2
    size = int(corners.max()) + det + 2
    obj = np.exp(1j * 0.3 * rng.random((size, size))).astype(np.complex64)
    yy, xx = np.mgrid[:det, :det] - det / 2
    probe = (np.exp(-(yy**2 + xx**2) / (2 * (det / 6) ** 2)) * 30).astype(np.complex64)
    if data is None:
        patches = np.stack([obj[r : r + det, c : c + det] for r, c in corners])
        far = np.fft.fftshift(np.fft.fft2(probe * patches, norm="ortho"), axes=(-2, -1))
        data = rng.poisson(np.abs(far) ** 2).astype(np.float32)
    translation = np.zeros((len(corners), 3))
    translation[:, 0] = corners[:, 1] * pixel  # x
    translation[:, 1] = corners[:, 0] * pixel  # y
    with h5py.File(path, "w") as cxi:
        cxi["/entry_1/data_1/data"] = data
        cxi["/entry_1/sample_1/geometry_1/translation"] = translation
        detector = "/entry_1/instrument_1/detector_1"
        cxi[f"{detector}/distance"] = DISTANCE_M
        cxi[f"{detector}/x_pixel_size"] = DET_PIXEL_M
        cxi[f"{detector}/y_pixel_size"] = DET_PIXEL_M
        cxi["/entry_1/instrument_1/source_1/energy"] = ENERGY_J
        cxi["/entry_1/instrument_1/source_1/probe"] = probe
    return str(path)


@pytest.fixture(autouse=True)
def allowed_roots(monkeypatch, tmp_path):
    """The endpoint's allowed roots: this test's folder (see test_function_confinement)."""
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(tmp_path))


@pytest.fixture
def view(tmp_path):
    return write_cxi(tmp_path / "input" / "100" / "view003.cxi")


# -- validation: no recon.api needed --------------------------------------------------


def test_function_is_self_contained():
    """Globus Compute may ship the function by source: it must use no module globals."""
    closure = inspect.getclosurevars(reconstruct_view)
    assert closure.globals == {} and closure.nonlocals == {}


def test_unknown_option_names_file_and_known_options(view, tmp_path):
    with pytest.raises(OptionsError, match=r"100/view003\.cxi: unknown reconstruction option"):
        reconstruct_view(view, str(tmp_path / "out"), recon={"iteratoins": 3})
    with pytest.raises(OptionsError, match="iterations=0 must be an integer >= 1"):
        reconstruct_view(view, str(tmp_path / "out"), recon={"iterations": 0})


def test_missing_file(tmp_path):
    missing = tmp_path / "scan100" / "view000.cxi"
    with pytest.raises(InputFileNotFound, match=r"^scan100/view000\.cxi: input file not found"):
        reconstruct_view(str(missing), str(tmp_path / "out"))


def test_missing_dataset_message(tmp_path):
    path = tmp_path / "scan100" / "view000.cxi"
    path.parent.mkdir()
    with h5py.File(path, "w") as cxi:
        cxi["/entry_1/sample_1/geometry_1/translation"] = np.zeros((3, 3))
    with pytest.raises(InputError) as info:
        reconstruct_view(str(path), str(tmp_path / "out"))
    assert str(info.value) == "scan100/view000.cxi: /entry_1/data_1/data is missing"


def test_not_hdf5_and_wrong_shape(tmp_path):
    junk = tmp_path / "scan100" / "view001.cxi"
    junk.parent.mkdir()
    junk.write_bytes(b"half-written by the detector")
    with pytest.raises(InputError, match=r"scan100/view001\.cxi: not a readable HDF5/CXI file"):
        reconstruct_view(str(junk), str(tmp_path / "out"))
    flat = write_cxi(tmp_path / "scan100" / "view002.cxi", data=np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match=r"has shape \(32, 32\); expected \(N_POS, DET_H, DET_W\)"):
        reconstruct_view(flat, str(tmp_path / "out"))


@pytest.mark.parametrize("bad", ["", "..", "a/b", "x\\y"])
def test_view_name_must_be_a_stem(view, tmp_path, bad):
    with pytest.raises(InputError, match="must be a plain file stem"):
        reconstruct_view(view, str(tmp_path / "out"), view_name=bad)


def test_cupy_backend_without_gpu_is_a_device_error(view, tmp_path):
    if cupy_module() is not None:
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(DeviceError, match="backend 'cupy' was asked for"):
        reconstruct_view(view, str(tmp_path / "out"), recon={"backend": "cupy"})


# -- the GPU claim around the solver call ------------------------------------------------


class RecordingSolver:
    """Stands in for recon.api.reconstruct_file to observe what reconstruct_view hands it."""

    def __init__(self, pool: GpuPool, fail: Exception | None = None):
        self.pool, self.fail, self.calls, self.holders_during = pool, fail, [], None

    def __call__(
        self,
        input_path,
        output_path,
        options,
        device_ids=None,
        progress=None,
        allowed_roots=None,
        beamline=None,
        **keywords,
    ):
        assert allowed_roots, "the compute function hands its roots to the loader"
        self.calls.append((input_path, output_path, options, device_ids))
        # progress goes beside the result while it is made (recon.progress)
        assert keywords == {"progress_folder": str(pathlib.Path(output_path).parent)}
        self.holders_during = self.pool.holders()
        if self.fail is not None:
            raise self.fail
        return {
            "output": output_path,
            "preview": output_path[:-3] + ".png",
            "iterations": np.int64(options.iterations),
            "final_cost": np.float32(1.5),
            "devices": device_ids,
            "backend": "cupy",
            "seconds": {"load": 0.1, "solve": 1.0, "write": 0.2},
        }


@pytest.fixture
def fake_gpu_node(monkeypatch, tmp_path):
    """Four GPUs 4-7 visible (CuPy ordinals 0-3), CuPy 'resolved', and a recording solver."""
    import recon.api  # import the solver before recon.backend is patched below
    import recon.backend

    fake_cupy = types.SimpleNamespace(name="cupy-on-a-fake-node")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(recon.backend, "resolve_backend", lambda name: fake_cupy)
    monkeypatch.setattr(recon.backend, "is_cupy", lambda xp: xp is fake_cupy)
    lock = tmp_path / "availgpus"
    pool = GpuPool(lock)
    solver = RecordingSolver(pool)
    monkeypatch.setattr(recon.api, "reconstruct_file", solver)
    return types.SimpleNamespace(lock=str(lock), pool=pool, solver=solver)


def test_gpus_claimed_for_the_call_and_released(fake_gpu_node, view, tmp_path):
    node = fake_gpu_node
    node.pool.claim(1, timeout=0)  # GPU 4 is busy with another view
    out = tmp_path / "recon" / "100"
    summary = reconstruct_view(
        view, str(out), recon={"devices": 2, "iterations": 7}, gpu_lock_path=node.lock
    )
    ((input_path, output_path, options, device_ids),) = node.solver.calls
    # the solver reads and writes through the descriptors opened before it (issue 16)
    assert re.fullmatch(r"/proc/self/fd/\d+/view003\.cxi", input_path)
    assert re.fullmatch(r"/proc/self/fd/\d+/view003\.h5", output_path)
    assert options == ReconOptions(devices=2, iterations=7)
    assert device_ids == [1, 2]  # GPUs 5 and 6 are CuPy devices 1 and 2
    me = os.getpid()
    assert node.solver.holders_during == {"4": me, "5": me, "6": me, "7": None}
    assert node.pool.holders() == {"4": me, "5": None, "6": None, "7": None}
    assert summary["gpus"] == [5, 6] and summary["devices"] == [1, 2]
    assert summary["iterations"] == 7 and summary["final_cost"] == 1.5
    assert summary["input"] == view and summary["host"]
    assert set(summary["seconds"]) == {"load", "solve", "write", "gpu_wait", "total"}
    assert out.is_dir()
    assert len(json.dumps(summary)) < 10_000


def test_size_decides_when_devices_not_given(fake_gpu_node, view, tmp_path):
    reconstruct_view(view, str(tmp_path / "out"), gpu_lock_path=fake_gpu_node.lock)
    assert fake_gpu_node.solver.calls[0][3] == [0]  # 36 small patterns: one GPU


def test_gpus_released_when_the_solver_fails(fake_gpu_node, view, tmp_path):
    fake_gpu_node.solver.fail = InputError("probe shape (16, 16) does not match (32, 32)")
    with pytest.raises(InputError, match=r"^100/view003\.cxi: probe shape"):
        reconstruct_view(view, str(tmp_path / "out"), gpu_lock_path=fake_gpu_node.lock)
    assert set(fake_gpu_node.pool.holders().values()) == {None}


def test_more_devices_than_the_node_has(fake_gpu_node, view, tmp_path):
    with pytest.raises(DeviceError, match="devices=5 asks for more GPUs than the 4"):
        reconstruct_view(
            view, str(tmp_path / "out"), recon={"devices": 5}, gpu_lock_path=fake_gpu_node.lock
        )
    assert fake_gpu_node.solver.calls == []


# -- the real reconstruction: needs recon.api --------------------------------------------


def test_cpu_reconstruction_summary(view, tmp_path):
    """Needs recon.api: a real (short) NumPy reconstruction of a simulated view."""
    out = tmp_path / "recon" / "100"
    summary = reconstruct_view(
        view, str(out), recon={"iterations": 2, "backend": "numpy"}, view_name="v3"
    )
    assert summary["output"] == str(out / "v3.h5")
    assert os.path.isfile(summary["output"]) and os.path.isfile(summary["preview"])
    assert summary["backend"] == "numpy" and summary["gpus"] == []
    assert summary["iterations"] == 2 and np.isfinite(summary["final_cost"])
    assert summary["seconds"]["total"] >= summary["seconds"]["solve"] > 0
    assert json.loads(json.dumps(summary)) == summary


def test_an_unknown_fft_choice_is_refused(tmp_path, monkeypatch):
    """Issue 16: PTYCHOFLOW_FFT=bogus was silently ignored."""
    monkeypatch.setenv("PTYCHOFLOW_FFT", "bogus")
    with pytest.raises(OptionsError, match="PTYCHOFLOW_FFT='bogus' on this endpoint is not known"):
        reconstruct_view(str(tmp_path / "scan100" / "view000.cxi"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
