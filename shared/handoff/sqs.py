"""Handoffs under AWS Lambda: the invocation sent to the invocation queue, as the router sends it.

The body is the router's JSON; the message attribute ``key`` carries the key. boto3 is imported on
the first send, and its blocking call runs in a worker thread, bounded by the invocation's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.contracts import FailureKind
from shared.errors import DependencyError
from shared.handoff.base import DEPENDENCY, InvocationSink
from shared.infra import jsoncodec

if TYPE_CHECKING:
    from shared.infra.deadline import Deadline
    from shared.infra.settings import Settings

# SQS's words for "slow down": a later try gets through
_THROTTLED = {"RequestThrottled", "KmsThrottled", "Throttling", "ThrottlingException"}


class SqsSink(InvocationSink):
    name = "sqs"

    def __init__(self, queue_url: str, timeout_s: float) -> None:
        self.queue_url = queue_url
        self.timeout_s = timeout_s
        self._client: Any = None

    @classmethod
    def from_settings(cls, s: Settings) -> SqsSink:
        if not s.handoff.sqs_queue_url:
            raise ValueError("handoff.sqs_queue_url (INVOCATION_QUEUE_URL): the sqs sink needs the invocation queue")
        return cls(s.handoff.sqs_queue_url, s.handoff.timeout_s)

    async def send(self, invocation: dict[str, Any], key: str, deadline: Deadline) -> None:
        self._check_open()
        timeout = deadline.timeout_for(DEPENDENCY, self.timeout_s)
        send_message = self._boto().send_message
        call = asyncio.to_thread(
            _translate_errors,
            send_message,
            QueueUrl=self.queue_url,
            MessageBody=jsoncodec.dumps(invocation).decode(),
            MessageAttributes={"key": {"DataType": "String", "StringValue": key}},
        )
        try:
            await asyncio.wait_for(call, timeout)
        except TimeoutError:  # the thread goes on: the message may still be sent
            raise DependencyError(
                DEPENDENCY, "timeout", "SQS did not answer in time", retryable=True, uncertain=True
            ) from None

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _boto(self) -> Any:
        # made on the event loop's thread, once: boto3's default session is not thread-safe to build
        if self._client is None:
            import boto3
            from botocore.config import Config

            # one attempt, bounded: botocore's backoff would outlast the deadline, and the error says
            # whether the caller's retry can help
            config = Config(
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                retries={"mode": "standard", "max_attempts": 1},
            )
            self._client = boto3.client("sqs", config=config)
        return self._client


def _verdict(code: str, status: int) -> tuple[FailureKind, bool]:
    """What an SQS error answer means: its kind, and whether a retry can help."""
    if code in _THROTTLED or status == 429 or status >= 500:
        return "unavailable", True
    if status in (401, 403) or "AccessDenied" in code:
        return "unauthorized", False  # the function's role or the queue's policy: no retry fixes it
    return "rejected", False


def _translate_errors(method: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
    """Run one call; AWS's errors become the core's."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        ReadTimeoutError,
    )

    try:
        return method(**params)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        kind, retryable = _verdict(code, status)
        raise DependencyError(DEPENDENCY, kind, f"SQS {code}", status=status, retryable=retryable) from None
    except ReadTimeoutError:
        raise DependencyError(DEPENDENCY, "timeout", "SQS did not answer", retryable=True, uncertain=True) from None
    except (ConnectTimeoutError, EndpointConnectionError):
        raise DependencyError(DEPENDENCY, "unavailable", "SQS not reachable", retryable=True, sent=False) from None
    except NoCredentialsError:
        raise DependencyError(DEPENDENCY, "unauthorized", "no AWS credentials", retryable=False, sent=False) from None
    except ParamValidationError:
        raise DependencyError(DEPENDENCY, "rejected", "SQS: invalid request", retryable=False, sent=False) from None
    except BotoCoreError as exc:
        raise DependencyError(DEPENDENCY, "unavailable", f"SQS: {type(exc).__name__}", retryable=True) from None
