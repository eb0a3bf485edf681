"""Small scan folders in the layouts beamlines write, made the way Ptychodus's readers
expect them (ptychodus 1.7, ``ptychodus/plugins/``), from a simulated view with a known
truth.

Each writer follows the reader's code, not ours:

- :func:`write_velociprobe` -- APS 33-ID-C VelociProbe
  (``aps33id_velociprobe/aps33id_velociprobe_diffraction_file.py`` and
  ``..._position_file.py``): an Eiger master file whose ``/entry/data/data_NNNNNN`` are
  external links to data files beside it, geometry in ``/entry/instrument/detector``
  with byte-string ``units`` attributes the reader asserts, ``detectorSpecific`` counts,
  ``/entry/sample/goniometer/chi``; and a comma-separated positions text file: integer
  nanometres, x in column 1, the interferometer's y in column 2, the encoder's y negated
  in column 5, the trigger (the pattern index) in column 7, several rows per trigger.
- :func:`write_isn` -- APS 19-ID-E In-situ Nanoprobe (``aps19id_isn_*``): a series of
  sibling HDF5 files ``scan_0042_00001.h5`` ... each with ``/entry/data/data`` and the
  wavelength in Angstrom in ``/entry/instrument/NDAttributes/Wavelength``; no distance;
  positions in micrometres in ``/entry/data/{X,Y}_Position`` of another file, paired by
  order.
- :func:`write_nanomax` -- MAX IV NanoMAX (``max_iv_nanomax_*``): one scan file with the
  positions in micrometres in ``/entry/measurement/pseudo/{x,y}`` and the frames at
  ``/entry/measurement/Eiger/data``, here an external link to the detector's own file;
  no geometry at all.

Patterns are embedded in a full detector frame with the beam off centre, detector gaps
and dead pixels at the dtype's maximum value, and (VelociProbe) a ``pixel_mask``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import h5py
import numpy as np

from recon.simulate import DETECTOR_PIXEL_M, DISTANCE_M, ENERGY_J, SimulatedView, simulate_view

ENERGY_EV = ENERGY_J / 1.602176634e-19
HC_EV_ANGSTROM = 12398.419843320026


@dataclasses.dataclass
class Layout:
    folder: pathlib.Path
    view: SimulatedView
    center: tuple[int, int]
    """Beam centre (row, column) on the detector."""
    bad: np.ndarray
    """(D, D) True at the crop's pixels the files mark bad."""
    files: list[pathlib.Path]
    """Every file the reader needs."""


def simulated(detector: int = 32, n_positions: int = 36, seed: int = 7) -> SimulatedView:
    return simulate_view(detector=detector, n_positions=n_positions, photons=1e5, seed=seed)


