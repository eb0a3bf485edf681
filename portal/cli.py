"""``ptychoflow serve``: the results portal (heavy imports inside the handler)."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = subparsers.add_parser(
        "serve",
        help="the live results portal: scans, views, images and timings in a browser",
        description="Serve a read-only web portal over the run ledger and the result files: "
        "a page of scans, a page of view cards per scan, a page per view, and the same data "
        "as JSON under /api/. Open pages update themselves. Binds 127.0.0.1 by default; any "
        "other address needs PTYCHOFLOW_PORTAL_TOKEN or [portal] globus_group.",
    )
    serve.add_argument("--config", metavar="FILE", help="config file (default ./ptychoflow.toml)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=8008, help="port (default 8008; 0 picks a free one)"
    )
    serve.set_defaults(handler=serve_command)


def settings_from_config(config: object, host: str) -> object:
    """The portal's settings from an installation config; refuses an exposed address
    without access control (``PortalConfigError``)."""
    import os

    from flows.config import Config
    from portal import auth
    from portal.app import PortalSettings
    from portal.errors import PortalConfigError

    assert isinstance(config, Config)
    token = os.environ.get(auth.TOKEN_ENV) or None
    if token is not None:
        auth.check_token_strength(token)
    globus = None
    portal = config.portal
    if portal.globus_group:
        secret = os.environ.get(auth.CLIENT_SECRET_ENV, "")
        missing = [
            name
            for name, value in (
                ("[portal] client_id", portal.client_id),
                ("[portal] public_url", portal.public_url),
                (auth.CLIENT_SECRET_ENV, secret),
            )
            if not value
        ]
        if missing:
            raise PortalConfigError(
                f"[portal] globus_group is set but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not: the Globus login needs the "
                "portal's confidential client and the URL people use to reach it"
            )
        globus = auth.GlobusGroupLogin(
            portal.client_id,
            secret,
            portal.globus_group,
            portal.public_url.rstrip("/") + "/login/callback",
        )
    policy = auth.AccessPolicy(token=token, globus=globus)
    auth.check_exposure(host, policy)
    return PortalSettings(
        ledger=config.ledger,
        acquisition_root=config.acquisition_root,
        roots=[config.acquisition_root, config.compute_root],
        cache_dir=config.state_dir / "portal-cache",
        policy=policy,
        loopback_hosts_only=policy.open,
    )


def serve_command(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    class _QuietServer(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM end it with exit code 0 like the watcher
        (uvicorn re-raises the signal after shutting down, so the exit code would say
        "killed")."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    from flows.config import load_config
    from portal.app import PortalSettings, create_app
    from portal.errors import PortalConfigError
    from portal.limits import ConnectionLimits, guarded_protocol, quiet_server_loggers

    config = load_config(args.config)
    settings = settings_from_config(config, args.host)
    limits = ConnectionLimits.from_environment()
    quiet_server_loggers()
    assert isinstance(settings, PortalSettings)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sock.close()
        raise PortalConfigError(f"cannot listen on {args.host}:{args.port}: {err}") from err
    sock.listen(128)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    access = "open to this machine" if settings.policy.open else "token or login required"
    print(
        f"portal at http://{host}:{port}/ ({access}); ledger {settings.ledger}; at most "
        f"{limits.total} connections ({limits.per_client} per client), request heads "
        f"within {limits.header_timeout_s:g} s",
        flush=True,
    )
    server = _QuietServer(
        uvicorn.Config(
            create_app(settings),
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
            http=guarded_protocol(limits),  # header time-out, connection limits
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
