"""The endpoint configs, loaded by the endpoint package's own loader, and the PBS job
Parsl would submit on Polaris (rendered through the provider's submit path; qsub is
recorded, not run)."""

from __future__ import annotations

import pathlib
import re

import parsl.addresses
import pytest
from globus_compute_endpoint.endpoint.config.utils import get_config, load_config_yaml
from globus_compute_endpoint.engines import GlobusComputeEngine
from parsl.launchers import MpiExecLauncher
from parsl.providers import LocalProvider, PBSProProvider

REPO = pathlib.Path(__file__).resolve().parents[3]
POLARIS = REPO / "endpoint_config" / "polaris"
LOCAL = REPO / "endpoint_config" / "local"


@pytest.fixture
def interfaces(monkeypatch):
    """``address_by_interface`` runs at load time; this host has no bond0."""
    asked = []

    def fake_address_by_interface(ifname: str) -> str:
        asked.append(ifname)
        return "10.140.57.9"

    monkeypatch.setattr(parsl.addresses, "address_by_interface", fake_address_by_interface)
    return asked


@pytest.fixture
def polaris(interfaces):
    config = get_config(POLARIS)  # the endpoint's own loader, as `globus-compute-endpoint start`
    yield config
    config.engine.shutdown()


def test_polaris_engine_and_provider(polaris, interfaces):
    engine = polaris.engine
    assert isinstance(engine, GlobusComputeEngine)
    assert interfaces == ["bond0"]
    executor = engine.executor
    assert executor.address == "10.140.57.9"
    assert executor.max_workers_per_node == 4
    assert executor.available_accelerators == ["0", "1", "2", "3"]  # one worker per GPU
    provider = executor.provider
    assert isinstance(provider, PBSProProvider)
    assert isinstance(provider.launcher, MpiExecLauncher)
    assert provider.walltime == "01:00:00"  # a string, not YAML's sexagesimal number
    assert (provider.nodes_per_block, provider.init_blocks, provider.min_blocks) == (1, 0, 0)
    assert provider.max_blocks >= 1


def test_polaris_submit_script(polaris, tmp_path):
    provider = polaris.engine.executor.provider
    provider.script_dir = str(tmp_path)
    commands = []

    def record_qsub(cmd, timeout=None):
        commands.append(cmd)
        return 0, "1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n", ""

    provider.execute_wait = record_qsub
    worker_command = polaris.engine.executor.launch_cmd
    job_id = provider.submit(worker_command, tasks_per_node=1, job_name="ptychoflow")
    assert job_id.startswith("1234567.")

    (qsub,) = commands
    assert re.search(r"\bqsub\s+-q debug\s+-A YOUR_ALCF_PROJECT\s+(\S+)$", qsub), qsub
    script = pathlib.Path(qsub.split()[-1]).read_text()
    assert "#PBS -l select=1:ncpus=64:ngpus=4\n" in script
    assert "#PBS -l walltime=01:00:00\n" in script
    assert "#PBS -l filesystems=home:eagle\n" in script
    assert "#PBS -k doe\n" in script
    assert "source /eagle/YOUR_ALCF_PROJECT/ptychoflow/venv/bin/activate\n" in script
    # One manager per node through mpiexec, running the endpoint's worker pool.
    assert "WORKERCOUNT=1\n" in script
    assert "mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT " in script
    assert "globus-compute-endpoint python-exec parsl.executors.high_throughput" in script
    # worker_init comes before the workers start.
    assert script.index("activate") < script.index("mpiexec")


def test_polaris_names_what_a_user_must_set():
    header = []
    for line in (POLARIS / "config.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    header_text = "\n".join(header)
    for name in ("account", "queue", "scheduler_options", "filesystems", "worker_init"):
        assert name in header_text, name


def test_local_engine_starts_workers_quickly():
    config = load_config_yaml((LOCAL / "config.yaml").read_text())
    engine = config.engine
    try:
        assert isinstance(engine, GlobusComputeEngine)
        executor = engine.executor
        assert isinstance(executor.provider, LocalProvider)
        assert executor.address == "127.0.0.1"
        assert 1 <= executor.max_workers_per_node <= 4
        assert executor.provider.init_blocks == executor.provider.min_blocks == 1
        # The first block must not wait Parsl's default 5 s strategy period.
        assert engine._job_status_kwargs["strategy_period"] <= 1.0
    finally:
        engine.shutdown()
