"""The systemd units in the README load as systemd reads them.

systemd.syntax(7): a line whose first non-blank character is ``#`` or ``;`` is a
comment; comments are only whole lines, so a ``#`` after a value is part of the value
(an ``EnvironmentFile=`` path with ``   # ...`` after it names a file that does not
exist, and the watcher starts without its credentials). A line ending in ``\\`` goes on
on the next line. systemd.special(7), ``network-online.target``: a unit ordered
``After=`` it must also pull it in with ``Wants=``, or nothing may start it.
"""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def unit_blocks() -> list[str]:
    """The text of every ```ini block of the README that holds a ``[Unit]`` section."""
    blocks = re.findall(r"```ini\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if "[Unit]" in block]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values, the way systemd's unit parser reads lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_readme_has_the_units():
    assert len(unit_blocks()) >= 2


def test_the_parser_reads_a_trailing_comment_as_part_of_the_value():
    """The failure the test guards against, read the way systemd.syntax(7) says."""
    unit = parse_unit("[Service]\nEnvironmentFile=/etc/creds.env   # mode 0600\n")
    assert unit["Service"]["EnvironmentFile"] == ["/etc/creds.env   # mode 0600"]


@pytest.mark.parametrize("block", unit_blocks(), ids=lambda b: b.splitlines()[0])
def test_no_value_carries_a_comment(block):
    for section, keys in parse_unit(block).items():
        for key, values in keys.items():
            for value in values:
                assert "#" not in value and " ;" not in value, (
                    f"[{section}] {key}={value!r}: systemd reads the comment as part of "
                    "the value (systemd.syntax(7): only whole lines are comments)"
                )


@pytest.mark.parametrize("block", unit_blocks(), ids=lambda b: b.splitlines()[0])
def test_paths_are_absolute_and_network_online_is_wanted(block):
    unit = parse_unit(block)
    service = unit["Service"]
    for key in ("EnvironmentFile", "WorkingDirectory"):
        for value in service.get(key, []):
            path = value.removeprefix("-")
            assert path.startswith("/") and " " not in path, f"{key}={value!r}"
    assert service["ExecStart"][0].split()[0].startswith("/")
    after = " ".join(unit["Unit"].get("After", [])).split()
    wants = " ".join(unit["Unit"].get("Wants", [])).split()
    assert "network-online.target" in after
    assert "network-online.target" in wants, "After= alone does not pull the target in"
