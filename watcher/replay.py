"""Replay a recorded scan into new scan folders at a given frame rate.

This stands in for the instrument (as the paper did to test the live path
without a beamline): for every new scan id it creates ``<root>/scan<id>/``,
writes each view's CXI file incrementally (everything but the patterns copied
first, then ``/entry_1/data_1/data`` as a resizable dataset grown in batches at
the frame rate and flushed after each batch), and writes the marker last.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import h5py

from recon.cxi import DATA_PATH as VIEW_DATA_PATH
from recon.cxi import peek_view_shape
from recon.errors import InputError, InputFileNotFound, OptionsError

log = logging.getLogger("ptychoflow.replay")

#: A batch is the patterns acquired in this many seconds (at least one pattern).
BATCH_SECONDS = 0.1


def source_views(source: pathlib.Path, view_glob: str = "*.cxi") -> list[pathlib.Path]:
    """The view files of ``source``: the file itself, or the folder's ``view_glob`` files."""
    source = pathlib.Path(source)
    if source.is_file():
        views = [source]
    elif source.is_dir():
        views = sorted(p for p in source.glob(view_glob) if p.is_file())
        if not views:
            raise InputError(f"{source}: no view files matching {view_glob!r} to replay")
    else:
        raise InputFileNotFound(f"replay source {source} does not exist")
    for view in views:
        peek_view_shape(view, f"{view.parent.name}/{view.name}")
    return views


def replay(
    source: pathlib.Path | str,
    acquisition_root: pathlib.Path | str,
    scan_ids: Sequence[int],
    *,
    rate_hz: float | None,
    marker: str | None = "scan.done",
    view_glob: str = "*.cxi",
    sleep: Callable[[float], None] = time.sleep,
) -> list[pathlib.Path]:
    """Write one new scan folder per id; returns the folders in order.

    ``rate_hz``: patterns per second (None or 0: as fast as the disk allows; otherwise
    finite and at least 0.01). Refuses to overwrite an existing scan folder.
    """
    if rate_hz is not None and rate_hz != 0 and not (math.isfinite(rate_hz) and rate_hz >= 0.01):
        raise OptionsError(
            f"rate {rate_hz!r}: expected 0 (as fast as possible) or at least 0.01 patterns "
            "per second"
        )
    views = source_views(pathlib.Path(source), view_glob)
    root = pathlib.Path(acquisition_root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for scan_id in scan_ids:
        folder = root / f"scan{scan_id}"
        if folder.exists():
            raise InputError(f"{folder} exists already; choose other scan ids")
        folder.mkdir()
        started = time.monotonic()
        patterns = 0
        for view in views:
            patterns += _replay_view(view, folder / view.name, rate_hz, sleep)
        if marker:
            _write_marker(folder / marker)
        log.info(
            "%s: %d view(s), %d patterns in %.2f s",
            folder.name,
            len(views),
            patterns,
            time.monotonic() - started,
        )
        folders.append(folder)
    return folders


def _replay_view(
    source: pathlib.Path,
    target: pathlib.Path,
    rate_hz: float | None,
    sleep: Callable[[float], None],
) -> int:
    """Copy ``source`` to ``target``, the patterns appended at ``rate_hz``; returns N."""
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for name, value in src.attrs.items():
            dst.attrs[name] = value

        def copy_except_patterns(name: str, item: h5py.HLObject) -> None:
            if "/" + name == VIEW_DATA_PATH:
                return
            if isinstance(item, h5py.Group):
                group = dst.require_group(name)
                for key, value in item.attrs.items():
                    group.attrs[key] = value
            elif isinstance(item, h5py.Dataset):
                src.copy(item, dst, name=name)

        src.visititems(copy_except_patterns)
        data = src[VIEW_DATA_PATH]
        n, height, width = data.shape
        out = dst.require_group(os.path.dirname(VIEW_DATA_PATH)).create_dataset(
            os.path.basename(VIEW_DATA_PATH),
            shape=(0, height, width),
            maxshape=(None, height, width),
            chunks=(1, height, width),
            dtype=data.dtype,
        )
        for key, value in data.attrs.items():
            out.attrs[key] = value
        batch = max(1, round(rate_hz * BATCH_SECONDS)) if rate_hz else n
        clock_start = time.monotonic()
        for first in range(0, n, batch):
            last = min(n, first + batch)
            out.resize(last, axis=0)
            out[first:last] = data[first:last]
            dst.flush()
            if rate_hz:
                due = clock_start + last / rate_hz
                delay = due - time.monotonic()
                if delay > 0:
                    sleep(delay)
        return int(n)


def _write_marker(path: pathlib.Path) -> None:
    """Create the marker atomically (a watcher never sees it half written)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"complete {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    os.replace(temporary, path)
