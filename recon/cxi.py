"""Scan input: CXI/HDF5 files and the Tike-style ``.npz`` layout, to a validated ScanData.

Both loaders end in :func:`validated_scan`, so the same checks and the same
messages apply whatever the source. Every error names the file first, then the
dataset and what was expected; no h5py, OSError or KeyError reaches the caller.

Conventions (the project's data contract, ``DESIGN.md``):

- ``data`` : (N_POS, DET_H, DET_W) photon counts, zero frequency at the centre.
- ``positions`` : (N_POS, 2) float32, (row, col) of the top-left corner of each
  probe patch in object pixels, shifted so the smallest row and the smallest
  column are :data:`POSITION_MARGIN`.
- CXI translations are in metres with columns (x, y, z): x is horizontal (object
  columns), y is vertical (object rows); the probe sits at +translation on the
  object.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import os
import pathlib
import tempfile
import zipfile
from typing import Any

import h5py
import numpy as np

from recon.backend import COMPLEX, REAL
from recon.errors import InputError, InputFileNotFound
from recon.hdf5_confined import (
    ExternalReferenceRefused,
    Roots,
    check_hdf5,
    confine_path,
    open_hdf5,
)
from recon.memory import check_memory
from recon.scan import ScanData

#: Planck constant times the speed of light, in joule metres (exact SI values).
PLANCK_TIMES_LIGHT_SPEED = 6.62607015e-34 * 299_792_458.0

#: Loaders shift positions so the smallest row and column land this many pixels in.
POSITION_MARGIN = 2

#: Smallest detector size (pixels per side) a scan may have.
MIN_DETECTOR_PIXELS = 8

#: Relative difference above which row and column object pixel sizes count as different.
PIXEL_SIZE_TOLERANCE = 1e-6

DATA_PATH = "/entry_1/data_1/data"
TRANSLATION_PATH = "/entry_1/sample_1/geometry_1/translation"
DETECTOR_PATH = "/entry_1/instrument_1/detector_1"
DISTANCE_PATH = f"{DETECTOR_PATH}/distance"
X_PIXEL_SIZE_PATH = f"{DETECTOR_PATH}/x_pixel_size"
Y_PIXEL_SIZE_PATH = f"{DETECTOR_PATH}/y_pixel_size"
MASK_PATH = f"{DETECTOR_PATH}/mask"
SOURCE_PATH = "/entry_1/instrument_1/source_1"
ENERGY_PATH = f"{SOURCE_PATH}/energy"
PROBE_PATHS = (f"{SOURCE_PATH}/probe", f"{SOURCE_PATH}/illumination")
#: Optional: the sample's rotation angle of this view in degrees (a tomographic series),
#: a scalar. Not used by the reconstruction; the portal sorts a scan's views by it.
ROTATION_ANGLE_PATH = "/entry_1/sample_1/geometry_1/rotation_angle"

HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5")
NPZ_SUFFIXES = (".npz", ".npz.bz2")


def wavelength_from_energy(energy_j: float) -> float:
    """Photon wavelength in metres for a photon energy in joules (lambda = h c / E)."""
    return PLANCK_TIMES_LIGHT_SPEED / energy_j


def read_rotation_angle(path: str | os.PathLike[str], allowed_roots: Roots = None) -> float | None:
    """The view's rotation angle in degrees (:data:`ROTATION_ANGLE_PATH`), or None when
    the file does not record one or it is not one finite number. With ``allowed_roots``
    the file is opened confined (:mod:`recon.hdf5_confined`): a link out is not followed."""
    import math

    try:
        with open_hdf5(path, allowed_roots) as handle:
            if ROTATION_ANGLE_PATH not in handle:
                return None
            value = np.asarray(handle[ROTATION_ANGLE_PATH][()], dtype=np.float64)
    except (OSError, TypeError, ValueError, InputError):
        return None
    if value.size != 1 or not math.isfinite(float(value.reshape(-1)[0])):
        return None
    return float(value.reshape(-1)[0])


def load_scan(
    path: str | os.PathLike[str],
    *,
    memory_limit: int | None = None,
    allowed_roots: Roots = None,
) -> ScanData:
    """Load one view from a CXI/HDF5 file (``.cxi``, ``.h5``, ``.hdf5``) or an
    ``.npz`` / ``.npz.bz2`` file, chosen by the file name's suffix.

    ``memory_limit``: bytes the reconstruction may use (default: ``recon.memory``'s
    limit); a view estimated to need more is refused before its patterns are read.
    ``allowed_roots``: when given, the file and everything it links to must lie under
    them (:mod:`recon.hdf5_confined`); None reads as h5py would.
    """
    path = pathlib.Path(path)
    confine_path(path, allowed_roots)
    problem = describe_non_file(path)
    if problem is not None and problem != "does not exist":
        raise InputError(f"{path}: {problem}")  # a folder named view.cxi, a FIFO, ...
    name = path.name.lower()
    if name.endswith(HDF5_SUFFIXES):
        return load_cxi(path, memory_limit=memory_limit, allowed_roots=allowed_roots)
    if name.endswith(NPZ_SUFFIXES):  # a zip of arrays: it cannot name other files
        return load_npz(path, memory_limit=memory_limit)
    raise InputError(
        f"{path}: unknown input format; expected one of {', '.join(HDF5_SUFFIXES + NPZ_SUFFIXES)}"
    )


# --------------------------------------------------------------------------- CXI


def load_cxi(
    path: str | os.PathLike[str],
    *,
    memory_limit: int | None = None,
    allowed_roots: Roots = None,
) -> ScanData:
    """Load one view from a CXI file (see the module docstring for the layout).

    Returns a ScanData with ``pixel_size`` (object pixel size in metres), ``wavelength``
    and ``distance`` filled. Raises :class:`InputFileNotFound` or :class:`InputError`
    (:class:`~recon.errors.InputTooLargeError` when the view would need more than
    ``memory_limit`` bytes: checked from the dataset's shape and the positions'
    extent before the patterns are read). With ``allowed_roots``, a file that links
    (external links, virtual datasets) outside them, or keeps data in external raw
    storage, is refused before anything is read
    (:class:`~recon.hdf5_confined.ExternalReferenceRefused`).
    """
    path = pathlib.Path(path)
    _check_is_file(path)
    check_hdf5(path, allowed_roots)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise _unreadable(path, err) from err
    with handle:
        data_item = _dataset(path, handle, DATA_PATH)
        _check_data_shape(data_item, str(path), DATA_PATH)
        n_patterns, height, width = (int(n) for n in data_item.shape)
        # The patterns alone must fit before even the positions are read (they are as
        # many), then the positions' shape must match before they are read.
        _check_positions_fit(
            path, np.zeros((1, 2)), (n_patterns, height, width), data_item.dtype.itemsize,
            memory_limit,
        )  # fmt: skip
        _check_translation_shape(path, _dataset(path, handle, TRANSLATION_PATH).shape, n_patterns)
        translation = _read_dataset(path, handle, TRANSLATION_PATH)
        distance = _read_scalar(path, handle, DISTANCE_PATH)
        x_pixel = _read_scalar(path, handle, X_PIXEL_SIZE_PATH)
        y_pixel = _read_scalar(path, handle, Y_PIXEL_SIZE_PATH)
        energy = _read_scalar(path, handle, ENERGY_PATH)
        positions_m = _translation_rows_cols(path, translation, n_patterns)
        wavelength = wavelength_from_energy(energy)
        row_pixel = wavelength * distance / (height * y_pixel)
        col_pixel = wavelength * distance / (width * x_pixel)
        _check_positions_fit(
            path, positions_m / np.array([row_pixel, col_pixel]), (n_patterns, height, width),
            data_item.dtype.itemsize, memory_limit,
        )  # fmt: skip
        data = _read_dataset(path, handle, DATA_PATH)
        probe = None
        probe_name = PROBE_PATHS[0]
        for probe_path in PROBE_PATHS:
            if probe_path in handle:
                probe = _read_dataset(path, handle, probe_path)
                probe_name = probe_path
                break
        mask = _read_dataset(path, handle, MASK_PATH) if MASK_PATH in handle else None

    if abs(row_pixel - col_pixel) > PIXEL_SIZE_TOLERANCE * row_pixel:
        raise InputError(
            f"{path}: object pixels are not square (rows {row_pixel:.6g} m, columns "
            f"{col_pixel:.6g} m from detector {height}x{width} pixels of "
            f"{y_pixel:.6g} x {x_pixel:.6g} m); non-square pixels are not supported"
        )
    positions = positions_m / np.array([row_pixel, col_pixel])

    if probe is not None:
        probe = _squeeze_leading(probe)
        if probe.shape != (height, width):
            raise InputError(
                f"{path}: {probe_name} has shape {probe.shape}; expected ({height}, {width}) "
                "to match the diffraction patterns"
            )
    valid_mask = None
    if mask is not None:
        mask = _squeeze_leading(mask)
        if mask.shape != (height, width):
            raise InputError(
                f"{path}: {MASK_PATH} has shape {mask.shape}; expected ({height}, {width}) "
                "to match the diffraction patterns"
            )
        valid_mask = mask == 0  # CXI: nonzero marks a bad pixel

    return validated_scan(
        data,
        positions,
        probe=probe,
        mask=valid_mask,
        pixel_size=float(row_pixel),
        wavelength=float(wavelength),
        distance=float(distance),
        source=str(path),
        data_name=DATA_PATH,
        positions_name=TRANSLATION_PATH,
        probe_name=probe_name if probe is not None else "probe",
        memory_limit=memory_limit,
    )


def _check_is_file(path: pathlib.Path) -> None:
    """InputFileNotFound when ``path`` does not exist; InputError saying what it is when
    it is a folder, a FIFO, a socket or a device (never opened: a FIFO would block)."""
    problem = describe_non_file(path)
    if problem == "does not exist":
        raise InputFileNotFound(f"{path}: no such file")
    if problem is not None:
        raise InputError(f"{path}: {problem}")


def _check_positions_fit(
    path: pathlib.Path,
    positions: np.ndarray,
    shape: tuple[int, int, int],
    itemsize: int,
    memory_limit: int | None,
) -> None:
    """Refuse non-finite positions, and a view whose estimated memory (patterns from the
    dataset's shape and dtype, object from the positions' extent) exceeds the limit."""
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{path}: {TRANSLATION_PATH} has NaN or infinite positions")
    extent = np.ptp(positions, axis=0) if len(positions) else np.zeros(2)
    check_memory(
        str(path),
        shape[0],
        (shape[1], shape[2]),
        (float(extent[0]), float(extent[1])),
        data_itemsize=itemsize,
        limit=memory_limit,
        hint=f"; check {TRANSLATION_PATH} (positions span {extent[0]:.4g} x {extent[1]:.4g} "
        f"object pixels) and the shape of {DATA_PATH}, or raise the limit "
        "(PTYCHOFLOW_MEMORY_LIMIT, or --memory-limit for ptychoflow recon)",
    )


def describe_non_file(path: pathlib.Path) -> str | None:
    """Why ``path`` cannot be read as a view file (``"is a folder"``, ``"is a FIFO"``, ...),
    or None when it is a regular file. Never opens it (a FIFO would block)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be inspected ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a CXI/HDF5 file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a CXI/HDF5 file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a CXI/HDF5 file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a CXI/HDF5 file"
    return "is not a regular file"


