import pathlib

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


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("acquisition_root = 5", "acquisition_root", "a path in quotes"),
        ('compute_root = ""', "compute_root", "a path in quotes"),
        ("ledger = []", "ledger", "a path in quotes"),
        ('backend = "cloud"', "backend", "'local' or 'globus'"),
        ('settle_seconds = "x"', "settle_seconds", "a number of seconds >= 0"),
        ("settle_seconds = -1", "settle_seconds", "a number of seconds >= 0"),
        ("settle_seconds = nan", "settle_seconds", "a number of seconds >= 0"),
        ("settle_seconds = true", "settle_seconds", "a number of seconds >= 0"),
        ('scan_pattern = "scan.*"', "scan_pattern", "last group captures the scan number"),
        ('scan_pattern = "scan(["', "scan_pattern", "a regular expression (unterminated"),
        ("scan_pattern = 3", "scan_pattern", "a regular expression in quotes"),
        ('view_glob = "*/x.cxi"', "view_glob", "a file name pattern"),
        ('view_glob = "**"', "view_glob", "'**' (recursive) is refused"),  # issue 16
        ('view_glob = "**.cxi"', "view_glob", "'**' (recursive) is refused"),
        ('rerun_changed_views = "yes"', "rerun_changed_views", "true or false"),
        ('marker = "../done"', "marker", "a file name in quotes"),
        ("marker = false", "marker", "a file name in quotes"),
        ("concurrency = 0", "concurrency", "a whole number >= 1"),
        ("concurrency = 2.5", "concurrency", "a whole number >= 1"),
        ("[globus]\ncompute_endpoint = 7", "[globus] compute_endpoint", "a string in quotes"),
        ('[globus]\nrun_monitors = "urn:x"', "[globus] run_monitors", "a list of strings"),
        ("globus = 3", "globus", "must be a table"),
    ],
)
def test_every_bad_value_is_named_with_its_key_and_file(tmp_path, line, key, expected):
    path = tmp_path / "ptychoflow.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}")
    assert expected in message
    assert "\n" not in message


def test_good_values_load_and_settle_seconds_is_a_float(tmp_path):
    path = tmp_path / "ptychoflow.toml"
    path.write_text('settle_seconds = 2\nmarker = ""\nscan_pattern = "sample_(\\\\d+)"\n')
    config = load_config(path)
    assert config.settle_seconds == 2.0 and isinstance(config.settle_seconds, float)
    assert config.marker == ""
    assert config.scan_id_of("sample_0042") == 42


def test_scan_ids_have_a_bounded_size_and_the_reason_is_given():
    config = load_config(None, base=pathlib.Path("/nonexistent-base"))
    assert config.scan_id_of("scan" + "9" * 18) == 10**18 - 1
    assert config.scan_id_of("scan" + "9" * 19) is None
    assert config.scan_id_of("scan99999999999999999999") is None
    assert "1 to 18 digits" in config.scan_name_problem("scan99999999999999999999")
    assert config.scan_name_problem("scan100") is None
    assert config.scan_name_problem("recon") is None  # not a scan name at all
    assert config.scan_id_of("scan١٢٣") is None  # Arabic-Indic digits match \d, not an id


def test_init_creates_the_acquisition_folder_and_the_recipe_runs_as_printed(tmp_path):
    """The printed `demo --scan-only` line puts a scan where the config looks."""
    import shlex

    run = ptychoflow("init", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "acquisition").is_dir()
    recipe = next(line for line in run.stdout.splitlines() if "demo --scan-only" in line)
    assert "replay" in run.stdout and "run-flow" in run.stdout and "serve" in run.stdout
    args = shlex.split(recipe)[1:]
    made = ptychoflow(*args, "--views", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "acquisition" / "scan100" / "view000.cxi").is_file()
    assert "--scan 100 --config" in made.stdout
