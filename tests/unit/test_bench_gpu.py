"""bench/gpu.py, the one prepared script for a GPU machine, checked here without a GPU
(``--dry-run``: every part on small views, the GPU's algorithmic path on NumPy), so that
the short GPU time is never lost to a bug in the script itself. Its first dry run found
two: the NumPy-CuPy table raised on the phase SSIM of a one-iteration object (and so was
lost), and the largest view let the solver size itself from all the free memory instead of
the limit the script had sized the view to."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_part_of_the_gpu_benchmark_runs_on_numpy(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(out.read_text())
    assert numbers["dry_run"] is True
    assert "tests" not in numbers  # every gpu test would skip without CuPy
    for part in ("speed", "differences", "kernels", "largest"):
        assert "error" not in numbers[part], numbers[part]

    speed = numbers["speed"]
    # two simulated views, three variants each, plus the unfused A/B on the first
    assert len(speed) == 7, [(r["view"], r["variant"]) for r in speed]
    assert all(r["ms_per_iteration"] > 0 and r["peak_bytes"] > 0 for r in speed)

    # the GPU's path on NumPy against the CPU path: the same float32 arithmetic
    differences = numbers["differences"]
    assert len(differences) == 12
    for row in differences:
        assert row["object"] < 1e-5 and row["probe"] < 1e-5, row

    largest = numbers["largest"]
    # sized down to the "free memory", and run under that limit: the estimate holds its peak
    assert not largest["fits_whole_view"] and largest["patterns"] < 1024, largest
    assert largest["peak_bytes"] <= largest["estimate_bytes"], largest
