"""Idempotency records in a DynamoDB table, shared by every Lambda container.

One item per record: ``key`` (the partition key), ``state``, ``token``, ``result`` (JSON),
``posting`` (the digest of the reply its owner began to post), ``live_until`` (the logical expiry,
epoch seconds, which every condition compares) and ``expires_at`` (the table's TTL attribute:
``live_until``, a day later for an in-progress item, so that the run taking an expired one over
still reads its ``posting``). A claim is one conditional put (no item, or an expired one); when
the condition fails, DynamoDB answers with the item that stopped it, so a claim never needs a
second read. posting(), complete() and release() act only while the caller's token is the
item's. boto3 is imported on first use; its blocking calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import DependencyError
from shared.idempotency.base import Claim, ClaimState, marked, new_token

if TYPE_CHECKING:
    from shared.infra.settings import Settings

KEY_ATTRIBUTE = "key"
TTL_ATTRIBUTE = "expires_at"  # when DynamoDB may delete the item (the template's TimeToLiveSpecification)
LIVE_ATTRIBUTE = "live_until"  # when the record stops counting: the claims compare this one
# An expired in-progress record outlives its expiry by this long: the run that takes it over must
# still find it, and read whether its owner was posting, when DynamoDB's TTL sweep comes early.
IN_PROGRESS_GRACE_S = 24 * 3600
_NAMES = {
    "#key": KEY_ATTRIBUTE,
    "#expires": TTL_ATTRIBUTE,
    "#live": LIVE_ATTRIBUTE,
    "#state": "state",
    "#token": "token",
    "#result": "result",
    "#posting": "posting",
    "#tokens": "tokens",
}
# Errors that no retry fixes: the table or the permission is missing, or the request is wrong.
_FINAL = {
    "AccessDeniedException": "unauthorized",
    "ResourceNotFoundException": "rejected",
    "ValidationException": "rejected",
}


class _ConditionFailed(Exception):
    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item


class DynamoDbStore:
    def __init__(self, table: str, *, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock  # wall time: containers on different hosts compare expiries
        self._client: Any = None
        self._marked: dict[tuple[str, str], tuple[str, ...]] = {}  # (key, token) -> the digests its record keeps
        self.failing: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> DynamoDbStore:
        return cls(s.idempotency.dynamodb_table)

    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        token = new_token()
        now = self._clock()
        item = {
            KEY_ATTRIBUTE: {"S": key},
            "state": {"S": "in_progress"},
            "token": {"S": token},
            LIVE_ATTRIBUTE: {"N": str(now + in_progress_ttl_s)},
            TTL_ATTRIBUTE: {"N": str(math.ceil(now + in_progress_ttl_s + IN_PROGRESS_GRACE_S))},
        }
        try:
            answer = await self._call(
                "put_item",
                Item=item,
                # an item written before live_until existed expires by its expires_at
                ConditionExpression=(
                    "attribute_not_exists(#key) OR #live <= :now OR (attribute_not_exists(#live) AND #expires <= :now)"
                ),
                ExpressionAttributeNames=_names("#key", "#live", "#expires"),
                ExpressionAttributeValues={":now": {"N": str(now)}},
                ReturnValues="ALL_OLD",  # an expired record taken over: was its owner posting?
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as live:
            if live.item.get("state", {}).get("S") == "complete":
                return Claim(ClaimState.COMPLETE, result=json.loads(live.item.get("result", {}).get("S", "null")))
            expiry = live.item.get(LIVE_ATTRIBUTE) or live.item.get(TTL_ATTRIBUTE) or {}
            expires = float(expiry.get("N", now + 1))
            return Claim(ClaimState.IN_PROGRESS, expires_in_s=expires - now)
        old = answer.get("Attributes", {})
        posted = _digests(old.get("posting")) if old.get("state", {}).get("S") == "in_progress" else ()
        if posted:  # what its owners began to post stays marked on the record taken over
            self._marked[(key, token)] = posted
            await self._write_markers(key, token, posted)
        return Claim(ClaimState.NEW, token=token, posted=posted)

    async def _write_markers(self, key: str, token: str, digests: tuple[str, ...]) -> None:
        try:
            await self._call(
                "update_item",
                Key={KEY_ATTRIBUTE: {"S": key}},
                UpdateExpression="SET #posting = :digests",
                ConditionExpression="#token = :token",
                ExpressionAttributeNames=_names("#posting", "#token"),
                ExpressionAttributeValues={":digests": _list(digests), ":token": {"S": token}},
            )
        except _ConditionFailed:
            pass  # taken over already: its taker carried them

    async def posting(self, key: str, token: str, ttl_s: float, digest: str) -> bool:
        now = self._clock()
        digests = marked(self._marked.get((key, token)), digest)
        try:
            await self._call(
                "update_item",
                Key={KEY_ATTRIBUTE: {"S": key}},
                UpdateExpression="SET #posting = :digest, #live = :live, #expires = :expires",
                ConditionExpression="#token = :token",  # still ours, expired or not: renewed
                ExpressionAttributeNames=_names("#posting", "#live", "#expires", "#token"),
                ExpressionAttributeValues={
                    ":digest": _list(digests),
                    ":live": {"N": str(now + ttl_s)},
                    ":expires": {"N": str(math.ceil(now + ttl_s + IN_PROGRESS_GRACE_S))},
                    ":token": {"S": token},
                },
            )
        except _ConditionFailed:
            return False  # taken over: not ours to post for
        self._marked[(key, token)] = digests
        return True

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None:
        self._marked.pop((key, token), None)
        now = self._clock()
        try:
            await self._call(
                "update_item",
                Key={KEY_ATTRIBUTE: {"S": key}},
                UpdateExpression="SET #state = :complete, #result = :result, #live = :live, #expires = :expires",
                ConditionExpression="#token = :token",
                ExpressionAttributeNames=_names("#state", "#result", "#live", "#expires", "#token"),
                ExpressionAttributeValues={
                    ":complete": {"S": "complete"},
                    ":result": {"S": json.dumps(result)},
                    ":live": {"N": str(now + ttl_s)},
                    ":expires": {"N": str(math.ceil(now + ttl_s))},
                    ":token": {"S": token},
                },
            )
        except _ConditionFailed:
            pass  # no longer ours: it expired and another run took it over

    async def release(self, key: str, token: str) -> None:
        condition = {
            "Key": {KEY_ATTRIBUTE: {"S": key}},
            "ConditionExpression": "#token = :token",
            "ExpressionAttributeNames": _names("#token"),
            "ExpressionAttributeValues": {":token": {"S": token}},
        }
        try:
            if self._marked.pop((key, token), None):  # a reply may be out: expire it, markers and all
                condition["ExpressionAttributeNames"].update(_names("#live"))
                condition["ExpressionAttributeValues"][":past"] = {"N": "0"}
                await self._call("update_item", UpdateExpression="SET #live = :past", **condition)
            else:
                await self._call("delete_item", **condition)
        except _ConditionFailed:
            pass

    async def add_usage(self, key: str, tokens: int, ttl_s: float) -> int:
        """An atomic ADD to the counter's item; the table's TTL removes it once ``ttl_s`` has passed."""
        answer = await self._call(
            "update_item",
            Key={KEY_ATTRIBUTE: {"S": key}},
            UpdateExpression="SET #expires = if_not_exists(#expires, :expires) ADD #tokens :tokens",
            ExpressionAttributeNames=_names("#expires", "#tokens"),
            ExpressionAttributeValues={
                ":tokens": {"N": str(tokens)},
                ":expires": {"N": str(math.ceil(self._clock() + ttl_s))},
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(answer["Attributes"]["tokens"]["N"])

    async def probe(self) -> None:
        await self._call("describe_table")

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        method = getattr(self._boto(), operation)
        try:
            answer = await asyncio.to_thread(_translate_errors, method, TableName=self.table, **params)
        except DependencyError as exc:
            self.failing = exc.kind
            raise
        except _ConditionFailed:
            self.failing = None  # answered: the condition is the store's own verdict
            raise
        self.failing = None
        return answer

    def _boto(self) -> Any:
        # made on the event loop's thread, once: boto3's default session is not thread-safe to build
        if self._client is None:
            import boto3
            from botocore.config import Config

            # bounded: a claim has to fit in the invocation's deadline
            config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
            self._client = boto3.client("dynamodb", config=config)
        return self._client


def _digests(attribute: dict[str, Any] | None) -> tuple[str, ...]:
    """A record's digests: a list, or one string (written before lists were kept)."""
    if not attribute:
        return ()
    if "S" in attribute:
        return (attribute["S"],)
    return tuple(item["S"] for item in attribute.get("L", []) if "S" in item)


def _list(digests: tuple[str, ...]) -> dict[str, Any]:
    return {"L": [{"S": digest} for digest in digests]}


def _names(*placeholders: str) -> dict[str, str]:
    return {p: _NAMES[p] for p in placeholders}


def _translate_errors(method: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
    """Run one call; a failed condition and AWS errors become this module's and the core's exceptions."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

    try:
        return method(**params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            raise _ConditionFailed(exc.response.get("Item", {})) from None
        if code in _FINAL:
            raise DependencyError("idempotency", _FINAL[code], f"DynamoDB {code}", retryable=False) from None
        raise DependencyError("idempotency", "unavailable", f"DynamoDB {code}", retryable=True) from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise DependencyError("idempotency", "timeout", "DynamoDB did not answer", retryable=True) from None
    except BotoCoreError as exc:
        raise DependencyError("idempotency", "unavailable", f"DynamoDB: {type(exc).__name__}", retryable=True) from None
