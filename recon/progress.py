"""Progress of one reconstruction while it runs, as two small files beside its result.

The solver reports every iteration through its callbacks (``progress(iteration, cost,
seconds)`` and ``monitor(iteration, object, probe)``, see :func:`recon.ptycho.reconstruct`).
A :class:`ProgressFiles` turns them into

- ``.<view>.progress.json``: ``iteration``, ``iterations`` (planned), ``cost``,
  ``elapsed`` and ``eta`` (seconds), ``updated`` (epoch seconds) and, once one exists,
  ``image`` (the path of the PNG below) and ``image_iteration``; written at most once per
  :data:`JSON_INTERVAL_S`;
- ``.<view>.progress.png``: the current object's phase (global phase removed, grey
  between robust percentiles, at most :data:`IMAGE_SIZE` pixels on its longer side);
  written at most once per :data:`IMAGE_INTERVAL_S`.

Both are written to a temporary name and renamed, so a reader never sees half a file,
and both are removed when the reconstruction ends (:meth:`ProgressFiles.close`). The
local backend reads the JSON while the view computes and records it in the run ledger
(``run-flow``, ``status`` and the portal show it); the portal shows the PNG.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Shortest time between two writes of the progress JSON, seconds.
JSON_INTERVAL_S = 1.0
#: Shortest time between two intermediate phase images, seconds.
IMAGE_INTERVAL_S = 3.0
#: Longest side of the intermediate phase image, pixels.
IMAGE_SIZE = 384


def progress_paths(folder: str | os.PathLike[str], view: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(JSON, PNG) progress files of view ``view`` (a file stem) in the result folder."""
    folder = pathlib.Path(folder)
    return folder / f".{view}.progress.json", folder / f".{view}.progress.png"


def read_progress(folder: str | os.PathLike[str], view: str) -> dict[str, Any] | None:
    """The latest progress of ``view`` in ``folder``, or None (not started, finished, or
    a file that is not a progress record)."""
    path, _ = progress_paths(folder, view)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("iteration"), int):
        return None
    return data


class ProgressFiles:
    """Writes the progress files of one view; pass :attr:`progress` and :attr:`monitor`
    to the solver, and call :meth:`close` when it ends (also on failure).

    ``clock`` (monotonic seconds) and ``wall`` (epoch seconds) are injectable for tests.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        view: str,
        iterations: int,
        *,
        json_interval_s: float = JSON_INTERVAL_S,
        image_interval_s: float = IMAGE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.json_path, self.image_path = progress_paths(folder, view)
        self.iterations = int(iterations)
        self.json_interval_s = json_interval_s
        self.image_interval_s = image_interval_s
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._last_json = -math.inf
        self._last_image = -math.inf
        self._has_image = False
        self._image_iteration = 0
        self._latest: dict[str, Any] | None = None

    # -- the solver's callbacks ---------------------------------------------------------

    def progress(self, iteration: int, cost: float, seconds: float) -> None:
        """``progress(iteration, cost, seconds)``: records it; writes the JSON when due
        (and always at the last planned iteration)."""
        now = self._clock()
        elapsed = now - self._started
        remaining = max(self.iterations - iteration, 0)
        eta = elapsed / iteration * remaining if iteration > 0 else None
        self._latest = {
            "iteration": int(iteration),
            "iterations": self.iterations,
            "cost": float(cost) if math.isfinite(cost) else None,
            "elapsed": round(elapsed, 2),
            "eta": None if eta is None else round(eta, 1),
        }
        if now - self._last_json >= self.json_interval_s or iteration >= self.iterations:
            self._write_json()

    def monitor(self, iteration: int, object_: Any, probe: Any) -> bool:
        """``monitor(iteration, object, probe)``: an intermediate phase image when due;
        never stops the solver."""
        now = self._clock()
        if now - self._last_image < self.image_interval_s:
            return False
        self._last_image = now
        from recon.backend import to_host

        write_phase_image(self.image_path, to_host(object_))
        self._has_image = True
        self._image_iteration = int(iteration)
        if self._latest is not None:
            self._write_json()  # so a reader learns of the image at once
        return False

    # -- files -----------------------------------------------------------------------------

    def _write_json(self) -> None:
        if self._latest is None:
            return
        self._last_json = self._clock()
        record = dict(self._latest, updated=self._wall())
        if self._has_image:
            # The real path: written through a pinned folder's descriptor
            # (/proc/self/fd/N/..., functions.pinned_paths), the image is read by the portal,
            # another process, which needs the folder's name.
            record["image"] = os.path.realpath(self.image_path)
            record["image_iteration"] = self._image_iteration
        _write_atomically(self.json_path, json.dumps(record).encode())

    def close(self) -> None:
        """Remove both files (the result file replaces them)."""
        for path in (self.json_path, self.image_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def write_phase_image(path: pathlib.Path, object_: np.ndarray) -> None:
    """The object's phase as a grey PNG (global phase removed, 1st..99th percentile),
    reduced to at most :data:`IMAGE_SIZE` pixels on its longer side."""
    import io

    from PIL import Image

    from recon.preview import grey_levels

    object_ = np.asarray(object_)
    object_ = object_.reshape(-1, *object_.shape[-2:])[0]
    total = complex(np.sum(object_))
    phase = np.angle(object_ * np.exp(-1j * np.angle(total))) if total else np.angle(object_)
    grey, _, _ = grey_levels(phase)
    image = Image.fromarray(grey)
    if max(image.size) > IMAGE_SIZE:
        image.thumbnail((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _write_atomically(path, buffer.getvalue())


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
