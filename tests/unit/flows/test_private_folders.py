"""The state folder is never chmodded, and one that others can write is refused (issue 16,
item 12): real folders, and another account's folder (root only)."""

from __future__ import annotations

import os
import stat

import pytest

from flows.errors import ConfigError
from flows.globus.auth import token_storage
from flows.private_folders import ensure_private_dir


def test_a_shared_state_folder_is_refused_and_left_as_it_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: sticky, everyone writes
    with pytest.raises(ConfigError, match=r"other users can write it \(mode 1777\)"):
        token_storage(shared, namespace="client-x")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # sticky bit and access kept
    with pytest.raises(ConfigError, match="never chmodded"):
        ensure_private_dir(shared)


def test_a_new_state_folder_is_made_0700_and_an_own_readable_one_is_kept(tmp_path):
    made = ensure_private_dir(tmp_path / "a" / "state")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    readable = tmp_path / "readable"
    readable.mkdir()
    readable.chmod(0o755)
    ensure_private_dir(readable)
    assert stat.S_IMODE(readable.stat().st_mode) == 0o755  # not ours to change


def test_a_link_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="not a folder"):
        ensure_private_dir(tmp_path / "link")


@pytest.mark.skipif(os.geteuid() != 0, reason="another account's folder needs root (chown)")
def test_another_accounts_folder_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        ensure_private_dir(theirs)
