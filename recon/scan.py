"""The in-memory form of one view: what every loader returns and the solver takes."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ScanData:
    """One view of a ptychography scan, on the host, validated.

    data : (N_POS, DET_H, DET_W) float32
        Photon counts, zero frequency at the centre of each pattern.
    positions : (N_POS, 2) float32
        (row, col) of each probe patch's top-left corner in object pixels, sub-pixel,
        all >= 0 (loaders shift them so the smallest is a few pixels above zero).
    probe : (DET_H, DET_W) complex64 or None
        Probe guess from the file, or None when the file has none.
    mask : (DET_H, DET_W) bool or None
        True where the detector pixel is valid; None means all valid.
    pixel_size : float or None
        Object pixel size in metres (None when the source does not say, e.g. npz).
    wavelength : float or None
        X-ray wavelength in metres.
    distance : float or None
        Sample-to-detector distance in metres (None when the source does not say).
    source : str
        Where the data came from, for messages ("scan100/view000.cxi").
    """

    data: np.ndarray
    positions: np.ndarray
    probe: np.ndarray | None = None
    mask: np.ndarray | None = None
    pixel_size: float | None = None
    wavelength: float | None = None
    source: str = "<memory>"
    distance: float | None = None

    @property
    def n_positions(self) -> int:
        return int(self.data.shape[0])

    @property
    def detector_shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))
