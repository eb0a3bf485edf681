"""Globus authentication: one ``GlobusApp`` per process, and the service clients built on it.

Two ways to authenticate:

- **Unattended** (the watcher on the acquisition machine): a confidential client
  (``globus_sdk.ClientApp``) whose id and secret come from the environment,
  ``PTYCHOFLOW_CLIENT_ID`` / ``PTYCHOFLOW_CLIENT_SECRET`` (or the
  ``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET`` pair that the
  Compute endpoint is started with, so one client owns the endpoint and starts
  the runs; or ``GLOBUS_CLIENT_ID`` / ``GLOBUS_CLIENT_SECRET``).
- **People** (``run-flow`` by hand, ``deploy``): a ``globus_sdk.UserApp`` with a
  public native-app client and refresh tokens, so one ``ptychoflow login``
  lasts a whole beamtime.

Tokens live in ``<state_dir>/globus-tokens.json`` (directory 0700, file 0600),
in a namespace per client, so switching between the two ways never mixes
identities. JSON rather than SQLite storage: the SDK's SQLite storage may only
be used from the thread that opened it, and the watcher polls from threads.
A ``GlobusApp`` itself is not thread safe: callers serialise its use (the
Globus backend holds a lock around every request).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import globus_sdk
from globus_sdk.globus_app.config import resolve_by_login_flow
from globus_sdk.scopes import FlowsScopes, Scope
from globus_sdk.token_storage import JSONTokenStorage

from flows.config import Config
from flows.errors import ConfigError
from flows.globus.state import ensure_private_dir

APP_NAME = "ptychoflow"
TOKEN_FILE_NAME = "globus-tokens.json"

#: The public (native-app) client people log in through. This project has no
#: registered client of its own: each facility registers one at
#: https://app.globus.org/settings/developers ("Register a thick client or script
#: that will be installed and run by users on their devices"), then either puts
#: its id here in their fork or sets PTYCHOFLOW_NATIVE_CLIENT_ID.
DEFAULT_NATIVE_CLIENT_ID: str | None = None

#: Credential variables, in order of preference: (id variable, secret variable).
CONFIDENTIAL_CLIENT_VARIABLES = (
    ("PTYCHOFLOW_CLIENT_ID", "PTYCHOFLOW_CLIENT_SECRET"),
    ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"),
    ("GLOBUS_CLIENT_ID", "GLOBUS_CLIENT_SECRET"),
)
NATIVE_CLIENT_VARIABLE = "PTYCHOFLOW_NATIVE_CLIENT_ID"

#: Flows scopes every identity needs: read flows, read run status and logs (and
#: search runs). Starting a run needs the flow's own scope. Least privilege: the
#: watcher's client asks for nothing more.
FLOWS_APP_SCOPES: list[Scope] = [
    FlowsScopes.view_flows,
    FlowsScopes.run_status,
]
#: Asked for by people only (a ``UserApp``): ``deploy`` creates and updates the flow.
FLOWS_DEPLOY_SCOPES: list[Scope] = [FlowsScopes.manage_flows]
#: Asked for only by ``ptychoflow cancel`` (``POST /runs/{id}/cancel``).
FLOWS_CANCEL_SCOPES: list[Scope] = [FlowsScopes.run_manage]


def confidential_credentials(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """``(client_id, client_secret)`` from the environment, or None when neither is set.

    Raises :class:`ConfigError` naming the missing variable when only half of a
    pair is set (a typo in a service file should not silently fall back to an
    interactive login that nobody is there to answer).
    """
    for id_variable, secret_variable in CONFIDENTIAL_CLIENT_VARIABLES:
        client_id = environ.get(id_variable, "").strip()
        secret = environ.get(secret_variable, "").strip()
        if client_id and secret:
            _check_uuid(client_id, id_variable)
            return client_id, secret
        if client_id or secret:
            missing = secret_variable if client_id else id_variable
            present = id_variable if client_id else secret_variable
            raise ConfigError(
                f"{present} is set but {missing} is missing: a confidential client needs both "
                f"(unset {present} to log in as a person instead)"
            )
    return None


def identity_urn(client_or_identity_id: str) -> str:
    """``urn:globus:auth:identity:<id>``: a confidential client's identity id is its client id."""
    return f"urn:globus:auth:identity:{client_or_identity_id}"


