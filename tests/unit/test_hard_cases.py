"""Fidelity on the hard scans of issue 18 (``recon.simulate_hard``): one slow test per
kind, each with a floor below the score measured with the default options."""

import dataclasses

import numpy as np
import pytest

from recon.errors import OptionsError
from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import (
    _Reconstruction,
    coarse_levels_for,
    fit_affine,
    position_search_iterations,
    position_search_radius,
    reconstruct,
)
from recon.simulate_hard import HARD_CASES, StageAffine, simulate_hard_scan


def _phase_ssim(result, simulation):
    truth = simulation.true_object
    amplitude = np.sqrt(np.sum(np.abs(simulation.true_probe) ** 2, axis=0))
    region = illuminated_region(simulation.true_positions, amplitude, truth.shape)
    h, w = truth.shape
    return compare_objects(result.object[:h, :w], truth, region)["phase_ssim"]


def test_affine_stage_error_moves_the_true_positions():
    plain = simulate_hard_scan(detector=32, n_positions=30, seed=0)
    np.testing.assert_array_equal(plain.true_positions, plain.reported_positions)
    turned = simulate_hard_scan(
        detector=32, n_positions=30, seed=0, affine=StageAffine(rotation_deg=90.0)
    )
    centre = turned.reported_positions.mean(axis=0)
    offset = turned.reported_positions - centre
    expected = centre + np.stack([-offset[:, 1], offset[:, 0]], axis=1)
    np.testing.assert_allclose(turned.true_positions, expected, atol=1e-9)
    with pytest.raises(ValueError, match="overlap"):
        simulate_hard_scan(detector=32, n_positions=10, overlap=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_strong_phase_star_with_the_default_coarse_start(seed):
    """A 2.5 pi star (the phase wraps): measured 0.999 / 0.998 with the default start (one
    coarse level: 77 % of the counts in the patterns' central half), 0.58 / 0.41 with
    ``coarse_levels=0`` (60 iterations)."""
    simulation = simulate_hard_scan(seed=seed, **HARD_CASES["strong phase 2.5pi"])
    scan = simulation.to_scan()
    assert coarse_levels_for(scan, ReconOptions()) == 1
    result = reconstruct(scan, ReconOptions(iterations=60, backend="numpy"))
    assert _phase_ssim(result, simulation) >= 0.98, _phase_ssim(result, simulation)


@pytest.mark.slow
def test_low_dose_with_the_default_total_variation_penalty():
    """1e3 photons per pattern, 200 iterations (the fit follows the noise when run long):
    measured 0.920 phase SSIM with the default penalty (below 3e4 counts), 0.904 without
    it, 0.895 with held-out stopping instead (seed 11)."""
    simulation = simulate_hard_scan(seed=11, **HARD_CASES["low dose 1e3"])
    result = reconstruct(simulation.to_scan(), ReconOptions(iterations=200, backend="numpy"))
    assert _phase_ssim(result, simulation) >= 0.91, _phase_ssim(result, simulation)


def _defocused(probe, spot_px):
    """``probe`` (H, W) with the far-field quadratic phase of a beam whose geometric spot at
    the sample has diameter ``spot_px`` (the simulator's pupil: 0.3 of the detector)."""
    n = probe.shape[0]
    q = np.fft.fftfreq(n)
    q2 = q[:, None] ** 2 + q[None, :] ** 2
    pupil_radius = 0.15  # cycles per pixel
    far = np.fft.fft2(np.fft.ifftshift(probe)) * np.exp(
        1j * np.pi * spot_px / (2 * pupil_radius) * q2
    )
    return np.fft.fftshift(np.fft.ifft2(far)).astype(np.complex64)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_sparse_overlap_with_a_probe_guess_of_the_beam_s_defocus(seed):
    """30 % linear overlap. From the flat-phase Gaussian guess no solver finds the beam's
    defocus (ours 0.05 / 0.11 phase SSIM, Pty-chi LSQML 0.14, rPIE 0.12); the same Gaussian
    with the defocus of the 16 px beam gives 0.999: the object step and its preconditioner
    handle the weakly covered pixels, the start is what fails (see README)."""
    import dataclasses

    simulation = simulate_hard_scan(seed=seed, **HARD_CASES["sparse overlap"])
    scan = simulation.to_scan()
    scan = dataclasses.replace(scan, probe=_defocused(np.asarray(scan.probe), 16.0))
    result = reconstruct(scan, ReconOptions(iterations=60, backend="numpy"))
    assert _phase_ssim(result, simulation) >= 0.98, _phase_ssim(result, simulation)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_sparse_overlap_with_the_default_defocus_search(seed):
    """30 % linear overlap from the file's flat-phase Gaussian guess, default options: the
    scan is sparse, so the start searches the probe's defocus. Measured 0.998 / 0.998
    phase SSIM (0.046 / 0.11 without the search), 60 iterations."""
    simulation = simulate_hard_scan(seed=seed, **HARD_CASES["sparse overlap"])
    result = reconstruct(simulation.to_scan(), ReconOptions(iterations=60, backend="numpy"))
    assert result.start_defocus_px not in (None, 0.0)
    assert _phase_ssim(result, simulation) >= 0.95, _phase_ssim(result, simulation)


def _position_rms(positions, truth):
    """RMS distance (pixels) to the truth after removing the mean difference: a global
    shift of positions and object together is not in the data."""
    error = np.asarray(positions, np.float64) - truth
    error -= error.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


@pytest.mark.parametrize("stride", [1, 2])
def test_one_search_pass_finds_positions_pixels_off_under_the_true_object_and_probe(stride):
    """The search alone: from 2.5 px RMS random errors (beyond the gradient steps' reach),
    one pass against the true object and probe leaves little beyond the errors' affine
    part, which it leaves to the gradient steps (0.4 px of 60 random errors); the default
    radius is an eighth of the detector. With ``stride`` 2 (radii above 8 px) a 2 px grid
    is tried first, then the best one's neighbours."""
    simulation = simulate_hard_scan(n_positions=60, position_error_px=2.5, photons=1e6, seed=3)
    scan = dataclasses.replace(simulation.to_scan(), probe=simulation.true_probe[0])
    options = ReconOptions(iterations=100, refine_positions=True, backend="numpy")
    assert position_search_radius(options, scan.detector_shape) == 8
    assert position_search_radius(options.replace(refine_positions=False), (64, 64)) == 0
    state = _Reconstruction(scan, options, np, [0], simulation.true_object)
    before = _position_rms(state.reported_grid(state.positions), simulation.true_positions)
    moved = state.position_search(8, stride)
    found = state.reported_grid(state.positions)  # the solver pads its grid for the search
    after = _position_rms(found, simulation.true_positions)
    assert before == pytest.approx(2.5, rel=0.01)
    assert moved > 1.5
    assert after <= 0.6, after
    # What is left is the random errors' affine part (the search removes its own).
    fitted = fit_affine(found, simulation.true_positions)
    centre = found.mean(axis=0)
    mapped = centre + (found - centre) @ fitted[:, :2].T + fitted[:, 2]
    assert _position_rms(mapped, simulation.true_positions) <= 0.2
    # The mean move is removed, and so is the affine part (left to the gradient steps).
    offset = found - scan.positions
    assert np.all(np.abs(offset.mean(axis=0)) < 1e-5)
    centred = scan.positions - scan.positions.mean(axis=0)
    linear, *_ = np.linalg.lstsq(centred, offset, rcond=None)
    assert np.all(np.abs(linear) < 1e-6)


def test_search_passes_run_from_30_to_80_percent_and_move_the_gradient_steps_there():
    options = ReconOptions(iterations=100, refine_positions=True)
    assert sorted(position_search_iterations(options, (64, 64))) == list(range(30, 80, 3))
    assert not position_search_iterations(options.replace(position_search=0), (64, 64))
    assert not position_search_iterations(options.replace(refine_positions=False), (64, 64))
    # A given gradient start ends the passes there (at least one pass).
    assert sorted(position_search_iterations(options.replace(position_start=5), (64, 64))) == [30]
    # Under 100 iterations no search unless asked for; its first pass not before 30.
    short = options.replace(iterations=60)
    assert not position_search_iterations(short, (64, 64))
    assert sorted(position_search_iterations(short.replace(position_search=8), (64, 64))) == list(
        range(30, 48, 3)
    )
    # At most POSITION_SEARCH_PASSES passes.
    long = options.replace(iterations=1000)
    assert len(position_search_iterations(long, (64, 64))) == 30
    with pytest.raises(OptionsError, match="position_search"):
        ReconOptions(position_search=-1)


def _positions_run(name, seed, iterations):
    simulation = simulate_hard_scan(seed=seed, **HARD_CASES[name])
    result = reconstruct(
        simulation.to_scan(),
        ReconOptions(iterations=iterations, refine_positions=True, backend="numpy"),
    )
    rms = _position_rms(result.refined_positions, simulation.true_positions)
    return simulation, result, rms, _phase_ssim(result, simulation)


@pytest.mark.slow
def test_positions_off_by_3_px_of_a_128_px_scan_are_found():
    """1.5 px RMS random errors at 64 px (3 px at 128 px), default options with
    ``refine_positions``: measured 0.030 / 0.049 px RMS left and phase SSIM 0.999 / 0.999
    in 100 iterations (seeds 11 / 12; 0.011 / 0.011 px in 200)."""
    _, _, rms, ssim = _positions_run("positions off 1.5 px", 11, 100)
    assert rms <= 0.2, rms
    assert ssim >= 0.99, ssim


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 13])
def test_positions_off_by_5_px_of_a_128_px_scan_are_found(seed):
    """2.5 px RMS random errors at 64 px (5 px at 128 px), 200 iterations: measured
    0.015 / 0.025 px RMS left and phase SSIM 0.999 / 0.998 (seeds 11 / 13; with the passes
    to 60 % and the rule of two settled passes, seed 13 ended at 1.18 px). Not yet robust:
    seeds 12 and 15 stall at 0.9 / 1.3 px (sectors of the star's rim shifted together
    with their object), seeds 14 / 16 / 17 / 18 end at 0.056 / 0.016 / 0.013 / 0.020 px
    (README)."""
    _, _, rms, ssim = _positions_run("positions off 2.5 px", seed, 200)
    assert rms <= 0.3, rms
    assert ssim >= 0.98, ssim


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "seed"),
    [("positions off 1.5 px + affine", 12), ("positions off 2.5 px + affine", 11)],
    ids=["3px-affine-seed12", "5px-affine-seed11"],
)
def test_a_global_affine_stage_error_is_fitted(case, seed):
    """Random errors plus a stage error of 2 % scale, 1.5 degrees rotation and 1 % shear,
    200 iterations; the fitted map is compared with the truth's own fit (random errors
    included).

    - 1.5 px RMS (3 px at 128 px), seed 12: measured 0.187 px RMS left, phase SSIM 0.992,
      scale 1.0187 / rotation 1.22 deg / shear 0.014 against 1.0199 / 1.66 / 0.020 (seed
      11: 0.014 px, 1.0244 / 1.36 / 0.013 against 1.0243 / 1.38 / 0.013). With the passes
      to 60 %: 0.135 / 0.036 px. In 100 iterations seed 11 ends at 0.11 px (0.9 px with
      the passes to 60 %).
    - 2.5 px RMS (5 px at 128 px), seed 11: measured 0.062 px left, phase SSIM 0.998,
      1.0261 / 1.13 deg / 0.013 against 1.0271 / 1.30 / 0.015 (0.83 px before the longer
      search). Seed 12 is not solved (1.58 px, README).
    """
    simulation, result, rms, ssim = _positions_run(case, seed, 200)
    assert rms <= 0.3, rms
    assert ssim >= 0.98, ssim
    truth = StageAffine.from_matrix(
        fit_affine(simulation.reported_positions, simulation.true_positions)[:, :2]
    )
    fitted = StageAffine.from_matrix(result.position_affine[:, :2])
    assert fitted.scale == pytest.approx(truth.scale, abs=0.004)
    assert fitted.rotation_deg == pytest.approx(truth.rotation_deg, abs=0.5)
    assert fitted.shear == pytest.approx(truth.shear, abs=0.01)
    assert fitted.scale > 1.01  # the stage's 2 %, not identity


