"""Errors of the Globus backend, and the translation of globus-sdk errors into them.

Callers tell three kinds apart: :class:`TransientBackendError` (retry with
backoff), :class:`GlobusAuthorizationError` (a person must log in or consent),
and :class:`GlobusServiceError` (the service refused the request; retrying the
same request will not help).
"""

from __future__ import annotations

import globus_sdk
import globus_sdk.gare
from globus_sdk.token_storage import TokenValidationError

from flows.errors import TransientBackendError
from recon.errors import PtychoflowError

LOGIN_HINT = "run `ptychoflow login` (or `ptychoflow deploy` again) and retry"


class GlobusAuthorizationError(PtychoflowError, PermissionError):
    """Tokens are missing, expired or lack a scope or consent the request needs."""


class GlobusServiceError(PtychoflowError, RuntimeError):
    """A Globus service refused the request (4xx other than authorization)."""


class FlowGoneError(GlobusServiceError, LookupError):
    """Globus Flows no longer has the deployed flow (deleted, or expired after 30 days
    without a subscription)."""


FLOW_GONE_HINT = (
    "the flow is gone (flows expire after 30 days without a subscription; set "
    "[globus] subscription_id); run `ptychoflow deploy`"
)


def network_reason(err: BaseException) -> str:
    """The root of a network error in words: the DNS failure, the refused connection or
    the time-out that the SDK's ``ConnectionError on request`` wraps."""
    import socket

    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, socket.gaierror):
            return f"DNS lookup failed ({item.strerror or item})"
    for item in reversed(chain):
        for arg in getattr(item, "args", ()):
            if isinstance(arg, socket.gaierror):
                return f"DNS lookup failed ({arg.strerror or arg})"
        text = str(item)
        if "Name or service not known" in text or "name resolution" in text:
            return "DNS lookup failed (" + text.rsplit(":", 1)[-1].strip(" )'\"") + ")"
    deepest = chain[-1]
    return f"{type(deepest).__name__}: {deepest}"[:300]


def is_network_error(err: BaseException) -> bool:
    """A failure to reach a service at all (DNS, connection, time-out), not its answer."""
    import requests

    return isinstance(
        err, globus_sdk.NetworkError | requests.exceptions.ConnectionError | ConnectionError
    )


def api_error_text(err: globus_sdk.GlobusAPIError) -> str:
    """``HTTP 422 UNPROCESSABLE_ENTITY: <the service's message>`` for an API error."""
    message = err.message or err.text or err.http_reason
    code = f" {err.code}" if err.code and err.code != "Error" else ""
    return f"HTTP {err.http_status}{code}: {message}"


def is_authorization_error(err: globus_sdk.GlobusAPIError) -> bool:
    """True for 401, missing scopes and consent-required (GARE) errors."""
    if err.http_status == 401:
        return True
    code = (err.code or "").upper()
    if code in {"MISSING_SCOPE", "CONSENTREQUIRED", "CONSENT_REQUIRED", "AUTHENTICATIONFAILED"}:
        return True
    return globus_sdk.gare.is_gare(err)


def translate(err: Exception, doing: str) -> PtychoflowError:
    """The project error for a globus-sdk error raised while ``doing`` something.

    ``doing`` is a phrase such as ``"starting the run for scan100-view003"``; the
    message says what was being done, what the service said, and what to do.
    Call as ``raise translate(err, doing) from err``.
    """
    if isinstance(err, TokenValidationError):
        return GlobusAuthorizationError(f"{doing}: no valid Globus tokens ({err}); {LOGIN_HINT}")
    if isinstance(err, globus_sdk.NetworkError):
        return TransientBackendError(f"{doing}: network error talking to Globus: {err}")
    if isinstance(err, globus_sdk.GlobusAPIError):
        text = api_error_text(err)
        if err.http_status >= 500 or err.http_status == 429:
            return TransientBackendError(f"{doing}: Globus is unavailable ({text}); retry later")
        if is_authorization_error(err):
            return GlobusAuthorizationError(f"{doing}: not authorized ({text}); {LOGIN_HINT}")
        return GlobusServiceError(f"{doing}: {text}")
    if isinstance(err, PtychoflowError):
        return err
    return GlobusServiceError(f"{doing}: {type(err).__name__}: {err}")
