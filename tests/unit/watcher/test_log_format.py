"""Log lines stay one line whatever a file name holds."""

from __future__ import annotations

import io
import logging

from watcher.log_format import EscapingFormatter, printable


def test_control_characters_are_escaped_printable_text_is_kept():
    assert printable("view\n\x1b[31mred\x07.cxi") == r"view\x0a\x1b[31mred\x07.cxi"
    assert printable("Probe_ä ü 東京.cxi") == "Probe_ä ü 東京.cxi"
    assert printable("a\u202eb") == r"a\u202eb"  # right-to-left override
    assert printable("view\udcff.cxi") == r"view\udcff.cxi"  # a byte that is not UTF-8
    assert printable("back\\slash\\x1b") == r"back\\slash\\x1b"  # cannot pass for an escape


def test_a_formatted_record_is_one_encodable_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test-escaping")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("%s: failed", "scan1/view\n\x1b]0;title\x07\udcff.cxi")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text == "ERROR scan1/view\\x0a\\x1b]0;title\\x07\\udcff.cxi: failed\n"
    text.encode("ascii")
