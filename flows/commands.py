"""``ptychoflow`` subcommands of the flow: run (run-flow), status, init, demo, deploy, login,
check, resume.

Thin: argument parsing here, the work in ``flows.launcher``, ``flows.ledger`` and the
backends. Heavy imports happen inside the handlers so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.config import Config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="start one flow run per view of a scan (also: run-flow)",
        description="Start one flow run per view of a scan: the compute-side input/recon "
        "folders are created, each view is recorded in the run ledger and started "
        "(a view already done or running is skipped unless --force). SIGINT/SIGTERM stop "
        "it: unfinished views are recorded as cancelled and started again next time.",
    )
    run.add_argument(
        "--scan",
        required=True,
        help="scan ids, ranges or folder names: 100, 100-300, flyscan100 (a range runs "
        "every scan folder in it and names the missing ids)",
    )
    run.add_argument(
        "--views",
        help="views to run: positions in the sorted listing (0,3-5) or file names "
        "(view009 or view009.cxi); default: all views of the scan",
    )
    run.add_argument("--iterations", type=int, help="solver iterations (default from config)")
    run.add_argument("--devices", type=int, help="GPUs per view (default: chosen from view size)")
    run.add_argument(
        "--force", action="store_true", help="start again even if a view already succeeded"
    )
    run.add_argument("--wait", action="store_true", help="wait; exit 1 if any view failed")
    _common(run)
    run.set_defaults(handler=run_command)

    status = subparsers.add_parser(
        "status", help="table of runs: state, stage, per-stage seconds, errors, links"
    )
    status.add_argument("--scan", help="only these scans: 100, 100-103 or flyscan100")
    _common(status)
    status.set_defaults(handler=status_command)

    ledger = subparsers.add_parser(
        "ledger",
        help="check or rebuild the run ledger (the SQLite file named by `ledger` in the config)",
    )
    ledger_commands = ledger.add_subparsers(dest="ledger_command", metavar="ACTION")
    check = ledger_commands.add_parser(
        "check", help="integrity and schema check of the ledger; exit 1 if it is damaged"
    )
    check.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    check.set_defaults(handler=ledger_check_command, command="ledger check")
    rebuild = ledger_commands.add_parser(
        "rebuild",
        help="move the ledger aside and rebuild it from the result files under recon/",
    )
    rebuild.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    rebuild.set_defaults(handler=ledger_rebuild_command, command="ledger rebuild")

    init = subparsers.add_parser("init", help="write a commented config file (TOML)")
    init.add_argument("--backend", choices=["local", "globus"], default="local")
    init.add_argument("--path", default="ptychoflow.toml", help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=init_command)

    demo = subparsers.add_parser(
        "demo",
        help="simulate a 3-view scan and run it through the local backend end to end",
    )
    demo.add_argument("dir", nargs="?", default="ptychoflow-demo", help="working folder")
    demo.add_argument("--views", type=int, default=3, help="number of views (default 3)")
    demo.add_argument("--iterations", type=int, default=60, help="solver iterations per view")
    demo.set_defaults(handler=demo_command)

    deploy = subparsers.add_parser(
        "deploy",
        help="validate and create/update the Globus flow, register the compute function",
    )
    deploy.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    deploy.set_defaults(handler=deploy_command)

    check = subparsers.add_parser(
        "check",
        help="prove the Globus deployment works: a checklist of ok/failure lines with fixes",
        description="Against the live services, with this process's identity: tokens and "
        "consents, both collections writable, endpoint online, the functions runnable "
        "(a tiny task), the same code on the endpoint, PTYCHOFLOW_ALLOWED_ROOTS, the flow "
        "startable, the subscription. Exit 0 only when every line is ok.",
    )
    check.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    check.add_argument(
        "--task-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the test task on the endpoint (default 600)",
    )
    check.set_defaults(handler=check_command)

    resume = subparsers.add_parser(
        "resume",
        help="continue INACTIVE Globus runs (e.g. after `ptychoflow login` gave a consent)",
    )
    resume.add_argument("--scan", help="only these scan id(s): 100, or 100-103")
    resume.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    resume.set_defaults(handler=resume_command)

    login = subparsers.add_parser("login", help="log in to Globus (people; not the watcher)")
    login.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    login.add_argument("--force", action="store_true", help="log in again even if tokens exist")
    login.set_defaults(handler=login_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default ./ptychoflow.toml, else defaults)")
    parser.add_argument("--backend", choices=["local", "globus"], help="override the config")


def _load(args: argparse.Namespace) -> Config:
    from flows.config import load_config

    config = load_config(args.config)
    if getattr(args, "backend", None):
        config.backend = args.backend
    return config


# -- run -------------------------------------------------------------------------------


class _StopOnSignal:
    """SIGINT/SIGTERM/SIGHUP set ``event`` (the launcher stops submitting and waiting); a
    second signal acts as usual (SIGINT: KeyboardInterrupt; SIGTERM/SIGHUP: the process
    ends). SIGHUP is a dropped ssh session: it stops run-flow like SIGTERM, its views
    recorded as cancelled."""

    def __init__(self) -> None:
        import signal
        import threading

        self.event = threading.Event()
        self.signum: int | None = None
        self._previous = {
            sig: signal.signal(sig, self._handle)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }

    def _handle(self, signum: int, _frame: object) -> None:
        import signal

        self.signum = signum
        self.event.set()
        signal.signal(signum, self._previous[signal.Signals(signum)])
        print(
            f"run-flow: {signal.Signals(signum).name}: stopping (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signum).name if self.signum else ""

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


#: run-flow's exit status when the ledger could not be written (EX_TEMPFAIL: try again).
EXIT_LEDGER_UNWRITABLE = 75


def run_command(args: argparse.Namespace) -> int:
    import logging

    from flows.backend import RunStatus, Trigger
    from flows.errors import LedgerUnwritableError
    from flows.launcher import Launcher, make_backend
    from flows.ledger import open_ledger
    from flows.scans import choose_scans, parse_selection, scan_folders
    from flows.terminal import configure_logging, printable
    from recon.errors import InputFileNotFound, PtychoflowError

    configure_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    config = _load(args)
    selection = parse_selection(args.scan, "scan")
    views = parse_selection(args.views, "views") if args.views else None
    overrides = {
        key: value
        for key, value in (("iterations", args.iterations), ("devices", args.devices))
        if value is not None
    }
    try:
        choice = choose_scans(config, selection)
    except InputFileNotFound as err:
        raise InputFileNotFound(f"--scan {args.scan}: {err}") from err
    root = config.acquisition_root
    if not choice.folders:
        present = [f.name for f in scan_folders(config)[0]]
        shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
        raise InputFileNotFound(
            f"--scan {args.scan}: no scan folder matching {config.scan_pattern!r} for "
            f"{', '.join(choice.missing)} under {root} (scan folders there: {shown or 'none'})"
        )
    if choice.missing:
        print(
            f"run-flow: no scan folder under {root} for {', '.join(choice.missing)}; "
            f"starting the {len(choice.folders)} found",
            file=sys.stderr,
        )
    ledger = open_ledger(config)
    try:
        backend = make_backend(config)
    except BaseException:
        ledger.close()
        raise
    stop = _StopOnSignal()
    failed = choice.missing_explicit
    started: list[str] = []
    launcher = Launcher(config, backend, ledger, stop_event=stop.event)
    unwritable: LedgerUnwritableError | None = None
    try:
        launcher.recover()
        for folder in choice.folders:
            if stop.event.is_set():
                break
            try:
                outcomes = launcher.start_scan(
                    folder.name,
                    views=views,
                    recon_overrides=overrides,
                    trigger=Trigger.MANUAL,
                    force=args.force,
                )
            except LedgerUnwritableError:
                raise
            except PtychoflowError as err:
                print(f"{printable(folder.name)}: error: {printable(err)}", file=sys.stderr)
                failed = True
                continue
            started.append(folder.name)
            for outcome in outcomes:
                print(f"{printable(outcome.label)}: {printable(_describe_outcome(outcome))}")
        # Local runs execute inside this process: wait for them, or they would die with it.
        if args.wait or backend.runs_die_with_owner:
            for name in started:
                if stop.event.is_set():
                    break
                rows = launcher.wait(name, progress_callback=_TransitionPrinter())
                if stop.event.is_set():
                    break
                print(format_status(rows))
                failed |= any(row.status is RunStatus.FAILED for row in rows)
    except LedgerUnwritableError as err:
        # Write-ahead: what cannot be recorded must not run. Stop everything now; the
        # rows already say submitting/active, so the next start recovers those views.
        unwritable = err
        stop.event.set()
        print(
            f"run-flow: {printable(err)}. Stopped: started nothing more and abandoned the "
            "runs in flight (their rows stay unfinished; run-flow starts them again once "
            "the ledger can be written)",
            file=sys.stderr,
        )
    finally:
        try:
            if stop.signum is not None:
                cancelled = launcher.cancel_unfinished(f"cancelled by {stop.name}")
                print(
                    f"run-flow: stopped by {stop.name}; {len(cancelled)} view(s) recorded as "
                    "cancelled (run-flow starts them again)",
                    file=sys.stderr,
                )
            backend.close(cancel=stop.signum is not None or unwritable is not None)
        finally:
            ledger.close()
            stop.restore()
    if stop.signum is not None:
        return 128 + stop.signum
    if unwritable is not None:
        return EXIT_LEDGER_UNWRITABLE
    return 1 if failed else 0


def _describe_outcome(outcome: Any) -> str:
    text = str(outcome.action.value)
    if outcome.web_url:
        text += f" {outcome.web_url}"
    elif outcome.run_id:
        text += f" (run {outcome.run_id})"
    if outcome.error:
        text += f": {outcome.error}"
    return text


class _TransitionPrinter:
    """Prints a line to stderr whenever a view changes state or stage."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[str, str | None]] = {}

    def __call__(self, rows: list[Any]) -> None:
        from flows.terminal import printable

        for row in rows:
            now = (row.status.value, row.stage)
            if self.seen.get(row.key) != now:
                self.seen[row.key] = now
                stage = f" ({row.stage})" if row.stage and not row.status.terminal else ""
                # An INACTIVE run waits for a person: say why and what to do.
                reason = f": {row.error}" if row.status.value == "inactive" and row.error else ""
                print(
                    printable(f"  {row.label}: {row.status.value}{stage}{reason}"),
                    file=sys.stderr,
                    flush=True,
                )


