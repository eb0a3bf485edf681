"""The flow's data files and the flow input for one view.

``definition.json`` and ``input_schema.json`` are packaged data (see
``[tool.setuptools.package-data]``); both backends load them from here, so the
Globus flow and the local interpreter run the same definition. The flow input
is the run's initial state document: :func:`build_flow_input` makes it from a
:class:`~flows.backend.ViewRequest` and the installation's collection and
endpoint IDs, :func:`validate_flow_input` checks it against the input schema.
"""

from __future__ import annotations

import json
import posixpath
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from flows.backend import ViewRequest
from flows.errors import ConfigError
from recon.options import ReconOptions

#: Action URLs the definition uses; the local backend maps each to a local action.
TRANSFER_ACTION_URL = "https://transfer.actions.globus.org/transfer"
COMPUTE_ACTION_URL = "https://compute.actions.globus.org/v3"

#: Which backend stage (``flows.backend.STAGES``) each action state of the definition is.
STAGE_OF_STATE = {
    "TransferIn": "transfer_in",
    "Reconstruct": "compute",
    "TransferOut": "transfer_out",
}

#: Suffixes of the files the compute function writes for a view named ``view003``.
RESULT_SUFFIX = ".h5"
PREVIEW_SUFFIX = ".png"


def _load_packaged_json(name: str) -> dict[str, Any]:
    text = resources.files("flows").joinpath(name).read_text(encoding="utf-8")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"flows/{name}: not valid JSON: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"flows/{name}: expected a JSON object")
    return loaded


def load_definition() -> dict[str, Any]:
    """The flow definition (a fresh copy each call; callers may modify it)."""
    return _load_packaged_json("definition.json")


def load_input_schema() -> dict[str, Any]:
    """The flow's input schema (JSON Schema 2020-12; a fresh copy each call)."""
    return _load_packaged_json("input_schema.json")


def build_flow_input(
    request: ViewRequest,
    *,
    acquisition_collection: str,
    acquisition_base: str,
    compute_collection: str,
    compute_base: str,
    compute_endpoint: str,
    function_id: str,
    compute_root_on_endpoint: str,
) -> dict[str, Any]:
    """The initial state document of one view's run, validated against the input schema.

    Collection paths (``*_base``) are as the Globus collections see them
    (absolute, ``/`` for the collection root); ``compute_root_on_endpoint`` is
    the same compute root as a filesystem path on the cluster's nodes.

    The compute-side folder is ``request.compute_dir`` (the scan id, or the scan
    folder's name when another folder has that id). For ``scan100/view003.cxi`` with
    ``acquisition_base="/data"`` and ``compute_base="/ptycho"`` the transfers are
    ``/data/scan100/view003.cxi ->
    /ptycho/input/100/view003.cxi`` and ``/ptycho/recon/100/view003.{h5,png} ->
    /data/recon/100/view003.{h5,png}``.

    Raises :class:`~recon.errors.OptionsError` for bad ``request.recon`` and
    :class:`~recon.errors.ConfigError` when the result does not fit the schema.
    """
    view_name = PurePosixPath(request.view_file).stem
    if not view_name or "/" in request.view_file:
        raise ConfigError(
            f"view_file {request.view_file!r} must be a plain file name inside the scan folder"
        )
    scan = request.compute_dir
    recon = ReconOptions.from_dict(request.recon).to_dict()
    for name in request.files:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts:
            raise ConfigError(f"file {name!r} must be a relative path inside the scan folder")
    acquisition_recon = posixpath.join(acquisition_base, "recon", scan)
    compute_recon = posixpath.join(compute_base, "recon", scan)
    flow_input: dict[str, Any] = {
        "label": f"ptychoflow {request.label}",
        "acquisition": {
            "collection_id": acquisition_collection,
            "view_path": posixpath.join(acquisition_base, request.scan_folder, request.view_file),
            "result_path": posixpath.join(acquisition_recon, view_name + RESULT_SUFFIX),
            "preview_path": posixpath.join(acquisition_recon, view_name + PREVIEW_SUFFIX),
        },
        "compute_storage": {
            "collection_id": compute_collection,
            "view_path": posixpath.join(compute_base, "input", scan, request.view_file),
            "result_path": posixpath.join(compute_recon, view_name + RESULT_SUFFIX),
            "preview_path": posixpath.join(compute_recon, view_name + PREVIEW_SUFFIX),
        },
        "compute_function": {
            "endpoint_id": compute_endpoint,
            "function_id": function_id,
            "input_path": posixpath.join(
                compute_root_on_endpoint, "input", scan, request.view_file
            ),
            "output_dir": posixpath.join(compute_root_on_endpoint, "recon", scan),
            "view_name": view_name,
        },
        "recon": recon,
        "beamline": dict(request.beamline),
    }
    # The view, then the files a beamline reader needs beside it, each to the same place
    # under input/<id>/ (so the master file's relative links resolve there too).
    flow_input["transfer_in"] = [
        {
            "source_path": flow_input["acquisition"]["view_path"],
            "destination_path": flow_input["compute_storage"]["view_path"],
            "recursive": False,
        }
    ] + [
        {
            "source_path": posixpath.join(acquisition_base, request.scan_folder, name),
            "destination_path": posixpath.join(compute_base, "input", scan, name),
            "recursive": False,
        }
        for name in request.files
    ]
    validate_flow_input(flow_input)
    return flow_input


def validate_flow_input(flow_input: Any) -> None:
    """Check ``flow_input`` against the input schema.

    Raises :class:`~recon.errors.ConfigError` naming the JSON path of the first
    problem (in document order), e.g. ``flow input $.recon.iterations: 0 is
    less than the minimum of 1``.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_input_schema())
    errors = sorted(validator.iter_errors(flow_input), key=lambda e: [str(p) for p in e.path])
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"flow input {first.json_path}: {first.message}{more}")
