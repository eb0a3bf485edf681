"""Wiring for the globus backend: config -> app -> clients -> deploy / backend.

The pieces live in ``flows.globus.auth`` (apps and clients), ``flows.globus.deploy`` (flow and
function), ``flows.globus.backend`` (runs) and ``flows.flow_input`` (the run body);
this module joins them from an installation config for the CLI and the watcher.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flows.backend import ViewRequest
from flows.config import Config
from flows.errors import ConfigError

if TYPE_CHECKING:
    from flows.globus.backend import GlobusBackend


def _require_globus_settings(config: Config, *names: str) -> None:
    missing = [name for name in names if not getattr(config.globus, name)]
    if missing:
        where = f" in {config.source}" if config.source else ""
        raise ConfigError(
            f"[globus] {', '.join(missing)} not set{where} "
            "(see the deployment guide in README.md; `ptychoflow init --backend globus`)"
        )


def input_builder(config: Config, function_id: str) -> Callable[[ViewRequest], dict[str, Any]]:
    """The flow-input builder for this installation's collections and function."""
    from flows.flow_input import build_flow_input

    settings = config.globus
    return functools.partial(
        build_flow_input,
        acquisition_collection=settings.acquisition_collection,
        acquisition_base=settings.acquisition_base,
        compute_collection=settings.compute_collection,
        compute_base=settings.compute_base,
        compute_endpoint=settings.compute_endpoint,
        function_id=function_id,
        compute_root_on_endpoint=settings.compute_root_on_endpoint,
    )


#: Why a person cannot start runs, and how to reprocess by hand (the chosen design).
PEOPLE_START_RUNS_HINT = (
    "runs on the globus backend are started as the watcher's confidential client: the "
    "Compute endpoint is owned by that client and runs only its tasks, so a run started "
    "as a person would end ReconstructFailed, and the watcher could not see it. "
    "Reprocess on the beamline host, as the watcher's account, with its credentials in "
    "the environment: `set -a; . /beamline/ptychoflow/credentials.env; set +a; "
    'ptychoflow run-flow --scan 100` (see "Reprocessing by hand" in README.md)'
)


def open_globus_backend(
    config: Config,
    *,
    manage_runs: bool = False,
    login_on_demand: bool = False,
    starts_runs: bool = False,
) -> GlobusBackend:
    """A ready :class:`flows.globus.backend.GlobusBackend` from the config and deployment state.

    ``manage_runs``: ask for Flows' ``run_manage`` scope too (``ptychoflow cancel``);
    ``login_on_demand``: a person at a terminal is asked to consent to what is missing;
    ``starts_runs``: the caller starts runs (``run-flow``, the watcher, ``check
    --sample-run``), which only the watcher's client may (:data:`PEOPLE_START_RUNS_HINT`).
    """
    from flows.globus.auth import confidential_credentials, make_app
    from flows.globus.backend import GlobusBackend
    from flows.globus.state import load_state

    if starts_runs and confidential_credentials() is None:
        raise ConfigError(PEOPLE_START_RUNS_HINT)

    _require_globus_settings(
        config,
        "acquisition_collection",
        "compute_collection",
        "compute_endpoint",
        "compute_root_on_endpoint",
    )
    state = load_state(config.state_dir)
    if not state.flow_id or not state.function_id:
        raise ConfigError(
            f"nothing deployed yet (no flow/function id in {config.state_dir}): "
            "run `ptychoflow deploy` first"
        )
    app = make_app(config, login_on_demand=login_on_demand)
    return GlobusBackend.from_app(
        config,
        app,
        input_builder=input_builder(config, state.function_id),
        flow_id=state.flow_id,
        manage_runs=manage_runs,
    )


def flow_starters(config: Config) -> list[str]:
    """Who may start runs: the watcher's confidential client, then ``[globus] flow_starters``.

    Run managers may cancel runs but not start them (Globus Flows permissions), so
    the watcher's client must be listed here; without it every ``run_flow`` the
    watcher sends is refused.
    """
    from flows.globus.auth import identity_urn

    starters = (
        [identity_urn(config.globus.watcher_client_id)] if config.globus.watcher_client_id else []
    )
    return list(dict.fromkeys([*starters, *config.globus.flow_starters]))


