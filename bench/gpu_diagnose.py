#!/usr/bin/env python3
"""Where do the CuPy and NumPy solvers part? Every primitive call and every intermediate of
the first solver steps, compared (run on a GPU machine from the project root).

Prints one line per comparison: the relative difference |gpu - cpu| / |cpu|.
"""

from __future__ import annotations

import pathlib
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cupy as cp
import numpy as np

import recon.operators as ops
from recon import ptycho as pt
from recon.options import ReconOptions
from recon.simulate import simulate_view


def rel(gpu, cpu):
    gpu, cpu = cp.asnumpy(gpu), cp.asnumpy(cpu)
    return float(np.linalg.norm(gpu - cpu) / max(np.linalg.norm(cpu), 1e-30))


def views():
    a = cp.zeros((3, 4), cp.complex128)
    r, i = a.real, a.imag
    r[0, 0] = 1
    i[1, 1] = 2
    print("real/imag are views:", a[0, 0].item(), a[1, 1].item(), "flags", r.flags, r.strides)


def scatter_primitive():
    rng = np.random.default_rng(0)
    n, h, w, shape = 50, 16, 16, (60, 60)
    corner = rng.integers(0, 44, (n, 2))
    win = (rng.normal(size=(n, h, w)) + 1j * rng.normal(size=(n, h, w))).astype(np.complex64)
    for dtype in (np.complex64, np.complex128, np.float32, np.float64):
        wins = win if np.iscomplexobj(np.zeros(1, dtype)) else win.real.copy()
        host = np.zeros(shape, dtype)
        ops._scatter_windows(np, host, wins, corner)
        dev = cp.zeros(shape, dtype)
        ops._scatter_windows(cp, dev, cp.asarray(wins), cp.asarray(corner))
        print("scatter into", np.dtype(dtype).name, rel(dev, host))
    # strided (non-contiguous) window input, as from a sum over a mode axis
    host = np.zeros(shape, np.complex128)
    dev = cp.zeros(shape, np.complex128)
    big = np.stack([win, win * 0.5], axis=1)
    ops._scatter_windows(np, host, big.sum(axis=1), corner)
    ops._scatter_windows(cp, dev, cp.asarray(big).sum(axis=1), cp.asarray(corner))
    print("scatter of a mode sum", rel(dev, host))


def instrument():
    """Check every CuPy gather and scatter against the host computation."""
    original_scatter, original_gather = ops._scatter_windows, ops._strided_windows
    worst = {"scatter": 0.0, "gather": 0.0}

    def scatter(xp, out, windows, corner):
        if xp is np:
            return original_scatter(xp, out, windows, corner)
        host_out = cp.asnumpy(out).copy()
        original_scatter(np, host_out, cp.asnumpy(windows), cp.asnumpy(corner))
        original_scatter(xp, out, windows, corner)
        err = rel(out, host_out)
        if err > worst["scatter"]:
            worst["scatter"] = err
            print(
                f"  scatter call: out {out.dtype} {out.shape} strides {out.strides} "
                f"contig {out.flags.c_contiguous}; windows {windows.dtype} {windows.shape} "
                f"strides {windows.strides}: rel {err:.3g}"
            )
        return None

    def gather(xp, obj, corner, shape):
        got = original_gather(xp, obj, corner, shape)
        if xp is np:
            return got
        want = original_gather(np, cp.asnumpy(obj), cp.asnumpy(corner), shape)
        err = rel(got, want)
        if err > worst["gather"]:
            worst["gather"] = err
            print(
                f"  gather call: obj {obj.dtype} {obj.shape} strides {obj.strides}: rel {err:.3g}"
            )
        return got

    ops._scatter_windows, ops._strided_windows = scatter, gather
    return worst


def cat(chunks, name):
    return np.concatenate([cp.asnumpy(getattr(c, name)) for c in chunks])


def solver_steps():
    view = simulate_view(detector=64, n_positions=156, photons=1e6, seed=3)
    options = ReconOptions(iterations=1)
    cpu = pt._Reconstruction(view.scan, options.replace(backend="numpy"), np, [0])
    gpu = pt._Reconstruction(view.scan, options.replace(backend="cupy"), cp, [0])
    pc, pg = cpu.parts[0], gpu.parts[0]
    for name in ("probes_at", "farfield", "intensity"):
        print("construction", name, rel(cat(pg.chunks, name), cat(pc.chunks, name)))
    print("construction cost", gpu.cost, cpu.cost)
    print(
        "data",
        rel(cat([c.cost for c in pg.chunks], "data"), cat([c.cost for c in pc.chunks], "data")),
    )

    # GRAD by hand, both backends
    def grad_of(state, xp):
        part = state.parts[0]
        grad = xp.zeros(part.shape, dtype=np.complex128)
        illum = xp.zeros(part.shape, dtype=np.float64)
        factors = []
        for chunk in part.chunks:
            factor = chunk.cost.gradient_factor(chunk.intensity)
            factors.append(cp.asnumpy(factor))
            chunk.model.adj_object(factor[:, None] * chunk.farfield, chunk.probes_at, out=grad)
            power = pt._intensity(chunk.probes_at)
            chunk.model.patches.adj(power, out=illum)
        return np.concatenate(factors), cp.asnumpy(grad), cp.asnumpy(illum)

    fc, gc, ic = grad_of(cpu, np)
    fg, gg, ig = grad_of(gpu, cp)
    print("gradient factor", rel(fg, fc))
    print(
        "gradient",
        rel(gg, gc),
        "real part",
        rel(gg.real, gc.real),
        "imag part",
        rel(gg.imag, gc.imag),
    )
    print("illumination", rel(ig, ic))
    steps = cpu.object_step(), gpu.object_step()
    print("one object step: steps", steps, "object", rel(gpu.object, cpu.object))
    print("  precond", rel(gpu._object_precond, cpu._object_precond))
    print("  direction", rel(gpu.object_cg.previous_direction, cpu.object_cg.previous_direction))
    print("  grad", rel(gpu.object_cg.previous_grad, cpu.object_cg.previous_grad))
    print(
        "  part object",
        rel(pg.object, pc.object),
        "farfield",
        rel(cat(pg.chunks, "farfield"), cat(pc.chunks, "farfield")),
    )
    steps = cpu.probe_step(), gpu.probe_step()
    print("one probe step: steps", steps, "probe", rel(gpu.probe, cpu.probe))
    steps = cpu.object_step(), gpu.object_step()
    print("second object step: steps", steps, "object", rel(gpu.object, cpu.object))


def main():
    for part in (views, scatter_primitive):
        try:
            part()
        except Exception:
            traceback.print_exc()
    worst = instrument()
    try:
        solver_steps()
    except Exception:
        traceback.print_exc()
    print("worst primitive call differences:", worst)


if __name__ == "__main__":
    main()
