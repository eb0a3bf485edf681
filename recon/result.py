"""Result files: one HDF5 file per reconstructed view, and a PNG preview beside it.

One file, two readers: our own datasets, and the product layout of Ptychodus
(``ptychodus.api.io.load_product``, checked against ptychodus 1.7), so a result opens in
the field's GUI. Layout of ``<view>.h5`` (the data contract in ``DESIGN.md``):

- ``object`` (OBJ_H, OBJ_W) complex64; ``probe`` (H, W) or (MODES, H, W) complex64 (every
  incoherent mode; Ptychodus reads a 3-D probe as modes); both datasets are shared by
  the two layouts;
- ours: ``cost`` (N_ITER,) float64, ``positions`` (N_POS, 2) float32 (row, col) top-left
  corners in object pixels as reported by the input, and ``refined_positions`` (same
  shape) when the solver refined them; root attributes ``options`` (JSON),
  ``pixel_size`` (metres, NaN when unknown), ``iterations``, ``devices`` (JSON list),
  ``timings`` (JSON, seconds per stage), ``backend``, ``created`` (ISO 8601, UTC),
  ``ptychoflow_version``, ``json_attributes`` (names stored as JSON);
- Ptychodus: ``probe_position_indexes``, ``probe_position_x_m``, ``probe_position_y_m``
  (probe centres in metres: the refined positions when there are any), ``loss_epochs``
  and ``loss_values`` (our ``cost``), ``object_layer_spacing_m`` (empty: one layer);
  attributes ``center_x_m``, ``center_y_m``, ``pixel_width_m``, ``pixel_height_m`` on
  ``object`` and the pixel sizes on ``probe``; root attributes ``name``, ``comments``,
  ``detector_object_distance_m``, ``photon_energy_eV``, ``probe_photon_count`` and the
  other product metadata (zero when unknown). The object's centre is placed so that
  metres / pixel size = object pixel coordinates of the probe centre. Without a known
  pixel size (npz input) the metres are object pixels (pixel size 1).

``<view>.png`` shows the phase and the amplitude of the scanned region side by side, and
each probe mode's amplitude with its share of the power.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import tempfile
from typing import Any

import h5py
import numpy as np

from recon.backend import COMPLEX, REAL
from recon.cxi import write_hdf5_atomically
from recon.errors import InputError, InputFileNotFound
from recon.preview import GAP, LABEL_HEIGHT

#: The preview's geometry (it lives with the drawing code, shared with the portal).
PREVIEW_GAP = GAP
PREVIEW_LABEL_HEIGHT = LABEL_HEIGHT

DATASETS = ("object", "probe", "cost", "positions")
OPTIONAL_DATASETS = ("refined_positions",)
JSON_ATTRIBUTES = ("options", "devices", "timings")
#: Electron volt in joules (exact SI value).
ELECTRON_VOLT_J = 1.602176634e-19
#: Root attributes of the Ptychodus product layout that we write (``load_product`` reads
#: these names; see ``ptychodus.api.io.ProductFileKeys``).
PTYCHODUS_ATTRIBUTES = (
    "name",
    "comments",
    "detector_object_distance_m",
    "photon_energy_eV",
    "probe_photon_count",
    "exposure_time_s",
    "mass_attenuation_m2_per_kg",
    "tomography_angle_deg",
    "focus_object_distance_m",
    "tilt_angle_deg",
    "far_field",
)
PTYCHODUS_DATASETS = (
    "probe_position_indexes",
    "probe_position_x_m",
    "probe_position_y_m",
    "object_layer_spacing_m",
    "loss_epochs",
    "loss_values",
)


def ptychoflow_version() -> str:
    try:
        return importlib.metadata.version("ptychoflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_result(
    path: str | os.PathLike[str],
    *,
    object: np.ndarray,
    probe: np.ndarray,
    cost: Any,
    positions: np.ndarray,
    options: dict[str, Any],
    pixel_size: float | None,
    iterations: int,
    devices: list[Any],
    timings: dict[str, float],
    backend: str,
    extra_attrs: dict[str, Any] | None = None,
    preview_deramp: bool = True,
    refined_positions: np.ndarray | None = None,
    energy_j: float | None = None,
    distance_m: float | None = None,
    name: str | None = None,
    mode: int | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the result file (atomically: a temporary file beside it, then a rename)
    and its PNG preview ``<stem>.png``. Arrays must be on the host (NumPy).

    object : (OBJ_H, OBJ_W) complex; probe : (H, W) or (MODES, H, W) complex;
    cost : (N_ITER,) floats; positions : (N_POS, 2) (row, col) object pixels, as reported.
    refined_positions : (N_POS, 2) or None, the positions the solver ended with.
    energy_j, distance_m : photon energy (J) and sample-detector distance (m), None when
        unknown; name : the product name Ptychodus shows (default: the file's stem).
    extra_attrs : more attributes; strings and numbers are stored as they are,
        anything else as JSON (and decoded again by :func:`read_result`).
    preview_deramp : remove the fitted phase ramp in the preview (see :func:`save_preview`).
    mode : permission bits of both files (default: 0600 for the result, the umask's
        default for the preview).

    Returns (h5_path, png_path).
    """
    path = pathlib.Path(path)
    object_ = np.asarray(object, dtype=COMPLEX)
    probe = np.asarray(probe, dtype=COMPLEX)
    cost = np.asarray(cost, dtype=np.float64).reshape(-1)
    positions = np.asarray(positions, dtype=REAL)
    if object_.ndim != 2:
        raise ValueError(f"object has shape {object_.shape}; expected (OBJ_H, OBJ_W)")
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions has shape {positions.shape}; expected (N_POS, 2)")
    if probe.ndim not in (2, 3):
        raise ValueError(f"probe has shape {probe.shape}; expected (H, W) or (MODES, H, W)")
    if refined_positions is not None:
        refined_positions = np.asarray(refined_positions, dtype=REAL)
        if refined_positions.shape != positions.shape:
            raise ValueError(
                f"refined_positions has shape {refined_positions.shape}; expected "
                f"{positions.shape} like positions"
            )
    attributes: dict[str, Any] = {
        "options": json.dumps(options, default=str),
        "pixel_size": float("nan") if pixel_size is None else float(pixel_size),
        "iterations": int(iterations),
        "devices": json.dumps(list(devices), default=str),
        "timings": json.dumps({str(k): float(v) for k, v in timings.items()}),
        "backend": str(backend),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ptychoflow_version": ptychoflow_version(),
    }
    json_names = list(JSON_ATTRIBUTES)
    reserved = (*DATASETS, *OPTIONAL_DATASETS, *PTYCHODUS_ATTRIBUTES, "json_attributes")
    for key, value in (extra_attrs or {}).items():
        if key in attributes or key in reserved:
            raise ValueError(f"extra attribute {key!r} would overwrite a standard one")
        if isinstance(value, str | int | float | bool | np.integer | np.floating):
            attributes[key] = value
        else:
            attributes[key] = json.dumps(value, default=str)
            json_names.append(key)
    attributes["json_attributes"] = json.dumps(json_names)

    product = _ptychodus_product(
        object_,
        probe,
        positions if refined_positions is None else refined_positions,
        cost,
        pixel_size=pixel_size,
        energy_j=energy_j,
        distance_m=distance_m,
        name=name or path.stem,
        comments=f"ptychoflow {attributes['ptychoflow_version']}, "
        f"{int(iterations)} iterations on {backend}",
    )

    def fill(handle: h5py.File) -> None:
        handle.create_dataset("object", data=object_)
        handle.create_dataset("probe", data=probe)
        handle.create_dataset("cost", data=cost)
        handle.create_dataset("positions", data=positions)
        if refined_positions is not None:
            handle.create_dataset("refined_positions", data=refined_positions)
        for key, value in attributes.items():
            handle.attrs[key] = value
        for key, value in product["attributes"].items():
            handle.attrs[key] = value
        for key, value in product["datasets"].items():
            handle.create_dataset(key, data=value)
        for dataset in ("object", "probe"):
            for key, value in product[f"{dataset}_attributes"].items():
                handle[dataset].attrs[key] = value

    write_hdf5_atomically(path, fill, mode=mode)
    png_path = save_preview(
        path.with_suffix(".png"),
        object_,
        positions if refined_positions is None else refined_positions,
        probe.shape[-2:],
        deramp=preview_deramp,
        probe=probe,
        mode=mode,
        pixel_size=pixel_size if pixel_size and math.isfinite(pixel_size) else None,
    )
    return path, png_path


