import pytest

from flows.commands import GLOBUS_TEMPLATE, LOCAL_TEMPLATE
from flows.config import load_config
from flows.errors import ConfigError
from flows.globus.setup import open_globus_backend
from tests.functional.cli import ptychoflow


@pytest.mark.parametrize("backend", ["local", "globus"])
def test_init_writes_a_config_that_loads(tmp_path, backend):
    run = ptychoflow("init", "--backend", backend, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "ptychoflow.toml").read_text()
    assert text == (GLOBUS_TEMPLATE if backend == "globus" else LOCAL_TEMPLATE)
    config = load_config(tmp_path / "ptychoflow.toml")
    assert config.backend == backend
    assert config.acquisition_root == tmp_path / "acquisition"
    assert config.scan_id_of("flyscan123") == 123 and config.scan_id_of("recon") is None

    again = ptychoflow("init", "--backend", backend, cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def test_globus_backend_names_the_settings_still_missing(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(GLOBUS_TEMPLATE)
    config = load_config(tmp_path / "ptychoflow.toml")
    with pytest.raises(ConfigError, match="acquisition_collection, compute_collection"):
        open_globus_backend(config)
