"""The packaging lists every folder that ships files, so setuptools prints no "Package
would be ignored" and the installed package holds its data (templates, static files,
endpoint configurations)."""

from __future__ import annotations

import importlib.resources
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _shipped_folders() -> set[str]:
    """Dotted names of every folder below the packages that holds a file."""
    settings = _setuptools()
    renamed = {folder: name for name, folder in settings.get("package-dir", {}).items()}
    names = set()
    for top in ("recon", "functions", "flows", "watcher", "portal", "endpoint_config"):
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(f.is_file() for f in folder.iterdir()):
                continue
            parts = folder.relative_to(ROOT).parts
            head = renamed.get(parts[0], parts[0])
            names.add(".".join((head, *parts[1:])))
    return names


def test_every_folder_with_files_is_a_listed_package() -> None:
    missing = _shipped_folders() - set(_setuptools()["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_endpoint_configs_are_readable_as_package_data() -> None:
    folder = importlib.resources.files("flows.endpoint_config")
    for site in ("local", "polaris"):
        assert (folder / site / "config.yaml").is_file()
        assert (folder / site / "user_config_template.yaml.j2").is_file()
