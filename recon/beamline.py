"""Read what a beamline writes, through Ptychodus's reader plugins, into a ScanData.

A scan folder at a beamline holds that beamline's own files: an Eiger master file with
external links to its data files and a positions text file at APS 33-ID (VelociProbe),
a series of HDF5 files at 19-ID, one HDF5 file with frames and positions at MAX IV
NanoMAX, and so on. Ptychodus keeps a reader for each, registered by a simple name in
``ptychodus.api.plugins.PluginRegistry`` (the ``interop`` extra). This module is the
input layer over them:

1. :class:`BeamlineSettings` (the config's ``[beamline]`` section, the ``recon``
   command's flags) names the diffraction reader, the position reader, which file of the
   folder is which (a glob per role), the geometry the files lack, and how to cut the
   detector down: a square crop around the beam centre (given, from the file, or found),
   binning, bad pixels, a photon threshold.
2. :func:`beamline_files` finds those files; :func:`needed_files` adds what they link to
   (external-link targets, VDS sources): what a transfer must copy, and nothing else.
3. :func:`load_beamline_scan` checks every HDF5 file a reader may open against the
   allowed roots (:mod:`recon.hdf5_confined`), reads the positions and the metadata,
   estimates memory from the declared shapes before a pattern is decompressed, reads the
   cropped patterns, masks bad pixels (the reader's mask, the file's ``pixel_mask``, and
   pixels at the detector's maximum value: 2**32-1 on a 32-bit Eiger marks gaps and dead
   pixels), pairs patterns and positions by scan index the way Ptychodus does, and ends
   in :func:`recon.cxi.validated_scan` like every other loader.

CXI and NPZ never come here: they are read by :mod:`recon.cxi` without Ptychodus.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from recon.errors import InputError, InputFileNotFound, OptionsError
from recon.hdf5_confined import Roots, confine_path, reachable_files
from recon.memory import check_memory
from recon.scan import ScanData

log = logging.getLogger("ptychoflow.beamline")

#: Planck constant times the speed of light in eV metres (exact SI values).
HC_EV_M = 6.62607015e-34 * 299_792_458.0 / 1.602176634e-19

#: What to install when a reader is named and Ptychodus is missing.
INSTALL_HINT = "pip install 'ptychoflow[interop]' (Ptychodus 1.7)"

#: Where Eiger/NeXus master files keep the detector's own bad-pixel mask (nonzero = bad).
PIXEL_MASK_PATHS = (
    "/entry/instrument/detector/pixel_mask",
    "/entry/instrument/detector/detectorSpecific/pixel_mask",
)

#: File name endings read as HDF5 when checking links.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")


#: The usual file names of each reader's roles, (diffraction glob, positions glob), used
#: when the settings leave them empty. An empty positions glob: the diffraction file.
USUAL_FILES = {
    "APS_Velociprobe": ("*_master.h5", "*.txt"),
    "APS_ISN": ("*_00001.h5", "*_positions.h5"),
    "MAX_IV_NanoMAX": ("*.h5", ""),
}
#: Globs of the files a reader opens by itself besides its two roles, when the settings
#: name none: a 19-ID series' other members.
EXTRA_FILES = {"APS_ISN": ("*_[0-9][0-9][0-9][0-9][0-9].h5",)}
#: The diffraction glob of readers not in :data:`USUAL_FILES`.
DEFAULT_DIFFRACTION_GLOB = "*.h5"


class InteropMissingError(OptionsError):
    """A beamline reader is named but Ptychodus (the ``interop`` extra) is not installed."""


@dataclasses.dataclass(frozen=True)
class BeamlineSettings:
    """How to read a scan folder a beamline wrote (the config's ``[beamline]`` section)."""

    reader: str
    """Ptychodus diffraction reader, by its registered simple name (``APS_Velociprobe``;
    ``ptychoflow formats`` lists them)."""
    positions_reader: str = ""
    """Ptychodus position reader (``APS_Velociprobe_LI``); default: the same name as
    ``reader``."""
    diffraction: str = ""
    """Glob of the file handed to the diffraction reader (the master file); the first
    match in name order is the view. Empty: the reader's usual name
    (:data:`USUAL_FILES`, e.g. ``*_master.h5`` for VelociProbe), else ``*.h5``."""
    positions: str = ""
    """Glob of the positions file. Empty: the reader's usual name, else the diffraction
    file itself (NanoMAX keeps both in one file)."""
    files: tuple[str, ...] = ()
    """More globs of files the reader opens by itself (a 19-ID series' other members);
    transferred with the view. External-link targets need no glob: they are found.
    Empty: the reader's usual ones (:data:`EXTRA_FILES`)."""
    distance_m: float | None = None
    """Sample-detector distance; overrides the file's."""
    energy_ev: float | None = None
    """Photon energy in eV; overrides the file's."""
    pixel_size_m: float | None = None
    """Detector pixel pitch (square); overrides the file's."""
    crop: int | None = None
    """Side of the square region cut around the beam centre, in detector pixels; default
    the largest power of two that fits around the centre."""
    center: tuple[int, int] | None = None
    """Beam centre (row, column) in detector pixels; default the file's, else found from
    the patterns (centre of mass of the first patterns' valid pixels)."""
    binning: int = 1
    """Sum ``binning`` x ``binning`` pixels after cropping (the pixel pitch grows)."""
    mask_max_value: bool = True
    """Mask pixels that hold the detector dtype's maximum value in any pattern."""
    photon_threshold: float = 0.0
    """Counts below this become zero."""
    probe_zone_plate: str = ""
    """Ptychodus zone-plate preset for the probe guess (``APS_Velociprobe``); empty: the
    solver makes one from the data."""
    probe_defocus_m: float = 0.0
    """Distance of the sample from the zone plate's focus, for ``probe_zone_plate``."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "[beamline]") -> BeamlineSettings:
        """Validated settings; every problem is an :class:`OptionsError` naming the key."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise OptionsError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(raw)
        if not isinstance(values.get("reader"), str) or not values.get("reader"):
            raise OptionsError(
                f"{where}: reader must name a Ptychodus diffraction reader, e.g. "
                "'APS_Velociprobe' (ptychoflow formats lists them)"
            )
        for key in ("positions_reader", "diffraction", "positions", "probe_zone_plate"):
            if key in values and not isinstance(values[key], str):
                raise OptionsError(f"{where}: {key} = {values[key]!r}: expected a string")
        for key in ("diffraction", "positions"):
            if "/" in values.get(key, "") or values.get(key, "") in (".", ".."):
                raise OptionsError(f"{where}: {key} = {values[key]!r}: a file name glob only")
        files = values.get("files", ())
        if isinstance(files, str) or not all(isinstance(f, str) and "/" not in f for f in files):
            raise OptionsError(f"{where}: files must be a list of file name globs")
        values["files"] = tuple(files)
        for key in ("distance_m", "energy_ev", "pixel_size_m"):
            if values.get(key) is not None:
                values[key] = _positive(values[key], f"{where}: {key}")
        if values.get("crop") is not None:
            crop = values["crop"]
            if isinstance(crop, bool) or not isinstance(crop, int) or crop < 8:
                raise OptionsError(f"{where}: crop = {crop!r}: expected a whole number >= 8")
        if values.get("center") is not None:
            center = values["center"]
            if (
                not isinstance(center, list | tuple)
                or len(center) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in center)
            ):
                raise OptionsError(f"{where}: center = {center!r}: expected [row, column]")
            values["center"] = (int(center[0]), int(center[1]))
        binning = values.get("binning", 1)
        if isinstance(binning, bool) or not isinstance(binning, int) or binning < 1:
            raise OptionsError(f"{where}: binning = {binning!r}: expected a whole number >= 1")
        if not isinstance(values.get("mask_max_value", True), bool):
            raise OptionsError(f"{where}: mask_max_value: expected true or false")
        threshold = values.get("photon_threshold", 0.0)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (math.isfinite(threshold) and threshold >= 0)
        ):
            raise OptionsError(f"{where}: photon_threshold = {threshold!r}: expected a number >= 0")
        values["photon_threshold"] = float(threshold)
        defocus = values.get("probe_defocus_m", 0.0)
        if isinstance(defocus, bool) or not isinstance(defocus, int | float):
            raise OptionsError(f"{where}: probe_defocus_m = {defocus!r}: expected metres")
        values["probe_defocus_m"] = float(defocus)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back (the compute function's argument)."""
        out = dataclasses.asdict(self)
        out["files"] = list(self.files)
        out["center"] = None if self.center is None else list(self.center)
        return out

    def replace(self, **changes: Any) -> BeamlineSettings:
        """A copy with ``changes`` (None values ignored), validated again."""
        merged = {**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
        return BeamlineSettings.from_dict(merged)

    @property
    def position_reader_name(self) -> str:
        return self.positions_reader or self.reader

    @property
    def diffraction_glob(self) -> str:
        usual = USUAL_FILES.get(self.reader, (DEFAULT_DIFFRACTION_GLOB, ""))
        return self.diffraction or usual[0]

    @property
    def positions_glob(self) -> str:
        return self.positions or USUAL_FILES.get(self.reader, ("", ""))[1]


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionsError(f"{what} = {value!r}: expected a positive number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise OptionsError(f"{what} = {value!r}: expected a positive number")
    return number


# --------------------------------------------------------------------------- registry


@functools.cache
def plugin_registry() -> Any:
    """Ptychodus's plugin registry, loaded once (about 2 s: it imports every plugin).

    Raises :class:`InteropMissingError` saying what to install when Ptychodus is absent.
    """
    try:
        from ptychodus.api.plugins import PluginRegistry
    except ImportError as err:
        raise InteropMissingError(
            f"reading beamline files needs Ptychodus, which is not installed here ({err}); "
            f"install it with: {INSTALL_HINT}"
        ) from err
    logging.getLogger("ptychodus").setLevel(logging.ERROR)  # plugins without their extras
    return PluginRegistry.load_plugins()


def available_readers() -> dict[str, list[tuple[str, str]]]:
    """``{"diffraction": [(simple name, display name), ...], "positions": [...]}``."""
    registry = plugin_registry()
    choosers = {
        "diffraction": registry.diffraction_file_readers,
        "positions": registry.probe_position_file_readers,
        "zone plates": registry.fresnel_zone_plates,
    }
    return {
        role: [(p.simple_name, p.display_name) for p in chooser]
        for role, chooser in choosers.items()
    }


def check_readers(settings: BeamlineSettings) -> None:
    """Refuse settings naming a reader, position reader or zone plate that is not
    registered (:class:`OptionsError` listing the names), or any when Ptychodus is
    missing (:class:`InteropMissingError` saying what to install)."""
    registry = plugin_registry()
    _strategy(registry.diffraction_file_readers, settings.reader, "diffraction reader")
    _strategy(
        registry.probe_position_file_readers, settings.position_reader_name, "position reader"
    )
    if settings.probe_zone_plate:
        _strategy(registry.fresnel_zone_plates, settings.probe_zone_plate, "zone plate")


def _strategy(chooser: Any, name: str, what: str) -> Any:
    plugin = chooser.find_plugin(name)
    if plugin is None:
        names = ", ".join(sorted(p.simple_name for p in chooser))
        raise OptionsError(f"no Ptychodus {what} named {name!r}; available: {names}")
    return plugin.strategy


# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class BeamlineFiles:
    """The files of one scan folder, by role."""

    diffraction: pathlib.Path
    positions: pathlib.Path
    extra: tuple[pathlib.Path, ...] = ()


def _matches(folder: pathlib.Path, pattern: str) -> list[pathlib.Path]:
    try:
        return sorted(p for p in folder.glob(pattern) if p.is_file())
    except OSError as err:
        raise InputError(f"{folder}: cannot list the scan folder: {err}") from err


def beamline_files(location: str | os.PathLike[str], settings: BeamlineSettings) -> BeamlineFiles:
    """The files of a scan folder (or of the folder of a diffraction file given itself).

    Raises :class:`InputFileNotFound` naming the folder, the glob and what is there when
    a role has no file.
    """
    location = pathlib.Path(location)
    if location.is_dir():
        folder = location
        found = _matches(folder, settings.diffraction_glob)
        if not found:
            raise InputFileNotFound(
                f"{folder}: no diffraction file matching {settings.diffraction_glob!r} "
                f"(found: {_listing(folder)})"
            )
        diffraction = found[0]
    elif location.is_file():
        folder, diffraction = location.parent, location
    else:
        raise InputFileNotFound(f"{location}: no such file or folder")
    if settings.positions_glob:
        candidates = _matches(folder, settings.positions_glob)
        if not candidates:
            raise InputFileNotFound(
                f"{folder}: no positions file matching {settings.positions_glob!r} "
                f"(found: {_listing(folder)})"
            )
        positions = candidates[0]
    else:
        positions = diffraction
    extra: list[pathlib.Path] = []
    for pattern in settings.files or EXTRA_FILES.get(settings.reader, ()):
        extra.extend(p for p in _matches(folder, pattern) if p not in (diffraction, positions))
    return BeamlineFiles(diffraction, positions, tuple(dict.fromkeys(extra)))


def _listing(folder: pathlib.Path) -> str:
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return "nothing readable"
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "an empty folder"


def _is_hdf5(path: pathlib.Path) -> bool:
    if path.suffix.lower() in HDF5_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def needed_files(
    location: str | os.PathLike[str], settings: BeamlineSettings, roots: Roots = None
) -> list[pathlib.Path]:
    """Every file reading the scan needs, each once, the diffraction file first: the
    files by role, and every file their HDF5 links and virtual datasets reach. With
    ``roots``, each HDF5 file is checked against them first
    (:class:`~recon.hdf5_confined.ExternalReferenceRefused` names the link)."""
    files = beamline_files(location, settings)
    needed: dict[str, pathlib.Path] = {}
    for path in (files.diffraction, files.positions, *files.extra):
        confine_path(path, roots)
        reached = reachable_files(path, roots) if _is_hdf5(path) else [path]
        for item in reached:
            needed.setdefault(os.path.realpath(item), item)
    return list(needed.values())


def transfer_files(view_path: str | os.PathLike[str], settings: BeamlineSettings) -> list[str]:
    """The files besides the view (its diffraction file) that a transfer must copy, as
    paths relative to the view's folder (``fly042_data_000001.h5``, ``fly042_0.txt``).

    Raises :class:`InputError` naming the file when one lies outside the scan folder:
    the flow copies the scan folder's files to the same place under ``input/<id>/``, so a
    link from there to elsewhere would not resolve on the compute side.
    """
    view_path = pathlib.Path(view_path)
    folder = pathlib.Path(os.path.abspath(view_path.parent))
    relative: list[str] = []
    for path in needed_files(view_path, settings):
        absolute = pathlib.Path(os.path.abspath(path))
        if absolute == pathlib.Path(os.path.abspath(view_path)):
            continue
        if not absolute.is_relative_to(folder):
            raise InputError(
                f"{view_path}: needs {path}, which is outside the scan folder {folder}; the "
                "flow copies only the scan folder's files (keep linked data files in it)"
            )
        relative.append(absolute.relative_to(folder).as_posix())
    return relative


def peek_beamline_shape(
    location: str | os.PathLike[str], settings: BeamlineSettings
) -> tuple[int, int, int]:
    """(N_POS, S, S): the pattern count the reader declares and the crop size, without
    reading a pattern (for the GPU count)."""
    registry = plugin_registry()
    reader = _strategy(registry.diffraction_file_readers, settings.reader, "diffraction reader")
    files = beamline_files(location, settings)
    metadata = _call_reader(reader.read, files.diffraction, settings.reader).get_metadata()
    count = int(sum(metadata.num_patterns_per_array))
    side = settings.crop or min(
        int(metadata.detector_extent.height_px), int(metadata.detector_extent.width_px)
    )
    side //= settings.binning
    return count, side, side


def missing_parts(folder: pathlib.Path, settings: BeamlineSettings) -> str | None:
    """Why the scan folder is not complete yet (no diffraction file, no positions file,
    a linked data file not there yet), or None when every needed file is present."""
    try:
        files = beamline_files(folder, settings)
    except (InputError, InputFileNotFound) as err:
        return str(err)
    for path in (files.diffraction, files.positions, *files.extra):
        if not _is_hdf5(path):
            continue
        try:
            with h5py.File(path, "r") as handle:
                missing = _missing_link_targets(handle, path)
        except OSError as err:
            return f"{path.name} does not open yet ({err})"
        if missing:
            return f"{path.name} links to {missing}, which is not there yet"
    return None


def _missing_link_targets(handle: h5py.File, path: pathlib.Path) -> str | None:
    names: list[bytes] = []
    handle.id.links.visit(
        lambda name, info: names.append(name) if info.type == h5py.h5l.TYPE_EXTERNAL else None,
        info=True,
    )
    for name in names:
        file_name = handle.id.links.get_val(name)[0].decode("utf-8", "backslashreplace")
        if not (path.parent / file_name).is_file():
            return file_name
    return None


# --------------------------------------------------------------------------- loading


def load_beamline_scan(
    location: str | os.PathLike[str],
    settings: BeamlineSettings,
    *,
    memory_limit: int | None = None,
    allowed_roots: Roots = None,
) -> ScanData:
    """One view from a beamline's scan folder (or its diffraction file), read through the
    Ptychodus readers ``settings`` names. See the module docstring for the steps.

    Raises :class:`InteropMissingError` when Ptychodus is not installed,
    :class:`OptionsError` for an unknown reader, :class:`InputFileNotFound` for a missing
    file, :class:`InputError` (naming the file) for everything the files get wrong, and
    :class:`~recon.errors.InputTooLargeError` before any pattern is read when the view
    would not fit in memory.
    """
    from recon.cxi import validated_scan

    registry = plugin_registry()
    diffraction_reader = _strategy(
        registry.diffraction_file_readers, settings.reader, "diffraction reader"
    )
    position_reader = _strategy(
        registry.probe_position_file_readers, settings.position_reader_name, "position reader"
    )
    files = beamline_files(location, settings)
    needed_files(location, settings, allowed_roots)  # refuses links out of the roots
    if allowed_roots is not None:
        # A reader may open other files of the folder by itself (19-ID lists the folder
        # for a series' members): every HDF5 file there is checked too.
        for path in sorted(files.diffraction.parent.iterdir()):
            if path.is_file() and _is_hdf5(path):
                reachable_files(path, allowed_roots)
    source = str(files.diffraction)

    dataset = _call_reader(diffraction_reader.read, files.diffraction, settings.reader)
    metadata = dataset.get_metadata()
    # The VelociProbe position reader rotates by the angle the diffraction read found.
    positions_seq = _call_reader(
        position_reader.read, files.positions, settings.position_reader_name
    )
    if len(dataset) == 0 or len(positions_seq) == 0:
        empty = files.diffraction if len(dataset) == 0 else files.positions
        raise InputError(f"{empty}: the {settings.reader} reader found no patterns or positions")

    height, width = int(metadata.detector_extent.height_px), int(metadata.detector_extent.width_px)
    geometry = _geometry(metadata, settings, source)
    dtype = np.dtype(metadata.pattern_dtype)

    # The read region: a square around the beam centre.
    center = settings.center
    if center is None and metadata.beam_center is not None:
        center = (int(metadata.beam_center.y_px), int(metadata.beam_center.x_px))
    if center is None:
        center = _find_center(dataset[0], metadata, dtype, settings.mask_max_value)
        log.info("%s: beam centre found at row %d, column %d", source, *center)
    if not (0 <= center[0] < height and 0 <= center[1] < width):
        raise InputError(
            f"{source}: beam centre (row {center[0]}, column {center[1]}) is outside the "
            f"{height}x{width} detector; set center = [row, column]"
        )
    size = settings.crop or _largest_power_of_two(center, height, width)
    size -= size % settings.binning
    top, left = center[0] - size // 2, center[1] - size // 2
    if size < 8 or top < 0 or left < 0 or top + size > height or left + size > width:
        raise InputError(
            f"{source}: a {size}x{size} crop around the beam centre (row {center[0]}, column "
            f"{center[1]}) does not fit the {height}x{width} detector; choose a smaller crop"
        )
    out_size = size // settings.binning

    # Positions: averaged per scan index, then interpolated at each pattern's index.
    pattern_indexes = np.concatenate([np.asarray(array.get_indexes()) for array in dataset])
    x_m, y_m, keep = _positions_at(positions_seq, pattern_indexes, source)
    object_pixel = (
        geometry["wavelength"]
        * geometry["distance"]
        / (out_size * geometry["pixel"] * settings.binning)
    )
    positions_px = np.stack([y_m / object_pixel, x_m / object_pixel], axis=1)

    # Memory, from the declared shapes, before a pattern is decompressed.
    extent = np.ptp(positions_px, axis=0) if len(positions_px) else np.zeros(2)
    check_memory(
        source,
        len(positions_px),
        (out_size, out_size),
        (float(extent[0]), float(extent[1])),
        data_itemsize=max(dtype.itemsize, 4),
        limit=memory_limit,
        hint=f"; crop is {size} pixels (crop = ...), positions span {extent[0]:.4g} x "
        f"{extent[1]:.4g} object pixels, or raise the limit (PTYCHOFLOW_MEMORY_LIMIT)",
    )

    region = _crop_region(top, left, size)
    data, bad = _read_patterns(dataset, region, dtype, settings, source)
    bad |= _reader_bad_pixels(dataset, top, left, size)
    bad |= _file_pixel_mask(files.diffraction, top, left, size, height, width)
    data = data[keep]
    data[:, bad] = 0
    if settings.photon_threshold > 0:
        data[data < settings.photon_threshold] = 0
    if settings.binning > 1:
        data, bad = _bin(data, bad, settings.binning)
    n_bad = int(bad.sum())
    if n_bad:
        log.info("%s: %d bad detector pixels masked in the cost", source, n_bad)

    probe = None
    if settings.probe_zone_plate:
        probe = _zone_plate_probe(registry, settings, out_size, object_pixel, geometry)
    return validated_scan(
        data,
        positions_px,
        probe=probe,
        mask=~bad if n_bad else None,
        pixel_size=float(object_pixel),
        wavelength=float(geometry["wavelength"]),
        distance=float(geometry["distance"]),
        source=source,
        data_name=f"patterns ({settings.reader})",
        positions_name=f"{files.positions.name} ({settings.position_reader_name})",
        probe_name=f"zone-plate probe {settings.probe_zone_plate}",
        memory_limit=memory_limit,
    )


def _call_reader(read: Any, path: pathlib.Path, name: str) -> Any:
    """A Ptychodus reader's result; any exception becomes an InputError naming the file."""
    try:
        return read(path)
    except InputError:
        raise
    except Exception as err:  # a reader raises what it likes: KeyError, AssertionError...
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise InputError(
            f"{path}: the Ptychodus reader {name} cannot read it ({detail}); check that the "
            "file is in that reader's layout (ptychoflow formats lists the readers)"
        ) from err


def _geometry(metadata: Any, settings: BeamlineSettings, source: str) -> dict[str, float]:
    """Wavelength, distance and detector pixel pitch: settings first, then the file."""
    distance = settings.distance_m or metadata.detector_distance_m
    energy = settings.energy_ev or metadata.photon_energy_eV
    pixel = settings.pixel_size_m
    if pixel is None and metadata.detector_pixel_geometry is not None:
        pitch = metadata.detector_pixel_geometry
        if not math.isclose(pitch.width_m, pitch.height_m, rel_tol=1e-6):
            raise InputError(
                f"{source}: detector pixels are {pitch.width_m} x {pitch.height_m} m; only "
                "square pixels are supported (set pixel_size_m to override)"
            )
        pixel = pitch.width_m
    given = (("distance_m", distance), ("energy_ev", energy), ("pixel_size_m", pixel))
    missing = [
        name
        for name, value in given
        if not value or not math.isfinite(float(value)) or float(value) <= 0
    ]
    if missing:
        raise InputError(
            f"{source}: the file does not give {', '.join(missing)}; set them in the config's "
            "[beamline] section (or --distance, --energy, --pixel-size)"
        )
    return {
        "distance": float(distance),  # type: ignore[arg-type]
        "wavelength": HC_EV_M / float(energy),  # type: ignore[arg-type]
        "pixel": float(pixel),  # type: ignore[arg-type]
    }


def _largest_power_of_two(center: tuple[int, int], height: int, width: int) -> int:
    radius = min(center[0], height - center[0], center[1], width - center[1])
    return 1 << ((2 * radius).bit_length() - 1) if radius >= 4 else 0


def _crop_region(top: int, left: int, size: int) -> Any:
    from ptychodus.api.diffraction import CropRegion

    return CropRegion(x_range=(left, left + size), y_range=(top, top + size))


def _read_patterns(
    dataset: Any, region: Any, dtype: np.dtype, settings: BeamlineSettings, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) float32 patterns in the crop, and the (S, S) pixels at the dtype's max."""
    blocks = []
    saturated = np.zeros((region.height_px, region.width_px), dtype=bool)
    for array in dataset:
        label = array.get_label()
        try:
            patterns = np.asarray(array.get_patterns(read_region=region))
        except Exception as err:
            raise InputError(f"{source}: cannot read the patterns of {label}: {err}") from err
        if patterns.ndim == 2:
            patterns = patterns[np.newaxis]
        if patterns.shape[1:] != saturated.shape:
            raise InputError(
                f"{source}: {label} gave patterns of shape {patterns.shape[1:]} for a "
                f"{saturated.shape} crop"
            )
        if settings.mask_max_value and np.issubdtype(patterns.dtype, np.integer):
            saturated |= (patterns == np.iinfo(patterns.dtype).max).any(axis=0)
        blocks.append(patterns.astype(np.float32))
    data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    if not np.issubdtype(dtype, np.integer):
        saturated |= ~np.isfinite(data).all(axis=0)
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    saturated |= (data < 0).any(axis=0)
    return data, saturated


def _reader_bad_pixels(dataset: Any, top: int, left: int, size: int) -> np.ndarray:
    try:
        bad = np.asarray(dataset.get_bad_pixels(), dtype=bool)
    except Exception:  # a reader without a mask
        return np.zeros((size, size), dtype=bool)
    if bad.ndim != 2 or bad.shape[0] < top + size or bad.shape[1] < left + size:
        return np.zeros((size, size), dtype=bool)
    return bad[top : top + size, left : left + size]


def _file_pixel_mask(
    path: pathlib.Path, top: int, left: int, size: int, height: int, width: int
) -> np.ndarray:
    """The master file's own ``pixel_mask`` (nonzero = bad), which readers do not pass on."""
    bad = np.zeros((size, size), dtype=bool)
    if not _is_hdf5(path):
        return bad
    try:
        with h5py.File(path, "r") as handle:
            for name in PIXEL_MASK_PATHS:
                item = handle.get(name)
                if isinstance(item, h5py.Dataset) and item.shape == (height, width):
                    bad |= np.asarray(item[top : top + size, left : left + size]) != 0
    except OSError as err:
        raise InputError(f"{path}: cannot read its pixel_mask: {err}") from err
    return bad


#: Patterns the beam-centre search reads (from the first array only).
CENTER_PATTERNS = 16
#: Largest read the centre search makes through a reader that cannot read a few frames.
CENTER_READ_LIMIT = 512 * 2**20


def _find_center(array: Any, metadata: Any, dtype: np.dtype, mask_max: bool) -> tuple[int, int]:
    """The centre of mass of the first :data:`CENTER_PATTERNS` patterns' valid pixels,
    (row, col). An HDF5-backed array (Ptychodus's ``H5DiffractionPatternArray``) is read
    for those frames only; another reader's whole first array only when it is small."""
    file_path = getattr(array, "_file_path", None)
    data_path = getattr(array, "_data_path", None)
    if file_path is not None and data_path is not None:
        try:
            with h5py.File(file_path, "r") as handle:
                patterns = np.asarray(handle[data_path][:CENTER_PATTERNS])
        except (OSError, KeyError) as err:
            raise InputError(f"{file_path}: cannot read {data_path}: {err}") from err
    else:
        count = int(metadata.num_patterns_per_array[0]) if metadata.num_patterns_per_array else 0
        height, width = metadata.detector_extent.height_px, metadata.detector_extent.width_px
        if count * height * width * dtype.itemsize > CENTER_READ_LIMIT:
            raise InputError(
                f"{array.get_label()}: finding the beam centre would read {count} full "
                f"{height}x{width} frames; set center = [row, column] (or --center)"
            )
        patterns = np.asarray(array.get_patterns())
    patterns = patterns.reshape(-1, *patterns.shape[-2:])[:CENTER_PATTERNS].astype(np.float64)
    if mask_max and np.issubdtype(dtype, np.integer):
        patterns[patterns >= np.iinfo(dtype).max] = 0
    total = np.clip(patterns, 0, None).sum(axis=0)
    if not total.sum() > 0:
        raise InputError(f"{array.get_label()}: no counts to find the beam centre from")
    rows, cols = np.indices(total.shape)
    weight = total / total.sum()
    return round(float((rows * weight).sum())), round(float((cols * weight).sum()))


def _positions_at(
    positions: Any, pattern_indexes: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y (metres) at each pattern's scan index, and which patterns have one.

    As Ptychodus pairs them (``ptychodus.api.reconstruct.prepare_reconstruct_input``):
    positions sharing an index are averaged, indexes between two positions are
    interpolated, patterns outside the positions' index range are dropped.
    """
    indexes = np.asarray(positions.get_indexes())
    x_all = np.asarray(positions.get_coordinates_x_m(), dtype=np.float64)
    y_all = np.asarray(positions.get_coordinates_y_m(), dtype=np.float64)
    unique, inverse = np.unique(indexes, return_inverse=True)
    counts = np.bincount(inverse)
    mean_x = np.bincount(inverse, weights=x_all) / counts
    mean_y = np.bincount(inverse, weights=y_all) / counts
    keep = (pattern_indexes >= unique[0]) & (pattern_indexes <= unique[-1])
    if not keep.any():
        raise InputError(
            f"{source}: no positions for the patterns: pattern indexes span "
            f"{pattern_indexes.min()}-{pattern_indexes.max()}, position indexes "
            f"{unique[0]}-{unique[-1]}"
        )
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%s: %d patterns have no position and are left out", source, dropped)
    chosen = pattern_indexes[keep]
    return np.interp(chosen, unique, mean_x), np.interp(chosen, unique, mean_y), keep


def _bin(data: np.ndarray, bad: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = data.shape
    binned = data.reshape(n, h // factor, factor, w // factor, factor).sum(axis=(2, 4))
    binned_bad = bad.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
    binned[:, binned_bad] = 0
    return binned, binned_bad


def _zone_plate_probe(
    registry: Any,
    settings: BeamlineSettings,
    size: int,
    object_pixel: float,
    geometry: dict[str, float],
) -> np.ndarray:
    """The probe a Ptychodus zone-plate preset forms at ``probe_defocus_m`` from focus."""
    from ptychodus.api.probe import ProbeGeometry
    from ptychodus.api.simulate.probe import generate_fresnel_zone_plate_probe

    zone_plate = _strategy(registry.fresnel_zone_plates, settings.probe_zone_plate, "zone plate")
    probe = generate_fresnel_zone_plate_probe(
        ProbeGeometry(size, size, object_pixel, object_pixel),
        zone_plate,
        photon_wavelength_m=geometry["wavelength"],
        defocus_distance_m=settings.probe_defocus_m,
    )
    array = np.asarray(probe.get_array() if hasattr(probe, "get_array") else probe.array)
    while array.ndim > 2:
        array = array[0]
    return array


def describe_readers(names: Sequence[str] | None = None) -> str:
    """The ``ptychoflow formats`` text: every registered reader by role."""
    readers = available_readers()
    lines = []
    for role, entries in readers.items():
        lines.append(f"{role} readers:")
        for simple, display in sorted(entries):
            if names is None or simple in names:
                lines.append(f"  {simple:<28} {display}")
    return "\n".join(lines)