def test_partitions_agree_with_the_position_search():
    """The search is per position and its moves are reduced on the host: two partitions
    give the one-partition result (summation order aside)."""
    simulation = simulate_hard_scan(
        detector=32, n_positions=40, position_error_px=1.5, photons=1e6, seed=5
    )
    options = ReconOptions(
        iterations=8, probe_warmup=1, refine_positions=True, position_search=3, backend="numpy"
    )
    assert sorted(position_search_iterations(options, (32, 32))) == [5]
    one, two = (reconstruct(simulation.to_scan(), options.replace(devices=n)) for n in (1, 2))
    assert not np.array_equal(one.refined_positions, one.positions)
    np.testing.assert_allclose(two.refined_positions, one.refined_positions, atol=1e-3)
    np.testing.assert_allclose(two.cost, one.cost, rtol=1e-4)
    assert one.object.shape == two.object.shape


def test_the_search_stops_once_positions_have_settled_and_the_gradient_steps_take_over(
    monkeypatch,
):
    """Positions that are right already: after POSITION_SEARCH_SETTLED_PASSES passes in a
    row that move them by less than POSITION_SEARCH_SETTLED_PX, no more passes run (each
    costs about 10 iterations), and the gradient steps start at once instead of at 80 %
    of the run; the first pass always runs."""
    import recon.ptycho as ptycho

    events = []
    search, step = ptycho._Reconstruction.position_search, ptycho._Reconstruction.position_step

    def counted(self, radius, stride=1):
        moved = search(self, radius, stride)
        events.append(moved)
        return moved

    def stepped(self):
        events.append("step")
        return step(self)

    monkeypatch.setattr(ptycho._Reconstruction, "position_search", counted)
    monkeypatch.setattr(ptycho._Reconstruction, "position_step", stepped)
    simulation = simulate_hard_scan(detector=32, n_positions=40, photons=1e6, seed=2)
    options = ReconOptions(iterations=100, refine_positions=True, backend="numpy")
    scheduled = position_search_iterations(options, (32, 32))
    assert len(scheduled) == 17
    reconstruct(simulation.to_scan(), options)
    moves = [e for e in events if e != "step"]
    settled = ptycho.POSITION_SEARCH_SETTLED_PASSES
    assert settled <= len(moves) < len(scheduled), moves
    assert all(m < ptycho.POSITION_SEARCH_SETTLED_PX for m in moves[-settled:]), moves
    # Gradient steps only after the last pass, from the iteration after it on (the last
    # pass is iteration 30 + 3 (len(moves) - 1)): more than the 20 from 80 %.
    first_step = events.index("step")
    assert first_step == len(moves), events[: first_step + 1]
    assert events.count("step") == 100 - (30 + 3 * (len(moves) - 1)) - 1, events.count("step")
    assert events.count("step") > 20
