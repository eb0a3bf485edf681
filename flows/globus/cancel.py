"""``ptychoflow cancel``: stop views' runs and record them as cancelled.

For each selected unfinished ledger row (pending, submitting, active, inactive,
unknown):

- a run at Globus is cancelled there (``POST /runs/{id}/cancel``, which needs Flows'
  ``run_manage`` scope: only this command asks for it); a run that has ended or is gone
  meanwhile is not an error;
- a ``submitting`` row's run is looked for first (its start may have reached Flows);
- the row is recorded ``cancelled`` with who cancelled it. A later ``run-flow`` (not
  the watcher) may then start the view again.

On the local backend a run lives in the process that started it: rows of a live
process are left alone with the pid to signal; rows of a dead one are recorded.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
from collections.abc import Iterable

from flows.backend import Backend, RunStatus
from flows.errors import TransientBackendError
from flows.ledger import Ledger, RunRecord
from recon.errors import PtychoflowError

#: Statuses ``cancel`` acts on.
CANCELLABLE = (
    RunStatus.PENDING,
    RunStatus.SUBMITTING,
    RunStatus.ACTIVE,
    RunStatus.INACTIVE,
    RunStatus.UNKNOWN,
)


@dataclasses.dataclass(frozen=True)
class CancelOutcome:
    label: str
    cancelled: bool
    detail: str


def who() -> str:
    """``user@host``: who cancelled, for the ledger's reason text."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def cancel_rows(
    ledger: Ledger, backend: Backend | None, rows: Iterable[RunRecord]
) -> list[CancelOutcome]:
    """Cancel ``rows`` (see the module docstring); ``backend`` is the Globus backend built
    with ``manage_runs`` (None when no row needs the service)."""
    reason = f"cancelled by `ptychoflow cancel` ({who()})"
    outcomes = []
    for row in rows:
        if row.status not in CANCELLABLE:
            outcomes.append(CancelOutcome(row.label, False, f"already {row.status.value}"))
            continue
        if row.backend != "globus":
            if row.owner.alive():
                outcomes.append(
                    CancelOutcome(
                        row.label,
                        False,
                        f"runs inside process {row.owner.pid} on {row.owner.host}: stop it "
                        f"(kill -TERM {row.owner.pid}); it records its views as cancelled",
                    )
                )
                continue
            ledger.mark_cancelled(*row.key, reason)
            outcomes.append(CancelOutcome(row.label, True, "its process is gone; recorded"))
            continue
        run_id = row.run_id
        note = ""
        try:
            if run_id is None and row.status is RunStatus.SUBMITTING and backend is not None:
                found = backend.find_run(row.request())
                run_id = found.run_id if found is not None else None
            if run_id is not None:
                assert backend is not None and hasattr(backend, "cancel")
                progress = backend.cancel(run_id)
                note = f"run {run_id} {progress.status.value} at Globus"
        except TransientBackendError as err:
            outcomes.append(CancelOutcome(row.label, False, f"not cancelled, try again: {err}"))
            continue
        except PtychoflowError as err:
            # 404: the run is gone (past retention); 409: it has ended already.
            if getattr(err.__cause__, "http_status", None) not in (404, 409):
                outcomes.append(CancelOutcome(row.label, False, f"not cancelled: {err}"))
                continue
            note = f"run {run_id} had already ended or is gone at Globus"
        if ledger.mark_cancelled(*row.key, reason):
            outcomes.append(CancelOutcome(row.label, True, note or "never started; recorded"))
        else:
            outcomes.append(CancelOutcome(row.label, False, "it finished meanwhile"))
    return outcomes
