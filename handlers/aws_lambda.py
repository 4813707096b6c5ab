"""AWS Lambda entry points, named in template.yaml: API Gateway HTTP API (payload 2.0) and SQS batches.

``invoke`` serves POST /invoke and the invocation queue, ``test_channel`` and ``health`` their
paths. Statuses are the HTTP functions', and a queued record's fate is the one delivery decision
(shared/delivery.py), acted on by handlers/sqs.py.

One event loop per container, reused by every invocation while the container is warm, so the
pooled HTTP session of shared/clients/http.py (one per loop) survives between invocations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Coroutine
from typing import Any

from handlers import accept, sqs
from shared.errors import BadInput
from shared.infra import telemetry

_loop = asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on the container's event loop; its spans are exported before Lambda freezes the container."""
    try:
        return _loop.run_until_complete(coro)
    finally:
        telemetry.flush()


def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """POST /invoke, or a batch of records from the invocation queue."""
    if "Records" in event:
        return run(sqs_batch(event["Records"], context))
    return run(_invoke_http(event, context))


def test_channel(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """POST /internal/agent-runtime/test-channel: the seed's manual entry point, the same pipeline."""
    return run(_invoke_http(event, context))


def health(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """GET /health; ?deep=1 asks every dependency."""
    answer = run(accept.health(event.get("queryStringParameters") or {}, event.get("headers") or {}))
    return _response(answer.status, answer.body)


# --- API Gateway HTTP API ---------------------------------------------------------------------


async def _invoke_http(event: dict[str, Any], context: Any) -> dict[str, Any]:
    async def body() -> bytes | str:
        return _body(event)

    answer = await accept.run(
        body, headers=event.get("headers") or {}, request_id=getattr(context, "aws_request_id", None)
    )  # payload 2.0: header names are lower-case
    return _response(answer.status, answer.body, answer.headers)


def _body(event: dict[str, Any]) -> bytes | str:
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return body
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(400, "body is not valid base64") from None


def _response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body, ensure_ascii=False),
        "isBase64Encoded": False,
    }


# --- SQS --------------------------------------------------------------------------------------


async def sqs_batch(records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
    """Answer every record concurrently; report exactly the ones worth retrying."""
    request_id = getattr(context, "aws_request_id", None)
    retry = await asyncio.gather(*(_answer_record(record, request_id) for record in records))
    return {
        "batchItemFailures": [
            {"itemIdentifier": record["messageId"]} for record, again in zip(records, retry, strict=True) if again
        ]
    }


async def _answer_record(record: dict[str, Any], request_id: str | None) -> bool:
    """Answer one record; True when it should stay on the queue for a retry."""

    async def body() -> str:
        return record.get("body") or ""

    attributes = {name: a.get("stringValue") for name, a in (record.get("messageAttributes") or {}).items()}
    answer = await accept.run(
        body, headers=attributes, authenticate=False, delivery_id=record["messageId"], request_id=request_id
    )
    return await sqs.settle(record, answer.verdict(), answer.status)