def deploy_from_config(config: Config, *, identity_wait_s: float = 30.0) -> Any:
    """Validate and create/update the flow, (re-)register the functions, save the IDs.

    Clients are built in this order: Flows, Transfer and Compute first, with no
    flow scope (the flow in the old state may be gone); after the deploy, the
    client for the flow that now exists, with its ``data_access`` dependencies,
    and one ``login`` asks for every consent. Then the code installed on the
    endpoint is compared with this machine's (a tiny task, ``identity_wait_s``).
    """
    import dataclasses

    import globus_sdk

    from flows.flow_input import load_definition, load_input_schema
    from flows.globus.auth import make_app, make_clients, specific_flow_client
    from flows.globus.deploy import deploy
    from flows.globus.state import load_state
    from functions.code_identity import endpoint_identity
    from functions.reconstruct import reconstruct_view

    _require_globus_settings(config, "compute_endpoint")
    settings = config.globus
    app = make_app(config, login_on_demand=True)
    state = load_state(config.state_dir)
    collections = list(settings.data_access_collections)
    clients = make_clients(app, data_access_collections=collections)
    result = deploy(
        clients.flows,
        clients.compute,
        definition=load_definition(),
        input_schema=load_input_schema(),
        state=state,
        function=reconstruct_view,
        identity_function=endpoint_identity,
        state_dir=config.state_dir,
        run_managers=settings.run_managers,
        run_monitors=settings.run_monitors,
        flow_starters=flow_starters(config),
        subscription_id=settings.subscription_id or None,
        compute_endpoint=settings.compute_endpoint,
    )
    # Starting runs needs consent to the new flow's own scope (and the data_access
    # scopes under it): ask for it now, while a person is at the terminal.
    assert result.state.flow_id is not None
    specific_flow_client(result.state.flow_id, app, data_access_collections=collections)
    app.login()
    messages = list(result.messages)
    if not settings.subscription_id:
        messages.append(
            "warning: no [globus] subscription_id: the flow expires 30 days after its last "
            "update and every run is then refused; set it and run `ptychoflow deploy` again"
        )
    if not settings.watcher_client_id:
        messages.append(
            "warning: no [globus] watcher_client_id: only you may start runs of this flow; "
            "set it to the watcher's client id and run `ptychoflow deploy` again"
        )
    if isinstance(app, globus_sdk.UserApp):
        # The endpoint runs only its owner's (the watcher client's) tasks: a person's
        # task would be refused, so the code is compared by `check`, run as the watcher.
        messages.append(
            "the endpoint's code is compared by `ptychoflow check`, run as the watcher "
            "(the endpoint runs only the watcher client's tasks, not yours)"
        )
    elif identity_wait_s > 0:
        from flows.globus.check import endpoint_code_report

        messages.extend(
            endpoint_code_report(clients.compute, config, result.state, timeout_s=identity_wait_s)
        )
    return dataclasses.replace(result, messages=tuple(messages))


def login_from_config(config: Config, *, force: bool = False) -> None:
    """Log in for every scope: Flows, Transfer and Compute, the deployed flow's own scope,
    and ``data_access`` for ``[globus] data_access_collections`` (under Transfer and
    under the flow's scope, as a flow that transfers on a mapped collection needs)."""
    from flows.globus.auth import make_app, make_clients
    from flows.globus.state import load_state

    app = make_app(config, login_on_demand=True)
    make_clients(
        app,
        flow_id=load_state(config.state_dir).flow_id,
        data_access_collections=config.globus.data_access_collections,
    )
    app.login(force=force)


def check_from_config(config: Config, *, task_timeout_s: float = 600.0) -> list[Any]:
    """Run ``ptychoflow check`` with this process's identity; returns the checklist lines."""
    from flows.globus.auth import confidential_credentials, identity_urn, make_app, make_clients
    from flows.globus.check import DeploymentChecker, unreachable_lines
    from flows.globus.errors import is_network_error
    from flows.globus.state import load_state

    state = load_state(config.state_dir)
    try:
        app = make_app(config)
        clients = make_clients(
            app,
            flow_id=state.flow_id,
            data_access_collections=config.globus.data_access_collections,
        )
    except Exception as err:
        if is_network_error(err):
            return unreachable_lines(err)
        raise
    credentials = confidential_credentials()
    checker = DeploymentChecker(
        config,
        state,
        flows_client=clients.flows,
        run_client=clients.run,
        transfer_client=clients.transfer,
        compute_client=clients.compute,
        app=app,
        identity_urn=identity_urn(credentials[0]) if credentials else None,
        task_timeout_s=task_timeout_s,
    )
    return checker.run()


def sample_run_from_config(config: Config, *, timeout_s: float = 3600.0) -> list[Any]:
    """``check --sample-run``: one tiny view through the configured backend's flow (see
    :mod:`flows.globus.sample_run`). On Globus the worker must have used a GPU, and the
    compute-side copies are removed by a Transfer delete task."""
    import shutil

    from flows.globus.sample_run import SampleRun
    from flows.launcher import make_backend

    backend = make_backend(config)
    try:
        if config.backend == "local":

            def remove_local(scan_dir: str) -> str | None:
                for side in ("input", "recon"):
                    shutil.rmtree(config.compute_root / side / scan_dir, ignore_errors=True)
                return None

            sample = SampleRun(
                config,
                backend,
                remove_compute_copies=remove_local,
                require_gpu=False,
                timeout_s=timeout_s,
                poll_interval_s=1.0,
            )
        else:
            from flows.globus.backend import GlobusBackend

            assert isinstance(backend, GlobusBackend)
            sample = SampleRun(
                config,
                backend,
                remove_compute_copies=lambda scan_dir: backend.remove_compute_copies(
                    scan_dir, wait_s=300.0
                ),
                require_gpu=True,
                timeout_s=timeout_s,
            )
        return sample.run()
    finally:
        backend.close()
