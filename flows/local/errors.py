"""Errors only the local backend raises (its interpreter, transfer and compute engine)."""

from __future__ import annotations

import uuid

from recon.errors import InputError, PtychoflowError


class TransferPathError(InputError):
    """A path of a transfer request is outside its collection or of the wrong kind."""


class ActionRequestRefused(PtychoflowError, ValueError):
    """A local action provider refused the request before running anything (unknown
    endpoint, unregistered function). The interpreter raises ``ActionUnableToRun`` for
    it, the error name Globus Flows uses when an action provider refuses to start."""


class RunCancelledError(PtychoflowError, RuntimeError):
    """A run's compute task was abandoned because the backend was closed with ``cancel``."""


class UnknownRunError(PtychoflowError, LookupError):
    """A run id this backend did not start (local runs live only as long as the process)."""


class ComputeTaskError(PtychoflowError, RuntimeError):
    """A task raised on the worker; the message is the remote exception's.

    Attributes
    ----------
    remote_type : str
        The remote exception's type name, e.g. ``recon.errors.InputError``
        (empty for engine-level failures without a traceback).
    remote_message : str
        The remote exception's message, e.g.
        ``scan100/view000.cxi: /entry_1/data_1/data is missing``.
    remote_traceback : str
        The text the endpoint recorded (traceback included), for logs.
    task_id : uuid.UUID
    """

    def __init__(self, remote_traceback: str, task_id: uuid.UUID, code: str = ""):
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.code = code
        self.remote_type, self.remote_message = parse_remote_exception(remote_traceback)
        short_type = self.remote_type.rsplit(".", 1)[-1]
        super().__init__(
            f"{short_type}: {self.remote_message}" if short_type else self.remote_message
        )


def parse_remote_exception(text: str) -> tuple[str, str]:
    """(type name, message) of the last exception in a formatted traceback.

    ``text`` is what the endpoint's ``get_error_string`` produced: the output of
    ``traceback.format_exception`` (chained exceptions included), or ``repr(exc)``
    for the endpoint's own errors.
    """
    lines = text.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return "", text.strip()
    tail = lines[starts[-1] + 1 :]
    # Frame lines are indented; the first unindented line is "module.Type: message".
    for i, line in enumerate(tail):
        if line and not line[0].isspace():
            exc_type, sep, first = line.partition(": ")
            message = "\n".join([first, *tail[i + 1 :]]) if sep else ""
            return exc_type.strip(), message.strip()
    return "", text.strip()
