"""Errors of the portal (``ptychoflow serve``)."""

from __future__ import annotations

from flows.errors import ConfigError
from recon.errors import PtychoflowError


class PortalConfigError(ConfigError):
    """The portal cannot start as configured (e.g. a public address with no access
    control); the message says which setting to add."""


class LoginError(PtychoflowError, PermissionError):
    """A Globus Auth login was refused: bad state, failed code exchange, not a group member."""
