"""What a backend is: the contract between run starting (``run-flow``, the
watcher) and the two ways of executing the flow (Globus Flows, local).

The launcher creates the compute-side directory pair once per scan
(:meth:`Backend.prepare_scan`), starts one run per view (:meth:`Backend.start_view`)
and asks for progress (:meth:`Backend.poll`). Both backends run the same flow
definition with the same flow input.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import re
import time
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any


class RunStatus(StrEnum):
    """Ledger and backend states of one view's run."""

    PENDING = "pending"  #: recorded, not yet handed to the backend
    SUBMITTING = "submitting"  #: handed to the backend; run id not yet known
    ACTIVE = "active"  #: the backend accepted the run and it is executing
    INACTIVE = "inactive"  #: paused until a person acts (e.g. consent); see ``error``
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  #: stopped by a signal before it finished; started again next time
    #: Unknown: the run could not be followed (a rotated secret's 401, a token error, a
    #: 404 after the service's retention) and may still be running at Globus. Not
    #: finished, so nothing starts the view again by itself; ``ptychoflow cancel`` ends it.
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class Trigger(StrEnum):
    AUTO = "auto"  #: started by the watcher
    MANUAL = "manual"  #: started by a person (run-flow)


#: Stage names, in flow order; ``other`` is everything the three stages do not cover.
STAGES = ("transfer_in", "compute", "transfer_out")


#: Most characters of a run label (Globus Flows run labels are short; the transfer
#: label of the flow input adds ``ptychoflow `` and allows 128).
LABEL_MAX_CHARS = 64


def safe_name(text: str, max_chars: int = LABEL_MAX_CHARS) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``, at most
    ``max_chars`` long. When anything was replaced or cut, an 8-hex-digit hash of the
    original is appended, so two different names never share a result."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    if cleaned == text and len(text) <= max_chars:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned[: max_chars - 9]}-{digest}"


@dataclasses.dataclass(frozen=True)
class ViewRequest:
    """One view of one scan to reconstruct. A view is its file name inside its scan
    folder (``scan100/view003.cxi``), never its position in a listing."""

    scan_id: int
    """The number in the scan folder's name (``100`` for ``flyscan100``)."""
    view_file: str
    """File name of the view inside the scan folder, e.g. ``view003.cxi``."""
    scan_folder: str
    """Name of the scan folder on the acquisition side, e.g. ``scan100``: the scan's key."""
    recon: dict[str, Any]
    """Reconstruction options (``recon.options.ReconOptions.to_dict()``)."""
    trigger: Trigger = Trigger.MANUAL
    attempt: int = 1
    """The ledger row's attempt number (1, then +1 per forced or failed re-run); tagged
    on the run so a re-run is never mistaken for an earlier attempt's run."""
    scan_dir: str = ""
    """Folder name under ``input/`` and ``recon/`` on both sides: the scan id (``100``),
    or the scan folder's name when another folder got that id first; ``""`` means
    ``str(scan_id)``."""
    files: tuple[str, ...] = ()
    """Beamline scans: the other files of the scan folder the reader needs (the data
    files the master file links to, the positions file), relative to the folder; they
    are copied beside the view and nothing else is (``recon.beamline.transfer_files``)."""
    beamline: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """Beamline scans: the ``[beamline]`` settings (``BeamlineSettings.to_dict()``) the
    compute function reads the view with; empty for a CXI or npz view."""

    @property
    def view(self) -> str:
        """The view's name: its file name without the suffix (``view003``); results are
        ``recon/<scan_dir>/<view>.h5``."""
        return PurePosixPath(self.view_file).stem

    @property
    def compute_dir(self) -> str:
        """The folder name under ``input/`` and ``recon/`` (see :attr:`scan_dir`)."""
        return self.scan_dir or str(self.scan_id)

    @property
    def label(self) -> str:
        """Run label shown in the Globus web app: ``scan100-view003`` (the scan folder and
        the view's name; safe characters, at most :data:`LABEL_MAX_CHARS`)."""
        return run_label(self.scan_folder, self.view_file)

    @property
    def tags(self) -> list[str]:
        return [
            "ptychography",
            f"scan:{self.scan_id}",
            f"folder:{safe_name(self.scan_folder)}",
            f"view:{safe_name(self.view)}",
            f"trigger:{Trigger(self.trigger).value}",
            f"attempt:{self.attempt}",
        ]


def run_label(scan_folder: str, view_file: str) -> str:
    """``scan100``, ``view003.cxi`` -> ``scan100-view003`` (see :attr:`ViewRequest.label`)."""
    return safe_name(f"{scan_folder}-{PurePosixPath(view_file).stem}")


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """What a backend returns once it has accepted a run."""

    run_id: str
    web_url: str | None = None
    """Link to the run in the Globus web app (None on the local backend)."""


@dataclasses.dataclass
class RunProgress:
    """What a backend knows about a run right now."""

    status: RunStatus
    stage: str | None = None
    """The stage executing now (one of :data:`STAGES`), or None."""
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds spent in each finished stage (keys from :data:`STAGES`)."""
    error: str | None = None
    """Why the run failed, in words a user can act on."""
    output: dict[str, Any] | None = None
    """The compute function's summary, once the run succeeded."""


class Backend(abc.ABC):
    """One way of executing the flow: what the launcher relies on, and nothing else."""

    #: Short name recorded in the ledger (``local``, ``globus``).
    name: str = ""

    #: True when runs execute inside the process that started them (the local backend):
    #: a run left ``active`` by a process that died is dead too, and a command that
    #: started runs must wait for them before it exits.
    runs_die_with_owner: bool = False

    #: Seconds between two polls of one run: the first poll after a change waits the
    #: first value, and the wait doubles up to the second while nothing changes. 0 for a
    #: backend whose polls are cheap (local); Globus Flows asks for no more than one
    #: request every few seconds per run.
    poll_interval_range_s: tuple[float, float] = (0.0, 0.0)

    @abc.abstractmethod
    def prepare_scan(self, scan_dir: str) -> None:
        """Create ``input/<scan_dir>/`` and ``recon/<scan_dir>/`` on the compute side
        (idempotent); ``scan_dir`` is :attr:`ViewRequest.compute_dir`."""

    @abc.abstractmethod
    def start_view(self, request: ViewRequest) -> StartedRun:
        """Start the flow for one view and return as soon as the backend accepted it."""

    @abc.abstractmethod
    def poll(self, run_id: str) -> RunProgress:
        """The run's status now."""

    @abc.abstractmethod
    def find_run(self, request: ViewRequest) -> StartedRun | None:
        """A run already started for this request (found by its label and tags), if any.

        Used after a crash between starting a run and recording its id, so that
        the run is adopted rather than started twice.
        """

    def wait(self, run_id: str, timeout: float) -> RunProgress:
        """The run's progress once it has finished or ``timeout`` seconds have passed,
        whichever comes first. The default polls every second; a backend that is told
        when a run ends (the local one) returns as soon as it does."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            progress = self.poll(run_id)
            remaining = deadline - time.monotonic()
            if progress.status.terminal or remaining <= 0:
                return progress
            time.sleep(min(1.0, remaining))

    def close(self, *, cancel: bool = False) -> None:  # noqa: B027 - most hold nothing
        """Release what the backend holds (engines, threads, clients). ``cancel``: runs
        that die with this process are stopped rather than waited for (a signal asked
        ``run-flow`` to stop); runs kept by a service (Globus) go on either way."""
