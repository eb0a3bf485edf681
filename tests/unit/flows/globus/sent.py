"""What the code under test actually sent over HTTP (recorded by ``responses``)."""

from __future__ import annotations

import json
from typing import Any

import responses
from globus_sdk.testing import RegisteredResponse, get_last_request


def last_json_body() -> dict[str, Any]:
    """The JSON body of the last request sent."""
    request = get_last_request()
    assert request is not None, "no request was sent"
    return json.loads(request.body)


def sent_requests() -> list[Any]:
    """Every request sent so far, in order (``responses`` call records' requests)."""
    return [call.request for call in responses.calls]


def register_run_flow_unavailable(flow_id: str) -> None:
    """Flows answers the next ``run_flow`` of ``flow_id`` with HTTP 503 (maintenance)."""
    RegisteredResponse(
        service="flows",
        path=f"/flows/{flow_id}/run",
        method="POST",
        status=503,
        json={"error": {"code": "SERVICE_UNAVAILABLE", "detail": "maintenance"}},
    ).add()
