"""The endpoint folders, read and rendered by globus-compute-endpoint 4.x's own functions
(``get_config``, ``load_user_config_template``/``_schema``,
``render_config_user_template``, ``load_config_yaml``) the way its manager does when a
task arrives; and the PBS job Parsl would submit on Polaris (rendered through the
provider's submit path; qsub is recorded, not run)."""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import pwd
import re
import subprocess
import tomllib

import jsonschema
import parsl.addresses
import pytest
from globus_compute_endpoint.endpoint.config.config import CoreEndpointConfig, UserEndpointConfig
from globus_compute_endpoint.endpoint.config.utils import (
    get_config,
    load_config_yaml,
    load_user_config_schema,
    load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_endpoint.engines import GlobusComputeEngine
from parsl.launchers import MpiExecLauncher
from parsl.providers import LocalProvider, PBSProProvider

REPO = pathlib.Path(__file__).resolve().parents[3]
POLARIS = REPO / "endpoint_config" / "polaris"
LOCAL = REPO / "endpoint_config" / "local"
SITES = [POLARIS, LOCAL]

POLARIS_OPTIONS = {
    "account": "APSDataAnalysis",
    "worker_init": "source /eagle/APSDataAnalysis/ptychoflow/venv/bin/activate",
    "allowed_roots": "/eagle/APSDataAnalysis/ptychoflow/compute",
}


def render(folder: pathlib.Path, options: dict | None = None) -> str:
    """What the endpoint manager renders for a user endpoint of this account."""
    manager = get_config(folder)
    template_path = Endpoint.user_config_template_path(folder, manager)
    schema = load_user_config_schema(Endpoint.user_config_schema_path(folder, manager))
    identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], None)
    return render_config_user_template(
        manager,
        load_user_config_template(template_path),
        template_path,
        identity,
        schema,
        options or {},
        {},
    )


def schema_of(folder: pathlib.Path) -> dict:
    return json.loads((folder / "user_config_schema.json").read_text())


@pytest.fixture
def interfaces(monkeypatch):
    """``address_by_interface`` runs at load time; this host has no hsn0."""
    asked = []

    def fake_address_by_interface(ifname: str) -> str:
        asked.append(ifname)
        return "10.140.57.9"

    monkeypatch.setattr(parsl.addresses, "address_by_interface", fake_address_by_interface)
    return asked


def load_engine_config(folder: pathlib.Path, options: dict | None = None) -> UserEndpointConfig:
    config = load_config_yaml(render(folder, options))
    assert isinstance(config, UserEndpointConfig)
    return config


@pytest.fixture
def polaris(interfaces):
    config = load_engine_config(POLARIS, POLARIS_OPTIONS)
    yield config
    config.engine.shutdown()


# -- the manager configs: what `globus-compute-endpoint start` checks ---------------------


@pytest.mark.parametrize("folder", SITES, ids=lambda f: f.name)
def test_config_yaml_is_a_manager_config_without_engine(folder):
    # `globus-compute-endpoint start` refuses anything but a CoreEndpointConfig ("move the
    # `engine` block to user_config_template.yaml.j2").
    manager = get_config(folder)
    assert isinstance(manager, CoreEndpointConfig)
    assert manager.display_name == f"ptychoflow-{folder.name}"
    assert Endpoint.user_config_template_path(folder, manager).is_file()
    assert Endpoint.user_config_schema_path(folder, manager).is_file()


# -- Polaris: a GPU engine on PBS ---------------------------------------------------------


