"""``ptychoflow`` subcommands of the flow: run (run-flow), status, init, demo, deploy, login,
check, resume.

Thin: argument parsing here, the work in ``flows.launcher``, ``flows.ledger`` and the
backends. Heavy imports happen inside the handlers so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import os
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
    status.add_argument(
        "--wide",
        action="store_true",
        help="also the run id of every view (local runs: the table otherwise fits 80 columns)",
    )
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
    demo.add_argument(
        "--scan-only",
        action="store_true",
        help="only write the simulated scan folder (then run it with run-flow)",
    )
    demo.add_argument(
        "--config",
        help="put the scan under this config's acquisition root instead of DIR's own",
    )
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
        "startable, the subscription, and a Transfer round trip through the compute root "
        "that the workers read and write (Transfer's account and the workers' must share "
        "it). With --sample-run, also one tiny simulated view through the real deployed "
        "flow, its result verified, the worker's GPU and backend checked, and everything "
        "removed after. Exit 0 only when every line is ok.",
    )
    check.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    check.add_argument(
        "--task-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the test task on the endpoint (default 600)",
    )
    check.add_argument(
        "--sample-run",
        action="store_true",
        help="also run a tiny simulated view through the deployed flow as this identity "
        "(the watcher's: run it with its environment) and verify what comes back; on the "
        "local backend this is the only check",
    )
    check.add_argument(
        "--sample-timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for the sample run, PBS queue included (default 3600)",
    )
    check.set_defaults(handler=check_command)

    resume = subparsers.add_parser(
        "resume",
        help="continue INACTIVE Globus runs (e.g. after `ptychoflow login` gave a consent)",
    )
    resume.add_argument("--scan", help="only these scan id(s): 100, or 100-103")
    resume.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    resume.set_defaults(handler=resume_command)

    cancel = subparsers.add_parser(
        "cancel",
        help="cancel unfinished runs of a scan (at Globus too) and record them as cancelled",
        description="Cancel the unfinished runs (pending, submitting, active, inactive, "
        "unknown) of the selected scans and views: a run at Globus is cancelled there "
        "(this command alone asks for Flows' run_manage scope), and each view is recorded "
        "as cancelled. The watcher does not start cancelled views again; `run-flow` does.",
    )
    cancel.add_argument("--scan", required=True, help="scan ids or folder names: 100, 100-103")
    cancel.add_argument(
        "--views",
        help="views: positions in the scan's sorted view files (0,3-5) or names "
        "(view009 or view009.cxi); default: all unfinished views of the scan",
    )
    cancel.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    cancel.set_defaults(handler=cancel_command)

    prune = subparsers.add_parser(
        "prune",
        help="remove compute-side copies of views whose results are back and verified",
        description="Through Transfer delete tasks on the compute collection (never the "
        "acquisition side), remove input/<id>/<view> and recon/<id>/<view>.* of views that "
        "succeeded, whose result file here reads back whole, and that finished more than "
        "[globus] compute_retention_days ago; a scan's folders go when all its views do. "
        "Run it daily (cron or a systemd timer) as the watcher.",
    )
    prune.add_argument("--scan", help="only these scans: 100, 100-103 or flyscan100")
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be removed; remove nothing"
    )
    prune.add_argument("--config", help="config file (default ./ptychoflow.toml)")
    prune.set_defaults(handler=prune_command)

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
            deferred = sum(outcome.action.value == "deferred" for outcome in outcomes)
            if deferred:
                print(
                    f"run-flow: {folder.name}: {deferred} view(s) left pending, the backend "
                    "is unavailable; run the same command again later (it first looks for "
                    "any run a lost answer started)",
                    file=sys.stderr,
                )
                failed = True
        waits = args.wait or backend.runs_die_with_owner
        # Local runs execute inside this process: wait for them, or they would die with it.
        for name in started:
            if waits and not stop.event.is_set():
                rows = launcher.wait(name, progress_callback=_TransitionPrinter())
                if stop.event.is_set():
                    break
                print(format_status(rows))
                failed |= any(row.status is RunStatus.FAILED for row in rows)
            else:
                rows = ledger.runs(name)
            scan_dirs = sorted({row.scan_dir for row in rows})
            for scan_dir in scan_dirs:
                where = printable(results_folder(config, scan_dir))
                print(f"{printable(name)}: results {'in' if waits else 'arrive in'} {where}")
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
    from flows.backend import RunStatus
    from flows.launcher import ViewAction

    if outcome.action is ViewAction.SKIPPED:
        if outcome.status is RunStatus.SUCCEEDED:
            return "already succeeded; use --force to run again"
        text = f"already {outcome.status.value if outcome.status else 'recorded'}"
        if outcome.web_url:
            text += f" {outcome.web_url}"
        return text + (f": {outcome.error}" if outcome.error else "") + "; not started again"
    text = str(outcome.action.value)
    if outcome.web_url:
        text += f" {outcome.web_url}"
    elif outcome.run_id and outcome.action is not ViewAction.STARTED:
        text += f" (run {outcome.run_id})"
    if outcome.error:
        text += f": {outcome.error}"
    return text


def results_folder(config: Config, scan_dir: str) -> str:
    """Where a scan's results land on the acquisition side: ``<root>/recon/<scan_dir>/``."""
    return f"{config.acquisition_root / 'recon' / scan_dir}/"


