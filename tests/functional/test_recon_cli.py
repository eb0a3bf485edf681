"""``ptychoflow recon`` as a user runs it: a real process, real files."""

import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest

from recon.result import read_result
from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan100")
    return write_simulated_scan(folder, n_views=1, n_positions=64, detector=32, photons=1e5)[0]


def test_recon_writes_result_and_preview(view, tmp_path):
    out = tmp_path / "out" / "view000.h5"
    run = ptychoflow("recon", str(view), "-o", str(out), "--iterations", "5", "--devices", "2")
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "reconstructing" in run.stderr  # the progress bar
    result = read_result(out)
    assert result["object"].dtype == np.complex64 and result["object"].ndim == 2
    assert result["cost"].shape == (6,) and result["cost"][-1] < result["cost"][0]
    assert result["devices"] == [0, 1]
    assert result["options"]["iterations"] == 5
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_input_is_one_line_on_stderr_with_nonzero_exit(tmp_path):
    bad = tmp_path / "scan101" / "view000.cxi"
    bad.parent.mkdir()
    with h5py.File(bad, "w") as f:
        f["/entry_1/data_1/data"] = np.ones((4, 16, 16), np.float32)
    run = ptychoflow("recon", str(bad), "-o", str(tmp_path / "x.h5"), "--quiet")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "view000.cxi" in lines[0] and "translation" in lines[0]
    assert "Traceback" not in run.stderr

    missing = ptychoflow("recon", str(tmp_path / "nope.cxi"), "-o", str(tmp_path / "x.h5"))
    assert missing.returncode == 1 and "nope.cxi" in missing.stderr


def test_probe_modes_enter_at_modes_start(view, tmp_path):
    out = tmp_path / "modes.h5"
    args = ["--iterations", "4", "--probe-modes", "2", "--modes-start", "2", "--quiet"]
    run = ptychoflow("recon", str(view), "-o", str(out), *args)
    assert run.returncode == 0, run.stderr
    probe = read_result(out)["probe"]
    assert probe.shape[0] == 2
    power = np.sum(np.abs(probe) ** 2, axis=(-2, -1))
    assert power[0] > power[1] > 0
    bad = ptychoflow("recon", str(view), "-o", str(out), "--modes-start", "-1", "--quiet")
    assert bad.returncode != 0 and "modes_start" in bad.stderr


def test_unknown_option_value_is_rejected_by_the_parser(view, tmp_path):
    run = ptychoflow("recon", str(view), "-o", str(tmp_path / "x.h5"), "--cost", "l1")
    assert run.returncode == 2 and "invalid choice" in run.stderr


@pytest.mark.slow
def test_real_siemens_star_data_reconstructs(siemens_star_path, tmp_path):
    """The shared measured dataset: the cost falls steadily and the result is written."""
    from recon.api import reconstruct_file
    from recon.options import ReconOptions

    options = ReconOptions(iterations=40, backend="numpy")
    summary = reconstruct_file(siemens_star_path, tmp_path / "star.h5", options)
    result = read_result(summary["output"])
    cost = result["cost"]  # the Poisson cost, also while the staged start fits amplitudes
    switch = round(options.amplitude_start * options.iterations)
    assert cost[switch] < cost[0]
    assert np.all(np.diff(cost[switch:]) <= 0)  # never rises once Poisson is minimised
    assert cost[-1] < cost[0] / 5
    # The phase carries the star: strong contrast between spokes in the scanned area,
    # once the linear phase ramp (an ambiguity of the data) is removed (measured 1.10 rad).
    from recon.metrics import deramp_phase

    centre, _, _ = deramp_phase(result["object"][150:350, 150:350])
    assert np.ptp(np.percentile(np.angle(centre), [5, 95])) > 1.0


def test_preview_deramp_flag(view, tmp_path):
    pngs = []
    for flag in ("--preview-deramp", "--no-preview-deramp"):
        out = tmp_path / flag.strip("-") / "view000.h5"
        run = ptychoflow("recon", str(view), "-o", str(out), "--iterations", "3", "--quiet", flag)
        assert run.returncode == 0, run.stderr
        pngs.append(out.with_suffix(".png").read_bytes())
    assert pngs[0] != pngs[1]