def peek_view_shape(
    path: str | os.PathLike[str], label: str | None = None, *, allowed_roots: Roots = None
) -> tuple[int, int, int]:
    """(N_POS, DET_H, DET_W) of a view's patterns, reading only the dataset's shape
    (with ``allowed_roots``, after checking the file's links: :func:`load_cxi`).

    The cheap check run before a run is spent on a view (launcher, replay) and before
    the compute function claims GPUs. Raises :class:`InputFileNotFound` when the path
    does not exist, :class:`InputError` naming ``label`` (default: the path) and what
    is wrong otherwise.
    """
    path = pathlib.Path(path)
    where = label or str(path)
    problem = describe_non_file(path)
    if problem == "does not exist":
        raise InputFileNotFound(f"{where}: input file not found ({path})")
    if problem is not None:
        raise InputError(f"{where}: {problem}")
    confine_path(path, allowed_roots)
    try:
        check_hdf5(path, allowed_roots)
    except ExternalReferenceRefused:
        raise
    except InputError as err:  # the file itself, or a file it links to, is not HDF5
        raise InputError(f"{where}: not a readable HDF5/CXI file ({err})") from err
    try:
        with h5py.File(path, "r") as file:
            data = file.get(DATA_PATH)
            if data is None:
                raise InputError(f"{where}: {DATA_PATH} is missing")
            if not isinstance(data, h5py.Dataset):
                raise InputError(f"{where}: {DATA_PATH} is a group; expected (N, H, W) patterns")
            shape = tuple(int(n) for n in data.shape)
    except (OSError, KeyError, RuntimeError) as err:
        raise InputError(f"{where}: not a readable HDF5/CXI file ({err})") from err
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(
            f"{where}: {DATA_PATH} has shape {shape}; expected (N_POS, DET_H, DET_W) "
            "with at least one pattern"
        )
    return shape  # type: ignore[return-value]