def test_polaris_renders_a_gpu_engine_on_pbs(polaris, interfaces):
    engine = polaris.engine
    assert isinstance(engine, GlobusComputeEngine)
    assert engine.encrypted  # CurveZMQ between the login node and the compute nodes
    # Globus Compute's own Polaris example (docs/endpoints/configs/polaris.yaml) uses hsn0
    # since January 2025: the compute nodes no longer reach the login nodes over bond0.
    assert interfaces == ["hsn0"]
    # Walltime ends and preemptions are system failures: retried, not failed for good.
    assert engine.max_retries_on_system_failure == 2
    # ALCF's GPU-to-NUMA map for Polaris: GPU 0 on NUMA 3 ... GPU 3 on NUMA 0.
    assert engine.executor.cpu_affinity == "list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39"
    executor = engine.executor
    assert executor.address == "10.140.57.9"
    assert executor.max_workers_per_node == 4
    assert executor.available_accelerators == ["0", "1", "2", "3"]  # one worker per GPU
    provider = executor.provider
    assert isinstance(provider, PBSProProvider)
    assert isinstance(provider.launcher, MpiExecLauncher)
    assert provider.account == "APSDataAnalysis"
    assert provider.queue == "debug"
    assert provider.walltime == "01:00:00"  # a string, not YAML's sexagesimal number
    assert (provider.nodes_per_block, provider.init_blocks, provider.min_blocks) == (1, 0, 0)
    assert provider.max_blocks == 2


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
    assert re.search(r"\bqsub\s+-q debug\s+-A APSDataAnalysis\s+(\S+)$", qsub), qsub
    script = pathlib.Path(qsub.split()[-1]).read_text()
    assert "#PBS -l select=1:ncpus=64:ngpus=4\n" in script
    assert "#PBS -l walltime=01:00:00\n" in script
    assert "#PBS -l filesystems=home:eagle\n" in script
    assert "#PBS -k doe\n" in script
    assert "source /eagle/APSDataAnalysis/ptychoflow/venv/bin/activate\n" in script
    assert "export PTYCHOFLOW_ALLOWED_ROOTS=/eagle/APSDataAnalysis/ptychoflow/compute\n" in script
    # One manager per node through mpiexec, running the endpoint's worker pool.
    assert "WORKERCOUNT=1\n" in script
    assert "mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT " in script
    assert "globus-compute-endpoint python-exec parsl.executors.high_throughput" in script
    # The environment and the confinement come before the workers start.
    assert script.index("activate") < script.index("PTYCHOFLOW_ALLOWED_ROOTS")
    assert script.index("PTYCHOFLOW_ALLOWED_ROOTS") < script.index("mpiexec")


def test_polaris_options_from_a_task_override_the_defaults(interfaces):
    options = {
        **POLARIS_OPTIONS,
        "queue": "prod",
        "nodes_per_block": 10,
        "filesystems": "home:eagle:grand",
        "walltime": "06:00:00",
        "max_nodes": 20,
        "interface": "bond0",
        "retries_on_system_failure": 0,
    }
    config = load_engine_config(POLARIS, options)
    try:
        provider = config.engine.executor.provider
        assert (provider.queue, provider.walltime) == ("prod", "06:00:00")
        assert (provider.nodes_per_block, provider.max_blocks) == (10, 2)
        assert "#PBS -l filesystems=home:eagle:grand" in provider.scheduler_options
        assert interfaces == ["bond0"]
        assert config.engine.max_retries_on_system_failure == 0
    finally:
        config.engine.shutdown()


@pytest.mark.parametrize(
    "option",
    [
        {"filesystems": "home\n#PBS -A someone_else"},  # would add a line to the PBS script
        {"account": "APS; rm -rf ~"},
        {"walltime": "1:00"},
        {"max_nodes": 0},
        {"allowed_roots": "relative/path"},
        {"quue": "prod"},  # a typo is refused, not ignored
        {"account": "APS\n"},  # Python's $ matches before a final newline; \Z does not
        {"interface": "hsn0\n"},
        {"queue": "prod"},  # ALCF Polaris queue table: prod takes jobs of >= 10 nodes
        {"queue": "prod", "nodes_per_block": 9},
        {"queue": "debug", "walltime": "01:00:01"},  # debug: at most 1 h
        {"queue": "prod", "nodes_per_block": 10, "walltime": "24:00:01"},
        {"queue": "preemptable", "walltime": "72:30:00"},
        {"queue": "capacity", "walltime": "169:00:00"},
        {"queue": "night"},
    ],
    ids=lambda option: next(iter(option)),
)
def test_polaris_schema_refuses_bad_options(option):
    with pytest.raises(jsonschema.ValidationError):
        render(POLARIS, {**POLARIS_OPTIONS, **option})


@pytest.mark.parametrize(
    "option",
    [
        {"queue": "prod", "nodes_per_block": 10, "walltime": "24:00:00"},
        {"queue": "preemptable", "walltime": "72:00:00", "max_nodes": 10},
        {"queue": "capacity", "walltime": "168:00:00"},
        {"queue": "debug-scaling", "nodes_per_block": 10, "walltime": "01:00:00"},
    ],
    ids=lambda option: option["queue"],
)
def test_polaris_schema_accepts_each_queue_up_to_its_limits(option, interfaces):
    """The limits of ALCF's Polaris queue table ("Running Jobs" page) are accepted."""
    config = load_engine_config(POLARIS, {**POLARIS_OPTIONS, **option})
    try:
        provider = config.engine.executor.provider
        assert provider.queue == option["queue"]
        assert provider.walltime == option["walltime"]
    finally:
        config.engine.shutdown()


