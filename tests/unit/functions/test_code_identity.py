"""Code identity: the version and source hash an endpoint reports, and what check compares."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys

from flows.globus.check import code_mismatch
from functions.code_identity import code_hash, code_identity, endpoint_identity, roots_cover
from functions.reconstruct import reconstruct_view
from tests.unit.functions.test_reconstruct_function import write_cxi


def _copy_packages(destination: pathlib.Path) -> None:
    for package in ("functions", "recon"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        source = pathlib.Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, destination / package, ignore=shutil.ignore_patterns("*.pyc"))


def _hash_in(root: pathlib.Path) -> str:
    """code_hash of the packages under ``root`` (as another installation would compute it)."""
    saved = {
        name: sys.modules.pop(name) for name in list(sys.modules) if name in ("functions", "recon")
    }
    sys.path.insert(0, str(root))
    try:
        return code_hash()
    finally:
        sys.path.remove(str(root))
        for name in ("functions", "recon"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_same_source_elsewhere_same_hash_and_one_edit_changes_it(tmp_path):
    _copy_packages(tmp_path / "a")
    local = code_hash()
    assert _hash_in(tmp_path / "a") == local, "the install location does not matter"
    (tmp_path / "a" / "recon" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "a" / "recon" / "__pycache__" / "x.py").write_text("ignored")
    assert _hash_in(tmp_path / "a") == local, "__pycache__ is not source"
    solver = tmp_path / "a" / "recon" / "solver.py"
    solver.write_text(solver.read_text() + "\n# edited on the cluster\n")
    assert _hash_in(tmp_path / "a") != local


def test_endpoint_identity_reports_allowed_roots(monkeypatch):
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", "/eagle/p:/grand/q")
    answer = endpoint_identity()
    assert answer["allowed_roots"] == ["/eagle/p", "/grand/q"]
    assert answer["code_hash"] == code_hash()
    assert roots_cover(answer["allowed_roots"], "/eagle/p/ptycho")
    assert not roots_cover(answer["allowed_roots"], "/eagle/pt")
    assert not roots_cover(answer["allowed_roots"], "/eagle/p/../x")
    monkeypatch.delenv("PTYCHOFLOW_ALLOWED_ROOTS")
    assert endpoint_identity()["allowed_roots"] == []


def test_the_reconstruction_summary_carries_version_and_code_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(tmp_path))
    view = write_cxi(tmp_path / "input" / "100" / "view003.cxi", n_side=3, det=16)
    summary = reconstruct_view(view, str(tmp_path / "out"), recon={"iterations": 1})
    identity = code_identity()
    assert summary["ptychoflow_version"] == identity["ptychoflow_version"]
    assert summary["code_hash"] == identity["code_hash"]
    assert code_mismatch(summary, identity) is None
    other = {**identity, "code_hash": "sha256:0"}
    assert "sha256:0" in (code_mismatch(summary, other) or "")