def _unreadable(path: pathlib.Path, err: BaseException) -> InputError:
    return InputError(f"{path}: not a readable HDF5 file (truncated or another format): {err}")


def _dataset(path: pathlib.Path, handle: h5py.File, name: str) -> h5py.Dataset:
    """The dataset object (nothing read yet) with file-naming errors."""
    try:
        item = handle.get(name)
    except (OSError, KeyError, RuntimeError) as err:  # broken links or a damaged file
        raise _unreadable(path, err) from err
    if item is None:
        raise InputError(f"{path}: {name} is missing")
    if not isinstance(item, h5py.Dataset):
        raise InputError(f"{path}: {name} is a group; expected a dataset")
    return item


def _read_dataset(path: pathlib.Path, handle: h5py.File, name: str) -> np.ndarray:
    """Read a whole dataset into memory with file-naming errors."""
    item = _dataset(path, handle, name)
    try:
        return np.asarray(item[()])
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise _unreadable(path, err) from err


def _read_scalar(path: pathlib.Path, handle: h5py.File, name: str) -> float:
    """Read a positive finite number stored as a scalar or a one-element dataset."""
    value = _read_dataset(path, handle, name)
    if value.size != 1:
        raise InputError(f"{path}: {name} has shape {value.shape}; expected a single number")
    try:
        number = float(value.reshape(-1)[0])
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: {name} is not a number ({value.dtype})") from err
    if not np.isfinite(number) or number <= 0:
        raise InputError(f"{path}: {name} is {number}; expected a positive number")
    return number