def frames(
    view: SimulatedView, shape: tuple[int, int], center: tuple[int, int], dtype: type
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, H, W) detector frames holding the view's patterns with the zero frequency at
    ``center``; a gap column through the crop and three dead pixels at the dtype's
    maximum. Returns the frames, the crop's bad pixels from the values, and a
    ``pixel_mask`` (H, W) marking two more pixels bad (their counts left as measured)."""
    data = view.scan.data
    n, d, _ = data.shape
    maximum = np.iinfo(dtype).max
    full = np.zeros((n, *shape), dtype=dtype)
    top, left = center[0] - d // 2, center[1] - d // 2
    full[:, top : top + d, left : left + d] = np.rint(data).astype(dtype)
    bad = np.zeros((d, d), dtype=bool)
    gap_col = left + d // 2 + 5
    full[:, :, gap_col] = maximum  # a module gap through the crop
    bad[:, d // 2 + 5] = True
    for row, col in ((3, 4), (d // 2 - 2, d // 2 + 1), (d - 2, 7)):
        full[:, top + row, left + col] = maximum  # dead pixels
        bad[row, col] = True
    full[:, 0:2, :] = maximum  # the detector's edge, outside the crop
    pixel_mask = np.zeros(shape, dtype=np.uint32)
    for row, col in ((5, 9), (d // 2 + 3, d // 2 - 4)):
        pixel_mask[top + row, left + col] = 1
        bad[row, col] = True
    return full, bad, pixel_mask


def eiger_compression() -> dict:
    """bitshuffle/LZ4 (HDF5 filter 32008), what an Eiger writes, when hdf5plugin (in the
    interop extra) is installed; gzip otherwise."""
    try:
        import hdf5plugin
    except ImportError:
        return {"compression": "gzip", "compression_opts": 1}
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


def _units(item: h5py.Dataset, units: str) -> None:
    item.attrs["units"] = np.bytes_(units)  # the reader compares with b'...'


def write_velociprobe(
    folder: pathlib.Path,
    view: SimulatedView | None = None,
    *,
    shape: tuple[int, int] = (514, 1030),
    center: tuple[int, int] = (180, 640),
    frames_per_file: int = 20,
    stem: str = "fly042",
) -> Layout:
    view = view or simulated()
    folder.mkdir(parents=True, exist_ok=True)
    full, bad, pixel_mask = frames(view, shape, center, np.uint32)
    n = len(full)
    files = [folder / f"{stem}_master.h5"]
    with h5py.File(files[0], "w") as master:
        for number, start in enumerate(range(0, n, frames_per_file), start=1):
            name = f"{stem}_data_{number:06d}.h5"
            with h5py.File(folder / name, "w") as data_file:
                data_file.create_dataset(
                    "entry/data/data",
                    data=full[start : start + frames_per_file],
                    chunks=(1, 64, 64),
                    **eiger_compression(),
                )
            files.append(folder / name)
            master[f"entry/data/data_{number:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        detector = master.create_group("entry/instrument/detector")
        specific = detector.create_group("detectorSpecific")
        specific["nimages"] = n
        specific["ntrigger"] = 1
        _units(specific.create_dataset("photon_energy", data=ENERGY_EV), "eV")
        specific["x_pixels_in_detector"] = shape[1]
        specific["y_pixels_in_detector"] = shape[0]
        specific.create_dataset("pixel_mask", data=pixel_mask, compression="gzip")
        _units(detector.create_dataset("detector_distance", data=DISTANCE_M), "m")
        _units(detector.create_dataset("beam_center_x", data=float(center[1])), "pixel")
        _units(detector.create_dataset("beam_center_y", data=float(center[0])), "pixel")
        _units(detector.create_dataset("x_pixel_size", data=DETECTOR_PIXEL_M), "m")
        _units(detector.create_dataset("y_pixel_size", data=DETECTOR_PIXEL_M), "m")
        _units(master.create_dataset("entry/sample/goniometer/chi", data=0.0), "degree")
    positions = folder / f"{stem}_0.txt"
    pixel_nm = view.scan.pixel_size * 1e9
    lines = ["# VelociProbe position log: index, x, y (interferometer), ..., y (encoder), ..."]
    for trigger, (row, col) in enumerate(view.scan.positions.astype(np.float64)):
        x_nm, y_nm = round(col * pixel_nm), round(row * pixel_nm)
        for wobble in (-1, 1):  # two samples per trigger: the reader's rows are averaged
            lines.append(f"{trigger},{x_nm},{y_nm + wobble},0,0,{-(y_nm - wobble)},0,{trigger}")
    positions.write_text("\n".join(lines) + "\n")
    files.append(positions)
    return Layout(folder, view, center, bad, files)


def write_isn(
    folder: pathlib.Path,
    view: SimulatedView | None = None,
    *,
    shape: tuple[int, int] = (514, 1030),
    center: tuple[int, int] = (300, 380),
    frames_per_file: int = 12,
) -> Layout:
    view = view or simulated()
    folder.mkdir(parents=True, exist_ok=True)
    full, bad, _ = frames(view, shape, center, np.int32)
    bad[5, 9] = bad[len(bad) // 2 + 3, len(bad) // 2 - 4] = False  # no pixel_mask here
    files = []
    wavelength_angstrom = HC_EV_ANGSTROM / ENERGY_EV
    for number, start in enumerate(range(0, len(full), frames_per_file), start=1):
        path = folder / f"scan_0042_{number:05d}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset(
                "entry/data/data",
                data=full[start : start + frames_per_file],
                chunks=(1, 64, 64),
                compression="gzip",
                compression_opts=1,
            )
            handle["entry/instrument/NDAttributes/Wavelength"] = np.array([wavelength_angstrom])
            handle["entry/instrument/NDAttributes/CountTime"] = np.array([0.01])
        files.append(path)
    positions = folder / "scan_0042_positions.h5"
    with h5py.File(positions, "w") as handle:
        pixel_um = view.scan.pixel_size * 1e6
        handle["entry/data/X_Position"] = view.scan.positions[:, 1].astype(np.float64) * pixel_um
        handle["entry/data/Y_Position"] = view.scan.positions[:, 0].astype(np.float64) * pixel_um
    files.append(positions)
    return Layout(folder, view, center, bad, files)


def write_nanomax(
    folder: pathlib.Path,
    view: SimulatedView | None = None,
    *,
    shape: tuple[int, int] = (1062, 1028),
    center: tuple[int, int] = (560, 470),
) -> Layout:
    view = view or simulated()
    folder.mkdir(parents=True, exist_ok=True)
    full, bad, _ = frames(view, shape, center, np.uint32)
    bad[5, 9] = bad[len(bad) // 2 + 3, len(bad) // 2 - 4] = False
    detector_file = folder / "scan_000042_eiger1m.hdf5"
    with h5py.File(detector_file, "w") as handle:
        handle.create_dataset(
            "entry/measurement/Eiger/data",
            data=full,
            chunks=(1, 128, 128),
            compression="gzip",
            compression_opts=1,
        )
    scan_file = folder / "scan_000042.h5"
    with h5py.File(scan_file, "w") as handle:
        microns = view.scan.positions.astype(np.float64) * view.scan.pixel_size * 1e6
        handle["entry/measurement/pseudo/x"] = microns[:, 1]
        handle["entry/measurement/pseudo/y"] = microns[:, 0]
        handle["entry/measurement/Eiger/data"] = h5py.ExternalLink(
            detector_file.name, "/entry/measurement/Eiger/data"
        )
    return Layout(folder, view, center, bad, [scan_file, detector_file])


#: The ``[beamline]`` settings of each layout (what the README shows).
SETTINGS = {
    "velociprobe": {
        "reader": "APS_Velociprobe",
        "positions_reader": "APS_Velociprobe_LI",
        "diffraction": "*_master.h5",
        "positions": "*.txt",
        "crop": 32,
    },
    "isn": {
        "reader": "APS_ISN",
        "diffraction": "scan_*_00001.h5",
        "positions": "*_positions.h5",
        "distance_m": DISTANCE_M,
        "center": [300, 380],
        "crop": 32,
    },
    "nanomax": {
        "reader": "MAX_IV_NanoMAX",
        "diffraction": "scan_*[0-9].h5",
        "distance_m": DISTANCE_M,
        "energy_ev": ENERGY_EV,
        "pixel_size_m": DETECTOR_PIXEL_M,
        "crop": 32,
    },
}


def simulated_zone_plate(
    detector: int = 32,
    n_positions: int = 64,
    *,
    preset: str = "APS_Velociprobe",
    defocus_m: float = 400e-6,
    photons: float = 1e5,
    seed: int = 7,
) -> SimulatedView:
    """A view whose probe is the beam of one of Ptychodus's zone-plate presets at
    ``defocus_m`` from its focus (``generate_fresnel_zone_plate_probe``): the beamline's
    optics, which ``probe_zone_plate`` in the settings models as the probe guess."""
    from ptychodus.api.plugins import PluginRegistry
    from ptychodus.api.probe import ProbeGeometry
    from ptychodus.api.simulate.probe import generate_fresnel_zone_plate_probe

    from recon.cxi import validated_scan, wavelength_from_energy
    from recon.simulate import (
        OVERLAP,
        POSITION_MARGIN,
        far_field_intensity,
        known_object,
        raster_positions,
    )

    rng = np.random.default_rng([seed, 0])
    wavelength = wavelength_from_energy(ENERGY_J)
    pixel = wavelength * DISTANCE_M / (detector * DETECTOR_PIXEL_M)
    zone_plate = PluginRegistry.load_plugins().fresnel_zone_plates.get_strategy_by_name(preset)
    beam = generate_fresnel_zone_plate_probe(
        ProbeGeometry(detector, detector, pixel, pixel),
        zone_plate,
        photon_wavelength_m=wavelength,
        defocus_distance_m=defocus_m,
    )
    probe = np.asarray(beam.get_array() if hasattr(beam, "get_array") else beam.array)
    while probe.ndim > 2:
        probe = probe[0]
    power = np.abs(probe) ** 2
    rows = np.indices(power.shape)[0]
    width = 2 * np.sqrt((power * ((rows - detector / 2) ** 2)).sum() / power.sum())
    positions = raster_positions(n_positions, (1 - OVERLAP) * 2 * width, rng, 0.1)
    shape = tuple(
        int(np.ceil(float(extent))) + detector + POSITION_MARGIN for extent in positions.max(axis=0)
    )
    true_object = known_object(shape, 0)
    intensity = far_field_intensity(true_object, probe, positions)
    scale = photons / float(intensity.sum(axis=(1, 2)).mean())
    counts = rng.poisson(intensity * scale).astype(np.float32)
    probe = (probe * np.sqrt(scale)).astype(np.complex64)
    scan = validated_scan(counts, positions, pixel_size=pixel, wavelength=wavelength)
    return SimulatedView(scan=scan, true_object=true_object, true_probe=probe)
