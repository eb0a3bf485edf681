"""Control characters never reach a terminal or a log line raw."""

from __future__ import annotations

import logging

from flows.terminal import PrintableFormatter, printable


def test_printable_escapes_c0_c1_del_and_bidi_controls():
    assert printable("scan100/view000.cxi") == "scan100/view000.cxi"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\ny\tz\r") == "x\\ny\\tz\\r"
    assert printable("\x00\x7f\x9b\x85") == "\\x00\\x7f\\x9b\\x85"
    assert printable("abc\u202edef") == "abc\\u202edef"  # right-to-left override
    assert printable("Å-grün-λ") == "Å-grün-λ"  # letters stay as they are
    assert printable("bad\udcff") == "bad\\xff"  # an undecodable byte of a file name


def test_log_lines_are_escaped_message_and_traceback_alike():
    formatter = PrintableFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "ptychoflow", logging.ERROR, __file__, 1, "%s: failed", ("scan\x1b]0;pwned\x07",), None
    )
    assert formatter.format(record) == "ERROR scan\\x1b]0;pwned\\x07: failed"
    try:
        raise ValueError("view\x1b[31m.cxi")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert "\x1b" not in text and "view\\x1b[31m.cxi" in text
    assert "\nTraceback" in text  # line breaks of the traceback kept


def test_parsl_info_lines_go_to_the_debug_file_and_ours_stay(tmp_path, capsys):
    """Parsl's "Scaling out by 1 blocks" and the like are not the watcher's log."""
    import logging

    from flows.terminal import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    debug_file = tmp_path / "state" / "engine-debug.log"
    try:
        configure_logging(logging.INFO, "%(name)s: %(message)s", debug_file=debug_file)
        logging.getLogger("parsl.jobs.strategy").info("Scaling out by 1 blocks")
        logging.getLogger("parsl.executors").info("Closing ZMQ pipes")
        logging.getLogger("parsl.executors").warning("worker lost")
        logging.getLogger("ptychoflow.watcher").info("scan100: complete")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
    err = capsys.readouterr().err
    assert "scan100: complete" in err and "worker lost" in err
    assert "Scaling out" not in err and "ZMQ" not in err
    debug = debug_file.read_text()
    assert "Scaling out by 1 blocks" in debug and "Closing ZMQ pipes" in debug
    assert "scan100" not in debug