def native_client_id(environ: Mapping[str, str] = os.environ) -> str:
    client_id = environ.get(NATIVE_CLIENT_VARIABLE, "").strip() or DEFAULT_NATIVE_CLIENT_ID
    if not client_id:
        raise ConfigError(
            "no Globus client to log in with: set PTYCHOFLOW_CLIENT_ID and "
            "PTYCHOFLOW_CLIENT_SECRET (confidential client, for the unattended watcher), or "
            f"{NATIVE_CLIENT_VARIABLE} to the id of a native app registered at "
            "https://app.globus.org/settings/developers (for people)"
        )
    _check_uuid(client_id, NATIVE_CLIENT_VARIABLE)
    return client_id


def _check_uuid(value: str, variable: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ConfigError(f"{variable} = {value!r} is not a Globus client id (a UUID)") from None


def token_storage(state_dir: pathlib.Path | str, namespace: str) -> JSONTokenStorage:
    """The token file ``<state_dir>/globus-tokens.json`` (dir 0700, file 0600).

    The SDK writes the file under a 0177 umask; an existing file with wider
    permissions (copied by hand, restored from a backup) is tightened here.
    """
    directory = ensure_private_dir(state_dir)
    path = directory / TOKEN_FILE_NAME
    if path.exists():
        os.chmod(path, 0o600)
    return JSONTokenStorage(path, namespace=namespace)


def make_app(
    config: Config,
    *,
    environ: Mapping[str, str] = os.environ,
    login_on_demand: bool = False,
) -> globus_sdk.GlobusApp:
    """The app for this process: ``ClientApp`` with credentials in ``environ``, else ``UserApp``.

    The app starts with no scope requirements: each client built on it adds
    its own (:func:`make_clients` builds them all, so one login covers every
    scope the project uses). With ``login_on_demand`` false (the default), missing or
    insufficient tokens raise ``globus_sdk.TokenValidationError`` instead of
    prompting on the terminal, which the backend turns into "run `ptychoflow login`";
    the ``login`` command passes true.
    """
    credentials = confidential_credentials(environ)
    handler = resolve_by_login_flow if login_on_demand else None
    if credentials is not None:
        client_id, secret = credentials
        app_config = globus_sdk.GlobusAppConfig(
            token_storage=token_storage(config.state_dir, namespace=f"client-{client_id}"),
            token_validation_error_handler=handler,
        )
        return globus_sdk.ClientApp(
            APP_NAME,
            client_id=client_id,
            client_secret=secret,
            config=app_config,
        )
    client_id = native_client_id(environ)
    app_config = globus_sdk.GlobusAppConfig(
        # Refresh tokens: access tokens expire after two hours, refresh tokens
        # after six months without use, so a login lasts a whole beamtime.
        request_refresh_tokens=True,
        token_storage=token_storage(config.state_dir, namespace=f"user-{client_id}"),
        token_validation_error_handler=handler,
    )
    return globus_sdk.UserApp(APP_NAME, client_id=client_id, config=app_config)


def _client_auth(app: globus_sdk.GlobusApp | None, authorizer: Any) -> dict[str, Any]:
    if (app is None) == (authorizer is None):
        raise TypeError("give exactly one of app or authorizer")
    return {"app": app} if app is not None else {"authorizer": authorizer}


def flows_client(
    app: globus_sdk.GlobusApp | None = None,
    *,
    authorizer: Any = None,
    manage_runs: bool = False,
) -> globus_sdk.FlowsClient:
    """Flows service client (run status, run logs, run search; deploy for people).

    Scopes: :data:`FLOWS_APP_SCOPES` for everyone; ``manage_flows`` only on a person's
    ``UserApp`` (``deploy``), never on the watcher's ``ClientApp``; ``run_manage``
    only with ``manage_runs`` (``ptychoflow cancel``).
    """
    if app is not None and authorizer is None:
        scopes = list(FLOWS_APP_SCOPES)
        if isinstance(app, globus_sdk.UserApp):
            scopes += FLOWS_DEPLOY_SCOPES
        if manage_runs:
            scopes += FLOWS_CANCEL_SCOPES
        return globus_sdk.FlowsClient(app=app, app_scopes=scopes)
    return globus_sdk.FlowsClient(**_client_auth(app, authorizer))


def specific_flow_client(
    flow_id: str,
    app: globus_sdk.GlobusApp | None = None,
    *,
    authorizer: Any = None,
    data_access_collections: Iterable[str] = (),
) -> globus_sdk.SpecificFlowClient:
    """Client for starting runs of one flow (needs the flow's own scope).

    ``data_access_collections``: Globus Connect Server v5 *mapped* collections
    the flow's transfers touch; their ``data_access`` consent is requested up
    front so runs do not stop INACTIVE waiting for it. Never list guest
    collections here (the login would fail with "Unknown scope").
    """
    client = globus_sdk.SpecificFlowClient(flow_id, **_client_auth(app, authorizer))
    collections = list(data_access_collections)
    if collections and app is not None:
        client.add_app_transfer_data_access_scope(collections)
    return client


def transfer_client(
    app: globus_sdk.GlobusApp | None = None,
    *,
    authorizer: Any = None,
    data_access_collections: Iterable[str] = (),
) -> globus_sdk.TransferClient:
    """Transfer client (mkdir of the compute-side folders).

    Its transport does not retry Transfer's ``ExternalError`` answers (such as
    "directory exists", sent as HTTP 502), so an existing folder costs one request.
    """
    client = globus_sdk.TransferClient(**_client_auth(app, authorizer))
    collections = list(data_access_collections)
    if collections and app is not None:
        client.add_app_data_access_scope(collections)
    return client


def compute_client(
    app: globus_sdk.GlobusApp | None = None,
    *,
    authorizer: Any = None,
    do_version_check: bool = True,
) -> Any:
    """A ``globus_compute_sdk.Client`` (function registration) on the same app.

    ``do_version_check`` asks the service whether this SDK is still supported
    (one request); tests pass False.
    """
    from globus_compute_sdk import Client

    return Client(do_version_check=do_version_check, **_client_auth(app, authorizer))


@dataclasses.dataclass
class GlobusClients:
    """Every client the project uses, built on one app."""

    flows: globus_sdk.FlowsClient
    transfer: globus_sdk.TransferClient
    compute: Any
    """``globus_compute_sdk.Client``."""
    run: globus_sdk.SpecificFlowClient | None = None
    """Starts runs of the deployed flow; None before the first deploy."""


def make_clients(
    app: globus_sdk.GlobusApp,
    *,
    flow_id: str | None = None,
    data_access_collections: Iterable[str] = (),
    do_version_check: bool = True,
) -> GlobusClients:
    """Build every client on ``app``, which registers every scope the project needs.

    Flows (view_flows, run_status; manage_flows for people), Transfer (all, plus
    ``data_access`` for the listed mapped collections), Compute (all) and, once
    a flow is deployed, the flow's own scope for starting runs. Call
    ``app.login()`` after this (``ptychoflow login``) and one login covers them all.
    """
    collections = list(data_access_collections)
    return GlobusClients(
        flows=flows_client(app),
        transfer=transfer_client(app, data_access_collections=collections),
        compute=compute_client(app, do_version_check=do_version_check),
        run=(
            specific_flow_client(flow_id, app, data_access_collections=collections)
            if flow_id
            else None
        ),
    )
