"""Log lines that stay one line: control characters in messages are escaped.

File names come from the instrument's disk and may hold anything a file name can:
newlines, terminal escape codes, bytes that are not UTF-8 (decoded by Python as
lone surrogates). Written raw they split a log line, recolour or retitle an
operator's terminal, or make the logging module fail to encode the line. Every
watcher log line goes through :class:`EscapingFormatter`.
"""

from __future__ import annotations

import logging
import unicodedata

#: Unicode categories written as escapes: control, format (e.g. bidi overrides),
#: surrogates (undecodable bytes), unassigned and private use.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Co"})


def printable(text: str) -> str:
    """``text`` with every control or undecodable character written as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``; backslashes are doubled so the result is
    unambiguous. Printable text, also non-ASCII (``Probe_ä``), is left alone."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _ESCAPED_CATEGORIES:
            code = ord(char)
            if code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part never holds a control character; a traceback, if
    one is attached, keeps its own line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.getMessage())
        return super().formatMessage(record)
