import os

from flows.scans import view_key


def test_a_utf8_view_name_is_its_own_key():
    for name in ("view000.cxi", "view a ä.cxi", "view b \u202e.cxi"):
        assert view_key(name) == name


def test_a_name_that_is_not_utf8_gets_a_printable_stable_key():
    name = os.fsdecode(b"view001 \xff.cxi")  # as os.listdir returns it
    key = view_key(name)
    assert key == "view001 \\xff.cxi"
    key.encode("utf-8")  # storable in SQLite text and JSON
    assert view_key(name) == key  # the same file gets the same key on every listing
