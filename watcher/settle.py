"""The settle stage: decides when a scan folder is complete, on a monotonic clock.

Two rules, chosen by the config:

- **marker** (``marker`` is a file name): the scan is complete when
  ``<scan>/<marker>`` exists. Nothing else counts, so a pause in acquisition
  longer than any settle time never starts half a scan.
- **settle** (``marker`` empty/None): the scan is complete when nothing in it
  changed for ``settle_seconds`` and every file in it opens (HDF5 files with
  h5py: a file still open for writing is locked by the HDF5 library and does not
  open). A folder whose files still do not open ``give_up_seconds`` after the last
  change is reported anyway, so the launcher records the broken file as a failure
  instead of the scan waiting for ever.

Events feed :meth:`SettleTracker.touch`; :meth:`SettleTracker.ready` returns the
scans that became complete, each once.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable

import h5py

log = logging.getLogger("ptychoflow.watcher")

HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5", ".hdf", ".nxs")


def file_opens(path: pathlib.Path) -> bool:
    """True when ``path`` can be opened for reading (HDF5 files by the HDF5 library)."""
    try:
        if path.suffix.lower() in HDF5_SUFFIXES:
            with h5py.File(path, "r"):
                return True
        with open(path, "rb"):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class _Pending:
    last_change: float
    next_check: float


class SettleTracker:
    """Tracks scan folders until they are complete.

    ``clock``: seconds on a monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        marker: str | None,
        settle_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        give_up_seconds: float | None = None,
    ):
        self.marker = marker or None
        self.settle_seconds = float(settle_seconds)
        self.give_up_seconds = (
            max(60.0, 10 * self.settle_seconds) if give_up_seconds is None else give_up_seconds
        )
        self.clock = clock
        self._pending: dict[pathlib.Path, _Pending] = {}
        self._reported: set[pathlib.Path] = set()
        #: Reopened scans: complete by the settle rule even when a marker is configured
        #: (the marker is there already; a late file must be written to the end).
        self._settle_always: set[pathlib.Path] = set()

    @property
    def pending(self) -> list[pathlib.Path]:
        return sorted(self._pending)

    def touch(self, scan_path: pathlib.Path, *, age_seconds: float = 0.0) -> bool:
        """Something changed in ``scan_path`` (``age_seconds`` ago). True if it is new."""
        scan_path = pathlib.Path(scan_path)
        if scan_path in self._reported:
            return False
        now = self.clock()
        changed = now - max(0.0, age_seconds)
        entry = self._pending.get(scan_path)
        if entry is None:
            self._pending[scan_path] = _Pending(changed, changed + self.settle_seconds)
            return True
        if changed > entry.last_change:
            entry.last_change = changed
            entry.next_check = max(entry.next_check, changed + self.settle_seconds)
        return False

    def was_reported(self, scan_path: pathlib.Path) -> bool:
        return pathlib.Path(scan_path) in self._reported

    def reopen(self, scan_path: pathlib.Path) -> None:
        """Track a reported scan again (a view file arrived after it was handed over); it
        is reported once more when its files have settled."""
        scan_path = pathlib.Path(scan_path)
        self._reported.discard(scan_path)
        self._settle_always.add(scan_path)

    def forget(self, scan_path: pathlib.Path) -> None:
        """Stop tracking ``scan_path`` without reporting it (e.g. the ledger already knows it)."""
        self._pending.pop(pathlib.Path(scan_path), None)
        self._reported.add(pathlib.Path(scan_path))

    def ready(self) -> list[pathlib.Path]:
        """Scans that are complete now and were not reported before, in name order."""
        done = []
        now = self.clock()
        for scan_path, entry in sorted(self._pending.items()):
            if not scan_path.is_dir():
                if now - entry.last_change > self.give_up_seconds:
                    del self._pending[scan_path]  # removed before it completed
                continue
            if self.marker is not None and scan_path not in self._settle_always:
                if (scan_path / self.marker).exists():
                    done.append(scan_path)
                continue
            if now < entry.next_check:
                continue
            if self._files_settled(scan_path):
                done.append(scan_path)
            elif now - entry.last_change >= self.give_up_seconds:
                log.warning(
                    "%s: some files still do not open %.0f s after the last change; "
                    "handing the scan over so the failure is recorded",
                    scan_path.name,
                    now - entry.last_change,
                )
                done.append(scan_path)
            else:
                entry.next_check = now + max(self.settle_seconds, 0.05)
        for scan_path in done:
            del self._pending[scan_path]
            self._reported.add(scan_path)
            self._settle_always.discard(scan_path)
        return done

    @staticmethod
    def _files_settled(scan_path: pathlib.Path) -> bool:
        try:
            files = [p for p in scan_path.rglob("*") if p.is_file()]
        except OSError:
            return False
        return bool(files) and all(file_opens(p) for p in files)