# -- status ----------------------------------------------------------------------------


def format_status(rows: list[Any]) -> str:
    """A plain-text table of ledger rows (one per view), control characters escaped."""
    from flows.backend import STAGES
    from flows.terminal import printable

    header = ["SCAN", "VIEW", "STATE", "STAGE", *(s.upper() for s in STAGES), "OTHER", "TOTAL"]
    header.append("DETAIL")
    lines = [header]
    for row in rows:
        seconds = row.stage_seconds or {}
        stages = [f"{seconds[s]:.1f}s" if s in seconds else "-" for s in (*STAGES, "other")]
        total = "-"
        if row.finished_at and row.submitted_at:
            # The stages plus "other" (measured on a steady clock): a wall-clock jump
            # between submission and the end no longer shows as -3591 s or 86400 s.
            total = f"{sum(float(v) for v in seconds.values()):.1f}s"
        detail = printable(row.error or row.web_url or (row.run_id or ""))
        if len(detail) > 160:
            detail = detail[:157] + "..."
        lines.append(
            [
                printable(row.scan_folder),
                printable(row.view_file),
                row.status.value,
                row.stage or "-",
                *stages,
                total,
                detail,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


def _warn_changed_views(config: Config, rows: list[Any]) -> None:
    """A warning line per succeeded view whose file now holds other data (re-acquired)."""
    from flows.backend import RunStatus
    from flows.input_fingerprint import changed_since
    from flows.terminal import printable

    for row in rows:
        if row.status is not RunStatus.SUCCEEDED or row.input is None:
            continue
        if changed_since(row.input, config.acquisition_root / row.scan_folder / row.view_file):
            print(
                f"warning: {printable(row.scan_folder)}/{printable(row.view_file)} changed "
                "after its result was made (a re-acquired view?); run-flow --scan "
                f"{printable(row.scan_folder)} --views {printable(row.view)} --force runs it "
                "again (or set rerun_changed_views = true)"
            )


def status_command(args: argparse.Namespace) -> int:
    from flows.ledger import Ledger
    from flows.scans import parse_selection
    from flows.terminal import printable

    config = _load(args)
    selection = parse_selection(args.scan, "scan") if args.scan else None

    def wanted(folder: str, scan_id: int | None) -> bool:
        if selection is None:
            return True
        if folder in selection.names:
            return True
        return scan_id is not None and selection.contains(scan_id)

    if not config.ledger.exists():
        print(f"no runs yet (no ledger at {printable(config.ledger)})")
        return 0
    ledger = Ledger(config.ledger, read_only=True)
    try:
        rows = [r for r in ledger.runs() if wanted(r.scan_folder, r.scan_id)]
        scans = [s for s in ledger.scans() if wanted(s.folder, s.scan_id)]
    finally:
        ledger.close()
    failed_scans = [s for s in scans if s.error]
    if not rows and not failed_scans:
        print("no runs recorded" + (f" for scan(s) {printable(args.scan)}" if args.scan else ""))
        return 0
    if rows:
        print(format_status(rows))
    _warn_changed_views(config, rows)
    for scan in scans:
        if scan.scan_dir and scan.scan_id is not None and scan.scan_dir != str(scan.scan_id):
            print(
                printable(
                    f"{scan.folder}: shares scan id {scan.scan_id} with another folder; "
                    f"its results are in recon/{scan.scan_dir}/"
                )
            )
    for scan in failed_scans:
        print(printable(f"{scan.folder}: {scan.status}: {scan.error}"))
    return 0


# -- ledger check / rebuild --------------------------------------------------------------


def ledger_check_command(args: argparse.Namespace) -> int:
    from flows.ledger_repair import check_ledger
    from flows.terminal import printable

    config = _load(args)
    problems = check_ledger(config.ledger)
    if not problems:
        print(f"ledger {printable(config.ledger)}: ok")
        return 0
    for problem in problems:
        print(f"ledger {printable(config.ledger)}: {printable(problem)}", file=sys.stderr)
    print(
        "rebuild it from the result files with `ptychoflow ledger rebuild` "
        "(the damaged file is moved aside, not deleted)",
        file=sys.stderr,
    )
    return 1


def ledger_rebuild_command(args: argparse.Namespace) -> int:
    from flows.ledger_repair import rebuild_ledger
    from flows.terminal import printable

    config = _load(args)
    report = rebuild_ledger(config)
    for line in report:
        print(printable(line))
    return 0


# -- init ------------------------------------------------------------------------------

LOCAL_TEMPLATE = """\
# ptychoflow configuration (local backend: the whole flow runs on this machine).
# Relative paths are relative to this file's folder.

backend = "local"

# Where the instrument writes scan folders (scan100/, flyscan101/); results come back
# to recon/<id>/ under it.
acquisition_root = "acquisition"
# The folder standing for the GPU cluster's storage (input/<id>/, recon/<id>/).
compute_root = "compute"
# The SQLite run ledger: one row per (scan, view); what `status` reads.
ledger = "ptychoflow.sqlite"
# Deployment state, tokens and Compute engine run folders.
state_dir = ".ptychoflow"

# Scan folder names: a regular expression matched against the whole name; its last
# group is the scan id.
scan_pattern = '(fly)?scan(\\d+)'
# Files of a scan folder that are views; a view is known by its file name.
view_glob = "*.cxi"
# A scan is complete when this marker file appears in it. Set it to "" to decide by
# settle time instead (nothing changed for settle_seconds and every file opens).
marker = "scan.done"
settle_seconds = 5.0
# Most runs in flight at once.
concurrency = 64
# Compute engine config for the local backend (default: the packaged
# endpoint_config/local/config.yaml).
# endpoint_config = "endpoint_config/local/config.yaml"

[recon]
# Defaults for every view; `run-flow --iterations/--devices` override them.
iterations = 100
cost = "poisson"        # poisson | gaussian
refine_probe = true
backend = "auto"        # auto (CuPy when a GPU is usable) | numpy | cupy
"""

GLOBUS_TEMPLATE = (
    LOCAL_TEMPLATE.replace(
        "# ptychoflow configuration (local backend: the whole flow runs on this machine).",
        "# ptychoflow configuration (globus backend: Globus Flows, Transfer and Compute).\n"
        "# See the deployment guide in README.md; then run `ptychoflow deploy`.",
    ).replace('backend = "local"', 'backend = "globus"')
    + """
[globus]
# 1. Collection (endpoint) ID of the beamline's acquisition storage, and the path of
#    acquisition_root as that collection sees it.
acquisition_collection = ""
acquisition_base = "/"
# 2. Collection ID of the cluster's storage (e.g. ALCF Eagle), and the path of the
#    compute root as that collection sees it.
compute_collection = ""
compute_base = "/"
# 3. The Globus Compute endpoint running endpoint_config/polaris, and the compute
#    root as a filesystem path on the cluster's nodes.
compute_endpoint = ""
compute_root_on_endpoint = ""
# Who may do what (see "Identity model" in README.md):
# the watcher's confidential client (the id in PTYCHOFLOW_CLIENT_ID or
# GLOBUS_COMPUTE_CLIENT_ID); deploy makes it a flow starter, and the Compute endpoint
# is started with its credentials so it owns the endpoint.
watcher_client_id = ""
# More identities or groups (urn:globus:auth:identity:... / urn:globus:groups:id:...)
# allowed to start runs (people who use `run-flow`), see runs, or see and cancel them.
flow_starters = []
run_monitors = []
run_managers = []
# GCS v5 *mapped* collections (e.g. ALCF Eagle) the flow transfers on: their
# data_access consent is asked for at `login` and `deploy`. Never list guest collections.
data_access_collections = []
# Your Globus subscription id: without one the flow expires 30 days after its last update.
subscription_id = ""
"""
)


def init_command(args: argparse.Namespace) -> int:
    import pathlib

    from flows.errors import ConfigError

    path = pathlib.Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GLOBUS_TEMPLATE if args.backend == "globus" else LOCAL_TEMPLATE)
    print(
        f"wrote {path} ({args.backend} backend); edit it, then "
        + ("run `ptychoflow deploy`" if args.backend == "globus" else "`ptychoflow run --scan N`")
    )
    return 0


# -- demo ------------------------------------------------------------------------------


def demo_command(args: argparse.Namespace) -> int:
    import pathlib
    import time

    import numpy as np

    from flows.backend import Trigger
    from flows.config import load_config
    from flows.launcher import Launcher, make_backend
    from flows.ledger import open_ledger
    from recon.metrics import compare_objects, illuminated_region
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    root = pathlib.Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "ptychoflow.toml"
    if not config_path.exists():
        config_path.write_text(
            LOCAL_TEMPLATE.replace("iterations = 100", f"iterations = {args.iterations}")
        )
    config = load_config(config_path)
    scan_id = 100
    while (config.acquisition_root / f"scan{scan_id}").exists():
        scan_id += 1
    scan_folder = config.acquisition_root / f"scan{scan_id}"
    print(f"simulating {args.views} views into {scan_folder} ...", flush=True)
    write_simulated_scan(
        scan_folder,
        n_views=args.views,
        detector=64,
        n_positions=156,
        photons=1e6,
        seed=scan_id,
        marker=config.marker or None,
    )
    start = time.perf_counter()
    ledger = open_ledger(config)
    backend = make_backend(config)
    try:
        launcher = Launcher(config, backend, ledger)
        launcher.start_scan(scan_folder.name, trigger=Trigger.MANUAL)
        rows = launcher.wait(scan_folder.name, progress_callback=_TransitionPrinter())
    finally:
        backend.close()
        ledger.close()
    print(format_status(rows))
    print(f"\nscan {scan_id}: {len(rows)} views in {time.perf_counter() - start:.1f} s")
    results = config.acquisition_root / "recon" / (rows[0].scan_dir if rows else str(scan_id))
    failed = [r for r in rows if r.status.value != "succeeded"]
    for row in rows:
        if row.status.value != "succeeded":
            continue
        stem = pathlib.Path(row.view_file).stem
        result = read_result(results / f"{stem}.h5")
        truth = np.load(scan_folder / "truth" / f"{stem}.npz")
        true_object = truth["object"]
        region = illuminated_region(truth["positions"], truth["probe"], true_object.shape)
        h, w = true_object.shape
        score = compare_objects(result["object"][:h, :w], true_object, region)
        print(
            f"  {results / (stem + '.h5')}  preview {results / (stem + '.png')}  "
            f"phase SSIM vs truth {score['phase_ssim']:.3f}"
        )
    print(f"\nledger: {config.ledger}   (see `ptychoflow status --config {config_path}`)")
    return 1 if failed else 0


# -- deploy and login (globus backend) --------------------------------------------------


def deploy_command(args: argparse.Namespace) -> int:
    from flows.globus.setup import deploy_from_config

    config = _load(args)
    result = deploy_from_config(config)
    for message in result.messages:
        print(message)
    return 0


def login_command(args: argparse.Namespace) -> int:
    from flows.globus.setup import login_from_config

    config = _load(args)
    login_from_config(config, force=args.force)
    print("logged in; tokens stored under", config.state_dir)
    return 0


def check_command(args: argparse.Namespace) -> int:
    from flows.globus.setup import check_from_config

    config = _load(args)
    lines = check_from_config(config, task_timeout_s=args.task_timeout)
    for line in lines:
        print(line.format(), flush=True)
    failed = [line for line in lines if not line.ok]
    print(
        f"{len(lines) - len(failed)}/{len(lines)} ok"
        + ("" if not failed else "; fix the FAIL lines")
    )
    return 1 if failed else 0


def resume_command(args: argparse.Namespace) -> int:
    from flows.backend import RunStatus
    from flows.errors import TransientBackendError
    from flows.globus.errors import GlobusAuthorizationError, GlobusServiceError
    from flows.globus.setup import open_globus_backend
    from flows.ledger import Ledger
    from flows.scans import parse_selection
    from flows.terminal import printable

    config = _load(args)
    if not config.ledger.exists():
        print(f"no runs yet (no ledger at {printable(config.ledger)})")
        return 0
    selection = parse_selection(args.scan, "scan") if args.scan else None
    ledger = Ledger(config.ledger)
    try:
        rows = [
            row
            for row in ledger.runs()
            if row.status is RunStatus.INACTIVE
            and row.run_id
            and row.backend == "globus"
            and (
                selection is None
                or row.scan_folder in selection.names
                or (row.scan_id is not None and selection.contains(row.scan_id))
            )
        ]
        if not rows:
            print("no inactive runs" + (f" for scan(s) {args.scan}" if args.scan else ""))
            return 0
        backend = open_globus_backend(config)
        failed = False
        for row in rows:
            assert row.run_id is not None
            try:
                progress = backend.resume(row.run_id)
            except (GlobusAuthorizationError, GlobusServiceError, TransientBackendError) as err:
                print(printable(f"{row.label}: not resumed: {err}"))
                failed = True
                continue
            ledger.update_progress(*row.key, progress)
            detail = f": {progress.error}" if progress.error else ""
            print(printable(f"{row.label}: {progress.status.value}{detail}"))
            failed |= progress.status in (RunStatus.INACTIVE, RunStatus.FAILED)
    finally:
        ledger.close()
    return 1 if failed else 0
