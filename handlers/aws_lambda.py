"""AWS Lambda entry points, named in template.yaml: API Gateway HTTP API (payload 2.0) and SQS batches.

``invoke`` serves POST /invoke and the invocation queue, ``test_channel`` and ``health`` their
paths. Statuses are the HTTP functions' (shared/outcomes.py). A queued record that a retry can help
is reported in ``batchItemFailures``; one no retry fixes (bad input, a final dependency failure) goes
straight to the dead-letter queue with the reason, and is not reported, so SQS deletes it.

One event loop per container, reused by every invocation while the container is warm, so the
pooled HTTP session of shared/http.py (one per loop) survives between invocations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from collections.abc import Coroutine
from functools import cache
from typing import Any

from shared import health as health_report
from shared import pipeline, runtime
from shared.contracts import Outcome
from shared.delivery import http_status, retry_headers
from shared.errors import BadInput
from shared.infra import tracing
from shared.intake import check_auth, parse_invocation

log = logging.getLogger("agent_runtime.aws_lambda")
_loop = asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on the container's event loop."""
    return _loop.run_until_complete(coro)


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
    deep = (event.get("queryStringParameters") or {}).get("deep") in ("1", "true", "yes")
    return _response(200, run(health_report.report(runtime.get(), deep=deep)))


# --- API Gateway HTTP API ---------------------------------------------------------------------


async def _invoke_http(event: dict[str, Any], context: Any) -> dict[str, Any]:
    rt = runtime.get()
    headers = event.get("headers") or {}  # payload 2.0: names are lower-case
    try:
        secret = rt.settings.runtime.secret
        check_auth(secret.get_secret_value() if secret else None, headers)
        invocation = parse_invocation(_body(event), rt.settings.runtime.max_body_bytes)
    except BadInput as exc:
        return _response(exc.status, exc.body())
    try:
        outcome = await pipeline.run(
            invocation,
            rt,
            delivery_id=headers.get("idempotency-key"),
            request_id=getattr(context, "aws_request_id", None),
            **tracing.log_fields(headers),
        )
    except Exception:
        log.exception("defect while running invocation", extra={"fields": {"agent_id": invocation.agent_id}})
        return _response(500, {"error": "internal error"})
    return _response(http_status(outcome), outcome.model_dump(exclude_none=True), retry_headers(outcome))


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
    rt = runtime.get()
    try:
        invocation = parse_invocation(record.get("body") or "", rt.settings.runtime.max_body_bytes)
    except BadInput as exc:
        return not await _dead_letter(record, exc.status, exc.error)
    attributes = {name: a.get("stringValue") for name, a in (record.get("messageAttributes") or {}).items()}
    try:
        outcome = await pipeline.run(
            invocation, rt, delivery_id=record["messageId"], request_id=request_id, **tracing.log_fields(attributes)
        )
    except Exception:
        # a defect answers 500 over HTTP, which callers retry; the redrive policy parks it after 5 receives
        log.exception("defect while running a queued invocation", extra={"fields": {"message_id": record["messageId"]}})
        return True
    if outcome.status != "failed":
        return False
    if outcome.retryable:
        await _retry_after(record, outcome)
        return True
    return not await _dead_letter(record, http_status(outcome), outcome.error or f"{outcome.step}: {outcome.kind}")


async def _dead_letter(record: dict[str, Any], status: int, reason: str) -> bool:
    """Park a record no retry can fix; False when that failed (then it stays on the queue)."""
    queue_url = os.environ.get("DEAD_LETTER_QUEUE_URL")
    fields = {"message_id": record["messageId"], "status": status, "reason": reason}
    if not queue_url:
        log.error("no DEAD_LETTER_QUEUE_URL: leaving the record to the redrive policy", extra={"fields": fields})
        return False
    attributes = {
        "reason": {"DataType": "String", "StringValue": reason[:1024]},
        "status": {"DataType": "Number", "StringValue": str(status)},
        "source_message_id": {"DataType": "String", "StringValue": record["messageId"]},
    }
    if record.get("eventSourceARN"):
        attributes["source_queue"] = {"DataType": "String", "StringValue": record["eventSourceARN"]}
    try:
        await asyncio.to_thread(
            _sqs().send_message, QueueUrl=queue_url, MessageBody=record["body"], MessageAttributes=attributes
        )
    except Exception as exc:
        log.error("dead-lettering failed", extra={"fields": {**fields, "error": type(exc).__name__}})
        return False
    log.warning("invocation dead-lettered", extra={"fields": fields})
    return True


async def _retry_after(record: dict[str, Any], outcome: Outcome) -> None:
    """Make the record visible again when the outcome says (Retry-After), not at the queue's timeout."""
    seconds = retry_headers(outcome).get("Retry-After")
    queue_url = os.environ.get("INVOCATION_QUEUE_URL")
    if seconds is None or not queue_url or not record.get("receiptHandle"):
        return  # the queue's visibility timeout is the backoff
    try:
        await asyncio.to_thread(
            _sqs().change_message_visibility,
            QueueUrl=queue_url,
            ReceiptHandle=record["receiptHandle"],
            VisibilityTimeout=min(int(seconds), 43200),
        )
    except Exception as exc:  # the record is retried anyway, only later
        log.warning("could not shorten the retry delay", extra={"fields": {"error": type(exc).__name__}})


@cache
def _sqs() -> Any:
    # made on the event loop's thread before any worker thread uses it; boto3 is imported only here
    import boto3

    return boto3.client("sqs")
