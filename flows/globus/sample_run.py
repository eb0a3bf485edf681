"""``ptychoflow check --sample-run``: one tiny view through the real deployed flow.

``check`` shows that each service answers; this shows that the path works, as the
watcher's identity, end to end:

1. a tiny view is simulated (:func:`recon.simulate.write_simulated_scan`) into a
   folder of its own under the acquisition root, i.e. onto the acquisition collection;
2. the compute-side folders are made and the deployed flow is started on it through
   the backend (the same :class:`~flows.backend.Backend` calls the watcher makes);
3. the run is followed until it ends (polled every ``poll_interval_s``);
4. the result file that came back is read as ours (:func:`recon.result.read_result`):
   finite, with the expected shapes; the run's per-stage times are there;
5. the worker's report (uid, the GPU it was given, CuPy and driver versions, the
   backend the solver used) is checked: with ``require_gpu``, a sample that ran on
   NumPy or without a GPU fails, and says so;
6. everything it made is removed: the local sample folder and result, and the
   compute-side copies (``remove_compute_copies``: a Transfer delete task on Globus).

Each step is a :class:`~flows.globus.check.CheckLine`; nothing raises for a broken
deployment.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from flows.backend import STAGES, Backend, RunProgress, RunStatus, ViewRequest
from flows.config import Config
from flows.globus.check import CheckLine

#: The tiny view: small enough to reconstruct in seconds on one GPU (or a CPU).
SAMPLE_DETECTOR = 32
SAMPLE_POSITIONS = 36
SAMPLE_ITERATIONS = 10
#: Backends that count as "ran on a GPU" in the result summary.
GPU_BACKENDS = ("cupy",)


class SampleRun:
    """Runs the sample through ``backend`` (see the module docstring).

    ``remove_compute_copies(scan_dir)`` removes ``input/<scan_dir>`` and
    ``recon/<scan_dir>`` on the compute side. ``require_gpu``: the worker must have
    used CuPy on a GPU (True for Polaris; the local backend runs on the CPU).
    """

    def __init__(
        self,
        config: Config,
        backend: Backend,
        *,
        remove_compute_copies: Callable[[str], str | None],
        require_gpu: bool,
        timeout_s: float = 3600.0,
        poll_interval_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backend = backend
        self.remove_compute_copies = remove_compute_copies
        self.require_gpu = require_gpu
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock
        token = uuid.uuid4().hex[:10]
        self.scan_folder = f"ptychoflow-sample-{token}"
        self.folder = config.acquisition_root / self.scan_folder
        self.results = config.acquisition_root / "recon" / self.scan_folder
        self.request = ViewRequest(
            scan_id=0,
            view_file="view000.cxi",
            scan_folder=self.scan_folder,
            recon=config.recon.replace(iterations=SAMPLE_ITERATIONS).to_dict(),
            scan_dir=self.scan_folder,
        )
        self.prepared = False

    def run(self) -> list[CheckLine]:
        lines: list[CheckLine] = []
        try:
            lines.append(self._write_sample())
            if lines[-1].ok:
                line, progress = self._run_flow()
                lines.append(line)
                if progress is not None:
                    lines.append(self._check_result(progress))
                    lines.append(self._check_stage_times(progress))
                    lines.append(self._check_worker(progress.output or {}))
        finally:
            lines.append(self._clean_up())
        return lines

    # -- the steps ---------------------------------------------------------------------

    def _write_sample(self) -> CheckLine:
        from recon.simulate import write_simulated_scan

        name = "sample view on the acquisition collection"
        try:
            (path,) = write_simulated_scan(
                self.folder,
                n_views=1,
                detector=SAMPLE_DETECTOR,
                n_positions=SAMPLE_POSITIONS,
                photons=1e6,
                seed=7,
            )
        except OSError as err:
            return CheckLine(
                name, False, f"cannot write under {self.config.acquisition_root}: {err}"
            )
        return CheckLine(name, True, str(path))

    def _run_flow(self) -> tuple[CheckLine, RunProgress | None]:
        name = "sample run of the deployed flow"
        try:
            self.prepared = True
            self.backend.prepare_scan(self.scan_folder)
            started = self.backend.start_view(self.request)
        except Exception as err:
            return CheckLine(name, False, f"could not start it: {_text(err)}"), None
        where = started.web_url or started.run_id
        deadline = self._clock() + self.timeout_s
        progress: RunProgress | None = None
        while True:
            try:
                progress = self.backend.poll(started.run_id)
            except Exception as err:  # transient or not: said, and waited on
                progress = RunProgress(RunStatus.UNKNOWN, error=_text(err))
            if progress.status.terminal:
                break
            if self._clock() >= deadline:
                state = progress.status.value + (f" ({progress.error})" if progress.error else "")
                return (
                    CheckLine(
                        name,
                        False,
                        f"run {where} still {state} after {self.timeout_s:g} s (a PBS queue "
                        "wait? `qstat -u $USER` on the login node); it was left running",
                    ),
                    None,
                )
            self._sleep(self.poll_interval_s)
        if progress.status is not RunStatus.SUCCEEDED:
            return CheckLine(
                name, False, f"run {where} {progress.status.value}: {progress.error}"
            ), None
        return CheckLine(name, True, f"run {where} succeeded"), progress

    def _check_result(self, progress: RunProgress) -> CheckLine:
        import numpy as np

        from recon.errors import InputError, InputFileNotFound
        from recon.result import read_result

        name = "sample result came back"
        path = self.results / f"{self.request.view}.h5"
        try:
            result = read_result(path)
        except (InputError, InputFileNotFound) as err:
            return CheckLine(name, False, f"{err} (TransferOut brought back no result of ours)")
        truth = np.load(self.folder / "truth" / "view000.npz")
        problems = []
        obj = result["object"]
        probe = result["probe"]
        if obj.ndim != 2 or any(
            a < b for a, b in zip(obj.shape, truth["object"].shape, strict=True)
        ):
            problems.append(
                f"object shape {obj.shape}, expected 2D and at least {truth['object'].shape}"
            )
        if probe.shape[-2:] != (SAMPLE_DETECTOR, SAMPLE_DETECTOR):
            problems.append(
                f"probe shape {probe.shape}, expected (..., {SAMPLE_DETECTOR}, {SAMPLE_DETECTOR})"
            )
        for label, array in (("object", obj), ("probe", probe), ("cost", result["cost"])):
            if not np.all(np.isfinite(array)):
                problems.append(f"{label} has non-finite values")
        if not (self.results / f"{self.request.view}.png").is_file():
            problems.append("no preview PNG beside it")
        if problems:
            return CheckLine(name, False, f"{path}: " + "; ".join(problems))
        return CheckLine(
            name,
            True,
            f"{path}: object {obj.shape}, probe {probe.shape}, final cost "
            f"{float(result['cost'][-1]):.4g}",
        )

    def _check_stage_times(self, progress: RunProgress) -> CheckLine:
        name = "per-stage times"
        seconds = progress.stage_seconds
        missing = [stage for stage in STAGES if stage not in seconds]
        shown = ", ".join(f"{stage} {seconds[stage]:.1f} s" for stage in STAGES if stage in seconds)
        if missing:
            return CheckLine(name, False, f"no time for {', '.join(missing)} ({shown or 'none'})")
        if not all(math.isfinite(seconds[stage]) and seconds[stage] >= 0 for stage in STAGES):
            return CheckLine(name, False, f"implausible times: {shown}")
        return CheckLine(name, True, shown)

    def _check_worker(self, output: dict[str, Any]) -> CheckLine:
        name = "worker identity, GPU and backend"
        worker = output.get("worker")
        if not isinstance(worker, dict):
            return CheckLine(
                name,
                False,
                "the result summary has no worker report: the endpoint runs an older "
                "ptychoflow; install this version there and restart the endpoint",
            )
        backend = str(output.get("backend", "?"))
        gpus = output.get("gpus") or []
        detail = (
            f"uid {worker.get('uid')} ({worker.get('user')}), "
            f"CUDA_VISIBLE_DEVICES={worker.get('cuda_visible_devices')}, GPUs claimed {gpus}, "
            f"CuPy {worker.get('cupy_version')}, CUDA driver {worker.get('cuda_driver_version')}, "
            f"backend {backend}, on {output.get('host', '?')}"
        )
        if self.require_gpu:
            if backend not in GPU_BACKENDS:
                why = worker.get("cupy_error") or "CuPy was not used"
                return CheckLine(
                    name,
                    False,
                    f"the sample fell back to {backend}, not a GPU ({why}): install CuPy in "
                    f"the environment worker_init activates, on a GPU node; {detail}",
                )
            if not gpus or not worker.get("cuda_visible_devices"):
                return CheckLine(name, False, f"the sample ran without a GPU assigned; {detail}")
        return CheckLine(name, True, detail)

    def _clean_up(self) -> CheckLine:
        name = "sample removed"
        problems = []
        for path in (self.folder, self.results):
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"could not remove {path}")
        if self.prepared:
            try:
                note = self.remove_compute_copies(self.scan_folder)
            except Exception as err:
                problems.append(f"compute-side copies: {_text(err)}")
            else:
                if note:
                    problems.append(note)
        if problems:
            return CheckLine(name, False, "; ".join(problems) + " (remove them by hand)")
        return CheckLine(name, True, f"{self.scan_folder} on both sides")


def _text(err: BaseException) -> str:
    from flows.launcher import describe_error

    return describe_error(err)
