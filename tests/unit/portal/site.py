"""Sample installations for the portal's tests and benchmark: a real ledger written through
the ledger's own API, and real result files written by :func:`recon.result.write_result`.

Used by tests/unit/portal and bench/portal.py.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from flows.backend import RunProgress, RunStatus, StartedRun, ViewRequest
from flows.config import Config, resolve_paths
from flows.ledger import Ledger
from recon.result import write_result


@dataclasses.dataclass(frozen=True)
class SampleView:
    status: RunStatus = RunStatus.SUCCEEDED
    stage: str | None = None
    error: str | None = None
    web_url: str | None = None
    modes: int = 1
    """Probe modes written to the result (1: a 2D probe; more: (MODES, H, W))."""
    result: bool = True
    """Write a result file (succeeded views only)."""


def sample_object(
    shape: tuple[int, int] = (48, 48),
    ramp: tuple[float, float] = (0.3, -0.2),
    global_phase: float = 1.0,
) -> np.ndarray:
    """A disc of phase 0.5 rad on a flat background, times a linear phase ramp and a
    global phase (what the portal must remove before showing it). (H, W) complex64."""
    rows, cols = np.indices(shape, dtype=np.float64)
    centre = (shape[0] / 2, shape[1] / 2)
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < (min(shape) / 5) ** 2
    phase = 0.5 * disc + ramp[0] * rows + ramp[1] * cols + global_phase
    return (np.exp(1j * phase) * (1.0 - 0.3 * disc)).astype(np.complex64)


def write_sample_result(
    path: pathlib.Path, modes: int = 1, object_shape: tuple[int, int] = (48, 48)
) -> pathlib.Path:
    """A small result file: the sample object, a Gaussian probe of ``modes`` modes with
    powers in the ratio 4:2:1..., positions on a grid, a falling cost."""
    probe_size = 16
    rows, cols = np.indices((probe_size, probe_size)) - probe_size / 2
    gaussian = np.exp(-(rows**2 + cols**2) / 20).astype(np.complex64)
    if modes == 1:
        probe = gaussian
    else:
        probe = np.stack([gaussian * np.sqrt(0.5**m) for m in range(modes)])
    grid = np.arange(0, object_shape[0] - probe_size + 1, 4, dtype=np.float32)
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    write_result(
        path,
        object=sample_object(object_shape),
        probe=probe,
        cost=np.geomspace(10.0, 1.0, 30),
        positions=positions,
        options={"iterations": 30, "cost": "poisson"},
        pixel_size=10e-9,
        iterations=30,
        devices=[0],
        timings={"load": 0.1, "solve": 2.0, "write": 0.05},
        backend="numpy",
        extra_attrs={"fit_to_noise": 1.25},
    )
    return path


def sample_site(root: pathlib.Path, scans: dict[str, Sequence[SampleView]]) -> Config:
    """A config rooted at ``root`` whose ledger records ``scans`` (folder -> views, in
    order) and whose acquisition root holds the succeeded views' result files."""
    config = resolve_paths(Config(), root)
    ledger = Ledger(config.ledger)
    try:
        for folder, views in scans.items():
            scan_id = int("".join(c for c in folder if c.isdigit()) or 0)
            ledger.scan_seen(folder, scan_id)
            for index, view in enumerate(views):
                name = f"view{index:03d}"
                view_file = f"{name}.cxi"
                request = ViewRequest(scan_id, view_file, folder, {"iterations": 30})
                ledger.claim(request, "globus" if view.web_url else "local")
                if view.status is RunStatus.PENDING:
                    continue
                ledger.mark_submitting(folder, view_file)
                if view.status is RunStatus.SUBMITTING:
                    continue
                ledger.mark_started(
                    folder, view_file, StartedRun(f"run-{folder}-{index}", view.web_url)
                )
                seconds = {"transfer_in": 1.0 + index, "compute": 10.0 + index}
                if view.status is RunStatus.ACTIVE:
                    ledger.update_progress(
                        folder,
                        view_file,
                        RunProgress(RunStatus.ACTIVE, view.stage or "compute", seconds),
                    )
                    continue
                if view.status is RunStatus.SUCCEEDED and view.result:
                    write_sample_result(
                        config.acquisition_root / "recon" / str(scan_id) / f"{name}.h5", view.modes
                    )
                seconds["transfer_out"] = 0.5
                ledger.update_progress(
                    folder,
                    view_file,
                    RunProgress(view.status, None, seconds, view.error, {"iterations": 30}),
                )
            ledger.scan_submitted(folder)
    finally:
        ledger.close()
    return config


def sample_tomography_site(
    root: pathlib.Path,
    views: int = 168,
    bad: Sequence[int] = (100,),
    folder: str = "scan300",
    running: Sequence[int] = (),
) -> Config:
    """The paper's case: one scan of ``views`` views, each at its rotation angle
    (``180 / views`` degrees apart), every one succeeded with a result file, except the
    ``running`` ones (computing, with progress). Results are made cheaply: one file is
    written by :func:`recon.result.write_result`, the others are copies whose object is
    replaced: a disc that moves sideways with the angle (a sinogram's sine), except the
    ``bad`` views, which are noise (a view that did not converge)."""
    import shutil

    import h5py

    config = resolve_paths(Config(), root)
    scan_id = int("".join(c for c in folder if c.isdigit()))
    recon = config.acquisition_root / "recon" / str(scan_id)
    template = write_sample_result(root / "template.h5", object_shape=(64, 64))
    rows, cols = np.indices((64, 64), dtype=np.float64)
    rng = np.random.default_rng(0)
    ledger = Ledger(config.ledger)
    try:
        ledger.scan_seen(folder, scan_id)
        for index in range(views):
            angle = index * 180.0 / views
            name = f"view{index:03d}"
            view_file = f"{name}.cxi"
            request = ViewRequest(scan_id, view_file, folder, {"iterations": 30})
            ledger.claim(request, "local")
            ledger.mark_submitting(folder, view_file)
            ledger.mark_started(folder, view_file, StartedRun(f"run-{index}"))
            if index in running:
                progress = {"iteration": 12, "iterations": 30, "cost": 0.5, "eta": 9.0}
                ledger.update_progress(
                    folder,
                    view_file,
                    RunProgress(
                        RunStatus.ACTIVE,
                        "compute",
                        {"transfer_in": 0.2},
                        None,
                        {"progress": progress},
                    ),
                )
                continue
            centre = 32 + 14 * np.sin(np.radians(angle * 2))
            disc = (rows - 32) ** 2 + (cols - centre) ** 2 < 8**2
            phase = rng.normal(0, 1.0, (64, 64)) if index in bad else 0.8 * disc
            result = recon / f"{name}.h5"
            result.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, result)
            with h5py.File(result, "a") as handle:
                handle["object"][...] = np.exp(1j * phase).astype(np.complex64)
            output = {"iterations": 30, "final_cost": 1.0, "angle_deg": angle}
            ledger.update_progress(
                folder,
                view_file,
                RunProgress(RunStatus.SUCCEEDED, None, {"compute": 2.0}, None, output),
            )
        ledger.scan_submitted(folder)
    finally:
        ledger.close()
    return config
