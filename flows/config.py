"""The installation config: one TOML file (``ptychoflow init`` writes a commented one).

Without a config file, the local backend works in the current directory:
acquisition data under ``./acquisition``, the compute side under ``./compute``,
the ledger at ``./ptychoflow.sqlite``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import tomllib
import uuid
from typing import Any

from flows.errors import ConfigError
from recon.beamline import BeamlineSettings
from recon.errors import OptionsError
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
    watcher_client_id: str = ""
    """Client id of the watcher's confidential client (``PTYCHOFLOW_CLIENT_ID`` or
    ``GLOBUS_COMPUTE_CLIENT_ID``): deploy makes it a flow starter; it owns the endpoint."""
    flow_starters: list[str] = dataclasses.field(default_factory=list)
    """More identity or group URNs allowed to start runs (people who run ``run-flow``)."""
    data_access_collections: list[str] = dataclasses.field(default_factory=list)
    """GCS v5 *mapped* collections (e.g. ALCF Eagle) whose ``data_access`` consent
    ``login`` and ``deploy`` request; never guest collections."""
    subscription_id: str = ""
    """Globus subscription the flow is created under (without one it expires in 30 days)."""
    compute_retention_days: float = 7.0
    """``ptychoflow prune`` removes a view's compute-side copies (``input/<id>/<view>``,
    ``recon/<id>/<view>.*``) this many days after its result came back and was verified."""


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
    rerun_changed_views: bool = False
    """Run a succeeded view again when its file now holds other data (a re-acquired view:
    another size or fast hash than when it ran). False: only a warning in the log and
    in ``status``; ``run-flow --force`` runs it again."""
    endpoint_config: pathlib.Path | None = None
    """Local backend: Compute engine config; default ``endpoint_config/local/config.yaml``."""
    recon: ReconOptions = dataclasses.field(default_factory=ReconOptions)
    """Default reconstruction options for every view."""
    globus: GlobusSettings = dataclasses.field(default_factory=GlobusSettings)
    portal: PortalSettings = dataclasses.field(default_factory=PortalSettings)
    beamline: BeamlineSettings | None = None
    """The ``[beamline]`` section: scan folders hold a beamline's own files, read through
    Ptychodus's readers (``recon.beamline``); None: views are CXI/npz files."""
    source: pathlib.Path | None = None
    """The file this config came from (None for defaults)."""

    def scan_regex(self) -> re.Pattern[str]:
        try:
            return re.compile(self.scan_pattern)
        except re.error as err:
            raise ConfigError(f"scan_pattern {self.scan_pattern!r} is not a regex: {err}") from err

    def scan_id_of(self, folder_name: str) -> int | None:
        """The scan id of a folder name, or None when the name is not a usable scan folder
        (no match, or an id that is not a number of at most :data:`MAX_SCAN_ID_DIGITS`
        digits; :meth:`scan_name_problem` says why)."""
        match = self.scan_regex().fullmatch(folder_name)
        if not match or not match.groups():
            return None
        digits = match.groups()[-1]
        if not _is_scan_id(digits):
            return None
        return int(digits)

    def scan_name_problem(self, folder_name: str) -> str | None:
        """Why a folder name that matches ``scan_pattern`` cannot be a scan, or None (it
        can be, or it does not match at all)."""
        match = self.scan_regex().fullmatch(folder_name)
        if not match or not match.groups():
            return None
        digits = match.groups()[-1]
        if _is_scan_id(digits):
            return None
        shown = digits if len(digits) <= 40 else digits[:40] + "..."
        return (
            f"scan id {shown!r} is not a number of 1 to {MAX_SCAN_ID_DIGITS} digits; "
            "rename the folder to start it"
        )


#: Scan ids have at most this many decimal digits (they must fit a 64-bit integer).
MAX_SCAN_ID_DIGITS = 18


def _is_scan_id(text: str | None) -> bool:
    return (
        text is not None
        and 0 < len(text) <= MAX_SCAN_ID_DIGITS
        and text.isascii()
        and text.isdigit()
    )


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


