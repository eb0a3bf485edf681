"""The fused passes of ``recon.primitives`` (issue 20) against the solver's plain NumPy
expressions, on the CPU, on both paths (default, and the GPU's with
``PTYCHOFLOW_GPU_PATH_ON_CPU=1``) and with the twins' blocks of patterns forced small.
Elementwise results must be equal bit for bit (the twins evaluate the same float32
expressions); the cost sums, float64 sums of float32 terms in another grouping, to 1e-12.
Their CuPy kernels are compared with these twins by ``test_gpu_equivalence.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from recon import primitives
from recon.solver import LineSearchResult, backtracking, batched_backtracking
from tests.unit.fused_cases import (
    COST_CASES,
    COST_IDS,
    STEPS,
    cost_for,
    far_fields,
    plain_intensity,
    plain_trial_cost,
)


@pytest.fixture(params=["cpu", "gpu-path", "small-blocks"])
def path(request, monkeypatch):
    """The default path; the GPU's path on NumPy; the GPU's path with 2-pattern blocks."""
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    if request.param != "cpu":
        monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    if request.param == "small-blocks":
        monkeypatch.setattr(primitives, "CPU_CHUNK_BYTES", 2 * 8 * 16 * 12)
    return request.param


@pytest.mark.parametrize("modes", [1, 3])
def test_mode_intensity_is_the_plain_mode_sum(path, modes):
    psi, _, _ = far_fields(modes=modes)
    out = primitives.mode_intensity(np, psi)
    assert out.dtype == np.float32 and out.shape == (9, 16, 12)
    np.testing.assert_array_equal(out, plain_intensity(psi))


@pytest.mark.parametrize("modes", [1, 2])
def test_line_terms_are_the_plain_cross_and_direction_intensity(path, modes):
    psi, far, _ = far_fields(modes=modes)
    cross, far2 = primitives.line_terms(np, psi, far)
    plain_cross = (psi.real * far.real + psi.imag * far.imag).sum(axis=1) * 2
    np.testing.assert_array_equal(cross, plain_cross)
    np.testing.assert_array_equal(far2, plain_intensity(far))
    # What they are for: |psi + t far|^2 summed over modes, to float32 rounding.
    t = 0.7
    np.testing.assert_allclose(
        primitives.mode_intensity(np, psi) + t * (cross + t * far2),
        plain_intensity(psi + np.float32(t) * far),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("modes", [1, 2])
def test_update_farfield_updates_in_place_and_returns_the_intensity(path, modes):
    psi, far, _ = far_fields(modes=modes)
    expected = psi + 0.375 * far
    out = primitives.update_farfield(np, psi, far, 0.375)
    np.testing.assert_array_equal(psi, expected)
    np.testing.assert_array_equal(out, plain_intensity(expected))


@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_gradient_farfield_is_the_gradient_factor_times_the_far_field(path, kind, floor, masked):
    psi, _, counts = far_fields()
    cost = cost_for(kind, floor, masked, counts)
    intensity = plain_intensity(psi)
    out = primitives.gradient_farfield(np, primitives.cost_terms(cost), intensity, psi)
    assert out.dtype == np.complex64
    np.testing.assert_array_equal(out, cost.gradient_factor(intensity)[:, None] * psi)


@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_trial_costs_are_the_plain_line_search_costs(path, kind, floor, masked):
    psi, far, counts = far_fields()
    cost = cost_for(kind, floor, masked, counts)
    intensity = plain_intensity(psi)
    cross, far2 = primitives.line_terms(np, psi, far)
    # Where rounding makes I + t (cross + t far2) dip below zero the trial is clipped at
    # 0; make such pixels certain (and not rare) by pulling cross down in one row.
    cross[:, 7] -= 20
    plain = [plain_trial_cost(cost, intensity, cross, far2, t) for t in STEPS]
    terms = primitives.cost_terms(cost)
    fused = primitives.trial_costs(np, terms, intensity, cross, far2, STEPS)
    assert fused.dtype == np.float64 and fused.shape == (len(STEPS),)
    if path == "small-blocks":
        np.testing.assert_allclose(fused, plain, rtol=1e-12)
    else:  # one block: the plain expression, bit for bit
        assert fused.tolist() == plain
    assert np.any(intensity + STEPS[0] * (cross + STEPS[0] * far2) < 0)
    # One step at a time gives the same numbers as the batch.
    one = [primitives.trial_costs(np, terms, intensity, cross, far2, [t])[0] for t in STEPS]
    assert one == fused.tolist()


def test_trial_costs_refuse_more_steps_than_the_kernel_holds():
    psi, _, counts = far_fields()
    terms = primitives.cost_terms(cost_for("poisson", 0.0, False, counts))
    intensity = plain_intensity(psi)
    with pytest.raises(ValueError, match="trial steps"):
        primitives.trial_costs(np, terms, intensity, intensity, intensity, [1.0] * 9)


def test_trial_batch_by_path(monkeypatch):
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    assert primitives.trial_batch(np) == 1
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    assert primitives.trial_batch(np) == primitives.GPU_TRIAL_BATCH > 1


@pytest.mark.parametrize("batch", [1, 2, 4, 7])
@pytest.mark.parametrize("accept_below", [9.0, 3.0, 0.1, 1e-9, -1.0])
def test_batched_backtracking_accepts_what_backtracking_accepts(batch, accept_below):
    """A cost that only falls enough for small steps: every batch size takes the same step
    and cost as one trial at a time, and counts the trials up to it the same way."""

    def cost(step):
        return 10.0 - step if step <= accept_below else 11.0

    calls = []

    def costs(steps):
        calls.append(len(steps))
        return [cost(step) for step in steps]

    one = backtracking(cost, 10.0, -1.0, first_step=8.0)
    batched = batched_backtracking(costs, 10.0, -1.0, first_step=8.0, batch=batch)
    assert batched == one
    assert sum(calls) >= one.trials and sum(calls) <= 30
    assert len(calls) == -(-max(one.trials, 1) // batch) or one.step == 0
    assert batched_backtracking(costs, 10.0, 1.0, 8.0, batch) == LineSearchResult(0.0, 10.0, 0)


@pytest.mark.parametrize("leading", ["per-pattern", "shared"])
def test_multiply_conj_is_the_plain_product_with_the_conjugate(path, leading):
    psi, far, _ = far_fields(modes=2)
    b = far[:, :1] if leading == "per-pattern" else far[:1]
    expected = psi * b.conj()
    out = primitives.multiply_conj(np, psi, b)
    assert out is psi
    np.testing.assert_array_equal(psi, expected)


@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("spectra", [1, 9])
def test_apply_ramp_is_the_plain_product_with_the_stored_ramp(path, conj, spectra):
    """The product of the separable ramps, formed block by block where it is applied,
    equals the stored full ramp it replaces (``recon.operators.FourierShift``)."""
    psi, _, _ = far_fields(modes=2)
    rng = np.random.default_rng(4)
    phase_rows = rng.uniform(-3, 3, (9, 1, 16, 1))
    phase_cols = rng.uniform(-3, 3, (9, 1, 1, 12))
    rows = np.exp(1j * phase_rows).astype(np.complex64)
    cols = np.exp(1j * phase_cols).astype(np.complex64)
    ramp = rows * cols
    spectrum = psi[:spectra]
    expected = spectrum * (ramp.conj() if conj else ramp)
    np.testing.assert_array_equal(primitives.apply_ramp(np, spectrum, rows, cols, conj), expected)
    if spectra == 9:
        out = primitives.apply_ramp(np, spectrum, rows, cols, conj, out=spectrum)
        assert out is spectrum
        np.testing.assert_array_equal(spectrum, expected)


def test_scatter_windows_in_blocks_is_the_one_block_twin(monkeypatch):
    """The GPU path's twin converts a block of windows at a time: the same adds in the
    same order as converting all of them at once."""
    from tests.unit.equivalence import random_windows

    _, corner, windows = random_windows(seed=3, n=60)
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    whole = np.zeros((50, 47), np.complex128)
    primitives.scatter_windows(np, whole, windows, corner)
    monkeypatch.setattr(primitives, "CPU_CHUNK_BYTES", 7 * 8 * 12 * 9)
    assert len(primitives._blocks(60, 12 * 9)) == 9
    blocks = np.zeros((50, 47), np.complex128)
    primitives.scatter_windows(np, blocks, windows, corner)
    np.testing.assert_array_equal(blocks, whole)


def test_add_scaled_is_the_plain_update(path):
    psi, far, _ = far_fields(modes=2)
    expected = psi + 0.375 * far
    out = primitives.add_scaled(np, psi, far, 0.375)
    assert out is psi
    np.testing.assert_array_equal(psi, expected)


# -- the GPU path's memory (issue 20): terms formed in the pass, in-place transforms, blocks ----


@pytest.mark.parametrize("modes", [1, 2])
@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_farfield_trial_costs_are_the_trial_costs_of_the_stored_terms(
    path, kind, floor, masked, modes
):
    """Line terms formed from the far fields in the trial pass (the GPU path stores none):
    the same sums as from the stored terms, bit for bit (the same blocks, same order)."""
    psi, far, counts = far_fields(modes=modes)
    far[:, :, 7] *= 30  # large directions: some trials clipped at zero
    cost = cost_for(kind, floor, masked, counts)
    terms = primitives.cost_terms(cost)
    intensity = plain_intensity(psi)
    cross, far2 = primitives.line_terms(np, psi, far)
    stored = primitives.trial_costs(np, terms, intensity, cross, far2, STEPS)
    formed = primitives.farfield_trial_costs(np, terms, intensity, psi, far, STEPS)
    assert formed.tolist() == stored.tolist()
    line = primitives.line_search_terms(np, psi, far)
    assert (line.cross is None) == (path != "cpu")  # the GPU path keeps no terms
    assert primitives.line_trial_costs(np, terms, intensity, line, STEPS).tolist() == (
        stored.tolist()
    )
    with pytest.raises(ValueError, match="trial steps"):
        primitives.farfield_trial_costs(np, terms, intensity, psi, far, [1.0] * 9)


@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_cost_value_is_the_costs_value(path, kind, floor, masked):
    """The CPU path calls ``cost.value``; the GPU path's one pass at step 0 gives the same
    terms, summed in float64 in another order."""
    psi, _, counts = far_fields()
    cost = cost_for(kind, floor, masked, counts)
    intensity = plain_intensity(psi)
    value = primitives.cost_value(np, cost, intensity)
    if path == "cpu":
        assert value == cost.value(intensity)
    else:
        assert value == pytest.approx(cost.value(intensity), rel=1e-12)


def test_amplitude_cost_keeps_the_counts_not_their_roots():
    """The amplitude cost's terms read the counts; ``sqrt(d)`` is formed where it is used."""
    _, _, counts = far_fields()
    cost = cost_for("gaussian", 0.0, False, counts)
    assert cost.data is counts and primitives.cost_terms(cost).data is counts
    np.testing.assert_array_equal(cost.amplitude, np.sqrt(counts))


