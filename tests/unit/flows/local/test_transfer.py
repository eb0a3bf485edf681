"""The local Transfer action: verified, atomic copies between collection folders."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.local import transfer as local_transfer
from flows.local.transfer import PARTIAL_MARKER, transfer_action

ACQ = local_transfer.LOCAL_ACQUISITION_COLLECTION
COMPUTE = local_transfer.LOCAL_COMPUTE_COLLECTION
REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
def roots(tmp_path):
    acquisition, compute = tmp_path / "acquisition", tmp_path / "compute"
    (acquisition / "scan100").mkdir(parents=True)
    compute.mkdir()
    return {ACQ: acquisition, COMPUTE: compute}


def request(*items, source=ACQ, destination=COMPUTE):
    return {
        "source_endpoint": source,
        "destination_endpoint": destination,
        "label": "test",
        "DATA": [{"source_path": s, "destination_path": d, "recursive": r} for s, d, r in items],
    }


def test_file_is_copied_with_its_checksum_and_parent_folders_created(roots):
    content = os.urandom(300_000)
    (roots[ACQ] / "scan100" / "view003.cxi").write_bytes(content)
    result = transfer_action(
        request(("/scan100/view003.cxi", "/input/100/view003.cxi", False)), roots
    )
    assert result["status"] == "SUCCEEDED", result.get("display_status")
    copy = roots[COMPUTE] / "input" / "100" / "view003.cxi"
    assert copy.read_bytes() == content
    details = result["details"]
    assert details["files"] == details["files_transferred"] == 1
    assert details["bytes_transferred"] == len(content)
    assert details["transferred"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert {"action_id", "start_time", "completion_time"} <= set(result)
    assert list(copy.parent.iterdir()) == [copy], "no partial file is left behind"


def test_recursive_folder_copy(roots):
    scan = roots[ACQ] / "scan100"
    (scan / "a.cxi").write_bytes(b"a" * 10)
    (scan / "sub").mkdir()
    (scan / "sub" / "b.cxi").write_bytes(b"b" * 20)
    result = transfer_action(request(("/scan100", "/input/100", True)), roots)
    assert result["status"] == "SUCCEEDED"
    assert (roots[COMPUTE] / "input/100/a.cxi").read_bytes() == b"a" * 10
    assert (roots[COMPUTE] / "input/100/sub/b.cxi").read_bytes() == b"b" * 20
    assert result["details"]["bytes_transferred"] == 30


@pytest.mark.parametrize(
    ("items", "kwargs", "message"),
    [
        ((("/scan100/missing.cxi", "/x.cxi", False),), {}, "'/scan100/missing.cxi' does not exist"),
        ((("/../outside.txt", "/x", False),), {}, "'/../outside.txt' leaves the collection root"),
        ((("/scan100/v.cxi", "/a/../../x", False),), {}, "'/a/../../x' leaves the collection"),
        ((("/scan100/v.cxi", "/x", False),), {"source": "nope"}, "source_endpoint 'nope' is not"),
        ((("/scan100", "/input", False),), {}, "is a folder; set recursive: true"),
        ((("/scan100/v.cxi", "/x", True),), {}, "is a file; recursive must be false"),
    ],
)
def test_bad_requests_fail_naming_the_path(roots, items, kwargs, message):
    (roots[ACQ] / "scan100" / "v.cxi").write_bytes(b"x")
    (roots[ACQ].parent / "outside.txt").write_text("secret")
    result = transfer_action(request(*items, **kwargs), roots)
    assert result["status"] == "FAILED"
    assert message in result["display_status"]
    assert message in result["details"]["description"]
    assert not (roots[COMPUTE] / "x").exists()


def test_symlink_leaving_the_collection_is_rejected(roots):
    (roots[ACQ].parent / "outside.txt").write_text("secret")
    (roots[ACQ] / "scan100" / "link.cxi").symlink_to(roots[ACQ].parent / "outside.txt")
    result = transfer_action(request(("/scan100/link.cxi", "/x", False)), roots)
    assert result["status"] == "FAILED"
    assert "leaves the collection root" in result["display_status"]


def test_failed_write_keeps_the_old_destination_and_leaves_no_partial(roots, monkeypatch):
    (roots[ACQ] / "scan100" / "v.cxi").write_bytes(b"new content")
    destination = roots[COMPUTE] / "v.cxi"
    destination.write_bytes(b"old content")

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_transfer.os, "fsync", full_disk)
    result = transfer_action(request(("/scan100/v.cxi", "/v.cxi", False)), roots)
    assert result["status"] == "FAILED"
    assert "No space left on device" in result["display_status"]
    assert destination.read_bytes() == b"old content"
    assert sorted(p.name for p in roots[COMPUTE].iterdir()) == ["v.cxi"]


def test_checksum_mismatch_fails_and_removes_the_copy(roots, monkeypatch):
    (roots[ACQ] / "scan100" / "v.cxi").write_bytes(b"content")
    real = local_transfer.sha256_of

    def corrupted(path):  # what reading back a copy damaged on disk would give
        return "0" * 64 if PARTIAL_MARKER in path.name else real(path)

    monkeypatch.setattr(local_transfer, "sha256_of", corrupted)
    result = transfer_action(request(("/scan100/v.cxi", "/v.cxi", False)), roots)
    assert result["status"] == "FAILED"
    assert "checksum mismatch" in result["display_status"]
    assert list(roots[COMPUTE].iterdir()) == []


def test_process_killed_mid_copy_leaves_nothing_under_the_destination_name(roots):
    """A real SIGKILL after the copy is written but before the rename."""
    content = os.urandom(1_000_000)
    (roots[ACQ] / "scan100" / "v.cxi").write_bytes(content)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from flows.local import transfer as local_transfer

        def killed_before_rename(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)

        local_transfer.os.replace = killed_before_rename
        local_transfer.transfer_action(
            {{"source_endpoint": "a", "destination_endpoint": "c",
              "DATA": [{{"source_path": "/scan100/v.cxi", "destination_path": "/in/v.cxi",
                         "recursive": False}}]}},
            {{"a": Path({str(roots[ACQ])!r}), "c": Path({str(roots[COMPUTE])!r})}},
        )
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    folder = roots[COMPUTE] / "in"
    assert not (folder / "v.cxi").exists()
    (partial,) = folder.iterdir()
    assert partial.name.startswith("v.cxi" + PARTIAL_MARKER)
    # The next attempt succeeds beside the stale partial file.
    result = transfer_action(request(("/scan100/v.cxi", "/in/v.cxi", False)), roots)
    assert result["status"] == "SUCCEEDED"
    assert (folder / "v.cxi").read_bytes() == content


# -- permissions follow the source (issue 7, item 5) ---------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_a_copy_keeps_the_source_files_mode(roots, mode):
    """A 0600 view used to arrive as 0644: readable by every account on the machine."""
    view = roots[ACQ] / "scan100" / "view003.cxi"
    view.write_bytes(os.urandom(1000))
    view.chmod(mode)
    result = transfer_action(
        request(("/scan100/view003.cxi", "/input/100/view003.cxi", False)), roots
    )
    assert result["status"] == "SUCCEEDED", result.get("display_status")
    assert mode_of(roots[COMPUTE] / "input" / "100" / "view003.cxi") == mode


def test_a_folder_copy_keeps_file_and_folder_modes(roots):
    """Results coming back (recon/<id>/ copied recursively) keep their modes, and so do
    the folders the transfer creates; special bits are dropped."""
    results = roots[COMPUTE] / "recon" / "100"
    (results / "private").mkdir(parents=True)
    (results / "view000.h5").write_bytes(b"result")
    (results / "view000.h5").chmod(0o600)
    (results / "view000.png").write_bytes(b"preview")
    (results / "view000.png").chmod(0o640)
    (results / "private" / "log.txt").write_bytes(b"log")
    (results / "private").chmod(0o700)
    results.chmod(0o2750)  # setgid folder: the bit is not copied
    result = transfer_action(
        request(("/recon/100", "/recon/100", True), source=COMPUTE, destination=ACQ), roots
    )
    assert result["status"] == "SUCCEEDED", result.get("display_status")
    back = roots[ACQ] / "recon" / "100"
    assert mode_of(back / "view000.h5") == 0o600
    assert mode_of(back / "view000.png") == 0o640
    assert mode_of(back / "private") == 0o700
    assert mode_of(back) == 0o750
    assert (back / "private" / "log.txt").read_bytes() == b"log"


def test_a_full_disk_names_the_file_being_copied(tmp_path):
    """Issue 16: "transfer_in failed: [Errno 28] No space left on device" named no file.
    A real 1 MiB tmpfs (root only) is the destination of a 2 MiB file."""
    import errno
    import os
    import subprocess

    from flows.local.transfer import copy_file_verified

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        source = tmp_path / "view000.cxi"
        source.write_bytes(os.urandom(2 * 1024 * 1024))
        with pytest.raises(OSError) as caught:
            copy_file_verified(source, disk / "input" / "100" / "view000.cxi")
        assert caught.value.errno == errno.ENOSPC
        assert str(source) in str(caught.value) and "view000.cxi" in str(caught.value)
        assert list((disk / "input" / "100").iterdir()) == []  # no partial file left
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