def _check_translation_shape(path: pathlib.Path, shape: tuple[int, ...], n_patterns: int) -> None:
    """(N, 3) or (3, N) with N = ``n_patterns``; checked on the dataset before reading it."""
    if len(shape) != 2 or 3 not in shape:
        raise InputError(
            f"{path}: {TRANSLATION_PATH} has shape {shape}; expected (N, 3) or "
            "(3, N) (x, y, z in metres)"
        )
    if tuple(shape) not in ((n_patterns, 3), (3, n_patterns)):
        count = shape[0] if shape[1] == 3 else shape[1]
        raise InputError(
            f"{path}: {TRANSLATION_PATH} holds {count} positions but {DATA_PATH} holds "
            f"{n_patterns} patterns; expected one position per pattern"
        )


def _translation_rows_cols(
    path: pathlib.Path, translation: np.ndarray, n_patterns: int
) -> np.ndarray:
    """(N, 3) or (3, N) translations (x, y, z) in metres -> (N, 2) (y, x) = (row, col)."""
    _check_translation_shape(path, translation.shape, n_patterns)
    xyz = translation if translation.shape[1] == 3 else translation.T
    try:
        xyz = xyz.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: {TRANSLATION_PATH} is not numeric ({xyz.dtype})") from err
    return np.stack([xyz[:, 1], xyz[:, 0]], axis=1)


