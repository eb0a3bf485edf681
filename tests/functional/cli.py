"""Run the ``ptychoflow`` command as a user would: a separate process."""

import subprocess
import sys


def ptychoflow(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