# -- the output path: never the input, never a stranger's file, never *.tmp left ----------


def in_process(*args, capsys):
    """``ptychoflow ARGS`` in this process: (exit code, stderr)."""
    from flows.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in pathlib.Path(folder).rglob("*.tmp"))


@pytest.fixture
def raw_view(view, tmp_path):
    """A private copy of the simulated view named view000.h5 (an input suffix that is
    also a result suffix, so every output-path check is reachable)."""
    copy = tmp_path / "scan100" / "view000.h5"
    copy.parent.mkdir()
    shutil.copyfile(view, copy)
    return copy


def test_output_equal_to_the_input_is_refused_and_the_input_kept(view, tmp_path):
    """The reported case: ``recon v.cxi -o v.cxi`` replaced the raw data and exited 0."""
    raw = tmp_path / "v.cxi"
    shutil.copyfile(view, raw)
    before = digest(raw)
    run = ptychoflow("recon", str(raw), "-o", str(raw), "--iterations", "2", "--quiet")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and str(raw) in run.stderr
    assert digest(raw) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink"])
def test_every_name_of_the_input_is_refused(raw_view, tmp_path, monkeypatch, capsys, alias):
    before = digest(raw_view)
    monkeypatch.chdir(tmp_path)
    if alias == "same":
        output = str(raw_view)
    elif alias == "relative":
        output = "scan100/../scan100/./view000.h5"
    elif alias == "symlink":
        (tmp_path / "link.h5").symlink_to(raw_view)
        output = "link.h5"
    else:
        os.link(raw_view, tmp_path / "hard.h5")
        output = "hard.h5"
    code, err = in_process("recon", str(raw_view), "-o", output, "--iterations", "1",
                           "--quiet", capsys=capsys)  # fmt: skip
    assert code == 1
    assert "would overwrite the input" in err and "view000.h5" in err
    assert digest(raw_view) == before


def test_existing_file_that_is_not_a_result_is_kept(raw_view, tmp_path, capsys):
    notes = tmp_path / "notes.h5"
    with h5py.File(notes, "w") as f:
        f["beamtime/log"] = np.arange(5)
    before = digest(notes)
    code, err = in_process("recon", str(raw_view), "-o", str(notes), "--iterations", "1",
                           "--quiet", capsys=capsys)  # fmt: skip
    assert code == 1 and "is not a ptychoflow result" in err and str(notes) in err
    assert digest(notes) == before
    # A stranger's PNG where the preview would go is kept as well.
    photo = tmp_path / "fresh.png"
    photo.write_bytes(b"\x89PNG not ours")
    code, err = in_process("recon", str(raw_view), "-o", str(tmp_path / "fresh.h5"),
                           "--iterations", "1", "--quiet", capsys=capsys)  # fmt: skip
    assert code == 1 and "fresh.png" in err and "not the preview" in err
    assert photo.read_bytes() == b"\x89PNG not ours"


