"""schemathesis against the agent_runtime target, served for real on loopback and wired to the
stand-ins: inputs generated from openapi.yaml (valid and invalid). No 5xx a caller did not cause
(a stand-in is never faulted here, so every 5xx would be a defect), every status and body as the
document says, and every 4xx names the problem."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.clients import http as shared_http
from standins.server import Served
from tests.conftest import ROOT

SECRET = "fuzz-5ecret"
schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml")


@pytest.fixture(scope="module")
def served(asgi_apps):
    server = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
    yield server
    server.stop()


_FRAMEWORK_METHODS = {"GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"}  # what it routes to the target


def names_the_problem(ctx, response, case):
    """Every 4xx says what is wrong: a non-empty ``error``; a 422 lists the fields in ``detail``."""
    if 400 <= response.status_code < 500 and response.status_code != 424:
        if response.status_code == 405 and case.method.upper() not in _FRAMEWORK_METHODS:
            return None  # TRACE and the like: functions-framework refuses them itself, in plain text
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        if response.status_code == 422:
            assert body["detail"] and all(d["field"] for d in body["detail"]), body
    return None


@schema.parametrize()
@settings(
    max_examples=40,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_http_api_against_its_document(case, stack, configure, served):
    configure(AGENT_RUNTIME_SECRET=SECRET)
    headers = {"X-Internal-Secret": SECRET} if case.operation.path != "/health" else {}
    response = case.call(base_url=served.url, headers=headers, timeout=15)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
    names_the_problem(None, response, case)