@pytest.mark.parametrize("modes", [1, 2, 3])
def test_sum_modes_is_the_plain_mode_sum(path, modes):
    psi, _, _ = far_fields(modes=modes)
    expected = psi.sum(axis=1)
    summed = primitives.sum_modes(np, psi.copy())
    np.testing.assert_array_equal(summed, expected)
    if modes == 1 or path != "cpu":  # no new array: a view, or the sum in place
        work = psi.copy()
        assert np.shares_memory(primitives.sum_modes(np, work), work)


@pytest.mark.parametrize("inverse", [False, True])
def test_overwriting_ffts_transform_in_place_on_the_gpu_path(path, monkeypatch, inverse):
    """``overwrite=True`` on the GPU path: the transform in the input's memory (pocketfft,
    as cuFFT does), the same numbers; on the default CPU path a new array as before."""
    from recon import backend

    monkeypatch.setenv("PTYCHOFLOW_FFT", "scipy")
    backend._cpu_fft.cache_clear()
    try:
        psi, _, _ = far_fields(modes=2)
        transform = primitives.ifft2 if inverse else primitives.fft2
        expected = transform(psi)
        work = psi.copy()
        out = transform(work, overwrite=True)
        np.testing.assert_array_equal(out, expected)
        assert np.shares_memory(out, work) == (path != "cpu")
        work = psi.copy()
        into = primitives.ifft2_into(work)
        assert into is work
        np.testing.assert_array_equal(work, primitives.ifft2(psi))
    finally:
        backend._cpu_fft.cache_clear()