def describe_progress(row: Any, now: float | None = None) -> str:
    """What a view is doing now: the stage, how long it has been in it, and on the local
    backend the solver's iteration, cost and estimated time left
    ("compute 2.3 s: iteration 40/100, cost 1.23e-03, about 12 s left")."""
    import time

    from flows.terminal import printable

    if row.status.terminal or not row.stage:
        return ""
    now = time.time() if now is None else now
    begun = row.submitted_at or row.created_at
    in_stage = max(0.0, now - begun - sum((row.stage_seconds or {}).values()))
    text = f"{row.stage} {_duration(in_stage)}"
    progress = (row.output or {}).get("progress") if isinstance(row.output, dict) else None
    if isinstance(progress, dict) and row.stage == "compute":
        text += f": iteration {progress.get('iteration')}/{progress.get('iterations')}"
        if isinstance(progress.get("cost"), int | float):
            text += f", cost {progress['cost']:.3g}"
        if isinstance(progress.get("eta"), int | float):
            text += f", about {_duration(progress['eta'])} left"
    return printable(text)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _TransitionPrinter:
    """Prints a line to stderr whenever a view changes state or stage, and while a view
    computes its progress (iteration, cost, time left) at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.seen: dict[tuple[str, str], tuple[str, str | None]] = {}
        self.every_s = every_s
        self.last_progress: dict[tuple[str, str], tuple[float, object]] = {}

    def __call__(self, rows: list[Any]) -> None:
        import time

        from flows.terminal import printable

        now = time.monotonic()
        for row in rows:
            state = (row.status.value, row.stage)
            if self.seen.get(row.key) != state:
                self.seen[row.key] = state
                stage = f" ({row.stage})" if row.stage and not row.status.terminal else ""
                # An INACTIVE run waits for a person: say why and what to do.
                reason = (
                    f": {row.error}"
                    if row.status.value in ("inactive", "unknown") and row.error
                    else ""
                )
                print(
                    printable(f"  {row.label}: {row.status.value}{stage}{reason}"),
                    file=sys.stderr,
                    flush=True,
                )
                continue
            progress = (row.output or {}).get("progress") if not row.status.terminal else None
            if not progress:
                continue
            last_time, last_iteration = self.last_progress.get(row.key, (-1e9, None))
            if now - last_time < self.every_s or progress.get("iteration") == last_iteration:
                continue
            self.last_progress[row.key] = (now, progress.get("iteration"))
            line = f"  {printable(row.label)}: {describe_progress(row)}"
            print(line, file=sys.stderr, flush=True)


# -- status ----------------------------------------------------------------------------


def format_status(rows: list[Any], wide: bool = False) -> str:
    """A plain-text table of ledger rows (one per view), control characters escaped.

    Columns: scan, view, state, stage, seconds in each stage (``in`` transfer in,
    ``compute``, ``out`` transfer out, ``other``), total. Under a row, indented: what a
    running view is doing (:func:`describe_progress`), the error of a failed one, the
    web link of a Globus run. Local runs' ids mean nothing outside the process that ran
    them, so they are shown only with ``wide`` (a RUN ID column); with short folder
    names the table then fits 80 columns.
    """
    from flows.backend import STAGES
    from flows.terminal import printable

    short = {"transfer_in": "in", "compute": "compute", "transfer_out": "out"}
    header = ["SCAN", "VIEW", "STATE", "STAGE", *(short[s].upper() for s in STAGES), "OTHER"]
    header.append("TOTAL")
    if wide:
        header.append("RUN ID")
    lines = [header]
    notes: list[list[str]] = [[]]
    for row in rows:
        seconds = row.stage_seconds or {}
        stages = [f"{seconds[s]:.1f}s" if s in seconds else "-" for s in (*STAGES, "other")]
        total = "-"
        if row.finished_at and row.submitted_at:
            # The stages plus "other" (measured on a steady clock): a wall-clock jump
            # between submission and the end no longer shows as -3591 s or 86400 s.
            total = f"{sum(float(v) for v in seconds.values()):.1f}s"
        line = [
            printable(row.scan_folder),
            printable(row.view_file),
            row.status.value,
            short.get(row.stage, row.stage) if row.stage else "-",
            *stages,
            total,
        ]
        if wide:
            line.append(printable(row.run_id or "-"))
        lines.append(line)
        below = []
        if progress := describe_progress(row):
            below.append(progress)
        if row.error:
            error = printable(row.error)
            below.append(error if wide or len(error) <= 300 else error[:297] + "...")
        if row.web_url:
            below.append(printable(row.web_url))
        notes.append(below)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line, below in zip(lines, notes, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
        out.extend(f"    {note}" for note in below)
    return "\n".join(out)


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
        print(format_status(rows, wide=args.wide))
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
# `ptychoflow prune` removes a view's copies on the compute collection (input/<id>/,
# recon/<id>/) this many days after its result came back and was verified here.
compute_retention_days = 7
"""
)