def _ptychodus_product(
    object_: np.ndarray,
    probe: np.ndarray,
    positions: np.ndarray,
    cost: np.ndarray,
    *,
    pixel_size: float | None,
    energy_j: float | None,
    distance_m: float | None,
    name: str,
    comments: str,
) -> dict[str, dict[str, Any]]:
    """The Ptychodus product layout (``ptychodus.api.io.save_product``'s names).

    Ptychodus places probe positions in metres at the probe's centre, and the object's
    pixel (N - 1) / 2 at its ``center_x_m`` / ``center_y_m``; our positions are top-left
    corners in object pixels. The object's centre is put at (N - 1) / 2 pixels from our
    origin, so x_m / pixel size is the object column of the probe centre.
    """
    pixel = float(pixel_size) if pixel_size and math.isfinite(pixel_size) else 1.0
    height, width = object_.shape
    probe_height, probe_width = probe.shape[-2:]
    centre_rows = positions[:, 0].astype(np.float64) + (probe_height - 1) / 2
    centre_cols = positions[:, 1].astype(np.float64) + (probe_width - 1) / 2
    energy_ev = float(energy_j) / ELECTRON_VOLT_J if energy_j else 0.0
    return {
        "attributes": {
            "name": name,
            "comments": comments,
            "detector_object_distance_m": float(distance_m) if distance_m else 0.0,
            "photon_energy_eV": energy_ev,
            "probe_photon_count": float(np.sum(np.abs(probe) ** 2)),
            "exposure_time_s": 0.0,
            "mass_attenuation_m2_per_kg": 0.0,
            "tomography_angle_deg": 0.0,
            "focus_object_distance_m": 0.0,
            "tilt_angle_deg": 0.0,
            "far_field": True,
        },
        "datasets": {
            "probe_position_indexes": np.arange(len(positions), dtype=np.int64),
            "probe_position_x_m": centre_cols * pixel,
            "probe_position_y_m": centre_rows * pixel,
            "object_layer_spacing_m": np.zeros(0, dtype=np.float64),
            "loss_epochs": np.arange(len(cost), dtype=np.int64),
            "loss_values": cost,
        },
        "object_attributes": {
            "center_x_m": (width - 1) / 2 * pixel,
            "center_y_m": (height - 1) / 2 * pixel,
            "pixel_width_m": pixel,
            "pixel_height_m": pixel,
        },
        "probe_attributes": {"pixel_width_m": pixel, "pixel_height_m": pixel},
    }


