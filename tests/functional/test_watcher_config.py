"""`ptychoflow watch` with a bad config value: one line that names the key and the file,
exit code 1, no traceback (a real process, as an operator would start it). Every key's
checks are in tests/unit/flows/test_init_config.py."""

from __future__ import annotations

import pytest

from tests.functional.cli import ptychoflow


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("acquisition_root = 5", "acquisition_root"),
        ('settle_seconds = "x"', "settle_seconds"),
        ('scan_pattern = "scan.*"', "scan_pattern"),  # no group for the scan number
    ],
)
def test_a_bad_config_value_is_one_line_naming_key_and_file(tmp_path, line, key):
    (tmp_path / "acquisition").mkdir()
    config = tmp_path / "ptychoflow.toml"
    root_line = "" if key == "acquisition_root" else 'acquisition_root = "acquisition"\n'
    config.write_text(f"{root_line}{line}\n")
    run = ptychoflow("watch", "--config", str(config), cwd=tmp_path, timeout=60)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert str(config) in lines[0] and f"{key} = " in lines[0] and "expected" in lines[0]


def test_a_negative_settle_override_is_refused(tmp_path):
    (tmp_path / "acquisition").mkdir()
    run = ptychoflow("watch", "--settle", "-3", cwd=tmp_path, timeout=60)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "--settle" in run.stderr and len(run.stderr.strip().splitlines()) == 1
