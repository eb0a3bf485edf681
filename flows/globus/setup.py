"""Wiring for the globus backend: config -> app -> clients -> deploy / backend.

The pieces live in ``flows.globus.auth`` (apps and clients), ``flows.globus.deploy`` (flow and
function), ``flows.globus.backend`` (runs) and ``flows.flow_input`` (the run body);
this module joins them from an installation config for the CLI and the watcher.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flows.backend import ViewRequest
from flows.config import Config
from flows.errors import ConfigError


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


def open_globus_backend(config: Config):
    """A ready :class:`flows.globus.backend.GlobusBackend` from the config and deployment state."""
    from flows.globus.auth import make_app
    from flows.globus.backend import GlobusBackend
    from flows.globus.state import load_state

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
    app = make_app(config)
    return GlobusBackend.from_app(
        config, app, input_builder=input_builder(config, state.function_id), flow_id=state.flow_id
    )


def deploy_from_config(config: Config):
    """Validate and create/update the flow, (re-)register the function, save the IDs."""
    from flows.flow_input import load_definition, load_input_schema
    from flows.globus.auth import make_app, make_clients, specific_flow_client
    from flows.globus.deploy import deploy
    from flows.globus.state import load_state
    from functions.reconstruct import reconstruct_view

    _require_globus_settings(config, "compute_endpoint")
    app = make_app(config, login_on_demand=True)
    state = load_state(config.state_dir)
    clients = make_clients(app, flow_id=state.flow_id)
    result = deploy(
        clients.flows,
        clients.compute,
        definition=load_definition(),
        input_schema=load_input_schema(),
        state=state,
        function=reconstruct_view,
        state_dir=config.state_dir,
        run_managers=config.globus.run_managers,
        run_monitors=config.globus.run_monitors,
        compute_endpoint=config.globus.compute_endpoint,
    )
    # Starting runs needs consent to the new flow's own scope: ask for it now, while a
    # person is at the terminal, rather than at the first run during beamtime.
    specific_flow_client(result.state.flow_id, app)
    app.login()
    return result


def login_from_config(config: Config, *, force: bool = False) -> None:
    from flows.globus.auth import make_app, make_clients
    from flows.globus.state import load_state

    app = make_app(config, login_on_demand=True)
    make_clients(app, flow_id=load_state(config.state_dir).flow_id)
    app.login(force=force)
