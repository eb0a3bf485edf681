"""Fixtures shared by the functional tests."""

import os

import pytest

from tests.functional.recording_backend import write_config


@pytest.fixture
def setup(tmp_path):
    """A watcher site: (acquisition root, config path, backend log, ledger path)."""
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(tmp_path / "ptychoflow.toml", root, marker="scan.done")
    return root, config, tmp_path / "runs.jsonl", tmp_path / "ledger.sqlite"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted for this test (root only; skipped with the reason elsewhere)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