def init_command(args: argparse.Namespace) -> int:
    import pathlib

    from flows.config import load_config
    from flows.errors import ConfigError
    from flows.terminal import printable

    path = pathlib.Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(GLOBUS_TEMPLATE if args.backend == "globus" else LOCAL_TEMPLATE)
    config = load_config(path)
    print(f"wrote {printable(path)} ({args.backend} backend)")
    if args.backend == "globus":
        print("fill in its [globus] section, then run `ptychoflow deploy`")
        return 0
    config.acquisition_root.mkdir(parents=True, exist_ok=True)
    root = printable(config.acquisition_root)
    option = (
        "" if path.resolve() == pathlib.Path("ptychoflow.toml").resolve() else f" --config {path}"
    )
    command = command_name()
    print(
        f"created {root}/: the instrument writes scan folders there (scan100/view000.cxi ...)\n"
        "to get a first scan there, simulate one, or copy one you have:\n"
        f"  {command} demo --scan-only --config {printable(path)}\n"
        f"  {command} replay SCAN_FOLDER --to {root} --scans 100\n"
        "then reconstruct it and look at it:\n"
        f"  {command_name('run-flow')} --scan 100{option}\n"
        f"  {command} status{option}\n"
        f"  {command} serve{option}     # then open http://127.0.0.1:8008/"
    )
    return 0


#: PATH as the user's shell gave it (the local backend later puts the environment's bin/
#: on this process's PATH for the Compute engine's helpers).
_STARTUP_PATH = os.environ.get("PATH", "")


def command_name(name: str = "ptychoflow") -> str:
    """How to type ``name`` (``ptychoflow`` or ``run-flow``) so it runs: the plain name when
    it is on PATH, else its path beside the running interpreter (``.venv/bin/ptychoflow``)."""
    import os
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = shutil.which(name, path=_STARTUP_PATH)
    if found and os.path.exists(beside) and os.path.samefile(found, beside):
        return name
    if os.path.exists(beside):
        relative = os.path.relpath(beside)
        return relative if not relative.startswith("..") else beside
    return name


# -- demo ------------------------------------------------------------------------------


def demo_command(args: argparse.Namespace) -> int:
    import pathlib
    import shlex
    import time

    import numpy as np

    from flows.backend import Trigger
    from flows.config import load_config
    from flows.launcher import Launcher, make_backend
    from flows.ledger import open_ledger
    from flows.terminal import printable
    from recon.metrics import compare_objects, illuminated_region
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    if args.config:
        config_path = pathlib.Path(args.config).resolve()
    else:
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
    print(f"simulating {args.views} views into {printable(scan_folder)} ...", flush=True)
    write_simulated_scan(
        scan_folder,
        n_views=args.views,
        detector=64,
        n_positions=156,
        photons=1e6,
        seed=scan_id,
        marker=config.marker or None,
    )
    option = f"--config {shlex.quote(str(config_path))}"
    if args.scan_only:
        print(f"next: {command_name('run-flow')} --scan {scan_id} {option}")
        return 0
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
    scan_dir = rows[0].scan_dir if rows else str(scan_id)
    results = config.acquisition_root / "recon" / scan_dir
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
        print(f"  {stem}: phase SSIM vs truth {score['phase_ssim']:.3f}")
    command = command_name()
    print(
        f"\nresults: {printable(results_folder(config, scan_dir))}  "
        "(view000.h5 and its preview view000.png, ...)\n"
        f"ledger:  {printable(config.ledger)}\n"
        "next:\n"
        f"  {command} status {option}\n"
        f"  {command} serve {option}     # then open http://127.0.0.1:8008/\n"
        f"  {command_name('run-flow')} --scan {scan_id} --force {option}     # run it again"
    )
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
    sample = getattr(args, "sample_run", False)
    if config.backend == "local" and sample:
        from flows.globus.setup import sample_run_from_config

        lines = sample_run_from_config(config, timeout_s=args.sample_timeout)
    else:
        lines = check_from_config(config, task_timeout_s=args.task_timeout)
        if sample:
            from flows.globus.check import CheckLine
            from flows.globus.setup import sample_run_from_config

            if all(line.ok for line in lines):
                lines += sample_run_from_config(config, timeout_s=args.sample_timeout)
            else:
                lines.append(
                    CheckLine("sample run", False, "not run: fix the FAIL lines above first")
                )
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


