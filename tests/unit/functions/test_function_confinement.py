"""reconstruct_view reads and writes only under PTYCHOFLOW_ALLOWED_ROOTS (issue 7, item 7).

Whoever can start a run chooses the paths; these tests play that person. A refused
path must tell them nothing about the file system outside the roots.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest

from functions.allowed_roots import AllowedRootsNotSetError, PathNotAllowedError, allowed_roots
from functions.reconstruct import reconstruct_view
from recon.errors import OutputNotWritableError, OutputPathError, PtychoflowError
from tests.unit.functions.test_reconstruct_function import write_cxi

REPO = pathlib.Path(__file__).resolve().parents[3]
CPU = {"iterations": 1, "backend": "numpy"}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A compute root (the only allowed root) with one view, and a folder outside it."""
    root = tmp_path / "compute"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    view = pathlib.Path(write_cxi(root / "input" / "100" / "view003.cxi"))
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(root))
    return root, outside, view


def digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refusal(input_path, output_dir, **kwargs) -> str:
    with pytest.raises(PathNotAllowedError) as info:
        reconstruct_view(str(input_path), str(output_dir), recon=CPU, **kwargs)
    assert isinstance(info.value, PtychoflowError) and isinstance(info.value, PermissionError)
    return str(info.value)


def test_unset_variable_refuses_and_says_where_to_set_it(site, monkeypatch):
    root, _, view = site
    for unset in (None, "", os.pathsep):
        if unset is None:
            monkeypatch.delenv("PTYCHOFLOW_ALLOWED_ROOTS")
        else:
            monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", unset)
        with pytest.raises(AllowedRootsNotSetError) as info:
            reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU)
        message = str(info.value)
        assert "PTYCHOFLOW_ALLOWED_ROOTS is not set" in message
        assert "user_config_template.yaml.j2" in message and "local backend" in message
    assert not (root / "recon").exists()
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", "relative/root")
    with pytest.raises(AllowedRootsNotSetError, match="relative path 'relative/root'"):
        allowed_roots()


def test_input_inside_the_root_runs(site):
    root, _, view = site
    summary = reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU)
    assert summary["output"] == str(root / "recon" / "100" / "view003.h5")
    assert os.path.isfile(summary["output"])


def test_outside_input_same_message_whether_it_exists_or_not(site):
    root, outside, _ = site
    secret = outside / "secret.h5"
    missing_message = refusal(secret, root / "recon" / "100")
    write_cxi(secret)  # now a readable HDF5 file the endpoint account could read
    existing_message = refusal(secret, root / "recon" / "100")
    assert missing_message == existing_message
    assert "'" + str(secret) + "'" in existing_message and str(root) in existing_message
    assert not (root / "recon").exists()


def test_symlink_out_of_the_root_is_refused_like_any_outside_path(site):
    root, outside, _ = site
    link = root / "input" / "100" / "view004.cxi"
    target = outside / "view.cxi"
    link.symlink_to(target)
    dangling = refusal(link, root / "recon" / "100")  # the target does not exist yet
    write_cxi(target)
    pointing = refusal(link, root / "recon" / "100")
    assert dangling == pointing
    assert str(target) not in pointing  # where the link points is not revealed
    # A folder link: input/200 -> elsewhere.
    (root / "input" / "200").symlink_to(outside, target_is_directory=True)
    refusal(root / "input" / "200" / "view.cxi", root / "recon" / "200")


def test_dot_dot_is_resolved(site):
    root, outside, view = site
    write_cxi(outside / "view003.cxi")
    escape = root / "input" / ".." / ".." / "elsewhere" / "view003.cxi"
    refusal(escape, root / "recon" / "100")
    # Staying inside through ".." is fine.
    roundabout = root / "recon" / ".." / "input" / "100" / "view003.cxi"
    summary = reconstruct_view(str(roundabout), str(root / "recon" / "100"), recon=CPU)
    assert summary["input"] == str(view)


def test_output_folder_outside_is_not_created(site):
    root, outside, view = site
    target = outside / "made" / "by" / "a" / "run"
    refusal(view, target)
    assert not (outside / "made").exists()
    (root / "recon").mkdir()
    (root / "recon" / "300").symlink_to(outside, target_is_directory=True)
    refusal(view, root / "recon" / "300")
    (root / "recon" / "100").mkdir()
    (root / "recon" / "100" / "view003.h5").symlink_to(outside / "planted.h5")
    refusal(view, root / "recon" / "100")
    assert list(outside.iterdir()) == []  # nothing created or written outside


def test_several_roots(site, monkeypatch, tmp_path):
    root, _, view = site
    results = tmp_path / "results"
    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", os.pathsep.join([str(root), str(results)]))
    summary = reconstruct_view(str(view), str(results / "100"), recon=CPU)
    assert summary["output"] == str(results / "100" / "view003.h5")