def test_a_previous_result_is_replaced_and_a_folder_gets_the_input_stem(raw_view, tmp_path, capsys):
    out = tmp_path / "results"
    code, err = in_process("recon", str(raw_view), "-o", f"{out}{os.sep}", "--iterations", "1",
                           "--quiet", capsys=capsys)  # fmt: skip
    assert code == 0, err
    first = read_result(out / "view000.h5")
    assert (out / "view000.png").is_file()
    # Again into the now existing folder: the earlier result (ours) is replaced.
    code, err = in_process("recon", str(raw_view), "-o", str(out), "--iterations", "2",
                           "--quiet", capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert read_result(out / "view000.h5")["iterations"] == 2 != first["iterations"]
    assert sorted(p.name for p in out.iterdir()) == ["view000.h5", "view000.png"]
    code, err = in_process("recon", str(raw_view), "-o", str(tmp_path / "x.cxi"),
                           "--quiet", capsys=capsys)  # fmt: skip
    assert code == 1 and "must end with .h5 or .hdf5" in err


def run_as_other_user_if_root(args, **kwargs):
    """Root writes into read-only folders: run as nobody then (files must be theirs)."""
    if os.geteuid() != 0:
        return subprocess.run(args, **kwargs)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be shown")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*drop, *args], **kwargs)


def test_read_only_output_folder_is_refused_before_the_solve(view, tmp_path_factory):
    shared = pathlib.Path(tempfile.mkdtemp(prefix="ptychoflow-ro-"))
    try:
        raw = shared / "view000.cxi"
        shutil.copyfile(view, raw)
        locked = shared / "recon" / "100"
        locked.mkdir(parents=True)
        if os.geteuid() == 0:
            for path in (shared, raw, locked.parent, locked):
                os.chown(path, 65534, 65534)
        locked.chmod(0o555)
        shared.chmod(0o755)
        run = run_as_other_user_if_root(
            [sys.executable, "-m", "flows.cli", "recon", str(raw), "-o", str(locked),
             "--iterations", "400"],
            capture_output=True, text=True, timeout=120, cwd=str(REPO),
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr
        assert str(locked) in run.stderr and "before reconstructing" in run.stderr
        assert "400/400" not in run.stderr  # refused before the first iteration
    finally:
        locked.chmod(0o755)
        shutil.rmtree(shared)


#: Runs ``ptychoflow recon`` and sends itself SIGTERM in the middle of writing the result.
TERMINATED_WHILE_WRITING = """
import os, signal, sys, time
import h5py
from flows.cli import main

create_dataset = h5py.Group.create_dataset

def create_then_terminate(self, name, *args, **kwargs):
    dataset = create_dataset(self, name, *args, **kwargs)
    if name == "positions":  # half the result is on disk
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    return dataset

h5py.Group.create_dataset = create_then_terminate
sys.exit(main(["recon", sys.argv[1], "-o", sys.argv[2], "--iterations", "1", "--quiet"]))
"""


def test_sigterm_while_writing_leaves_no_temporary_file(raw_view, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", TERMINATED_WHILE_WRITING, str(raw_view), str(out / "v.h5")],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )  # fmt: skip
    assert run.returncode == 130, (run.returncode, run.stderr)
    assert "interrupted" in run.stderr and "Traceback" not in run.stderr
    assert leftovers(tmp_path) == [] and not (out / "v.h5").exists()


@pytest.mark.parametrize("where", ["result", "preview"])
def test_keyboard_interrupt_mid_write_leaves_no_temporary_file(raw_view, tmp_path, monkeypatch,
                                                               where):  # fmt: skip
    import PIL.Image

    from recon.api import reconstruct_file
    from recon.options import ReconOptions

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "result":
        monkeypatch.setattr(h5py.Group, "create_dataset", interrupt)
    else:
        PIL.Image.init()  # the PNG writer runs once the file is open: interrupt it there
        monkeypatch.setitem(PIL.Image.SAVE, "PNG", interrupt)
    with pytest.raises(KeyboardInterrupt):
        reconstruct_file(raw_view, tmp_path / "out" / "v.h5",
                         ReconOptions(iterations=1, backend="numpy"))  # fmt: skip
    assert leftovers(tmp_path) == []


def test_results_are_no_more_permissive_than_the_input(raw_view, tmp_path):
    from recon.api import reconstruct_file
    from recon.options import ReconOptions

    options = ReconOptions(iterations=1, backend="numpy")
    for mode in (0o600, 0o640):
        raw_view.chmod(mode)
        summary = reconstruct_file(raw_view, f"{tmp_path}/out{mode:o}/", options)
        for produced in (summary["output"], summary["preview"]):
            assert stat.S_IMODE(os.stat(produced).st_mode) == mode & ~0o022, produced


# -- bad input: what it is, and how much memory it would need ----------------------------


def cxi_with(path, view, **changes):
    """A copy of ``view`` with datasets replaced: name -> array, or name -> callable(file)."""
    shutil.copyfile(view, path)
    with h5py.File(path, "r+") as f:
        for name, value in changes.items():
            del f[name]
            if callable(value):
                value(f, name)
            else:
                f[name] = value
    return path


TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
DATA = "/entry_1/data_1/data"


def test_translation_a_metre_off_is_refused_with_the_estimate(view, tmp_path, capsys):
    with h5py.File(view) as f:
        translation = f[TRANSLATION][()]
    translation[7, :2] += 1.0  # one position a metre away in x and in y
    bad = cxi_with(tmp_path / "view000.cxi", view, **{TRANSLATION: translation})
    code, err = in_process("recon", str(bad), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1, err
    assert "view000.cxi" in err and "needs about" in err and "TiB" in err
    assert "more than the limit of" in err and TRANSLATION in err


def test_sparse_391_gib_dataset_is_refused_before_reading(view, tmp_path, capsys):
    def sparse(f, name):  # declared (100000, 1024, 1024) float32, nothing allocated
        f.create_dataset(name, shape=(100_000, 1024, 1024), dtype="f4", chunks=(1, 1024, 1024))

    bad = cxi_with(tmp_path / "view000.cxi", view, **{DATA: sparse})
    with h5py.File(bad, "r+") as f:  # one position per declared pattern
        del f[TRANSLATION]
        f.create_dataset(TRANSLATION, data=np.zeros((100_000, 3)))
    assert bad.stat().st_size < 10_000_000
    code, err = in_process("recon", str(bad), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1, err
    assert "100000 patterns of 1024x1024" in err and "more than the limit" in err


def test_sparse_positions_are_not_read_when_the_patterns_alone_do_not_fit(view, tmp_path, capsys):
    """A billion declared patterns and a billion declared positions (24 GB if read)."""
    n = 10**9

    def sparse(f, name):
        f.create_dataset(name, shape=(n, 256, 256), dtype="u2", chunks=(1, 256, 256))

    def sparse_positions(f, name):
        f.create_dataset(name, shape=(n, 3), dtype="f8", chunks=(1024, 3))

    bad = cxi_with(tmp_path / "view000.cxi", view, **{DATA: sparse, TRANSLATION: sparse_positions})
    code, err = in_process("recon", str(bad), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1, err
    assert f"{n} patterns of 256x256" in err and "more than the limit" in err


def test_memory_limit_setting_is_named(view, tmp_path, capsys, monkeypatch):
    code, err = in_process("recon", str(view), "-o", str(tmp_path / "o.h5"), "--quiet",
                           "--memory-limit", "1MiB", capsys=capsys)  # fmt: skip
    assert code == 1 and "limit of 1.0 MiB" in err
    monkeypatch.setenv("PTYCHOFLOW_MEMORY_LIMIT", "2MiB")
    code, err = in_process("recon", str(view), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1 and "PTYCHOFLOW_MEMORY_LIMIT=2MiB" in err
    monkeypatch.setenv("PTYCHOFLOW_MEMORY_LIMIT", "lots")
    code, err = in_process("recon", str(view), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1 and "PTYCHOFLOW_MEMORY_LIMIT='lots' is not a size" in err


def test_folder_and_fifo_inputs_say_what_they_are(tmp_path):
    folder = tmp_path / "view000.cxi"
    folder.mkdir()
    fifo = tmp_path / "view001.cxi"
    os.mkfifo(fifo)
    for path, what in ((folder, "is a folder"), (fifo, "is a FIFO")):
        run = ptychoflow("recon", str(path), "-o", str(tmp_path / "o.h5"), "--quiet", timeout=60)
        assert run.returncode == 1, run.stderr
        assert f"{path}: {what}" in run.stderr and "Traceback" not in run.stderr


def test_all_zero_counts_are_refused(view, tmp_path, capsys):
    with h5py.File(view) as f:
        shape = f[DATA].shape
    bad = cxi_with(tmp_path / "view000.cxi", view, **{DATA: np.zeros(shape, np.float32)})
    code, err = in_process("recon", str(bad), "-o", str(tmp_path / "o.h5"), "--quiet",
                           capsys=capsys)  # fmt: skip
    assert code == 1
    assert "view000.cxi" in err and "no positive counts" in err
    assert not (tmp_path / "o.h5").exists()
