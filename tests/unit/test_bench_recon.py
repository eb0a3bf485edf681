"""bench/recon.py's command line: the options of issue 18's Pty-chi comparison."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_recon():
    sys.path.insert(0, str(BENCH))  # the script imports bench/tables.py beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_recon_script", BENCH / "recon.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    yield module
    sys.modules.pop(spec.name, None)


def test_ours_also_reads_option_values_as_literals(bench_recon):
    assert bench_recon._overrides("coarse_levels=1") == {"coarse_levels": 1}
    assert bench_recon._overrides("coarse_levels=1, refine_positions=False") == {
        "coarse_levels": 1,
        "refine_positions": False,
    }


@pytest.mark.parametrize("text", ["coarse_level=1", "coarse_levels", "iterations 3"])
def test_ours_also_refuses_what_is_not_an_option(bench_recon, text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench_recon._overrides(text)


def test_each_positions_key_names_one_kind_at_both_seeds(bench_recon):
    keys = ["positions-1.5", "positions-2.5", "positions-1.5-affine", "positions-2.5-affine"]
    names = [bench_recon.CASE_KEYS[key] for key in keys]
    assert all(len(group) == 2 for group in names)
    assert sorted(n for group in names for n in group) == sorted(
        bench_recon.CASE_KEYS["positions-far"]
    )