#: Config keys that are folder or file paths (strings in the file, relative to its folder).
_PATH_KEYS = ("acquisition_root", "compute_root", "ledger", "state_dir", "endpoint_config")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Build and validate a :class:`Config`; every problem is a :class:`ConfigError` that
    names ``where`` (the file), the key and what was expected."""
    raw = dict(raw)
    globus_raw = raw.pop("globus", {}) or {}
    recon_raw = raw.pop("recon", {}) or {}
    portal_raw = raw.pop("portal", {}) or {}
    beamline_raw = raw.pop("beamline", None)
    sections: list[tuple[str, Any]] = [
        ("globus", globus_raw),
        ("recon", recon_raw),
        ("portal", portal_raw),
    ]
    if beamline_raw is not None:
        sections.append(("beamline", beamline_raw))
    for section, table in sections:
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section} must be a table ([{section}]), not {table!r}")
    known = {f.name for f in dataclasses.fields(Config)} - {
        "recon",
        "globus",
        "portal",
        "beamline",
        "source",
    }
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
    for key, value in raw.items():
        _check_value(key, value, where)
    for key, value in globus_raw.items():
        _check_globus_value(key, value, where)
    for key, value in portal_raw.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: [portal] {key} = {_show(value)}: expected a string in quotes"
            )
    try:
        recon = ReconOptions.from_dict(recon_raw)
    except ValueError as err:
        raise ConfigError(f"{where}: [recon]: {err}") from err
    beamline = None
    if beamline_raw is not None:
        try:
            beamline = BeamlineSettings.from_dict(beamline_raw, where=f"{where}: [beamline]")
        except OptionsError as err:
            raise ConfigError(str(err)) from err
        if "view_glob" not in raw:  # the view of a beamline scan is its diffraction file
            raw["view_glob"] = beamline.diffraction_glob
    config = Config(
        **raw,
        beamline=beamline,
        recon=recon,
        globus=GlobusSettings(**globus_raw),
        portal=PortalSettings(**portal_raw),
    )
    check_globus_settings(config.globus, where)
    if "settle_seconds" in raw:
        config.settle_seconds = float(raw["settle_seconds"])
    return config


_URN_PREFIXES = ("urn:globus:auth:identity:", "urn:globus:groups:id:")


def check_globus_settings(settings: GlobusSettings, where: str = "config") -> None:
    """Check the [globus] ids and URN lists; a :class:`ConfigError` names the key."""
    for key in ("watcher_client_id", "subscription_id"):
        value = getattr(settings, key)
        if value and not _is_uuid(value):
            raise ConfigError(f"{where}: [globus] {key} = {value!r} is not a Globus id (a UUID)")
    for key in ("run_monitors", "run_managers", "flow_starters", "data_access_collections"):
        values = getattr(settings, key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: [globus] {key} must be a list of strings")
        for value in values:
            if key == "data_access_collections":
                if not _is_uuid(value):
                    raise ConfigError(
                        f"{where}: [globus] data_access_collections: {value!r} is not a "
                        "collection id (a UUID)"
                    )
            elif not value.startswith(_URN_PREFIXES):
                raise ConfigError(
                    f"{where}: [globus] {key}: {value!r} must be an identity or group URN "
                    "(urn:globus:auth:identity:<id> or urn:globus:groups:id:<id>)"
                )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def _check_value(key: str, value: Any, where: str) -> None:
    """Raise a ConfigError naming ``where`` and ``key`` unless ``value`` suits ``key``."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} = {_show(value)}: expected {expected}")

    if key in _PATH_KEYS:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise wrong('a path in quotes, e.g. "/data/beamline"')
    elif key == "backend":
        if value not in ("local", "globus"):
            raise wrong("'local' or 'globus'")
    elif key == "scan_pattern":
        if not isinstance(value, str) or not value:
            raise wrong("a regular expression in quotes, e.g. '(fly)?scan(\\d+)'")
        try:
            pattern = re.compile(value)
        except re.error as err:
            raise wrong(f"a regular expression ({err})") from err
        if pattern.groups < 1:
            raise wrong(
                "a regular expression whose last group captures the scan number, "
                "e.g. '(fly)?scan(\\d+)'"
            )
    elif key == "view_glob":
        if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
            raise wrong("a file name pattern in quotes, e.g. '*.cxi' (no folders)")
        if "**" in value:
            raise wrong(
                "a pattern for the file names in one scan folder, e.g. '*.cxi'; '**' "
                "(recursive) is refused: view files lie directly in the scan folder, and a "
                "recursive walk of a deep folder would stall the watcher"
            )
    elif key == "rerun_changed_views":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif key == "marker":
        if not isinstance(value, str) or "/" in value or value in (".", "..") or "\0" in value:
            raise wrong("a file name in quotes, e.g. 'scan.done', or '' for none")
    elif key == "settle_seconds":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise wrong("a number of seconds >= 0, e.g. 5")
    elif key == "concurrency" and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise wrong("a whole number >= 1, e.g. 64")


def _check_globus_value(key: str, value: Any, where: str) -> None:
    if key == "compute_retention_days":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(
                f"{where}: [globus] {key} = {_show(value)}: expected a number of days >= 0, e.g. 7"
            )
    elif key in ("run_monitors", "run_managers", "flow_starters", "data_access_collections"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{where}: [globus] {key} = {_show(value)}: expected a list of strings in "
                'quotes, e.g. ["urn:globus:auth:identity:..."]'
            )
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: [globus] {key} = {_show(value)}: expected a string in quotes")


def _show(value: Any) -> str:
    """A value as a config line shows it, shortened and without control characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except ValueError:
        text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_paths(config: Config, base: pathlib.Path) -> Config:
    """Make the config's relative paths absolute against ``base`` (in place; returned)."""
    for field in ("acquisition_root", "compute_root", "ledger", "state_dir", "endpoint_config"):
        value = getattr(config, field)
        if value is not None:
            value = pathlib.Path(value).expanduser()
            setattr(config, field, value if value.is_absolute() else (base / value).resolve())
    return config