def test_polaris_template_refuses_prod_with_small_blocks_in_its_own_defaults(tmp_path):
    """The schema sees only options sent with a task; a default edited to "prod" in the
    template itself (the usual way to set a site's values) must fail to render too."""
    import jinja2

    folder = tmp_path / "polaris"
    folder.mkdir()
    for path in POLARIS.iterdir():
        (folder / path.name).write_text(path.read_text())
    template = folder / "user_config_template.yaml.j2"
    template.write_text(template.read_text().replace('default("debug"', 'default("prod"'))
    with pytest.raises(jinja2.UndefinedError, match="prod_queue_needs_nodes_per_block_of_10"):
        render(folder, POLARIS_OPTIONS)


def test_polaris_header_names_what_a_user_must_set():
    template = (POLARIS / "user_config_template.yaml.j2").read_text()
    header = template[: template.index("-#}")]
    assert "SET THESE" in header
    for name in ("account", "worker_init", "allowed_roots", "queue", "filesystems"):
        assert re.search(rf"\b{name}\b", header), name


# -- local: the engine the local backend runs ---------------------------------------------


def test_local_renders_an_encrypted_engine_on_this_host():
    config = load_engine_config(LOCAL, {"allowed_roots": "/data/ptychoflow/compute"})
    engine = config.engine
    try:
        assert isinstance(engine, GlobusComputeEngine)
        executor = engine.executor
        assert executor.encrypted
        assert isinstance(executor.provider, LocalProvider)
        assert executor.address == "127.0.0.1"
        assert executor.max_workers_per_node == 2
        assert executor.provider.init_blocks == executor.provider.min_blocks == 1
        # The first block must not wait Parsl's default 5 s strategy period.
        assert engine._job_status_kwargs["strategy_period"] <= 1.0
        assert (
            "export PTYCHOFLOW_ALLOWED_ROOTS=/data/ptychoflow/compute"
            in executor.provider.worker_init
        )
    finally:
        engine.shutdown()


def test_local_default_allowed_root_is_under_the_users_home():
    config = load_engine_config(LOCAL)
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
        expected = f"export PTYCHOFLOW_ALLOWED_ROOTS={home}/ptychoflow/compute"
        assert expected in config.engine.executor.provider.worker_init
    finally:
        config.engine.shutdown()


@pytest.mark.parametrize("folder", SITES, ids=lambda f: f.name)
def test_allowed_roots_reach_the_shell_unchanged(folder, interfaces):
    """Spaces, quotes and '$' in a root come out of worker_init exactly as given."""
    roots = "/data/it's a $HOME dir/compute:/scratch/two"
    options = {**(POLARIS_OPTIONS if folder is POLARIS else {}), "allowed_roots": roots}
    config = load_engine_config(folder, options)
    try:
        worker_init = config.engine.executor.provider.worker_init
    finally:
        config.engine.shutdown()
    export = next(line for line in worker_init.splitlines() if "PTYCHOFLOW_ALLOWED_ROOTS" in line)
    shown = subprocess.run(
        ["bash", "-c", f'{export}\nprintf %s "$PTYCHOFLOW_ALLOWED_ROOTS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == roots


# -- schemas and templates agree ----------------------------------------------------------


@pytest.mark.parametrize("folder", SITES, ids=lambda f: f.name)
def test_every_variable_is_described_with_a_default_or_examples(folder):
    schema = schema_of(folder)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
        assert "default" in prop or prop.get("examples"), name
        for example in prop.get("examples", []) + ([prop["default"]] if "default" in prop else []):
            jsonschema.validate(example, prop)
        # Every variable is used by the template.
        assert re.search(rf"\b{name}\b", (folder / "user_config_template.yaml.j2").read_text())


@pytest.mark.parametrize("folder", SITES, ids=lambda f: f.name)
def test_schema_defaults_are_the_template_defaults(folder, interfaces):
    """Sending every schema default renders exactly what sending nothing renders."""
    base = POLARIS_OPTIONS if folder is POLARIS else {}
    properties = schema_of(folder)["properties"]
    defaults = {name: prop["default"] for name, prop in properties.items() if "default" in prop}
    assert defaults
    assert render(folder, {**base, **defaults}) == render(folder, base)
    # ... and the comparison can tell: each other example renders differently.
    for name in defaults:
        other = next(e for e in properties[name]["examples"] if e != defaults[name])
        assert render(folder, {**base, name: other}) != render(folder, base), name


def test_package_data_ships_every_endpoint_file():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["flows.endpoint_config"]
    files = [p.relative_to(REPO / "endpoint_config") for p in SITES[0].parent.glob("*/*")]
    assert len(files) >= 6
    for path in files:
        assert any(fnmatch.fnmatch(str(path), pattern) for pattern in patterns), path
