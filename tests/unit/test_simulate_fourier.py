"""The independent (Fourier-shift) simulator: geometry, exact sub-pixel patches, energy,
probe modes, position errors, noise, and the CXI file it writes read back by recon.cxi."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

import recon.cxi
from recon.simulate_fourier import (
    POSITION_MARGIN,
    TILT_PX,
    band_limit,
    diffraction_intensity,
    rms_radius,
    shifted_patches,
    simulate_scan,
)

DETECTOR = 32
N_POSITIONS = 60


@pytest.fixture(scope="module")
def noise_free():
    return simulate_scan(detector=DETECTOR, n_positions=N_POSITIONS, seed=3)


@pytest.fixture(scope="module")
def two_modes_with_errors():
    return simulate_scan(
        detector=DETECTOR,
        n_positions=N_POSITIONS,
        object_kind="spheres",
        mode_powers=(0.8, 0.2),
        position_error_px=1.0,
        seed=5,
    )


def test_geometry_matches_the_loader_grid(noise_free):
    sim = noise_free
    assert POSITION_MARGIN == recon.cxi.POSITION_MARGIN
    assert sim.data.shape == (N_POSITIONS, DETECTOR, DETECTOR) and sim.data.dtype == np.float32
    np.testing.assert_allclose(sim.reported_positions.min(axis=0), [POSITION_MARGIN] * 2)
    expected = tuple(
        math.ceil(float(m)) + DETECTOR + POSITION_MARGIN for m in sim.reported_positions.max(0)
    )
    assert sim.true_object.shape == expected and sim.true_object.dtype == np.complex64
    assert sim.true_probe.shape == (1, DETECTOR, DETECTOR)
    # Noise-free: no position errors, counts scaled to 1e6 per pattern on average.
    np.testing.assert_array_equal(sim.true_positions, sim.reported_positions)
    assert sim.data.sum(axis=(1, 2)).mean() == pytest.approx(1e6, rel=1e-5)
    # Neighbours overlap: nearest-neighbour distance well below the probe's RMS diameter.
    positions = sim.reported_positions
    distance = np.hypot(*(positions[:, None] - positions[None]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    assert np.median(distance.min(axis=1)) < 0.5 * rms_radius(sim.true_probe)


def test_patches_are_exact_sub_pixel_samples_of_a_band_limited_canvas():
    # A canvas made of a few Fourier components is exactly band-limited and periodic,
    # so its value at any real (row, col) is known in closed form.
    shape = (48, 40)
    rng = np.random.default_rng(0)
    waves = [
        (rng.integers(-6, 7), rng.integers(-6, 7), rng.normal() + 1j * rng.normal())
        for _ in range(5)
    ]

    def canvas_at(rows, cols):
        return sum(
            a * np.exp(2j * np.pi * (kr * rows / shape[0] + kc * cols / shape[1]))
            for kr, kc, a in waves
        )

    canvas = canvas_at(*np.indices(shape, dtype=float))
    corners = np.array([[3.25, 7.5], [10.0, 2.0], [0.9, 0.1], [15.71, 20.33]])
    patches = shifted_patches(canvas, corners, 16)
    offsets = np.arange(16)
    for patch, (row, col) in zip(patches, corners, strict=True):
        expected = canvas_at(row + offsets[:, None], col + offsets[None, :])
        np.testing.assert_allclose(patch, expected, atol=1e-10)
    # Integer corners are plain slices.
    np.testing.assert_allclose(patches[1], canvas[10:26, 2:18], atol=1e-10)
    with pytest.raises(ValueError, match="outside the canvas"):
        shifted_patches(canvas, np.array([[40.0, 0.0]]), 16)


def test_band_limit_leaves_nothing_near_nyquist():
    image = np.random.default_rng(1).normal(size=(64, 64))
    spectrum = np.abs(np.fft.fft2(band_limit(image)))
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij"))
    assert spectrum[frequency >= 0.42].max() < 1e-9 * spectrum.max()


def test_energy_is_conserved_by_the_unitary_far_field(two_modes_with_errors):
    sim = two_modes_with_errors
    patches = np.random.default_rng(2).normal(size=(4, DETECTOR, DETECTOR)) + 0j
    intensity = diffraction_intensity(patches, sim.true_probe)
    exit_power = sum(np.sum(np.abs(mode * patches) ** 2, axis=(1, 2)) for mode in sim.true_probe)
    np.testing.assert_allclose(intensity.sum(axis=(1, 2)), exit_power, rtol=1e-10)
    # Zero frequency at index D // 2: a flat exit wave lights only the centre pixel.
    flat = diffraction_intensity(np.ones((1, DETECTOR, DETECTOR)), np.ones((1, DETECTOR, DETECTOR)))
    assert np.unravel_index(np.argmax(flat[0]), flat[0].shape) == (DETECTOR // 2, DETECTOR // 2)


def _model_patterns(true_object, probes, positions):
    """An independent forward model: quintic-spline interpolation of the returned truth at
    the given positions (scipy.ndimage), scipy.fft; the same unitary far field."""
    offsets = np.arange(DETECTOR, dtype=float)
    out = []
    for row, col in positions:
        coords = np.meshgrid(row + offsets, col + offsets, indexing="ij")
        patch = sum(
            part
            * scipy.ndimage.map_coordinates(
                getattr(true_object, name).astype(float), coords, order=5, mode="nearest"
            )
            for part, name in ((1, "real"), (1j, "imag"))
        )
        far = sum(np.abs(scipy.fft.fft2(mode * patch, norm="ortho")) ** 2 for mode in probes)
        out.append(np.fft.fftshift(far))
    return np.asarray(out)


def test_patterns_come_from_the_true_positions_on_the_returned_object(two_modes_with_errors):
    sim = two_modes_with_errors
    errors = sim.true_positions - sim.reported_positions
    assert math.sqrt(np.mean(np.sum(errors**2, axis=1))) == pytest.approx(1.0)
    np.testing.assert_allclose(errors.mean(axis=0), 0, atol=1e-12)
    # Pick patterns whose true patch lies inside the returned object.
    inside = np.all(sim.true_positions >= 0, axis=1) & np.all(
        sim.true_positions + DETECTOR + 1 < np.array(sim.true_object.shape), axis=1
    )
    chosen = np.flatnonzero(inside)[:6]
    data = sim.data[chosen].astype(float)
    at_true = _model_patterns(sim.true_object, sim.true_probe, sim.true_positions[chosen])
    at_reported = _model_patterns(sim.true_object, sim.true_probe, sim.reported_positions[chosen])
    error_true = np.linalg.norm(at_true - data) / np.linalg.norm(data)
    error_reported = np.linalg.norm(at_reported - data) / np.linalg.norm(data)
    assert error_true < 2e-3
    assert error_reported > 10 * error_true


def test_probe_modes_tilt_and_the_wrong_width_guess(two_modes_with_errors):
    sim = two_modes_with_errors
    probes = sim.true_probe.astype(np.complex128)
    np.testing.assert_allclose(sim.mode_power_fractions, [0.8, 0.2], atol=1e-6)
    overlap = np.vdot(probes[0], probes[1]) / np.sqrt(
        np.vdot(probes[0], probes[0]).real * np.vdot(probes[1], probes[1]).real
    )
    assert abs(overlap) < 1e-6
    # The tilt moves the probe's far field off the detector centre by TILT_PX.
    far = np.abs(np.fft.fftshift(np.fft.fft2(probes[0]))) ** 2
    rows, cols = np.indices(far.shape)
    centroid = (np.sum(rows * far) / far.sum(), np.sum(cols * far) / far.sum())
    np.testing.assert_allclose(np.subtract(centroid, DETECTOR // 2), TILT_PX, atol=0.3)
    # The probe is defocused: its phase is curved, not flat.
    core = np.abs(probes[0]) > 0.3 * np.abs(probes[0]).max()
    assert np.ptp(np.angle(probes[0] * np.conj(probes[0][DETECTOR // 2, DETECTOR // 2]))[core]) > 1
    # The guess: flat phase, centred, about half the true probe's width.
    guess = sim.probe_guess
    assert np.ptp(np.angle(guess)) == 0
    assert rms_radius(guess) == pytest.approx(0.55 * rms_radius(probes), rel=0.05)


def test_poisson_noise_gives_counts_at_the_asked_photons():
    sim = simulate_scan(detector=DETECTOR, n_positions=20, photons=1e4, seed=1)
    assert np.all(sim.data == np.round(sim.data))
    assert sim.data.sum(axis=(1, 2)).mean() == pytest.approx(1e4, rel=0.02)
    clean = simulate_scan(detector=DETECTOR, n_positions=20, photons=None, seed=1)
    assert not np.array_equal(sim.data * 100, clean.data)


def test_written_file_reads_back_with_recon_cxi(tmp_path, two_modes_with_errors):
    sim = two_modes_with_errors
    path = simulate_scan(
        tmp_path / "scan7" / "view000.cxi",
        detector=DETECTOR,
        n_positions=N_POSITIONS,
        object_kind="spheres",
        mode_powers=(0.8, 0.2),
        position_error_px=1.0,
        seed=5,
    ).path
    scan = recon.cxi.load_scan(path)
    np.testing.assert_array_equal(scan.data, sim.data)
    np.testing.assert_allclose(scan.positions, sim.reported_positions, atol=1e-4)
    assert scan.pixel_size == pytest.approx(sim.pixel_size, rel=1e-9)
    assert scan.wavelength == pytest.approx(sim.wavelength, rel=1e-9)
    np.testing.assert_array_equal(scan.probe, sim.probe_guess)
    in_memory = sim.to_scan()
    np.testing.assert_array_equal(in_memory.positions, scan.positions)


def test_views_of_the_sphere_phantom_are_projections_of_one_sample():
    views = [
        simulate_scan(
            detector=DETECTOR, n_positions=20, object_kind="spheres", seed=9, view_angle_deg=angle
        )
        for angle in (0.0, 0.0, 30.0)
    ]
    np.testing.assert_array_equal(views[0].true_object, views[1].true_object)
    phase = [np.angle(v.true_object) for v in views]
    assert not np.allclose(phase[0], phase[2], atol=0.05)
    # The same material seen from another side: the total projected phase is about equal.
    assert phase[2].sum() == pytest.approx(phase[0].sum(), rel=0.1)
