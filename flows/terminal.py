"""What reaches a terminal or a log: text with its control characters escaped.

File and folder names come from whoever writes the acquisition folder. A name
holding ``ESC [ 2 J`` (or a C1 control such as ``\\x9b``, or a right-to-left
override) would otherwise clear the screen, hide lines or reorder text when
``status`` prints it or ``journalctl`` shows a log line. Every table, message and
log line goes through :func:`printable` (the ``status`` table, ``run-flow``'s output
and :class:`PrintableFormatter` for logging).
"""

from __future__ import annotations

import logging
import pathlib
import unicodedata
from logging.handlers import RotatingFileHandler

#: Unicode format characters that reorder or hide text (bidirectional overrides,
#: isolates, marks). Escaped like control characters.
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
    if code in _BIDI:
        return f"\\u{code:04x}"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(char)
    if category in ("Cf", "Zl", "Zp", "Co", "Cn") or (category == "Zs" and char != " "):
        return f"\\u{code:04x}"  # invisible: zero-width space, joiners, no-break space
    return char


def printable(text: object) -> str:
    """``str(text)`` with C0 controls (ESC, newline, tab, ...), DEL, C1 controls,
    bidirectional overrides, invisible characters (zero-width space and other format
    characters, separators other than the space) and undecodable bytes written as
    visible escapes
    (``\\x1b``, ``\\n``, ``\\x9b``, ``\\u202e``); everything else unchanged."""
    text = str(text)
    if text.isprintable() and not any(ord(c) in _BIDI for c in text):
        return text
    return "".join(_escape(char) for char in text)


class PrintableFormatter(logging.Formatter):
    """A logging formatter whose lines never carry raw control characters: the message
    is escaped as a whole; a traceback keeps its line breaks, each line escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        text = super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join(printable(line) for line in text.split("\n"))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(printable(line) for line in stack_info.split("\n"))


#: Libraries whose INFO lines describe their own machinery (Parsl's "Scaling out by 1
#: blocks", "Closing ZMQ pipes"; the Compute engine's): kept out of our log. Their
#: warnings and errors still show; everything of theirs goes to the debug file, if any.
LIBRARY_LOGGERS = (
    "parsl",
    "globus_compute_endpoint",
    "globus_compute_sdk",
    "globus_compute_common",
)


#: Size at which the libraries' log file is rotated (bytes).
DEBUG_FILE_BYTES = 10 * 1024 * 1024


def is_library_record(record: logging.LogRecord) -> bool:
    """True for a record of one of :data:`LIBRARY_LOGGERS` (or a logger below one)."""
    return record.name.partition(".")[0] in LIBRARY_LOGGERS


class OwnLinesFilter(logging.Filter):
    """Passes our own records, and the libraries' warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not is_library_record(record)


def configure_logging(
    level: int = logging.INFO,
    fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
    debug_file: pathlib.Path | None = None,
) -> None:
    """One line per event on stderr through :class:`PrintableFormatter` (what a
    systemd journal or a terminal shows): our own lines, and only the warnings and
    errors of the libraries in :data:`LIBRARY_LOGGERS`. With ``debug_file``, their
    lines from INFO up go there instead (its folder is created; rotated at
    :data:`DEBUG_FILE_BYTES`, three old files kept)."""
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter(fmt))
    handler.addFilter(OwnLinesFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if debug_file is not None:
        debug_file.parent.mkdir(parents=True, exist_ok=True)
        # Rotated: a beamtime of days must not fill the disk (at most 4 x 10 MB).
        library = RotatingFileHandler(
            debug_file, maxBytes=DEBUG_FILE_BYTES, backupCount=3, encoding="utf-8"
        )
        library.setFormatter(PrintableFormatter(fmt))
        library.addFilter(is_library_record)
        library.setLevel(logging.INFO)
        root.addHandler(library)
        handler.setLevel(level)
