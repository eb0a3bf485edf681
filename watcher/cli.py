"""``ptychoflow watch`` and ``ptychoflow replay`` (heavy imports inside the handlers)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = subparsers.add_parser(
        "watch",
        help="watch the acquisition root and start every complete scan once",
        description="Watch the acquisition root for scan folders; when a scan is complete "
        "(marker file, or no change for the settle time), start one run per view and record "
        "it in the run ledger. Survives restarts: unfinished work is recovered and scans "
        "written while it was down are started. Stop with Ctrl-C or SIGTERM.",
    )
    watch.add_argument("--config", metavar="FILE", help="config file (default ./ptychoflow.toml)")
    watch.add_argument(
        "--polling",
        action="store_true",
        help="poll the file system instead of inotify; needed on NFS/GPFS, where inotify "
        "does not see files written by other hosts",
    )
    watch.add_argument(
        "--polling-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between polls with --polling (default 1)",
    )
    watch.add_argument(
        "--settle",
        type=float,
        metavar="S",
        help="without a marker: seconds without changes after which a scan is complete "
        "(overrides settle_seconds)",
    )
    watch.add_argument(
        "--marker",
        metavar="NAME",
        help="marker file that says a scan is complete (overrides marker; '' = none, "
        "use the settle time)",
    )
    watch.set_defaults(handler=_watch)

    replay = subparsers.add_parser(
        "replay",
        help="replay a recorded scan into new scan folders at a frame rate",
        description="Write copies of SOURCE_SCAN (a folder of CXI views or one CXI file) as "
        "new scan folders ACQ_ROOT/scan<id>/, appending the patterns at --rate per second "
        "and writing the marker last, to exercise the watcher without a beamline.",
    )
    replay.add_argument("source", metavar="SOURCE_SCAN", help="scan folder or CXI file")
    replay.add_argument("--to", required=True, metavar="ACQ_ROOT", help="acquisition root")
    replay.add_argument(
        "--scans", required=True, metavar="IDS", help="new scan ids, e.g. 100-109 or 5,7"
    )
    replay.add_argument(
        "--rate",
        type=_rate,
        default=0.0,
        metavar="HZ",
        help="patterns per second, 0.01 to 1e7 (default 0: as fast as possible)",
    )
    replay.add_argument(
        "--marker",
        default="scan.done",
        metavar="NAME",
        help="marker file written last (default scan.done; '' = none)",
    )
    replay.set_defaults(handler=_replay)


def _watch(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from flows.errors import ConfigError
    from watcher.service import WatcherService, configure_logging

    config = load_config(args.config)
    if args.settle is not None:
        if not args.settle >= 0 or args.settle == float("inf"):
            raise ConfigError(f"--settle {args.settle:g}: expected a number of seconds >= 0")
        config.settle_seconds = args.settle
    if args.polling_interval <= 0 or args.polling_interval == float("inf"):
        raise ConfigError(
            f"--polling-interval {args.polling_interval:g}: expected a number of seconds > 0"
        )
    if args.marker is not None and ("/" in args.marker or args.marker in (".", "..")):
        raise ConfigError(f"--marker {args.marker!r}: expected a file name, or '' for none")
    if args.marker is not None:
        config.marker = args.marker
    configure_logging(debug_file=config.state_dir / "engine-debug.log")
    service = WatcherService(config, polling=args.polling, polling_interval_s=args.polling_interval)
    return service.run_forever()


#: Slowest and fastest --rate accepted (patterns per second): slower than one pattern in
#: 100 s is a typo (1e-9 would take 30 years per pattern), faster is "as fast as possible".
MIN_RATE_HZ, MAX_RATE_HZ = 0.01, 1e7


def _rate(text: str) -> float:
    """--rate: 0 (as fast as possible) or a finite number of patterns per second."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value == 0:
        return 0.0
    if not math.isfinite(value) or not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 0 (as fast as possible) or {MIN_RATE_HZ:g} to "
            f"{MAX_RATE_HZ:g} patterns per second"
        )
    return value


def _replay(args: argparse.Namespace) -> int:
    import pathlib

    from flows.scans import parse_views
    from watcher.replay import replay
    from watcher.service import configure_logging

    configure_logging()
    folders = replay(
        pathlib.Path(args.source),
        pathlib.Path(args.to),
        parse_views(args.scans),
        rate_hz=args.rate or None,
        marker=args.marker or None,
    )
    print(f"wrote {len(folders)} scan folder(s) under {args.to}")
    return 0
