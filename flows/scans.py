"""Scan discovery on the acquisition side: which folders are scans, which files are views.

A scan is a folder directly under the acquisition root whose name matches the
configured pattern; its views are the files matching ``view_glob`` inside it.
Used by the launcher (``run-flow``, the watcher) and the CLI's range parsing.
"""

from __future__ import annotations

import pathlib
import re

from flows.config import Config
from recon.errors import InputError, InputFileNotFound, OptionsError


def parse_views(text: str) -> list[int]:
    """``"0,3-5"`` -> ``[0, 3, 4, 5]`` (sorted, without duplicates). Also used for scan ids."""
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise OptionsError(
                f"{text!r}: {part!r} is not a number or a range like 3-5 "
                "(expected a comma-separated list such as 0,3-5)"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise OptionsError(f"{text!r}: range {part!r} runs backwards")
        values.update(range(first, last + 1))
    return sorted(values)


def scan_folders(config: Config) -> dict[int, list[pathlib.Path]]:
    """Scan folders directly under the acquisition root, by scan id."""
    root = config.acquisition_root
    if not root.is_dir():
        raise InputFileNotFound(f"acquisition root {root} does not exist or is not a folder")
    found: dict[int, list[pathlib.Path]] = {}
    for entry in sorted(root.iterdir()):
        scan_id = config.scan_id_of(entry.name)
        if scan_id is not None and entry.is_dir():
            found.setdefault(scan_id, []).append(entry)
    return found


def discover_views(config: Config, scan_id: int) -> tuple[pathlib.Path, list[tuple[int, str]]]:
    """The scan folder of ``scan_id`` and its views as (view index, file name).

    Views are the files matching ``config.view_glob``, sorted by name; the index
    is the position in that order.
    """
    try:
        folders = scan_folders(config)
    except InputFileNotFound as err:
        raise InputFileNotFound(f"scan {scan_id}: {err}") from err
    matches = folders.get(scan_id, [])
    if not matches:
        known = ", ".join(str(i) for i in sorted(folders)[:20]) or "none"
        raise InputFileNotFound(
            f"scan {scan_id}: no folder matching {config.scan_pattern!r} with id {scan_id} "
            f"under {config.acquisition_root} (scan ids found there: {known})"
        )
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise InputError(f"scan {scan_id}: several folders have this id ({names}); rename one")
    folder = matches[0]
    try:
        files = sorted(p.name for p in folder.glob(config.view_glob) if p.is_file())
        present = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise InputError(f"{folder}: cannot list the scan folder: {err}") from err
    if not files:
        shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
        raise InputError(
            f"{folder}: no view files matching {config.view_glob!r} "
            f"(found: {shown or 'an empty folder'})"
        )
    return folder, list(enumerate(files))