def test_window_blocks_cover_the_patterns_once(path):
    blocks = primitives.window_blocks(np, 1000, 16 * 12)
    covered = np.concatenate([np.arange(1000)[block] for block in blocks])
    np.testing.assert_array_equal(covered, np.arange(1000))
    assert (len(blocks) == 1) == (path == "cpu")


@pytest.mark.parametrize("model", ["fourier", "bilinear"])
@pytest.mark.parametrize("modes", [1, 2])
def test_operators_in_blocks_are_the_whole_operators(path, model, modes):
    """What the GPU path computes a block of patterns at a time (patches gathered per
    block, exit waves in the direction's memory, the position derivative per block)
    equals the whole-array operators of the default path."""
    from recon.operators import Ptycho

    rng = np.random.default_rng(7)
    positions = rng.uniform(0, 20, (40, 2))
    shape, det = (40, 38), (16, 12)
    obj = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    probe = (rng.standard_normal((modes, *det)) + 1j).astype(np.complex64)
    ptycho = Ptycho(positions, shape, det, model)
    probes_at = ptycho.probes_at(probe)
    patches = ptycho.patches.fwd(obj)
    whole = ptycho.farfield(probes_at, patches)
    np.testing.assert_array_equal(ptycho.fwd_object(obj, probes_at), whole)
    np.testing.assert_array_equal(ptycho.farfield_gathering(probes_at.copy(), obj), whole)
    far = whole * np.float32(0.5)
    expected = ptycho.adj_probe(far.copy(), patches)
    np.testing.assert_array_equal(ptycho.adj_probe_gathering(far.copy(), obj), expected)
    power = np.zeros(det)
    ptycho.adj_probe_gathering(far.copy(), obj, power=power)
    np.testing.assert_allclose(
        power, (np.abs(patches.astype(np.complex128)) ** 2).sum(axis=0), rtol=1e-6
    )
    grad = ptycho.adj_object(far.copy(), probes_at, out=np.zeros(shape, np.complex128))
    reference = ptycho.adj_object(far, probes_at, out=np.zeros(shape, np.complex128))
    np.testing.assert_allclose(grad, reference, rtol=1e-12, atol=1e-12)
    if model == "fourier":
        part = slice(5, 23)
        np.testing.assert_array_equal(
            ptycho.shift.derivative(probe, part), ptycho.shift.derivative(probe)[:, part]
        )


def test_farfield_gathering_keeps_the_bilinear_models_shared_probe(path):
    """The bilinear model's probes at every position are the probe itself (a view): with
    one position they have the far fields' leading size, and must still not be written."""
    from recon.operators import Ptycho

    rng = np.random.default_rng(8)
    obj = (rng.standard_normal((30, 30)) + 1j).astype(np.complex64)
    probe = (rng.standard_normal((1, 16, 12)) + 1j).astype(np.complex64)
    ptycho = Ptycho(np.array([[3.25, 4.5]]), (30, 30), (16, 12), "bilinear")
    before = probe.copy()
    far = ptycho.farfield_gathering(ptycho.probes_at(probe), obj)
    np.testing.assert_array_equal(probe, before)
    np.testing.assert_array_equal(far, ptycho.fwd_object(obj, ptycho.probes_at(probe)))