def select_rows(rows: list[Any], scan_text: str, views_text: str | None) -> list[Any]:
    """Ledger rows of the scans in ``scan_text`` and, with ``views_text``, of those views
    (positions in each scan's sorted view files, or names with or without suffix)."""
    import pathlib

    from flows.scans import parse_selection

    scans = parse_selection(scan_text, "scan")
    views = parse_selection(views_text, "views") if views_text else None
    chosen = []
    by_scan: dict[str, list[Any]] = {}
    for row in rows:
        if row.scan_folder in scans.names or (
            row.scan_id is not None and scans.contains(row.scan_id)
        ):
            by_scan.setdefault(row.scan_folder, []).append(row)
    for scan_rows in by_scan.values():
        scan_rows.sort(key=lambda row: row.view_file)
        for position, row in enumerate(scan_rows):
            stem = pathlib.PurePosixPath(row.view_file).stem
            if (
                views is None
                or views.contains(position)
                or row.view_file in views.names
                or stem in views.names
            ):
                chosen.append(row)
    return chosen


def cancel_command(args: argparse.Namespace) -> int:
    from flows.globus.cancel import CANCELLABLE, cancel_rows
    from flows.ledger import Ledger
    from flows.terminal import printable

    config = _load(args)
    if not config.ledger.exists():
        print(f"no runs yet (no ledger at {printable(config.ledger)})")
        return 0
    ledger = Ledger(config.ledger)
    try:
        rows = [
            row
            for row in select_rows(ledger.runs(), args.scan, args.views)
            if row.status in CANCELLABLE
        ]
        if not rows:
            print("nothing unfinished to cancel for --scan " + printable(args.scan))
            return 0
        backend = None
        if any(row.backend == "globus" for row in rows):
            from flows.globus.setup import open_globus_backend

            backend = open_globus_backend(config, manage_runs=True, login_on_demand=True)
        outcomes = cancel_rows(ledger, backend, rows)
    finally:
        ledger.close()
    for outcome in outcomes:
        mark = "cancelled" if outcome.cancelled else "NOT cancelled"
        print(printable(f"{outcome.label}: {mark}: {outcome.detail}"))
    return 0 if all(outcome.cancelled for outcome in outcomes) else 1


def prune_command(args: argparse.Namespace) -> int:
    from flows.errors import ConfigError
    from flows.globus import prune
    from flows.ledger import Ledger
    from flows.terminal import printable

    config = _load(args)
    if not config.globus.compute_collection:
        raise ConfigError("[globus] compute_collection is not set: nothing to prune")
    if not config.ledger.exists():
        print(f"no runs yet (no ledger at {printable(config.ledger)})")
        return 0
    ledger = Ledger(config.ledger, read_only=True)
    try:
        rows = ledger.runs()
    finally:
        ledger.close()
    if args.scan:
        rows = select_rows(rows, args.scan, None)
    plans = prune.plan(config, rows, prune.load_pruned(config.state_dir))
    if not plans:
        print("nothing to prune")
        return 0
    transfer = None
    if not args.dry_run:
        from flows.globus.auth import make_app, transfer_client

        app = make_app(config)
        transfer = transfer_client(
            app, data_access_collections=config.globus.data_access_collections
        )
    failed = False
    for scan in plans:
        what = "folders" if scan.whole_scan else f"{len(scan.views)} view(s)"
        if transfer is None:
            print(printable(f"{scan.scan_folder}: would remove {what}: {', '.join(scan.paths)}"))
            continue
        try:
            task_id = prune.submit(transfer, config.globus.compute_collection, scan)
        except Exception as err:  # one scan's failure does not stop the others
            print(printable(f"{scan.scan_folder}: not pruned: {err}"), file=sys.stderr)
            failed = True
            continue
        prune.save_pruned(
            config.state_dir, {f"{scan.scan_folder}/{view}": task_id for view in scan.views}
        )
        print(printable(f"{scan.scan_folder}: removing {what} (Transfer delete task {task_id})"))
    return 1 if failed else 0