def test_never_writes_over_the_input_or_a_strangers_file(site):
    root, _, view = site
    # The run's output folder is the input's folder and the view name is the input's stem.
    raw = root / "input" / "100" / "view005.h5"
    shutil.copyfile(view, raw)
    before = digest(raw)
    with pytest.raises(OutputPathError, match="would overwrite the input"):
        reconstruct_view(str(raw), str(raw.parent), recon=CPU)
    assert digest(raw) == before
    # Someone's file where the result would go.
    notes = root / "recon" / "100" / "view003.h5"
    notes.parent.mkdir(parents=True)
    with h5py.File(notes, "w") as f:
        f["notes"] = np.arange(3)
    before = digest(notes)
    with pytest.raises(OutputPathError, match="is not a ptychoflow result"):
        reconstruct_view(str(view), str(notes.parent), recon=CPU)
    assert digest(notes) == before


#: Runs reconstruct_view; prints the error's class and message, or "ran" if it returned.
CALL = """
import sys, time
from functions.reconstruct import reconstruct_view
started = time.monotonic()
try:
    reconstruct_view(sys.argv[1], sys.argv[2], recon={"iterations": 300, "backend": "numpy"})
    print("ran")
except Exception as err:
    print(type(err).__name__, err, f"after {time.monotonic() - started:.1f} s")
"""


def test_read_only_output_folder_is_found_before_the_reconstruction(tmp_path):
    """``compute/recon/<id>`` read-only: the function says so at once (run as another uid
    where this test runs as root, since root writes into read-only folders)."""
    shared = pathlib.Path(tempfile.mkdtemp(prefix="ptychoflow-ro-"))
    try:
        root = shared / "compute"
        view = pathlib.Path(write_cxi(root / "input" / "100" / "view003.cxi"))
        locked = root / "recon" / "100"
        locked.mkdir(parents=True)
        command = [sys.executable, "-c", CALL, str(view), str(locked)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("root without setpriv: a read-only folder cannot be shown")
            for folder, _, files in os.walk(shared):
                for name in [folder, *(os.path.join(folder, f) for f in files)]:
                    os.chown(name, 65534, 65534)
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        shared.chmod(0o755)
        locked.chmod(0o555)
        env = {**os.environ, "PTYCHOFLOW_ALLOWED_ROOTS": str(root), "PYTHONPATH": str(REPO)}
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(OutputNotWritableError.__name__), run.stdout + run.stderr
        assert str(locked) in run.stdout and "before reconstructing" in run.stdout
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_gpu_lock_path_outside_the_roots_is_refused(site, monkeypatch):
    """The function's gpu_lock_path argument cannot make it create a file anywhere."""
    root, outside, view = site
    target = outside / "authorized_keys"
    with pytest.raises(PathNotAllowedError, match="GPU lock file"):
        reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU,
                         gpu_lock_path=str(target))  # fmt: skip
    assert not target.exists()
    # The endpoint's own setting is trusted: the operator chose it.
    monkeypatch.setenv("PTYCHOFLOW_GPU_LOCK", str(outside / "availgpus"))
    summary = reconstruct_view(str(view), str(root / "recon" / "100"), recon=CPU,
                               gpu_lock_path=str(outside / "availgpus"))  # fmt: skip
    assert summary["gpus"] == []


# -- write races: folders opened once, used through their descriptors (issue 16, item 2) --


def swap_during_solve(monkeypatch, swap):
    """Run ``swap()`` between the checks and the writes: when the solver starts."""
    import recon.api

    real_solver = recon.api.reconstruct

    def solver(*args, **kwargs):
        swap()
        return real_solver(*args, **kwargs)

    monkeypatch.setattr(recon.api, "reconstruct", solver)


def test_output_folder_swapped_for_a_link_during_the_solve_changes_nothing(site, monkeypatch):
    root, outside, view = site
    out = root / "recon" / "100"
    out.mkdir(parents=True)
    moved = root / "recon" / "moved"

    def swap():
        out.rename(moved)
        out.symlink_to(outside, target_is_directory=True)

    swap_during_solve(monkeypatch, swap)
    summary = reconstruct_view(str(view), str(out), recon=CPU)
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert sorted(p.name for p in moved.iterdir()) == ["view003.h5", "view003.png"]
    assert summary["output"] == str(out / "view003.h5")  # the name it was given
    assert summary["preview"] == str(out / "view003.png")
    with h5py.File(moved / "view003.h5") as handle:
        assert handle.attrs["input"] == str(view)  # the real input, not /proc/self/fd


def test_input_swapped_for_a_link_during_the_solve_is_refused(site, monkeypatch):
    root, outside, view = site
    secret = pathlib.Path(write_cxi(outside / "secret.cxi"))
    out = root / "recon" / "100"

    def swap():
        view.rename(view.with_name("moved.cxi"))
        view.symlink_to(secret)

    swap_during_solve(monkeypatch, swap)
    with pytest.raises(PtychoflowError, match="input was replaced during the reconstruction"):
        reconstruct_view(str(view), str(out), recon=CPU)
    assert list(out.iterdir()) == []  # no result kept


def test_a_link_as_the_input_is_never_opened(site):
    """The resolved input is opened O_NOFOLLOW; a folder opened is checked where it is."""
    root, outside, _ = site
    out = root / "recon" / "100"
    from functions.pinned_paths import PinnedFolder

    link = root / "link-out"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(PtychoflowError, match="not a link"):
        PinnedFolder(link, "output folder", allowed_roots())  # not resolved: refused
    with pytest.raises(PathNotAllowedError):
        PinnedFolder(outside, "output folder", allowed_roots())
    assert not out.exists()
