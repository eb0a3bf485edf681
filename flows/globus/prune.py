"""``ptychoflow prune``: free the compute collection (Eagle fills up).

A view's compute-side copies (``<compute_base>/input/<id>/<view file>`` and
``<compute_base>/recon/<id>/<view>.h5|.png``) are removed through one Transfer delete
task per scan, once:

- the ledger says the view ``succeeded``,
- its result came back and is verified here: ``<acquisition root>/recon/<id>/<view>.h5``
  reads as a ptychoflow result with finite object and probe,
- it finished more than ``[globus] compute_retention_days`` days ago.

When every view of a scan qualifies, the scan's two folders go too. The acquisition
collection is never touched: delete tasks name the compute collection only. What was
pruned is remembered in ``<state_dir>/pruned.json``, so a view is deleted once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from flows.backend import RunStatus
from flows.config import Config
from flows.ledger import RunRecord

log = logging.getLogger(__name__)

PRUNED_FILE_NAME = "pruned.json"
SECONDS_PER_DAY = 86400.0


@dataclasses.dataclass
class ScanPrune:
    """What prune does (or would do) for one scan folder."""

    scan_folder: str
    scan_dir: str
    views: list[str]
    """View files whose compute-side copies are removed."""
    paths: list[str]
    """Paths on the compute collection in the delete task."""
    whole_scan: bool
    kept: dict[str, str]
    """View file -> why it is kept (not succeeded, not verified, too recent)."""
    task_id: str | None = None


def verified(config: Config, row: RunRecord) -> str | None:
    """None when the view's result is back and sound here; else why not."""
    import numpy as np

    from recon.errors import InputError, InputFileNotFound
    from recon.result import read_result

    scan_dir = row.scan_dir or str(row.scan_id)
    path = config.acquisition_root / "recon" / scan_dir / f"{PurePosixPath(row.view_file).stem}.h5"
    try:
        result = read_result(path)
    except (InputError, InputFileNotFound) as err:
        return f"result not verified here ({err})"
    if not (np.all(np.isfinite(result["object"])) and np.all(np.isfinite(result["probe"]))):
        return f"{path}: non-finite values in the result"
    return None


def plan(
    config: Config,
    rows: Iterable[RunRecord],
    pruned: set[str],
    *,
    now: float | None = None,
    check: Callable[[Config, RunRecord], str | None] = verified,
) -> list[ScanPrune]:
    """One :class:`ScanPrune` per scan folder that has something to remove."""
    now = time.time() if now is None else now
    cutoff = now - config.globus.compute_retention_days * SECONDS_PER_DAY
    base = config.globus.compute_base or "/"
    by_scan: dict[str, list[RunRecord]] = {}
    for row in rows:
        if row.backend == "globus":
            by_scan.setdefault(row.scan_folder, []).append(row)
    plans = []
    for folder, scan_rows in sorted(by_scan.items()):
        scan_dir = scan_rows[0].scan_dir or str(scan_rows[0].scan_id)
        chosen: list[RunRecord] = []
        kept: dict[str, str] = {}
        for row in scan_rows:
            key = f"{folder}/{row.view_file}"
            if key in pruned:
                continue
            if row.status is not RunStatus.SUCCEEDED:
                kept[row.view_file] = row.status.value
            elif row.finished_at is None or row.finished_at > cutoff:
                kept[row.view_file] = "within compute_retention_days"
            else:
                problem = check(config, row)
                if problem is None:
                    chosen.append(row)
                else:
                    kept[row.view_file] = problem
        if not chosen:
            continue
        whole = not kept and all(
            f"{folder}/{row.view_file}" in pruned or row in chosen for row in scan_rows
        )
        input_dir = posixpath.join(base, "input", scan_dir)
        recon_dir = posixpath.join(base, "recon", scan_dir)
        if whole:
            paths = [input_dir, recon_dir]
        else:
            paths = []
            for row in chosen:
                stem = PurePosixPath(row.view_file).stem
                paths += [
                    posixpath.join(input_dir, row.view_file),
                    posixpath.join(recon_dir, f"{stem}.h5"),
                    posixpath.join(recon_dir, f"{stem}.png"),
                ]
        plans.append(
            ScanPrune(folder, scan_dir, [row.view_file for row in chosen], paths, whole, kept)
        )
    return plans


def submit(transfer_client: Any, collection: str, scan: ScanPrune) -> str:
    """One Transfer delete task on the compute collection; returns its task id."""
    import globus_sdk

    delete = globus_sdk.DeleteData(
        endpoint=collection,
        label=f"ptychoflow prune {scan.scan_folder}"[:128],
        recursive=scan.whole_scan,
        ignore_missing=True,
    )
    for path in scan.paths:
        delete.add_item(path)
    return str(transfer_client.submit_delete(delete)["task_id"])


def load_pruned(state_dir: Path) -> set[str]:
    path = Path(state_dir) / PRUNED_FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    except json.JSONDecodeError as err:
        from flows.errors import ConfigError

        raise ConfigError(f"{path}: not valid JSON ({err}); delete it to prune again") from err
    return {str(key) for key in raw.get("views", {})}


def save_pruned(state_dir: Path, done: dict[str, str]) -> None:
    """Add ``done`` (``scan/view`` -> delete task id) to the pruned file, atomically."""
    from flows.globus.state import ensure_private_dir

    directory = ensure_private_dir(state_dir)
    path = directory / PRUNED_FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raw = {"views": {}}
    raw.setdefault("views", {}).update(done)
    handle, temporary = tempfile.mkstemp(prefix=".pruned-", dir=directory)
    with os.fdopen(handle, "w") as stream:
        json.dump(raw, stream, indent=1, sort_keys=True)
    os.replace(temporary, path)
