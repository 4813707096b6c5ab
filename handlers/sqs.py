"""What an SQS batch does with each record's verdict (shared/delivery.py).

ack: deleted with the batch. retry: reported in ``batchItemFailures``, visible again when the
outcome said (Retry-After), else after the queue's visibility timeout; the redrive policy parks
it after its last receive. dead letter: sent to ``DEAD_LETTER_QUEUE_URL`` with the reason and
not reported, so SQS deletes it; if that send fails it stays on the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import cache
from typing import Any

from shared.delivery import Verdict

log = logging.getLogger("agent_runtime.sqs")
MAX_VISIBILITY_S = 43200  # SQS's own ceiling


async def settle(record: dict[str, Any], verdict: Verdict, status: int) -> bool:
    """Act on one record's verdict; True when it must be reported for a retry."""
    if verdict.action == "ack":
        return False
    if verdict.action == "retry":
        if verdict.announced:
            await _visible_again_in(record, verdict.delay_s)
        return True
    return not await _dead_letter(record, status, verdict.reason)


async def _dead_letter(record: dict[str, Any], status: int, reason: str) -> bool:
    """Park a record no retry can fix; False when that failed."""
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
            client().send_message, QueueUrl=queue_url, MessageBody=record["body"], MessageAttributes=attributes
        )
    except Exception as exc:
        log.error("dead-lettering failed", extra={"fields": {**fields, "error": type(exc).__name__}})
        return False
    log.warning("invocation dead-lettered", extra={"fields": fields})
    return True


async def _visible_again_in(record: dict[str, Any], seconds: float) -> None:
    """Make the record visible again when the outcome says, not at the queue's timeout."""
    queue_url = os.environ.get("INVOCATION_QUEUE_URL")
    if not queue_url or not record.get("receiptHandle"):
        return  # the queue's visibility timeout is the backoff
    try:
        await asyncio.to_thread(
            client().change_message_visibility,
            QueueUrl=queue_url,
            ReceiptHandle=record["receiptHandle"],
            VisibilityTimeout=min(int(seconds), MAX_VISIBILITY_S),
        )
    except Exception as exc:  # the record is retried anyway, only later
        log.warning("could not shorten the retry delay", extra={"fields": {"error": type(exc).__name__}})


@cache
def client() -> Any:
    # made on the event loop's thread before any worker thread uses it; boto3 is imported only here
    import boto3

    return boto3.client("sqs")
