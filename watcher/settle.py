"""The settle stage: decides when a scan folder is complete, on a monotonic clock.

Two rules, chosen by the config:

- **marker** (``marker`` is a file name): the scan is complete when
  ``<scan>/<marker>`` exists. Nothing else counts, so a pause in acquisition
  longer than any settle time never starts half a scan.
- **settle** (``marker`` empty/None): the scan is complete when nothing in it
  changed for ``settle_seconds``, every file in it opens, and for a beamline scan
  (``[beamline]``) its own files are all there (the master file, the positions file,
  every data file the master links to) (HDF5 files with
  h5py: a file still open for writing is locked by the HDF5 library and does not
  open). A folder whose files still do not open ``give_up_seconds`` after the last
  change is reported anyway, so the launcher records the broken file as a failure
  instead of the scan waiting for ever.

Only a scan folder's own entries are looked at (its views and marker), never its
subfolders (:data:`SCAN_DEPTH`): a deep or huge tree inside a scan costs one
directory listing, not a walk. "Changed" is judged by comparing listings (name,
type, size, modification time) taken ``settle_seconds`` apart, so it needs no
file-system events from inside the scan and works the same on NFS/GPFS.

Events feed :meth:`SettleTracker.touch`; :meth:`SettleTracker.ready` returns the
scans that became complete, each once (until :meth:`SettleTracker.reopen`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import stat
import time
from collections.abc import Callable

import h5py

log = logging.getLogger("ptychoflow.watcher")

HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5", ".hdf", ".nxs")

#: How deep the watcher looks inside a scan folder: its own entries only.
SCAN_DEPTH = 1

#: One entry of a scan folder as the settle stage compares it:
#: (name, is a regular file, size in bytes, modification time in ns).
Entry = tuple[str, bool, int, int]


def scan_listing(scan_path: pathlib.Path) -> frozenset[Entry] | None:
    """The scan folder's own entries (not following symlinks), or None when it cannot be
    listed (deleted, permission denied, not a folder)."""
    entries: set[Entry] = set()
    try:
        with os.scandir(scan_path) as listing:
            for item in listing:
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed while listing
                entries.add((item.name, stat.S_ISREG(info.st_mode), info.st_size, info.st_mtime_ns))
    except OSError:
        return None
    return frozenset(entries)


def newest_change(scan_path: pathlib.Path) -> float | None:
    """Epoch seconds of the newest modification of the folder or its own entries."""
    try:
        newest = scan_path.stat().st_mtime
    except OSError:
        return None
    listing = scan_listing(scan_path)
    for _name, _regular, _size, mtime_ns in listing or ():
        newest = max(newest, mtime_ns / 1e9)
    return newest


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
    listing: frozenset[Entry] | None


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
        missing: Callable[[pathlib.Path], str | None] | None = None,
    ):
        self.marker = marker or None
        #: Settle rule, beamline scans: what the beamline's files still lack (no master
        #: file, no positions file, a linked data file not written yet), None when
        #: complete (``recon.beamline.missing_parts``). The marker overrides it.
        self.missing = missing
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

    def is_reported(self, scan_path: pathlib.Path) -> bool:
        return pathlib.Path(scan_path) in self._reported

    def touch(self, scan_path: pathlib.Path, *, age_seconds: float = 0.0) -> bool:
        """Something changed in ``scan_path`` (``age_seconds`` ago). True if it is new."""
        scan_path = pathlib.Path(scan_path)
        if scan_path in self._reported:
            return False
        now = self.clock()
        changed = now - max(0.0, age_seconds)
        entry = self._pending.get(scan_path)
        if entry is None:
            self._pending[scan_path] = _Pending(
                changed, changed + self.settle_seconds, scan_listing(scan_path)
            )
            return True
        if changed > entry.last_change:
            entry.last_change = changed
            entry.next_check = max(entry.next_check, changed + self.settle_seconds)
            entry.listing = scan_listing(scan_path)  # the change is counted once
        return False

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
                elif now >= entry.next_check:
                    entry.next_check = now + max(self.settle_seconds, 1.0)
                    if self._unreadable_for_too_long(scan_path, entry, now):
                        done.append(scan_path)
                continue
            if now < entry.next_check:
                continue
            listing = scan_listing(scan_path)
            if listing != entry.listing:  # changed since the last look: wait again
                entry.listing = listing
                entry.last_change = now
                entry.next_check = now + max(self.settle_seconds, 0.05)
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

    def _unreadable_for_too_long(
        self, scan_path: pathlib.Path, entry: _Pending, now: float
    ) -> bool:
        """A folder that cannot be listed (permission denied) never shows its marker:
        after ``give_up_seconds`` it is handed over, so its failure gets recorded."""
        if scan_listing(scan_path) is not None or now - entry.last_change < self.give_up_seconds:
            return False
        log.warning(
            "%s: cannot list the scan folder (permission denied?) %.0f s after it appeared; "
            "handing it over so the failure is recorded",
            scan_path.name,
            now - entry.last_change,
        )
        return True

    def _files_settled(self, scan_path: pathlib.Path) -> bool:
        """The folder's own files exist and each opens (subfolders are not looked into);
        for a beamline scan, its master and positions files and the data files the master
        links to are all there."""
        try:
            with os.scandir(scan_path) as listing:
                files = [pathlib.Path(item.path) for item in listing if item.is_file()]
        except OSError:
            return False
        if not (files and all(file_opens(p) for p in files)):
            return False
        if self.missing is not None:
            reason = self.missing(scan_path)
            if reason is not None:
                log.debug("%s: not complete yet: %s", scan_path.name, reason)
                return False
        return True
