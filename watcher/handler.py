"""The watchdog event handler: filters paths to scan folders and enqueues them.

It does nothing else (no file access, no waiting): the observer's thread must
stay free to read events. The settle stage decides completeness later.
"""

from __future__ import annotations

import logging
import os
import pathlib
import queue
import re

from watchdog.events import FileSystemEvent, FileSystemEventHandler

log = logging.getLogger("ptychoflow.watcher")

#: Events that are not changes (our own settle check opens files; that must not count).
_IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})


class ScanFolderHandler(FileSystemEventHandler):
    """Puts the scan folder (``root/<name matching scan_regex>``) of every change into ``out``.

    Only the first path component under ``root`` is considered, so results written
    back to ``root/recon/<id>/`` and other folders are ignored.
    """

    def __init__(
        self, root: pathlib.Path, scan_regex: re.Pattern[str], out: queue.Queue[pathlib.Path]
    ):
        super().__init__()
        self.root = os.path.abspath(root)
        self.scan_regex = scan_regex
        self.out = out

    def scan_folder_of(self, path: str | bytes) -> pathlib.Path | None:
        """The scan folder a path lies in (or is), or None."""
        path = os.fsdecode(path)
        relative = os.path.relpath(path, self.root)
        if relative.startswith(os.pardir) or relative == os.curdir:
            return None
        first = relative.split(os.sep, 1)[0]
        if not self.scan_regex.fullmatch(first):
            return None
        return pathlib.Path(self.root, first)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENT_TYPES:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            folder = self.scan_folder_of(path)
            if folder is not None:
                self.out.put(folder)
