"""``ledger rebuild`` and ``ledger check`` in the situations issue 16 found (items 8, 16).

Real processes hold the ledger; a real tmpfs is remounted read-only (root only).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.config import Config
from flows.errors import LedgerError
from flows.ledger import Ledger
from flows.ledger_repair import check_ledger, ledger_holders, rebuild_ledger

HOLD = """
import sys, time
from flows.ledger import Ledger
ledger = Ledger(sys.argv[1])
ledger.scans()  # a connection is open, as in the watcher or the portal
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "acquisition"
    root.mkdir()
    return Config(
        acquisition_root=root,
        compute_root=tmp_path / "compute",
        ledger=tmp_path / "ledger.sqlite",
        state_dir=tmp_path / "state",
    )


def test_rebuild_is_refused_while_another_process_holds_the_ledger(config):
    Ledger(config.ledger).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(config.ledger)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert holder.pid in dict(ledger_holders(config.ledger))

        with pytest.raises(LedgerError) as caught:
            rebuild_ledger(config)
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and "Stop those first" in message
        assert config.ledger.exists()  # not moved aside
        assert not list(config.ledger.parent.glob("*.damaged-*"))
    finally:
        holder.kill()
        holder.wait()
    assert ledger_holders(config.ledger) == []
    report = rebuild_ledger(config)
    assert any("moved the old ledger" in line for line in report)


@pytest.fixture
def read_only_disk(small_tmpfs):
    return small_tmpfs


def test_check_on_a_read_only_file_system_finds_an_intact_ledger_ok(read_only_disk):
    path = read_only_disk / "ledger.sqlite"
    Ledger(path).close()
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_disk)], check=True)
    assert check_ledger(path) == []  # intact: no advice to rebuild it
