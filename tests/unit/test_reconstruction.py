"""Numerics against ground truth and against the single-device result."""

import dataclasses

import numpy as np
import pytest

from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import partition_positions, reconstruct
from recon.simulate import simulate_view


def _score(result, simulated):
    region = illuminated_region(
        simulated.scan.positions, simulated.true_probe, simulated.true_object.shape
    )
    h, w = simulated.true_object.shape
    return compare_objects(result.object[:h, :w], simulated.true_object, region)


@pytest.fixture(scope="module")
def noise_free():
    return simulate_view(detector=64, n_positions=156, seed=1)


@pytest.fixture(scope="module")
def noisy():
    return simulate_view(detector=64, n_positions=156, photons=1e6, seed=2)


def test_noise_free_scan_reconstructs_to_the_known_object(noise_free):
    result = reconstruct(
        noise_free.scan, ReconOptions(iterations=150, backend="numpy", patch_model="bilinear")
    )
    score = _score(result, noise_free)
    assert score["phase_ssim"] >= 0.95, score
    assert result.cost[-1] < 1e-3 * result.cost[0]
    # The probe guess was the optics model with a 30 % defocus error: refined towards truth
    # (normalised correlation 0.87 for the guess, 0.99 after refinement).
    truth = noise_free.true_probe

    def mismatch(probe):
        return 1 - abs(np.vdot(truth, probe)) / np.linalg.norm(truth) / np.linalg.norm(probe)

    assert result.probe.shape == (1, *truth.shape)
    assert mismatch(result.probe[0]) < 0.2 * mismatch(noise_free.scan.probe)


def test_poisson_noise_scan_reconstructs(noisy):
    result = reconstruct(
        noisy.scan,
        ReconOptions(iterations=100, backend="numpy", patch_model="bilinear", amplitude_start=0),
    )
    score = _score(result, noisy)
    assert score["phase_ssim"] >= 0.85, score
    assert np.all(np.diff(result.cost) <= 1e-12 * result.cost[0])  # never goes up


def test_gaussian_cost_also_converges(noisy):
    result = reconstruct(noisy.scan, ReconOptions(iterations=60, cost="gaussian", backend="numpy"))
    assert _score(result, noisy)["phase_ssim"] >= 0.85


def test_object_only_keeps_the_probe(noisy):
    result = reconstruct(
        noisy.scan, ReconOptions(iterations=3, refine_probe=False, backend="numpy")
    )
    assert result.probe_steps == []
    scaled_guess = noisy.scan.probe * np.sqrt(
        noisy.scan.data.sum(axis=(1, 2)).mean() / np.sum(np.abs(noisy.scan.probe) ** 2)
    )
    np.testing.assert_allclose(result.probe[0], scaled_guess, rtol=1e-5)


def test_one_two_and_four_partitions_agree(noisy):
    """The hybrid model equals the single-device result up to summation order."""
    results = {
        n: reconstruct(noisy.scan, ReconOptions(iterations=30, devices=n, backend="numpy"))
        for n in (1, 2, 4)
    }
    one = results[1]
    for n in (2, 4):
        other = results[n]
        assert other.devices == list(range(n))
        np.testing.assert_allclose(other.object_steps, one.object_steps, rtol=1e-6)
        np.testing.assert_allclose(other.probe_steps, one.probe_steps, rtol=1e-6)
        for name in ("object", "probe"):
            a, b = getattr(one, name), getattr(other, name)
            assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a), (n, name)


def test_partitions_are_spatial_tiles_of_near_equal_size(noisy):
    positions = noisy.scan.positions
    parts = partition_positions(positions, 4)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(positions)))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # 2 x 2 tiles: every tile's centre lies in a different quadrant.
    centre = positions.mean(axis=0)
    quadrants = {tuple(positions[p].mean(axis=0) > centre) for p in parts}
    assert len(quadrants) == 4


def test_progress_callback_sees_every_iteration(noisy):
    seen = []
    reconstruct(
        noisy.scan,
        ReconOptions(iterations=4, backend="numpy"),
        progress=lambda i, cost, seconds: seen.append((i, cost, seconds)),
    )
    assert [i for i, _, _ in seen] == [1, 2, 3, 4]
    assert all(seconds > 0 for _, _, seconds in seen)


def test_partitions_agree_with_probe_modes_and_position_refinement():
    """The hybrid model stays exact with two probe modes and refined positions."""
    from recon.simulate_fourier import simulate_scan

    simulation = simulate_scan(
        detector=32, n_positions=60, seed=4, mode_powers=(0.8, 0.2), position_error_px=1.0
    )
    options = ReconOptions(
        iterations=12,
        probe_modes=2,
        probe_warmup=2,
        refine_positions=True,
        position_start=4,
        # One resolution: the coarse start's own float32 position rounding would be
        # amplified through a second run (its partitions agree the same way).
        coarse_levels=0,
        backend="numpy",
    )
    results = {n: reconstruct(simulation.to_scan(), options.replace(devices=n)) for n in (1, 2, 4)}
    one = results[1]
    assert one.probe.shape == (2, 32, 32)
    assert not np.array_equal(one.refined_positions, one.positions)
    for n in (2, 4):
        other = results[n]
        # The operators' sub-pixel shifts are split from float64 positions, so they do
        # not depend on a partition's origin: with the search's padded grid, costs were
        # measured equal to 2e-16, objects, probes and positions bitwise. The tolerances
        # leave room for the order of the partitions' float64 sums only (rounded to
        # float32 where they are gathered); a partition-dependent float32 rounding of the
        # positions (3e-7 in the first cost, 4e-2 after the search) fails them.
        np.testing.assert_allclose(other.cost, one.cost, rtol=1e-6)
        np.testing.assert_allclose(other.refined_positions, one.refined_positions, atol=1e-6)
        for name in ("object", "probe"):
            a, b = getattr(one, name), getattr(other, name)
            assert np.linalg.norm(b - a) <= 1e-6 * np.linalg.norm(a), (n, name)


