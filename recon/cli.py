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
    parser.add_argument(
        "input",
        help="view file: .cxi/.h5, or .npz/.npz.bz2 (test data format); with --reader, a "
        "beamline's scan folder (or its diffraction file)",
    )
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
        "--defocus-search",
        choices=["auto", "on", "off"],
        default=None,
        help="start the probe from the best of its guess and four defocused versions "
        "(default auto: on for sparse scans, median step >= 0.13 of the detector width)",
    )
    parser.add_argument(
        "--object-tv",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="total-variation penalty on the object against fitting photon noise (e.g. 0.1; "
        "0: off; default: 0.1 below 3e4 mean counts per pattern, else off)",
    )
    parser.add_argument(
        "--holdout-patience",
        type=int,
        default=None,
        metavar="N",
        help="iterations without a new lowest held-out cost before stopping (default 10)",
    )
    parser.add_argument(
        "--dark-floor",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fade the costs' pull in pixels the model leaves dark below this fraction of "
        "the mean intensity (e.g. 1e-5): the same iterates on every backend (default 0: the "
        "textbook costs, faster from a rough probe guess)",
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
        "--position-search",
        type=int,
        default=None,
        metavar="PX",
        help="with --refine-positions: radius of the search for positions several pixels "
        "off (default: an eighth of the detector's side with 100 iterations or more; "
        "0: gradient steps only)",
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
    beamline = parser.add_argument_group(
        "beamline files (read through Ptychodus's readers: the interop extra)",
        "Without --reader, the [beamline] section of --config (when it has one) applies to "
        "a folder; flags override it. `ptychoflow formats` lists the readers.",
    )
    beamline.add_argument(
        "--reader", default=None, help="diffraction reader's simple name, e.g. APS_Velociprobe"
    )
    beamline.add_argument(
        "--positions-reader",
        default=None,
        help="position reader's simple name, e.g. APS_Velociprobe_LI (default: --reader)",
    )
    beamline.add_argument(
        "--diffraction", default=None, metavar="GLOB", help="the diffraction (master) file's glob"
    )
    beamline.add_argument("--positions", default=None, metavar="GLOB", help="positions file's glob")
    beamline.add_argument(
        "--crop", type=int, default=None, help="square crop around the beam centre, in pixels"
    )
    beamline.add_argument(
        "--center",
        type=int,
        nargs=2,
        default=None,
        metavar=("ROW", "COL"),
        help="beam centre in detector pixels (default: the file's, else found)",
    )
    beamline.add_argument("--binning", type=int, default=None, help="sum N x N pixels")
    beamline.add_argument("--distance", type=float, default=None, help="detector distance (m)")
    beamline.add_argument("--energy", type=float, default=None, help="photon energy (eV)")
    beamline.add_argument("--pixel-size", type=float, default=None, help="detector pixel pitch (m)")
    beamline.add_argument(
        "--photon-threshold", type=float, default=None, help="counts below this become zero"
    )
    beamline.add_argument(
        "--probe-zone-plate",
        default=None,
        metavar="PRESET",
        help="probe guess from a Ptychodus zone-plate preset (e.g. APS_Velociprobe)",
    )
    beamline.add_argument(
        "--probe-defocus", type=float, default=None, help="defocus for --probe-zone-plate (m)"
    )
    beamline.add_argument(
        "--config",
        default=None,
        help="config file whose [beamline] section to use (default ./ptychoflow.toml)",
    )
    parser.set_defaults(handler=run)

    formats = subparsers.add_parser(
        "formats",
        help="list the beamline file readers (Ptychodus's plugins, the interop extra)",
        description="List the diffraction and position readers, and the zone-plate presets, "
        "that the [beamline] section and `ptychoflow recon --reader` can name. CXI and npz "
        "files are read without them.",
    )
    formats.set_defaults(handler=list_formats)


def list_formats(args: argparse.Namespace) -> int:
    from recon.beamline import describe_readers

    print("built in (no extra needed): CXI (.cxi, .h5, .hdf5), npz (.npz, .npz.bz2)")
    print(describe_readers())
    return 0


def beamline_settings(args: argparse.Namespace) -> object | None:
    """The beamline settings for this command: the config's [beamline] section (for a
    folder, or whenever a beamline flag is given) with the flags over it; None to read
    a CXI/npz file."""
    import pathlib

    from recon.beamline import BeamlineSettings

    flags = {
        "reader": args.reader,
        "positions_reader": args.positions_reader,
        "diffraction": args.diffraction,
        "positions": args.positions,
        "crop": args.crop,
        "center": args.center,
        "binning": args.binning,
        "distance_m": args.distance,
        "energy_ev": args.energy,
        "pixel_size_m": args.pixel_size,
        "photon_threshold": args.photon_threshold,
        "probe_zone_plate": args.probe_zone_plate,
        "probe_defocus_m": args.probe_defocus,
    }
    given = {key: value for key, value in flags.items() if value is not None}
    section = None
    is_folder = pathlib.Path(args.input).is_dir()
    if given or is_folder or args.config:
        section = _config_beamline(args.config)
    if section is None and "reader" not in given:
        if is_folder:
            from recon.errors import OptionsError

            raise OptionsError(
                f"{args.input}: is a folder, not a CXI/HDF5 file; to read a beamline's scan "
                "folder, name its reader "
                "with --reader (`ptychoflow formats` lists them) or give a config with a "
                "[beamline] section (--config)"
            )
        if given:
            from recon.errors import OptionsError

            raise OptionsError(
                f"beamline settings ({', '.join(sorted(given))}) need --reader, or a "
                "[beamline] section in the config"
            )
        return None
    if section is None:
        return BeamlineSettings.from_dict(given, where="ptychoflow recon")
    return section.replace(**given)


def _config_beamline(path: str | None) -> object | None:
    """The [beamline] section of ``path`` (or ./ptychoflow.toml when present), or None."""
    import pathlib
    import tomllib

    from recon.beamline import BeamlineSettings
    from recon.errors import OptionsError

    file = pathlib.Path(path) if path else pathlib.Path("ptychoflow.toml")
    if not file.is_file():
        if path:
            raise OptionsError(f"{file}: config file not found")
        return None
    try:
        raw = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise OptionsError(f"{file}: cannot read the config: {err}") from err
    section = raw.get("beamline")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise OptionsError(f"{file}: beamline must be a table ([beamline])")
    return BeamlineSettings.from_dict(section, where=f"{file}: [beamline]")


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
        "position_search": args.position_search,
        "holdout_fraction": args.holdout,
        "holdout_patience": args.holdout_patience,
        "dark_floor": args.dark_floor,
        "object_tv": args.object_tv,
        "defocus_search": {"on": True, "off": False}.get(args.defocus_search or "auto"),
    }
    options = ReconOptions.from_dict({k: v for k, v in changes.items() if v is not None})
    beamline = beamline_settings(args)
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
            beamline=beamline,  # type: ignore[arg-type]
        )
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    ratio = summary.get("fit_to_noise")
    fit = "" if ratio is None else f", {ratio:.2f} x the shot noise's"
    print(
        f"wrote {summary['output']} and {summary['preview']} "
        f"(cost {summary['initial_cost']:.4g} -> {summary['final_cost']:.4g}{fit}, "
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
