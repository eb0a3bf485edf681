"""The portal under slow or many clients: header time-out, connection limits, quiet logs.

uvicorn waits for a request's headers for ever, and accepts connections until the
process runs out of file descriptors: 1100 connections that never finished their
headers made every other request time out (at systemd's default 1024 open files), and
the errors that followed grew the log by 68 MB in 30 s. So (issue 16):

- **header time-out**: a connection has :attr:`ConnectionLimits.header_timeout_s` to
  send a complete request head, from when it was accepted or its previous response
  ended; then it is closed;
- **connection limits**: at most :attr:`ConnectionLimits.per_client` connections from
  one client address and :attr:`ConnectionLimits.total` in all; one more is closed as
  soon as it is accepted, so its descriptor is free again at once. The default total is
  half the process's open-file limit (at most 1000), so descriptors never run out;
- **quiet logs**: each kind of refusal is logged at most once per
  :data:`LOG_EVERY_S` seconds, with the count of those not logged since; the same filter
  guards asyncio's and uvicorn's own error loggers.

Settings come from the environment (``serve`` reads them once):
``PTYCHOFLOW_PORTAL_HEADER_TIMEOUT`` (seconds, default 10),
``PTYCHOFLOW_PORTAL_MAX_PER_CLIENT`` (default 32), ``PTYCHOFLOW_PORTAL_MAX_CONNECTIONS``
(default half of ``RLIMIT_NOFILE``, at most 1000). Behind a reverse proxy every client
has the proxy's address: raise the per-client limit to the total there.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import resource
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from portal.errors import PortalConfigError

log = logging.getLogger("ptychoflow.portal")

HEADER_TIMEOUT_ENV = "PTYCHOFLOW_PORTAL_HEADER_TIMEOUT"
PER_CLIENT_ENV = "PTYCHOFLOW_PORTAL_MAX_PER_CLIENT"
TOTAL_ENV = "PTYCHOFLOW_PORTAL_MAX_CONNECTIONS"
#: Seconds between two log lines of one kind of refusal.
LOG_EVERY_S = 10.0


def default_total() -> int:
    """Half the soft open-file limit, at most 1000 and at least 16."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(16, min(1000, soft // 2))


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    per_client: int = 32
    total: int = 512

    @classmethod
    def from_environment(cls) -> ConnectionLimits:
        def number(name: str, default: float, kind: type) -> Any:
            text = os.environ.get(name)
            if text is None or not text.strip():
                return default
            try:
                value = kind(text)
            except ValueError:
                value = None
            if value is None or not value > 0 or value != value:
                raise PortalConfigError(f"{name}={text!r}: expected a number > 0")
            return value

        total = number(TOTAL_ENV, default_total(), int)
        return cls(
            header_timeout_s=number(HEADER_TIMEOUT_ENV, 10.0, float),
            per_client=min(number(PER_CLIENT_ENV, 32, int), total),
            total=total,
        )


class RateLimitedLog:
    """Log a kind of message at most once per ``every_s``; say how many were dropped."""

    def __init__(self, logger: logging.Logger, every_s: float = LOG_EVERY_S):
        self.logger = logger
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._dropped: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.every_s:
                self._dropped[kind] += 1
                return
            self._last[kind] = now
            dropped = self._dropped.pop(kind, 0)
        suffix = f" ({dropped} more like this in the last {self.every_s:g} s)" if dropped else ""
        self.logger.warning(message + suffix, *args)


class _RateLimitFilter(logging.Filter):
    """A logging filter passing each distinct message template at most once per period."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, object], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        return True


def quiet_server_loggers() -> None:
    """Rate-limit asyncio's and uvicorn's error loggers (accept errors, bad requests)."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RateLimitFilter) for f in logger.filters):
            logger.addFilter(_RateLimitFilter())


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """An uvicorn HTTP/1.1 protocol class enforcing ``limits`` (one per server)."""
    open_by_client: collections.Counter[str] = collections.Counter()
    refusals = RateLimitedLog(log)

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _peer: str | None = None
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peername = transport.get_extra_info("peername")
            peer = str(peername[0]) if peername else "unknown"
            total = sum(open_by_client.values())
            if total >= limits.total or open_by_client[peer] >= limits.per_client:
                self._refused = True
                transport.close()  # its descriptor is free again at once
                if total >= limits.total:
                    refusals.warning(
                        "total",
                        "portal: %d connections open (the limit, %s); refusing more",
                        total,
                        TOTAL_ENV,
                    )
                else:
                    refusals.warning(
                        "client:" + peer,
                        "portal: %s has %d connections open (the limit, %s); refusing more",
                        peer,
                        open_by_client[peer],
                        PER_CLIENT_ENV,
                    )
                return
            self._peer = peer
            open_by_client[peer] += 1
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._cancel_header_timer()
            if self._peer is not None:
                open_by_client[self._peer] -= 1
                if open_by_client[self._peer] <= 0:
                    del open_by_client[self._peer]
                self._peer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the request head is complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's head gets the same time

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(
                limits.header_timeout_s, self._header_timed_out
            )

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            refusals.warning(
                "slow:" + (self._peer or ""),
                "portal: %s sent no complete request head within %g s (%s); closed",
                self._peer,
                limits.header_timeout_s,
                HEADER_TIMEOUT_ENV,
            )
            self.transport.close()

    return GuardedH11Protocol
