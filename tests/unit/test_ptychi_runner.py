"""Pty-chi LSQML on our conventions: the mapping of centring, probe scale and positions.

One torch thread: on a busy 2-core machine two OpenMP threads made these
small runs ~20x slower (threads spin-waiting for a core).

A tiny self-contained simulator (our forward model: top-left integer positions,
unitary FFT, zero frequency centred) makes the data. Skipped without torch/ptychi.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench import ptychi_runner
from recon.errors import InputError

try:
    ptychi_runner.import_ptychi()
except ImportError as err:  # torch or ptychi not installed (the `bench` extra)
    pytest.skip(f"Pty-chi not importable: {err}", allow_module_level=True)


def make_scan(det_shape=(32, 32), grid=10, step=6, seed=0):
    """A noise-free far-field scan in our conventions.

    Returns data (N, DET_H, DET_W) float32 centred counts, positions (N, 2) float32
    top-left corners, probe (DET_H, DET_W) complex64 (unitary scale) and the true
    object (OBJ_H, OBJ_W) complex64 on our grid.
    """
    rng = np.random.default_rng(seed)
    det_h, det_w = det_shape
    rows, cols = np.meshgrid(np.arange(grid) * step, np.arange(grid) * step, indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1) + 1
    positions = positions + rng.integers(-1, 2, size=positions.shape) + 1
    positions = positions.astype(np.float32)
    obj_shape = ptychi_runner.object_grid_shape(positions, det_shape)

    def smooth_noise():
        return ndimage.gaussian_filter(rng.standard_normal(obj_shape), 2.0)

    amplitude, phase = smooth_noise(), smooth_noise()
    amplitude = 0.7 + 0.3 * (amplitude - amplitude.min()) / np.ptp(amplitude)
    phase = 3.0 * (phase - phase.mean()) / np.ptp(phase)
    truth = (amplitude * np.exp(1j * phase)).astype(np.complex64)

    y, x = np.mgrid[:det_h, :det_w]
    r2 = (y - (det_h - 1) / 2) ** 2 + (x - (det_w - 1) / 2) ** 2
    probe = np.exp(-r2 / (2 * 5.0**2)) * np.exp(1j * 0.02 * r2)
    probe = (probe * 300.0 / np.sqrt((np.abs(probe) ** 2).sum())).astype(np.complex64)

    data = np.empty((len(positions), det_h, det_w), np.float32)
    for i, (r, c) in enumerate(positions.astype(int)):
        exit_wave = probe * truth[r : r + det_h, c : c + det_w]
        far = np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))
        data[i] = np.abs(far) ** 2
    return data, positions, probe, truth


def illuminated(positions, det_shape, obj_shape, probe, fraction=0.1):
    """(OBJ_H, OBJ_W) bool: where the summed probe intensity exceeds `fraction` of its max."""
    total = np.zeros(obj_shape)
    for r, c in positions.astype(int):
        total[r : r + det_shape[0], c : c + det_shape[1]] += np.abs(probe) ** 2
    return total > fraction * total.max()


def correlation(truth, recon, mask):
    """|<t, r>| / (|t| |r|) over mask, each with its mean removed.

    1 when recon equals truth up to a global complex factor (global phase and
    scale); the mean is removed so a flat, never-updated object scores ~0.
    """
    t, r = truth[mask], recon[mask]
    t, r = t - t.mean(), r - r.mean()
    return float(np.abs(np.vdot(t, r)) / (np.linalg.norm(t) * np.linalg.norm(r)))


@pytest.mark.parametrize("det_shape", [(32, 32), (31, 34)], ids=["even", "odd-rect"])
def test_ptychi_forward_model_reproduces_our_data(det_shape):
    """With the true object and probe, Pty-chi's own forward model predicts our counts."""
    import torch

    data, positions, probe, truth = make_scan(det_shape=det_shape, grid=4, step=7)
    task = ptychi_runner.build_task(
        "lsqml", data, positions, probe, iterations=1, object_guess=truth
    )
    with torch.no_grad():
        predicted = task.reconstructor.forward_model.forward(torch.arange(len(data)))
    predicted = np.fft.fftshift(predicted.cpu().numpy(), axes=(-2, -1))
    scale = np.abs(data).max()
    np.testing.assert_allclose(predicted / scale, data / scale, atol=2e-5)


def test_lsqml_recovers_the_object_on_our_grid():
    data, positions, probe, truth = make_scan()
    result = ptychi_runner.run_ptychi("lsqml", data, positions, probe, iterations=30, threads=1)
    assert result.object.shape == truth.shape
    assert result.object.dtype == np.complex64
    assert result.probe.shape == probe.shape
    assert result.cost_history.shape == (30,)
    assert result.cost_history[-1] < 0.05 * result.cost_history[0]
    assert result.seconds_per_iteration > 0
    mask = illuminated(positions, probe.shape, truth.shape, probe)
    score = correlation(truth, result.object, mask)
    assert score > 0.9, score
    # The returned probe is on our unitary scale: its power matches the true probe's.
    power_ratio = (np.abs(result.probe) ** 2).sum() / (np.abs(probe) ** 2).sum()
    object_power = np.mean(np.abs(result.object[mask]) ** 2) / np.mean(np.abs(truth[mask]) ** 2)
    assert 0.8 < power_ratio * object_power < 1.25, (power_ratio, object_power)


def test_wrong_position_mapping_scores_clearly_worse():
    """Transposed positions (x and y swapped): the same check must fail."""
    data, positions, probe, truth = make_scan()
    wrong = positions[:, ::-1].copy()
    result = ptychi_runner.run_ptychi("lsqml", data, wrong, probe, iterations=30, threads=1)
    mask = illuminated(positions, probe.shape, truth.shape, probe)
    score = correlation(truth, result.object, mask)
    assert score < 0.5, score


def test_bad_inputs_name_the_array():
    data, positions, probe, _ = make_scan(grid=2)
    with pytest.raises(InputError, match="probe: expected shape"):
        ptychi_runner.to_ptychi_inputs(data, positions, probe[:-1])
    with pytest.raises(InputError, match="positions: expected shape"):
        ptychi_runner.to_ptychi_inputs(data, positions[:-1], probe)
    with pytest.raises(InputError, match=">= 0"):
        ptychi_runner.to_ptychi_inputs(data, positions - 5, probe)


def test_conversion_places_top_left_corner_exactly():
    """Pty-chi's extractor puts the corner at origin + centre - (DET - 1) / 2."""
    data, positions, probe, _ = make_scan(det_shape=(31, 34), grid=3)
    inputs = ptychi_runner.to_ptychi_inputs(data, positions, probe)
    corner_y = inputs.origin[0] + inputs.position_y_px - (31 - 1) / 2
    corner_x = inputs.origin[1] + inputs.position_x_px - (34 - 1) / 2
    np.testing.assert_allclose(np.stack([corner_y, corner_x], 1), positions, atol=1e-4)
    np.testing.assert_allclose(inputs.patterns[:, 0, 0], data[:, 31 // 2, 34 // 2])


def test_default_batch_size_is_a_tenth_within_limits():
    assert ptychi_runner.default_batch_size(20) == 20
    assert ptychi_runner.default_batch_size(100) == 32
    assert ptychi_runner.default_batch_size(516) == 52
    assert ptychi_runner.default_batch_size(1800) == 100
