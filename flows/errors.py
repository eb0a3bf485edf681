"""Errors of the flow layer: configuration, starting runs, flow definitions.

The root is :class:`recon.errors.PtychoflowError` (``recon`` imports nothing from
here). Each backend has its own errors module for what only it can raise
(:mod:`flows.local.errors`, :mod:`flows.globus.errors`); the errors the launcher
acts on are defined here, once, and backends raise them or their subclasses.
"""

from __future__ import annotations

from recon.errors import PtychoflowError


class ConfigError(PtychoflowError, ValueError):
    """An installation config file is missing a value or has a wrong one."""


class TransientBackendError(PtychoflowError, ConnectionError):
    """The backend could not act now but may succeed if asked again (network error,
    HTTP 429/5xx, engine still starting). The launcher retries it with backoff."""


class LaunchError(PtychoflowError, RuntimeError):
    """A scan could not be handed to the backend as a whole (e.g. its folders not created)."""


class FlowDefinitionError(PtychoflowError, ValueError):
    """The flow definition or its input schema is invalid: refused by Globus Flows, or
    using something the local interpreter does not support."""


class LedgerError(PtychoflowError, RuntimeError):
    """The run ledger cannot be used; the message names the file and what to do."""


class LedgerBusyError(LedgerError, TimeoutError):
    """Another process holds the ledger's lock longer than the bounded wait. Transient:
    the watcher catches it and tries again later; the message names the holder."""


class LedgerDamagedError(LedgerError):
    """The ledger file is not a readable SQLite database of ours (a corrupted page, a
    wrong schema); ``ptychoflow ledger check`` / ``ledger rebuild`` are the way out."""


class LedgerUnwritableError(LedgerError, OSError):
    """The ledger cannot be written now: its disk is full (or nearly: less than
    :data:`flows.ledger.LEDGER_MIN_FREE_BYTES` free), failing, or read-only. Nothing
    more may be started, since a start that cannot be recorded would run twice; callers
    stop cleanly and say so."""


class LedgerLostError(LedgerError):
    """The ledger is missing or empty while results exist: the history was lost.
    Refused rather than running finished scans again; ``ptychoflow ledger rebuild``."""
