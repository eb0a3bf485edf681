"""Fixtures shared by the functional tests."""

import pytest

from tests.functional.recording_backend import write_config


@pytest.fixture
def setup(tmp_path):
    """A watcher site: (acquisition root, config path, backend log, ledger path)."""
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(tmp_path / "ptychoflow.toml", root, marker="scan.done")
    return root, config, tmp_path / "runs.jsonl", tmp_path / "ledger.sqlite"
