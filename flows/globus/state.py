"""The deployment state: which flow and compute function this installation deployed.

One JSON file, ``<state_dir>/deployment.json``, readable by the owner only::

    {"flow_id": "...", "flow_hash": "sha256...", "function_id": "...",
     "function_hash": "sha256...", "compute_endpoint": "...", "deployed_at": "2025-..."}

``ptychoflow deploy`` writes it; the Globus backend reads the flow id from it.
Writes are atomic (a temporary file in the same folder, then ``os.replace``), so
a crash mid-write leaves the previous state intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any

from flows.errors import ConfigError

STATE_FILE_NAME = "deployment.json"


@dataclasses.dataclass
class DeploymentState:
    """IDs and content hashes of what ``ptychoflow deploy`` created; all empty before."""

    flow_id: str | None = None
    flow_hash: str | None = None
    """sha256 of the canonical JSON of definition, input schema and title."""
    function_id: str | None = None
    function_hash: str | None = None
    """sha256 of the compute function's source text."""
    identity_function_id: str | None = None
    """``functions.code_identity.endpoint_identity``: the tiny task ``ptychoflow check`` runs."""
    identity_function_hash: str | None = None
    compute_endpoint: str | None = None
    """Globus Compute endpoint the flow input sends tasks to."""
    deployed_at: str | None = None
    """ISO 8601 UTC time of the last deploy that changed something."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "deployment state") -> DeploymentState:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        for key, value in raw.items():
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return cls(**raw)


def state_path(state_dir: pathlib.Path | str) -> pathlib.Path:
    return pathlib.Path(state_dir) / STATE_FILE_NAME


def ensure_private_dir(directory: pathlib.Path | str) -> pathlib.Path:
    """Create ``directory`` 0700 if needed, or check an existing one is this account's
    and writable by nobody else (:mod:`flows.private_folders`; never chmodded)."""
    from flows.private_folders import ensure_private_dir as ensure

    return ensure(directory)


def load_state(state_dir: pathlib.Path | str) -> DeploymentState:
    """The saved state, or an empty one when nothing was deployed from this installation."""
    path = state_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DeploymentState()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}: deployment state is not valid JSON ({err}); "
            "fix or delete it and run `ptychoflow deploy` again"
        ) from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: deployment state must be a JSON object")
    return DeploymentState.from_dict(raw, where=str(path))


def save_state(state_dir: pathlib.Path | str, state: DeploymentState) -> pathlib.Path:
    """Write ``state`` atomically with mode 0600; returns the file's path."""
    directory = ensure_private_dir(state_dir)
    path = state_path(directory)
    # mkstemp creates the file with mode 0600 whatever the umask is.
    handle, temporary = tempfile.mkstemp(prefix=".deployment-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(state.to_dict(), stream, indent=2, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    return path
