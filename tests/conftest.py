"""Shared fixtures: the array module fixture, paths to the shared data."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from recon.backend import cupy_module

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SIEMENS_STAR = SHARED_DATA / "siemens-star-small.npz.bz2"


def _xp_params():
    yield pytest.param(np, id="numpy")
    yield pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)


@pytest.fixture(params=list(_xp_params()))
def xp(request):
    """The array module under test: NumPy always, CuPy in ``-m gpu`` runs."""
    if request.param == "cupy":
        cp = cupy_module()
        if cp is None:
            pytest.skip("CuPy with a GPU is not available")
        return cp
    return request.param


@pytest.fixture
def siemens_star_path() -> pathlib.Path:
    if not SIEMENS_STAR.exists():
        pytest.skip(f"shared dataset not found at {SIEMENS_STAR}")
    return SIEMENS_STAR
