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
import unicodedata

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


def configure_logging(
    level: int = logging.INFO,
    fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
) -> None:
    """One line per event on stderr through :class:`PrintableFormatter` (what a
    systemd journal or a terminal shows)."""
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
