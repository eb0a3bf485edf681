"""``ptychoflow recon``: reconstruct one view file on this machine."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recon",
        help="reconstruct one view (CXI file, or the npz test format) on this machine",
        description="Reconstruct one ptychography view and write OUTPUT.h5 with a PNG "
        "preview (phase and amplitude) beside it.",
    )
    parser.add_argument("input", help="view file: .cxi/.h5, or .npz/.npz.bz2 (test data format)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="result file to write (ending in .h5/.hdf5, e.g. out/view000.h5), or a folder "
        "(existing, or ending in /) that gets <input stem>.h5; never the input, and an "
        "existing file there is replaced only when it is a ptychoflow result",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="solver iterations (default 100)"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="devices to split the view over: GPUs with CuPy, partitions on the CPU (default 1)",
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="keep the probe guess fixed (refine the object only)",
    )
    parser.add_argument(
        "--cost",
        choices=["poisson", "gaussian"],
        default=None,
        help="noise model (default poisson)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "numpy", "cupy"],
        default=None,
        help="array backend (default auto: CuPy when a GPU is usable)",
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=None,
        metavar="FRACTION",
        help="hold out this fraction of the patterns (e.g. 0.05) and stop when their cost "
        "stops falling, keeping the best iterate: against fitting the noise (default 0: off)",
    )
    parser.add_argument(
        "--holdout-patience",
        type=int,
        default=None,
        metavar="N",
        help="iterations without a new lowest held-out cost before stopping (default 10)",
    )
    parser.add_argument(
        "--preview-deramp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="remove the global phase and the fitted linear phase ramp in the PNG preview "
        "(default on: a ramp, an ambiguity of the data, wraps the phase display)",
    )
    parser.add_argument(
        "--probe-modes",
        type=int,
        default=None,
        metavar="N",
        help="incoherent probe modes for a partially coherent beam (default 1)",
    )
    parser.add_argument(
        "--modes-start",
        type=int,
        default=None,
        metavar="N",
        help="iteration at which the extra probe modes enter; one mode is fitted until then "
        "(default: after 50%% of the iterations; 0: all modes from the start)",
    )
    parser.add_argument(
        "--refine-positions",
        action="store_true",
        help="refine the scan positions (encoder errors of a pixel or more)",
    )
    parser.add_argument(
        "--patch-model",
        choices=["fourier", "bilinear"],
        default=None,
        help="sub-pixel shift model (default fourier: band-limited)",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="refuse views estimated to need more memory than this (e.g. 32GiB; default "
        "$PTYCHOFLOW_MEMORY_LIMIT, else the memory available)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys
    import threading

    from tqdm import tqdm

    from recon.api import reconstruct_file
    from recon.hdf5_confined import roots_from_environment
    from recon.memory import parse_bytes
    from recon.options import ReconOptions

    memory_limit = None
    if args.memory_limit is not None:
        memory_limit = parse_bytes(args.memory_limit, "--memory-limit")

    changes = {
        "iterations": args.iterations,
        "devices": args.devices,
        "cost": args.cost,
        "backend": args.backend,
        "probe_modes": args.probe_modes,
        "modes_start": args.modes_start,
        "patch_model": args.patch_model,
        "refine_positions": args.refine_positions or None,
        "holdout_fraction": args.holdout,
        "holdout_patience": args.holdout_patience,
    }
    options = ReconOptions.from_dict({k: v for k, v in changes.items() if v is not None})
    if args.no_probe:
        options = options.replace(refine_probe=False)

    bar = tqdm(
        total=options.iterations,
        desc="reconstructing",
        unit="it",
        disable=args.quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def progress(iteration: int, cost: float, seconds: float) -> None:
        bar.set_postfix_str(f"cost {cost:.4g}, {seconds * 1000:.0f} ms/it", refresh=False)
        bar.update(1)

    def interrupted(signum: int, frame: object) -> None:
        # SIGTERM (systemd, kill, a batch system) unwinds like Ctrl-C: temporary files
        # are removed on the way out instead of being left half-written.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupted) if in_main_thread else None
    try:
        summary = reconstruct_file(
            args.input,
            args.output,
            options,
            progress=progress,
            preview_deramp=args.preview_deramp,
            memory_limit=memory_limit,
            allowed_roots=roots_from_environment(),
        )
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    print(
        f"wrote {summary['output']} and {summary['preview']} "
        f"(cost {summary['initial_cost']:.4g} -> {summary['final_cost']:.4g}, "
        f"{summary['seconds_per_iteration'] * 1000:.0f} ms/iteration on {summary['backend']})"
    )
    if "holdout" in summary:
        print(
            f"stopped on {summary['holdout']['patterns']} held-out patterns after "
            f"{summary['iterations']} iterations; kept iteration "
            f"{summary['holdout']['best_iteration']}"
        )
    if not args.quiet:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0
