"""Scan discovery on the acquisition side: which folders are scans, which files are views.

A scan is a folder directly under the acquisition root whose name matches the
configured pattern; the folder's name is its key, the number in it its scan id
(at most :data:`MAX_SCAN_ID_DIGITS` digits). Its views are the files matching
``view_glob`` inside it, each identified by its file name.

Selections (``--scan 100-300,flyscan7``, ``--views 0,3-5,view009``) are parsed
into ranges and names and intersected with what exists, never expanded: a range
of ten billion costs nothing.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pathlib
import re
import unicodedata

from flows.config import MAX_SCAN_ID_DIGITS, Config
from recon.errors import InputError, InputFileNotFound, OptionsError

#: Scan ids longer than this are refused (SQLite integers, and no beamline counts so far).


class ScanNameError(InputError):
    """A folder matches the scan pattern but its id cannot be used (too many digits)."""


@dataclasses.dataclass(frozen=True)
class ScanFolder:
    """A scan folder under the acquisition root."""

    name: str
    """The folder's name: the scan's key (``scan100``, ``flyscan100``)."""
    path: pathlib.Path
    scan_id: int
    """The number in the name."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """A parsed ``--scan`` / ``--views`` value: inclusive number ranges and names."""

    text: str
    ranges: tuple[tuple[int, int], ...]
    """``(first, last)`` pairs; a single number ``n`` is ``(n, n)``."""
    names: tuple[str, ...]

    def single_numbers(self) -> list[int]:
        return [first for first, last in self.ranges if first == last]

    def contains(self, number: int) -> bool:
        return any(first <= number <= last for first, last in self.ranges)


def parse_selection(text: str, what: str = "scan") -> Selection:
    """``"0,3-5,view009"`` -> ranges ``(0, 0), (3, 5)`` and names ``view009``.

    Numbers longer than :data:`MAX_SCAN_ID_DIGITS` digits are refused; a range is
    never expanded.
    """
    ranges: list[tuple[int, int]] = []
    names: list[str] = []
    for raw in text.split(","):
        part = raw.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match:
            digits = max(len(group) for group in match.groups() if group is not None)
            if digits > MAX_SCAN_ID_DIGITS:
                raise OptionsError(
                    f"--{what} {text!r}: {part!r} has {digits} digits; "
                    f"at most {MAX_SCAN_ID_DIGITS} are accepted"
                )
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            if last < first:
                raise OptionsError(f"--{what} {text!r}: range {part!r} runs backwards")
            ranges.append((first, last))
        elif part and "/" not in part and part not in (".", ".."):
            names.append(part)
        else:
            raise OptionsError(
                f"--{what} {text!r}: {part!r} is not a number, a range like 3-5 or a "
                "name (expected a comma-separated list such as 0,3-5)"
            )
    return Selection(text, tuple(ranges), tuple(names))


def scan_id_of(config: Config, folder_name: str) -> int | None:
    """The scan id in a folder name, or None when the name is not a scan folder.

    Raises :class:`ScanNameError` naming the folder when the name matches the scan
    pattern but its id is not a number of at most :data:`MAX_SCAN_ID_DIGITS` digits
    (:meth:`Config.scan_name_problem` says why).
    """
    problem = config.scan_name_problem(folder_name)
    if problem is not None:
        raise ScanNameError(f"{folder_name}: {problem}")
    return config.scan_id_of(folder_name)


def scan_folders(config: Config) -> tuple[list[ScanFolder], list[tuple[str, str]]]:
    """Scan folders directly under the acquisition root, sorted by (id, name), and the
    refused ones as ``(folder name, reason)``."""
    root = config.acquisition_root
    if not root.is_dir():
        raise InputFileNotFound(f"acquisition root {root} does not exist or is not a folder")
    found: list[ScanFolder] = []
    refused: list[tuple[str, str]] = []
    for entry in root.iterdir():
        try:
            scan_id = scan_id_of(config, entry.name)
        except ScanNameError as err:
            refused.append((entry.name, str(err)))
            continue
        if scan_id is not None and entry.is_dir():
            found.append(ScanFolder(entry.name, entry, scan_id))
    found.sort(key=lambda folder: (folder.scan_id, folder.name))
    return found, refused


def scan_folder(config: Config, name: str) -> ScanFolder:
    """The scan folder called ``name`` (which must match the scan pattern)."""
    scan_id = scan_id_of(config, name)
    if scan_id is None or "/" in name:
        raise InputFileNotFound(
            f"{name!r} is not a scan folder name (pattern {config.scan_pattern!r})"
        )
    path = config.acquisition_root / name
    if not path.is_dir():
        raise InputFileNotFound(f"scan {name}: no folder {path}")
    return ScanFolder(name, path, scan_id)


@dataclasses.dataclass(frozen=True)
class ScanChoice:
    """What a ``--scan`` selection found."""

    folders: list[ScanFolder]
    missing: list[str]
    """Ids, ranges of ids and names asked for that have no folder (``101-299``)."""
    missing_explicit: bool
    """True when a single id or a name (not just a gap in a range) has no folder."""


def choose_scans(config: Config, selection: Selection) -> ScanChoice:
    """The scan folders a ``--scan`` selection names, and what it named that is missing.

    A single id matching several folders (``scan100``, ``flyscan100``) is an error
    that names them (pick one by name); a range takes every folder in it.
    """
    folders, _ = scan_folders(config)
    chosen: dict[str, ScanFolder] = {}
    missing: list[str] = []
    explicit = False
    for first, last in selection.ranges:
        inside = [f for f in folders if first <= f.scan_id <= last]
        if first == last:
            if len(inside) > 1:
                names = ", ".join(f.name for f in inside)
                raise InputError(
                    f"scan {first}: several folders have this id ({names}); pick one by "
                    f"name, e.g. --scan {inside[-1].name}"
                )
            if not inside:
                missing.append(str(first))
                explicit = True
        else:
            missing.extend(_gaps(first, last, sorted({f.scan_id for f in inside})))
        chosen.update((f.name, f) for f in inside)
    for name in selection.names:
        try:
            folder = scan_folder(config, name)
        except InputFileNotFound:
            missing.append(name)
            explicit = True
            continue
        chosen[folder.name] = folder
    ordered = sorted(chosen.values(), key=lambda f: (f.scan_id, f.name))
    return ScanChoice(ordered, missing, explicit)


def _gaps(first: int, last: int, present: list[int]) -> list[str]:
    """The ids in ``first..last`` not in ``present`` (sorted), as ``a`` or ``a-b`` strings."""
    gaps = []
    expected = first
    for scan_id in [*present, last + 1]:
        if scan_id > expected:
            end = scan_id - 1
            gaps.append(str(expected) if end == expected else f"{expected}-{end}")
        expected = scan_id + 1
    return gaps


def _invisible(char: str) -> bool:
    """A character that shows as nothing or as a plain space: format characters (zero
    width space, joiners, bidi marks), controls, and separators other than ' '."""
    category = unicodedata.category(char)
    return category in ("Cf", "Cc", "Zl", "Zp") or (category == "Zs" and char != " ")


def _glob_pattern(view_glob: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(view_glob), re.IGNORECASE)


def matches_view_glob(file_name: str, view_glob: str) -> bool:
    """Whether ``file_name`` is a view file: it matches ``view_glob`` ignoring case
    (``view001.CXI`` is a view), or would after removing surrounding white space and
    invisible characters (``'view003.cxi '``): such a look-alike is listed so that it is
    refused with its reason (:func:`look_alike_problem`), never silently ignored."""
    pattern = _glob_pattern(view_glob)
    if pattern.fullmatch(file_name):
        return True
    cleaned = "".join(c for c in file_name if not _invisible(c)).strip()
    return bool(cleaned) and pattern.fullmatch(cleaned) is not None


def look_alike_problem(file_name: str, names: list[str]) -> str | None:
    """Why a view file name is refused, or None. Refused: white space at either end,
    invisible characters, and a name that another one in the folder equals once both
    are Unicode-normalised (NFC), e.g. ``vïew.cxi`` written precomposed and decomposed:
    the second of the two in sorted order is refused. The names themselves are kept as
    keys (a view is its file name); what a person has to do is rename the file."""
    shown = printable_name(file_name)
    if file_name != file_name.strip():
        return f"{shown}: the file name starts or ends with white space; rename the file"
    hidden = sorted({f"U+{ord(c):04X}" for c in file_name if _invisible(c)})
    if hidden:
        return (
            f"{shown}: the file name holds invisible characters ({', '.join(hidden)}); "
            "rename the file"
        )
    normal = unicodedata.normalize("NFC", file_name)
    for other in names:
        if other == file_name:
            break
        if unicodedata.normalize("NFC", other) == normal:
            return (
                f"{shown}: the file name looks identical to {printable_name(other)} (the "
                "same letters in another Unicode form, NFC/NFD); rename one of them"
            )
    return None


def printable_name(file_name: str) -> str:
    """A file name as a person can tell it apart: control and invisible characters,
    and in a name that is not in Unicode NFC the combining marks, written as escapes."""
    from flows.terminal import printable

    if unicodedata.is_normalized("NFC", file_name):
        return printable(file_name)
    return printable(
        "".join(
            f"\\u{ord(c):04x}" if unicodedata.category(c).startswith("M") else c for c in file_name
        )
    )


def view_files(config: Config, folder: pathlib.Path) -> list[str]:
    """The view file names of a scan folder (``config.view_glob``, matched ignoring
    case, look-alikes included: :func:`matches_view_glob`), sorted.

    Raises :class:`InputError` naming the folder when it cannot be listed or holds
    no views (and what it holds instead).
    """
    try:
        with os.scandir(folder) as listing:
            files = sorted(
                entry.name
                for entry in listing
                if matches_view_glob(entry.name, config.view_glob) and entry.is_file()
            )
    except OSError as err:
        raise InputError(f"{folder}: cannot list the scan folder: {err}") from err
    if not files:
        try:
            present = sorted(p.name for p in folder.iterdir())
        except OSError as err:
            raise InputError(f"{folder}: cannot list the scan folder: {err}") from err
        shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
        raise InputError(
            f"{folder}: no view files matching {config.view_glob!r} "
            f"(found: {shown or 'an empty folder'})"
        )
    return files


def view_key(file_name: str) -> str:
    """The view's key in the ledger, the flow input and the logs: its file name, with any
    byte that is not UTF-8 (kept by the file system as a surrogate escape) written as
    ``\\xNN``. Only such a name changes; it cannot be sent anywhere (JSON, SQLite text,
    Globus Transfer all need UTF-8), so its view is failed under this key."""
    try:
        file_name.encode("utf-8")
        return file_name
    except UnicodeEncodeError:
        raw = file_name.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")


def choose_views(files: list[str], selection: Selection, folder: str) -> list[str]:
    """The view files a ``--views`` selection names: positions in the sorted listing
    (``0,3-5``; ranges are clipped to what exists) and file names or names without the
    suffix (``view009``). A single position or name that does not exist is an error."""
    chosen: set[str] = set()
    missing: list[str] = []
    for first, last in selection.ranges:
        if first == last and first >= len(files):
            missing.append(str(first))
        chosen.update(files[first : min(last, len(files) - 1) + 1])
    by_stem = {pathlib.PurePosixPath(name).stem: name for name in files}
    for name in selection.names:
        found = name if name in files else by_stem.get(name)
        if found is None:
            missing.append(name)
        else:
            chosen.add(found)
    if missing:
        raise InputError(
            f"{folder}: no view(s) {', '.join(missing)}; this scan has views "
            f"0-{len(files) - 1} ({files[0]} ... {files[-1]})"
        )
    if not chosen:
        raise InputError(
            f"{folder}: --views {selection.text} selects none of its {len(files)} views"
        )
    return sorted(chosen)


def parse_views(text: str, max_count: int = 100_000) -> list[int]:
    """``"0,3-5"`` -> ``[0, 3, 4, 5]`` (sorted, without duplicates), for commands that
    make one thing per number (``replay --scans``). More than ``max_count`` numbers are
    refused before anything is allocated; names are refused."""
    selection = parse_selection(text, "scans")
    if selection.names:
        raise OptionsError(f"{text!r}: {selection.names[0]!r} is not a number or a range")
    count = sum(last - first + 1 for first, last in selection.ranges)
    if count > max_count:
        raise OptionsError(f"{text!r} names {count} numbers; at most {max_count} are accepted")
    values: set[int] = set()
    for first, last in selection.ranges:
        values.update(range(first, last + 1))
    return sorted(values)
