"""AWS for the tests, in process (moto: nothing leaves the process), and template.yaml as data."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import ROOT

REGION = "eu-central-1"


@cache
def template() -> dict[str, Any]:
    """template.yaml with its intrinsic functions as plain data (cfn-lint's own reader)."""
    from cfnlint.decode import decode

    decoded, problems = decode(str(ROOT / "template.yaml"))
    assert not problems, problems
    return json.loads(json.dumps(decoded))


def properties(logical_id: str) -> dict[str, Any]:
    return template()["Resources"][logical_id]["Properties"]


def handler(function_id: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The entry point exactly as template.yaml names it in the function's Handler:."""
    module, _, name = properties(function_id)["Handler"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@contextmanager
def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


def create_table(name: str = "agent-runtime-idempotency") -> str:
    """The idempotency table as template.yaml declares it: key schema, billing, TTL attribute."""
    declared = properties("IdempotencyTable")
    client = boto3.client("dynamodb")
    client.create_table(
        TableName=name,
        AttributeDefinitions=declared["AttributeDefinitions"],
        KeySchema=declared["KeySchema"],
        BillingMode=declared["BillingMode"],
    )
    client.update_time_to_live(TableName=name, TimeToLiveSpecification=declared["TimeToLiveSpecification"])
    return name


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
