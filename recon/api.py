"""One call from a file to a result file: what the CLI and the compute function use."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence

from recon.options import ReconOptions
from recon.ptycho import ProgressCallback, reconstruct


def reconstruct_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    options: ReconOptions | None = None,
    device_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    *,
    preview_deramp: bool = True,
) -> dict:
    """Load a view (CXI, or the npz test format), reconstruct it, write the result.

    Writes ``output_path`` (HDF5, see ``recon.result``) and a PNG preview beside it
    (with the object's linear phase ramp removed unless ``preview_deramp`` is False).
    Returns a small JSON-ready summary: output and preview paths, iterations run, final
    cost, devices, backend and seconds per stage (load, solve, write), and with
    ``options.holdout_fraction`` the held-out patterns' count and the best iteration
    (whose object and probe were written; see ``recon.holdout``). Raises
    :class:`recon.errors.InputError` (naming the file and dataset) for bad input.
    """
    import numpy as np

    from recon.cxi import PLANCK_TIMES_LIGHT_SPEED, load_scan
    from recon.result import write_result

    options = options or ReconOptions()
    output_path = pathlib.Path(output_path)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    scan = load_scan(input_path)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    extra_attrs: dict = {"input": str(input_path)}
    if options.holdout_fraction > 0:
        from recon.holdout import reconstruct_with_holdout

        result, report = reconstruct_with_holdout(
            scan, options, device_ids=device_ids, progress=progress
        )
        extra_attrs["holdout"] = report.to_dict()
    else:
        result = reconstruct(scan, options, device_ids=device_ids, progress=progress)
    iterations = len(result.cost) - 1
    seconds["solve"] = time.perf_counter() - start

    start = time.perf_counter()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    per_iteration = sum(result.seconds_per_iteration) / max(len(result.seconds_per_iteration), 1)
    # Refined positions: the solver's own field when it has one, else the positions it
    # used when they differ from the reported ones.
    refined = getattr(result, "refined_positions", None)
    if refined is None and not np.array_equal(result.positions, scan.positions):
        refined = result.positions
    h5_path, png_path = write_result(
        output_path,
        object=result.object,
        probe=result.probe,
        cost=result.cost,
        positions=scan.positions,
        refined_positions=refined,
        energy_j=PLANCK_TIMES_LIGHT_SPEED / scan.wavelength if scan.wavelength else None,
        distance_m=scan.distance,
        options=options.to_dict(),
        pixel_size=scan.pixel_size,
        iterations=iterations,
        devices=result.devices,
        timings={**seconds, "per_iteration": per_iteration},
        backend=result.backend,
        extra_attrs=extra_attrs,
        preview_deramp=preview_deramp,
    )
    seconds["write"] = time.perf_counter() - start
    summary = {
        "output": str(h5_path),
        "preview": str(png_path),
        "iterations": iterations,
        "initial_cost": float(result.cost[0]),
        "final_cost": float(result.cost[-1]),
        "devices": list(result.devices),
        "backend": result.backend,
        "seconds": seconds,
        "seconds_per_iteration": per_iteration,
    }
    if "holdout" in extra_attrs:
        holdout = extra_attrs["holdout"]
        summary["holdout"] = {k: holdout[k] for k in ("patterns", "best_iteration")}
    return summary
