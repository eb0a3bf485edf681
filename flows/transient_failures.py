"""Which failures are transient, and when a view that failed of one is tried again.

Two kinds of failure go away by themselves (issue 16, item 9):

- **the view file was still being written** when it was read: the marker appeared
  before the copy ended. HDF5 says so as a ``truncated file``, an unreadable
  ``file signature``, a file it ``unable to open``, a ``bad object header``. Retried when the
  file has changed since the failed attempt (its size or fast hash) and then stayed
  unchanged for the settle time: a file that is simply broken never changes, so it is
  never retried automatically.
- **the backend was unreachable**: Globus or the local engine could not be reached
  after the launcher's own retries (DNS failure, refused or reset connection, time-out,
  HTTP 429/502/503/504). Retried after a back-off, ``RETRY_BACKOFF_S * 2**k``.

Each kind gets at most :data:`MAX_TRANSIENT_RETRIES` automatic retries; each retry is
a new attempt in the ledger (``attempt``, ``transient_retries``). Every other failure
(bad data, bad options, a refused path) waits for a person: ``run-flow --scan``.
"""

from __future__ import annotations

import re
import time

from flows.input_fingerprint import InputFingerprint

#: Automatic retries of one view after transient failures.
MAX_TRANSIENT_RETRIES = 3
#: First wait before retrying a view that failed because the backend was unreachable.
RETRY_BACKOFF_S = 30.0

INPUT_STILL_WRITTEN = "input still being written"
BACKEND_UNREACHABLE = "backend unreachable"

_PATTERNS = (
    (
        INPUT_STILL_WRITTEN,
        re.compile(
            r"truncated file|file signature not found|unable to (synchronously )?open file"
            r"|bad object header|not a readable HDF5",
            re.IGNORECASE,
        ),
    ),
    (
        BACKEND_UNREACHABLE,
        re.compile(
            r"still unavailable after|temporary failure in name resolution|name or service "
            r"not known|connection (refused|reset|aborted)|connectionerror|timed? ?out"
            r"|max retries exceeded|network is unreachable|\b(429|502|503|504)\b",
            re.IGNORECASE,
        ),
    ),
)


def transient_kind(error: str | None) -> str | None:
    """:data:`INPUT_STILL_WRITTEN`, :data:`BACKEND_UNREACHABLE` or None (not transient)."""
    if not error:
        return None
    for kind, pattern in _PATTERNS:
        if pattern.search(error):
            return kind
    return None


def retry_due(
    *,
    error: str | None,
    retries: int,
    finished_at: float | None,
    recorded: InputFingerprint | None,
    current: InputFingerprint | None,
    settle_s: float,
    now: float | None = None,
) -> bool:
    """Whether a failed view is retried automatically now (see the module docstring)."""
    kind = transient_kind(error)
    if kind is None or retries >= MAX_TRANSIENT_RETRIES or current is None:
        return False
    now = time.time() if now is None else now
    still_for = now - current.mtime_ns / 1e9
    if still_for < settle_s:
        return False  # the file is still changing: wait until it stops
    if kind == INPUT_STILL_WRITTEN:
        return recorded is None or not recorded.same_content(current)
    waited = now - (finished_at or 0.0)
    return bool(waited >= RETRY_BACKOFF_S * float(2**retries))