def test_sub_pixel_shifts_do_not_depend_on_the_partition_layout_or_the_padding():
    """Every position's integer window and sub-pixel rest are the same on 1, 2 and 4
    partitions and with or without the position search's padded grid: the rest is split
    from the float64 position (exact whatever the partition's origin), not from a float32
    ``position - origin``, whose rounding (up to 1e-6 px) depends on the origin."""
    from recon.operators import split_positions
    from recon.ptycho import _Reconstruction
    from recon.simulate_fourier import simulate_scan

    scan = simulate_scan(detector=32, n_positions=60, seed=4, position_error_px=1.0).to_scan()
    # Positions that float32 cannot hold, so a float32 ``position - origin`` would round.
    scan = dataclasses.replace(scan, positions=np.asarray(scan.positions, np.float64) + 1 / 3)
    options = ReconOptions(refine_positions=True, backend="numpy")

    def windows_and_rests(state):
        corner = np.zeros((scan.n_positions, 2))
        rest = np.zeros((scan.n_positions, 2), dtype=np.float32)
        for part in state.parts:
            for chunk in part.chunks:
                whole, sub = split_positions(chunk.model.positions)
                corner[chunk.indices] = whole + part.origin - state.pad
                rest[chunk.indices] = sub
        return corner, rest

    one = _Reconstruction(scan, options, np, [0])
    assert one.pad > 0
    reference = windows_and_rests(one)
    others = [_Reconstruction(scan, options, np, [0] * n) for n in (2, 4)]
    others.append(_Reconstruction(scan, options.replace(position_search=0), np, [0]))
    assert others[-1].pad == 0
    for state in others:
        corner, rest = windows_and_rests(state)
        np.testing.assert_array_equal(corner, reference[0])
        np.testing.assert_array_equal(rest, reference[1])
        assert state.cost == pytest.approx(one.cost, rel=1e-12)


def test_extra_probe_modes_enter_at_modes_start_without_changing_the_counts():
    """One mode is fitted first; at ``modes_start`` the probe splits into orthogonal modes
    with the same total power, so the modelled counts do not jump."""
    from recon.simulate_fourier import simulate_scan

    simulation = simulate_scan(detector=32, n_positions=40, seed=4, mode_powers=(0.8, 0.2))
    shapes = []

    def monitor(iteration, object_, probe):
        shapes.append(probe.shape[0])
        return False

    options = ReconOptions(iterations=8, probe_modes=3, modes_start=4, backend="numpy")
    result = reconstruct(simulation.to_scan(), options, monitor=monitor)
    # Iterations 1-4 (0-based 0-3) ran with one mode; the modes entered before iteration 5.
    assert shapes == [1, 1, 1, 1, 3, 3, 3, 3]
    assert result.probe.shape == (3, 32, 32)
    gram = np.einsum("mij,nij->mn", result.probe.conj(), result.probe)
    off_diagonal = gram - np.diag(np.diag(gram))
    assert np.abs(off_diagonal).max() <= 1e-4 * np.abs(gram).max()
    assert np.all(np.diff(np.real(np.diag(gram))) <= 0)  # ordered by power
    # The split keeps the total power: the cost does not jump at the split.
    assert result.cost[5] <= 1.5 * result.cost[4]


def test_a_probe_split_into_modes_keeps_its_power():
    from recon.ptycho import with_extra_modes

    rng = np.random.default_rng(0)
    first = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    modes = with_extra_modes(first, 3)
    assert modes.shape == (3, 16, 16)
    power = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    assert power.sum() == pytest.approx(np.sum(np.abs(first) ** 2))
    assert np.all(np.diff(power) <= 0)
    assert 0.6 < power[0] / power.sum() < 0.95  # the first mode keeps most of it
    gram = np.einsum("mij,nij->mn", modes.conj(), modes)
    assert np.abs(gram - np.diag(np.diag(gram))).max() <= 1e-9 * power.sum()


def test_default_modes_start_and_all_modes_from_the_start():
    from recon.ptycho import modes_start_iteration

    assert modes_start_iteration(ReconOptions(iterations=60, probe_modes=2)) == 30
    assert modes_start_iteration(ReconOptions(iterations=60, probe_modes=2, modes_start=0)) == 0
    assert modes_start_iteration(ReconOptions(iterations=60, probe_modes=1)) == 0
    # A start past the end still leaves one iteration with every mode.
    assert modes_start_iteration(ReconOptions(iterations=10, probe_modes=2, modes_start=50)) == 9
