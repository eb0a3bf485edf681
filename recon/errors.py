"""One small error hierarchy for the whole project.

Every error a user can cause derives from :class:`PtychoflowError`, so a CLI
catches one type and prints a one-line message instead of a traceback. Leaves
also subclass the matching built-in, so code that expects ``ValueError`` or
``FileNotFoundError`` still works.
"""

from __future__ import annotations


class PtychoflowError(Exception):
    """Root of every error this project raises on purpose."""


class InputError(PtychoflowError, ValueError):
    """Input data is missing, malformed or inconsistent.

    The message names the file, the dataset and what was expected, e.g.
    ``scan100/view000.cxi: /entry_1/data_1/data is missing``.
    """


class InputFileNotFound(PtychoflowError, FileNotFoundError):
    """An input file or folder does not exist."""


class OptionsError(PtychoflowError, ValueError):
    """Reconstruction or flow options are unknown or out of range."""


class DeviceError(PtychoflowError, RuntimeError):
    """An array backend or device that was asked for is not available."""


class InputTooLargeError(InputError):
    """A view would need more memory than the limit allows (checked before allocating)."""


class OutputPathError(PtychoflowError, ValueError):
    """An output path is refused: it is the input, or an existing file that is not ours."""


class OutputNotWritableError(PtychoflowError, PermissionError):
    """The output folder cannot be created or written."""