def _squeeze_leading(array: np.ndarray) -> np.ndarray:
    """Drop leading axes of length one ((1, 1, H, W) -> (H, W))."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


# --------------------------------------------------------------------------- npz


def load_npz(
    path: str | os.PathLike[str], *, view: int = 0, memory_limit: int | None = None
) -> ScanData:
    """Load one view from the Tike test-data layout (``.npz`` or ``.npz.bz2``).

    Keys: ``data`` (N_VIEW, N_POS, H, W) or (N_POS, H, W) counts with the zero
    frequency at the array corners (they are fft-shifted to the centre here);
    ``scan`` (N_VIEW, N_POS, 2) or (N_POS, 2) (row, col) in object pixels;
    optional ``probe`` with leading singleton axes and (H, W) last. The file has
    no geometry, so ``pixel_size`` and ``wavelength`` are None.
    """
    path = pathlib.Path(path)
    _check_is_file(path)
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".bz2"):
            raw = bz2.decompress(raw)
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(
            f"{path}: not a readable npz file (truncated or another format): {err}"
        ) from err
    for key in ("data", "scan"):
        if key not in arrays:
            raise InputError(
                f"{path}: key '{key}' is missing (found {sorted(arrays)}); expected "
                "'data' and 'scan'"
            )
    data, scan = arrays["data"], arrays["scan"]
    if data.ndim == 4:
        if scan.ndim != 3 or scan.shape[0] != data.shape[0]:
            raise InputError(
                f"{path}: 'scan' has shape {scan.shape}; expected (N_VIEW, N, 2) with "
                f"N_VIEW = {data.shape[0]} like 'data'"
            )
        if not 0 <= view < data.shape[0]:
            raise InputError(f"{path}: view {view} asked for; the file holds {data.shape[0]}")
        data, scan = data[view], scan[view]
    elif data.ndim != 3:
        raise InputError(
            f"{path}: 'data' has shape {data.shape}; expected (N, H, W) or (N_VIEW, N, H, W)"
        )
    if scan.ndim != 2 or scan.shape[1] != 2:
        raise InputError(f"{path}: 'scan' has shape {scan.shape}; expected (N, 2) (row, col)")
    _check_data_shape(data, str(path), "'data'")
    data = np.fft.fftshift(data, axes=(-2, -1))
    probe = arrays.get("probe")
    if probe is not None:
        probe = _squeeze_leading(probe)
        if probe.shape != data.shape[1:]:
            raise InputError(
                f"{path}: 'probe' has shape {probe.shape}; expected {data.shape[1:]} "
                "(optionally with leading axes of length one)"
            )
    return validated_scan(
        data,
        scan,
        probe=probe,
        source=str(path),
        data_name="'data'",
        positions_name="'scan'",
        probe_name="'probe'",
        memory_limit=memory_limit,
    )


# --------------------------------------------------------------------------- shared checks


def validated_scan(
    data: Any,
    positions: Any,
    *,
    probe: Any = None,
    mask: Any = None,
    pixel_size: float | None = None,
    wavelength: float | None = None,
    distance: float | None = None,
    source: str = "<memory>",
    data_name: str = "data",
    positions_name: str = "positions",
    probe_name: str = "probe",
    memory_limit: int | None = None,
) -> ScanData:
    """Check one view and convert it to the ScanData dtypes; the single gate every
    loader passes through.

    data : (N_POS, H, W) counts, any real numeric dtype -> float32
    positions : (N_POS, 2) (row, col) object pixels -> float32, shifted so the
        smallest row and column are :data:`POSITION_MARGIN`
    probe : (H, W) or None -> complex64
    mask : (H, W) bool or None, True where the pixel is valid
    memory_limit : bytes the reconstruction may use (see ``recon.memory``)

    Raises :class:`InputError` with ``source`` and the dataset names in the message:
    also for counts with no positive value (nothing was measured) and for a view whose
    object (from the positions' extent) would not fit in ``memory_limit``.
    """
    data = np.asarray(data)
    positions = np.asarray(positions)
    _check_data_shape(data, source, data_name)
    n_patterns, height, width = data.shape
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise InputError(f"{source}: {data_name} has dtype {data.dtype}; expected real counts")
    data = np.ascontiguousarray(data, dtype=REAL)
    bad = ~np.isfinite(data) | (data < 0)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        first = int(np.flatnonzero(bad.reshape(n_patterns, -1).any(axis=1))[0])
        raise InputError(
            f"{source}: {data_name} has {n_bad} NaN, infinite or negative values "
            f"(first in pattern {first}); expected finite non-negative counts"
        )
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(
            f"{source}: {positions_name} gives positions of shape {positions.shape}; "
            "expected (N, 2) (row, col)"
        )
    if positions.shape[0] != n_patterns:
        raise InputError(
            f"{source}: {positions_name} holds {positions.shape[0]} positions but "
            f"{data_name} holds {n_patterns} patterns; expected one position per pattern"
        )
    positions = positions.astype(np.float64)
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{source}: {positions_name} has NaN or infinite positions")
    extent = np.ptp(positions, axis=0)
    check_memory(
        source, n_patterns, (height, width), (float(extent[0]), float(extent[1])),
        limit=memory_limit,
        hint=f"; check {positions_name} (positions span {extent[0]:.4g} x {extent[1]:.4g} "
        "object pixels), or raise the limit (PTYCHOFLOW_MEMORY_LIMIT)",
    )  # fmt: skip
    positions = positions - positions.min(axis=0) + POSITION_MARGIN
    positions = np.ascontiguousarray(positions, dtype=REAL)
    if probe is not None:
        probe = np.asarray(probe)
        if probe.shape != (height, width):
            raise InputError(
                f"{source}: {probe_name} has shape {probe.shape}; expected ({height}, {width})"
            )
        probe = np.ascontiguousarray(probe, dtype=COMPLEX)
        if not np.all(np.isfinite(probe)):
            raise InputError(f"{source}: {probe_name} has NaN or infinite values")
    if mask is not None:
        mask = np.ascontiguousarray(np.asarray(mask, dtype=bool))
        if mask.shape != (height, width):
            raise InputError(f"{source}: mask has shape {mask.shape}; expected ({height}, {width})")
        if not mask.any():
            raise InputError(f"{source}: the detector mask marks every pixel as bad")
    measured = data if mask is None else data[:, mask]
    if not np.any(measured > 0):
        raise InputError(
            f"{source}: {data_name} has no positive counts (all {n_patterns} patterns are zero"
            f"{' on the unmasked pixels' if mask is not None else ''}); nothing was measured: "
            "check the detector and the file"
        )
    return ScanData(
        data=data,
        positions=positions,
        probe=probe,
        mask=mask,
        pixel_size=pixel_size,
        wavelength=wavelength,
        distance=distance,
        source=source,
    )


def _check_data_shape(data: np.ndarray, source: str, data_name: str) -> None:
    """Rank, an empty scan and a too small detector, before anything divides by them."""
    if data.ndim != 3:
        raise InputError(
            f"{source}: {data_name} has shape {data.shape}; expected (N, H, W) "
            "(patterns, detector rows, detector columns)"
        )
    n_patterns, height, width = data.shape
    if n_patterns < 1:
        raise InputError(f"{source}: {data_name} holds no patterns (empty scan)")
    if height < MIN_DETECTOR_PIXELS or width < MIN_DETECTOR_PIXELS:
        raise InputError(
            f"{source}: {data_name} patterns are {height}x{width}; expected at least "
            f"{MIN_DETECTOR_PIXELS}x{MIN_DETECTOR_PIXELS} detector pixels"
        )


# --------------------------------------------------------------------------- writing


def write_cxi(
    path: str | os.PathLike[str],
    data: np.ndarray,
    positions_px: np.ndarray,
    pixel_size: float,
    *,
    energy_j: float,
    distance_m: float,
    probe: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> pathlib.Path:
    """Write one view as a CXI file that :func:`load_cxi` reads back.

    data : (N_POS, H, W) counts, zero frequency centred
    positions_px : (N_POS, 2) (row, col) in object pixels
    pixel_size : object pixel size in metres (square pixels)
    energy_j, distance_m : photon energy (J) and sample-detector distance (m); the
        detector pixel sizes are derived so that loading gives ``pixel_size`` back.
    probe : (H, W) complex or None, written to ``source_1/probe``
    mask : (H, W) bool or None, True where VALID (stored with the CXI convention,
        nonzero = bad)

    The file appears atomically (written beside the target, then renamed), so a
    folder watcher never sees half a file.
    """
    path = pathlib.Path(path)
    data = np.asarray(data)
    positions_px = np.asarray(positions_px, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"data has shape {data.shape}; expected (N, H, W)")
    n_patterns, height, width = data.shape
    if positions_px.shape != (n_patterns, 2):
        raise ValueError(f"positions_px has shape {positions_px.shape}; expected ({n_patterns}, 2)")
    wavelength = wavelength_from_energy(energy_j)
    y_pixel = wavelength * distance_m / (height * pixel_size)
    x_pixel = wavelength * distance_m / (width * pixel_size)
    translation = np.zeros((n_patterns, 3))
    translation[:, 0] = positions_px[:, 1] * pixel_size  # x: columns
    translation[:, 1] = positions_px[:, 0] * pixel_size  # y: rows

    def fill(handle: h5py.File) -> None:
        handle.attrs["cxi_version"] = 150
        entry = handle.create_group("entry_1")
        entry.create_dataset("data_1/data", data=data, chunks=(1, height, width))
        entry.create_dataset("sample_1/geometry_1/translation", data=translation)
        detector = entry.create_group("instrument_1/detector_1")
        detector["distance"] = float(distance_m)
        detector["x_pixel_size"] = float(x_pixel)
        detector["y_pixel_size"] = float(y_pixel)
        if mask is not None:
            detector["mask"] = (~np.asarray(mask, dtype=bool)).astype(np.uint32)
        source = entry.create_group("instrument_1/source_1")
        source["energy"] = float(energy_j)
        if probe is not None:
            source["probe"] = np.asarray(probe, dtype=COMPLEX)

    write_hdf5_atomically(path, fill)
    return path


def write_hdf5_atomically(path: pathlib.Path, fill: Any, mode: int | None = None) -> None:
    """Create ``path`` by calling ``fill(h5py.File)`` on a temporary file beside it
    and renaming it into place; the temporary file is removed on any failure, a
    KeyboardInterrupt included. ``mode``: permission bits of the file (default 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle_fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle_fd)
    try:
        with h5py.File(temp_name, "w") as handle:
            fill(handle)
        if mode is not None:
            os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
