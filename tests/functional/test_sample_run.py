"""``ptychoflow check --sample-run``'s steps on the local backend: the real flow
definition, a real Globus Compute engine running the real ``reconstruct_view``, real
files. The local engine runs on the CPU, so the GPU requirement is seen failing, with
the reason; the worker report of a GPU run is checked on its own below."""

from __future__ import annotations

import pytest

from flows.config import load_config
from flows.globus.sample_run import SampleRun
from flows.launcher import make_backend

CONFIG = """
backend = "local"
acquisition_root = "acquisition"
compute_root = "compute"
ledger = "ledger.sqlite"
state_dir = "state"
[recon]
backend = "numpy"
"""


@pytest.fixture
def config(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    config = load_config(tmp_path / "ptychoflow.toml")
    config.acquisition_root.mkdir()
    return config


def remove_local_copies(config):
    import shutil

    def remove(scan_dir):
        for side in ("input", "recon"):
            shutil.rmtree(config.compute_root / side / scan_dir)
        return None

    return remove


def test_the_sample_goes_through_the_flow_and_a_cpu_worker_fails_the_gpu_line(config):
    backend = make_backend(config)
    try:
        sample = SampleRun(
            config,
            backend,
            remove_compute_copies=remove_local_copies(config),
            require_gpu=True,
            timeout_s=300,
            poll_interval_s=0.2,
        )
        lines = {line.name: line for line in sample.run()}
    finally:
        backend.close()
    shown = [line.format() for line in lines.values()]
    assert lines["sample view on the acquisition collection"].ok, shown
    assert lines["sample run of the deployed flow"].ok, shown
    result = lines["sample result came back"]
    assert result.ok, shown
    assert "object (" in result.detail and "probe (" in result.detail
    assert lines["per-stage times"].ok, shown
    assert all(stage in lines["per-stage times"].detail for stage in ("transfer_in", "compute"))
    worker = lines["worker identity, GPU and backend"]
    assert not worker.ok
    assert "fell back to numpy" in worker.detail
    assert "uid " in worker.detail and "CUDA_VISIBLE_DEVICES" in worker.detail
    assert lines["sample removed"].ok, shown
    # Nothing of the sample is left on either side.
    leftovers = [p for p in config.acquisition_root.rglob("*") if "ptychoflow-sample" in p.name]
    assert leftovers == []
    assert not any("ptychoflow-sample" in p.name for p in config.compute_root.rglob("*"))


@pytest.mark.parametrize(
    ("output", "ok", "said"),
    [
        (
            {
                "backend": "cupy",
                "gpus": [2],
                "host": "x3005c0s1",
                "worker": {
                    "uid": 1000,
                    "user": "beamline",
                    "cuda_visible_devices": "2",
                    "cupy_version": "13.3.0",
                    "cuda_driver_version": 12040,
                },
            },
            True,
            "CUDA_VISIBLE_DEVICES=2",
        ),
        (
            {
                "backend": "numpy",
                "gpus": [],
                "worker": {
                    "uid": 1000,
                    "cupy_error": "ModuleNotFoundError: No module named 'cupy'",
                },
            },
            False,
            "No module named 'cupy'",
        ),
        (
            {"backend": "cupy", "gpus": [], "worker": {"uid": 1000, "cuda_visible_devices": None}},
            False,
            "without a GPU",
        ),
        ({"backend": "cupy", "gpus": [0]}, False, "older ptychoflow"),
    ],
    ids=["gpu", "numpy-fallback", "no-gpu", "old-endpoint"],
)
def test_the_worker_line_requires_cupy_on_an_assigned_gpu(config, output, ok, said):
    sample = SampleRun(config, backend=None, remove_compute_copies=lambda d: None, require_gpu=True)
    line = sample._check_worker(output)
    assert line.ok is ok
    assert said in line.detail