def probe_power_fractions(probe: np.ndarray) -> np.ndarray:
    """(MODES,) each probe mode's share of the total power; probe (H, W) or (MODES, H, W)."""
    probe = np.asarray(probe)
    modes = probe.reshape(-1, *probe.shape[-2:])
    power = np.sum(np.abs(modes) ** 2, axis=(-2, -1)).astype(np.float64)
    total = power.sum()
    return power / total if total > 0 else power


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result file: the datasets as NumPy arrays and the attributes, with the
    JSON ones decoded and a NaN ``pixel_size`` returned as None.

    A result file is self-contained (we never write a link): one with an external link,
    a virtual dataset or external raw storage is refused before anything is read
    (:class:`recon.hdf5_confined.ExternalReferenceRefused`), so the portal never shows
    another file's data."""
    from recon.hdf5_confined import check_hdf5

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"{path}: no such result file")
    check_hdf5(path, ())
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in DATASETS if name not in handle]
            if missing:
                raise InputError(
                    f"{path}: not a ptychoflow result file ({', '.join(missing)} missing)"
                )
            result: dict[str, Any] = {name: handle[name][()] for name in DATASETS}
            for name in OPTIONAL_DATASETS:
                if name in handle:
                    result[name] = handle[name][()]
            attributes = {name: handle.attrs[name] for name in handle.attrs}
    except OSError as err:
        raise InputError(
            f"{path}: not a readable HDF5 file (truncated or another format): {err}"
        ) from err
    json_names = json.loads(_text(attributes.pop("json_attributes", json.dumps(JSON_ATTRIBUTES))))
    for name, value in attributes.items():
        if isinstance(value, bytes | str):
            value = _text(value)
            if name in json_names:
                value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        result[name] = value
    if isinstance(result.get("pixel_size"), float) and math.isnan(result["pixel_size"]):
        result["pixel_size"] = None
    return result


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- preview


def save_preview(
    png_path: str | os.PathLike[str],
    object: np.ndarray,
    positions: np.ndarray | None = None,
    probe_shape: tuple[int, int] | None = None,
    *,
    deramp: bool = True,
    probe: np.ndarray | None = None,
    mode: int | None = None,
    pixel_size: float | None = None,
) -> pathlib.Path:
    """Save the preview PNG of a result (drawn by :func:`recon.preview.draw_preview`, the
    code the portal's images come from too): the phase (global phase and, with
    ``deramp``, the fitted linear ramp removed) and the amplitude of the illuminated
    region, each stretched between its 1st and 99th percentile, with a colour bar with
    its range and unit and a scale bar from ``pixel_size`` (metres); with ``probe``
    ((H, W) or (MODES, H, W)) each mode's amplitude and phase, titled with its share of
    the power ("probe 1 (81.2 %) amplitude").

    object : (OBJ_H, OBJ_W) complex. ``positions`` ((N_POS, 2) row, col) with ``probe``
    crop to where the scan lit the object; with only ``probe_shape``, to the box the
    positions span. Written to a temporary file beside it (removed on any failure) and
    renamed into place; ``mode``: its permission bits (default: what the umask allows).
    """
    from recon.preview import draw_preview

    png_path = pathlib.Path(png_path)
    object_ = np.asarray(object)
    if object_.ndim != 2:
        raise ValueError(f"object has shape {object_.shape}; expected (OBJ_H, OBJ_W)")
    canvas = draw_preview(
        object_,
        positions,
        probe,
        probe_shape=probe_shape,
        pixel_size=pixel_size,
        deramp=deramp,
    )
    png_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=png_path.parent, prefix=f".{png_path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            canvas.save(temp_file, format="PNG")
        os.chmod(temp_name, _default_file_mode() if mode is None else mode)
        os.replace(temp_name, png_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return png_path


def _default_file_mode() -> int:
    """What ``open(..., "w")`` would give a new file: 0666 less the umask."""
    from recon.output_path import current_umask

    return 0o666 & ~current_umask()
