"""The installation config: one TOML file (``ptychoflow init`` writes a commented one).

Without a config file, the local backend works in the current directory:
acquisition data under ``./acquisition``, the compute side under ``./compute``,
the ledger at ``./ptychoflow.sqlite``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
from typing import Any

from flows.errors import ConfigError
from recon.options import ReconOptions

DEFAULT_CONFIG_NAME = "ptychoflow.toml"
DEFAULT_SCAN_PATTERN = r"(fly)?scan(\d+)"


@dataclasses.dataclass
class GlobusSettings:
    """IDs of the Globus pieces a facility sets up (see the deployment guide)."""

    acquisition_collection: str = ""
    """Collection (endpoint) ID of the beamline's acquisition storage."""
    acquisition_base: str = "/"
    """Path of the acquisition root as the acquisition collection sees it."""
    compute_collection: str = ""
    """Collection ID of the GPU cluster's storage (e.g. ALCF Eagle)."""
    compute_base: str = "/"
    """Path of the compute root as the compute collection sees it."""
    compute_endpoint: str = ""
    """Globus Compute endpoint ID running ``endpoint_config/polaris``."""
    compute_root_on_endpoint: str = ""
    """The compute root as a filesystem path on the cluster's nodes (for the function)."""
    run_monitors: list[str] = dataclasses.field(default_factory=list)
    """Identity URNs allowed to see runs in the web app."""
    run_managers: list[str] = dataclasses.field(default_factory=list)
    """Identity URNs allowed to cancel runs."""


@dataclasses.dataclass
class PortalSettings:
    """The ``[portal]`` section: who may see the results portal (``ptychoflow serve``)."""

    globus_group: str = ""
    """Globus group ID; when set, people log in with Globus Auth and must be members."""
    client_id: str = ""
    """Globus Auth confidential client of the portal (its secret in the environment as
    ``PTYCHOFLOW_PORTAL_CLIENT_SECRET``); its redirect URL is ``public_url`` +
    ``/login/callback``."""
    public_url: str = ""
    """How people reach the portal, e.g. ``https://beamline-ws.example.org:8008``."""


@dataclasses.dataclass
class Config:
    """Everything an installation needs; paths are absolute after loading."""

    backend: str = "local"
    """``local`` (embedded) or ``globus``."""
    acquisition_root: pathlib.Path = pathlib.Path("acquisition")
    """Where scan folders (``scan100/``) appear; results come back to ``recon/<id>/`` here."""
    compute_root: pathlib.Path = pathlib.Path("compute")
    """Local backend: the folder standing for the compute collection."""
    ledger: pathlib.Path = pathlib.Path("ptychoflow.sqlite")
    """The SQLite run ledger."""
    state_dir: pathlib.Path = pathlib.Path(".ptychoflow")
    """Deployment state (flow and function IDs), tokens, engine run directories."""
    scan_pattern: str = DEFAULT_SCAN_PATTERN
    """Regular expression matched against whole scan folder names; the last group is the id."""
    view_glob: str = "*.cxi"
    """Files of a scan folder that are views, sorted by name: view index = position."""
    marker: str = "scan.done"
    """Marker file that says a scan is complete; without it, settle_seconds decide."""
    settle_seconds: float = 5.0
    """Without a marker: a scan is complete when nothing in it changed for this long."""
    concurrency: int = 64
    """Most runs in flight at once (the paper used 64)."""
    endpoint_config: pathlib.Path | None = None
    """Local backend: Compute engine config; default ``endpoint_config/local/config.yaml``."""
    recon: ReconOptions = dataclasses.field(default_factory=ReconOptions)
    """Default reconstruction options for every view."""
    globus: GlobusSettings = dataclasses.field(default_factory=GlobusSettings)
    portal: PortalSettings = dataclasses.field(default_factory=PortalSettings)
    source: pathlib.Path | None = None
    """The file this config came from (None for defaults)."""

    def scan_regex(self) -> re.Pattern[str]:
        try:
            return re.compile(self.scan_pattern)
        except re.error as err:
            raise ConfigError(f"scan_pattern {self.scan_pattern!r} is not a regex: {err}") from err

    def scan_id_of(self, folder_name: str) -> int | None:
        """The scan id of a folder name, or None when the name is not a scan folder."""
        match = self.scan_regex().fullmatch(folder_name)
        if not match:
            return None
        return int(match.groups()[-1]) if match.groups() else None


def load_config(path: pathlib.Path | str | None = None, base: pathlib.Path | None = None) -> Config:
    """Load ``path`` (or ``./ptychoflow.toml`` if present, else defaults).

    Relative paths in the file are relative to the file's folder; defaults are
    relative to ``base`` (the current directory).
    """
    base = pathlib.Path.cwd() if base is None else pathlib.Path(base)
    if path is None:
        candidate = base / DEFAULT_CONFIG_NAME
        if not candidate.exists():
            return resolve_paths(Config(), base)
        path = candidate
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (create one with `ptychoflow init`)"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    config = config_from_dict(raw, where=str(path))
    config.source = path.resolve()
    return resolve_paths(config, path.resolve().parent)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    raw = dict(raw)
    globus_raw = raw.pop("globus", {}) or {}
    recon_raw = raw.pop("recon", {}) or {}
    portal_raw = raw.pop("portal", {}) or {}
    known = {f.name for f in dataclasses.fields(Config)} - {"recon", "globus", "portal", "source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    known_globus = {f.name for f in dataclasses.fields(GlobusSettings)}
    unknown = sorted(set(globus_raw) - known_globus)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [globus]: {', '.join(unknown)}")
    known_portal = {f.name for f in dataclasses.fields(PortalSettings)}
    unknown = sorted(set(portal_raw) - known_portal)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in [portal]: {', '.join(unknown)};"
            f" known: {', '.join(sorted(known_portal))}"
        )
    try:
        recon = ReconOptions.from_dict(recon_raw)
    except ValueError as err:
        raise ConfigError(f"{where}: [recon]: {err}") from err
    config = Config(
        **raw,
        recon=recon,
        globus=GlobusSettings(**globus_raw),
        portal=PortalSettings(**portal_raw),
    )
    if config.backend not in ("local", "globus"):
        raise ConfigError(f"{where}: backend = {config.backend!r}; expected 'local' or 'globus'")
    if not isinstance(config.concurrency, int) or config.concurrency < 1:
        raise ConfigError(f"{where}: concurrency must be a positive integer")
    config.scan_regex()
    return config


def resolve_paths(config: Config, base: pathlib.Path) -> Config:
    """Make the config's relative paths absolute against ``base`` (in place; returned)."""
    for field in ("acquisition_root", "compute_root", "ledger", "state_dir", "endpoint_config"):
        value = getattr(config, field)
        if value is not None:
            value = pathlib.Path(value).expanduser()
            setattr(config, field, value if value.is_absolute() else (base / value).resolve())
    return config
