"""Offline Globus fixtures shared by the Globus backend's unit tests.

HTTP is intercepted at the transport by ``responses`` (what
``globus_sdk.testing`` registers into): an unregistered URL raises a connection
error, which the SDK would retry with sleeps; the retry sleep is replaced by a
recorder so those tests stay fast and can assert that retries happened.
"""

from __future__ import annotations

import pytest
import responses
from globus_sdk.transport import RequestsTransport


@pytest.fixture
def mocked_responses(monkeypatch):
    """Intercept all HTTP; yields the list of retry sleeps the SDK asked for."""
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    sleeps: list[float] = []

    def record_sleep(self, retry_config, context):
        sleeps.append(min(retry_config.backoff(context), retry_config.max_sleep))

    monkeypatch.setattr(RequestsTransport, "_retry_sleep", record_sleep)
    responses.start()
    try:
        yield sleeps
    finally:
        responses.stop()
        responses.reset()
