"""openapi.yaml stays true: its paths are the routes served, its schemas the pydantic models, its
statuses the ones the runtime answers."""

from __future__ import annotations

import typing

import yaml

from handlers.http import ROUTES
from shared import contracts, delivery
from tests.conftest import ROOT

DOC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
SCHEMAS = DOC["components"]["schemas"]


def _literal(annotation) -> set[str]:
    """The values of a Literal (or Optional[Literal]) annotation."""
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return set(typing.get_args(arg))
    raise AssertionError(f"not a Literal: {annotation}")


def test_the_paths_are_the_routes_served():
    documented = {(method.upper(), path) for path, item in DOC["paths"].items() for method in item}
    assert documented == set(ROUTES)


def test_only_health_is_open():
    for path, item in DOC["paths"].items():
        for operation in item.values():
            assert ("security" in operation and operation["security"] == []) is (path == "/health")
    assert DOC["security"] == [{"internalSecret": []}, {"bearer": []}]
    assert DOC["components"]["securitySchemes"]["internalSecret"]["name"] == "X-Internal-Secret"


def test_the_invocation_schema_is_the_model():
    invocation, payload = SCHEMAS["Invocation"], SCHEMAS["InvocationPayload"]
    assert invocation["properties"]["agent_id"]["pattern"] == contracts.AGENT_ID_PATTERN
    assert set(invocation["properties"]["entrypoint"]["enum"]) == set(typing.get_args(contracts.Entrypoint))
    assert set(invocation["required"]) == {n for n, f in contracts.Invocation.model_fields.items() if f.is_required()}
    assert set(payload["properties"]) == set(contracts.InvocationPayload.model_fields)
    assert payload["required"] == ["channel_id"]
    for name, field in contracts.InvocationPayload.model_fields.items():
        documented = payload["properties"][name]
        for rule in field.metadata:
            for attribute, key in (("max_length", "maxLength"), ("min_length", "minLength"), ("pattern", "pattern")):
                if getattr(rule, attribute, None) is not None:
                    assert documented[key] == getattr(rule, attribute), (name, key)


def test_the_outcome_schema_is_the_model():
    outcome = SCHEMAS["Outcome"]["properties"]
    assert set(outcome) == set(contracts.Outcome.model_fields)
    for name in ("status", "reason", "step", "kind", "llm_source", "blueprint_source", "entrypoint"):
        assert set(outcome[name]["enum"]) == _literal(contracts.Outcome.model_fields[name].annotation), name


def test_the_statuses_are_the_ones_answered():
    answered = {200, 424, *delivery._RETRYABLE.values()} | {400, 401, 403, 413, 422}
    for path in ("/invoke", "/internal/agent-runtime/test-channel"):
        assert {int(s) for s in DOC["paths"][path]["post"]["responses"]} == answered
