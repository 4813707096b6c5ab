"""The one delivery decision (shared/delivery.py) that the HTTP status, the bridge, SQS and Pub/Sub act on."""

from __future__ import annotations

import pytest

from shared import delivery
from shared.contracts import Outcome


def failed(kind: str, *, retryable: bool, retry_after_s: float | None = None) -> Outcome:
    return Outcome(
        status="failed",
        agent_id="agent:sofia",
        step="history",
        kind=kind,
        retryable=retryable,
        retry_after_s=retry_after_s,
        error=f"messaging: {kind}",
    )


@pytest.mark.parametrize(
    ("status", "attempt", "retry_after", "action"),
    [
        (200, 1, None, "ack"),
        (204, 5, None, "ack"),
        (400, 1, None, "dead_letter"),
        (401, 1, None, "dead_letter"),
        (413, 1, None, "dead_letter"),
        (422, 1, None, "dead_letter"),
        (424, 1, None, "dead_letter"),
        (408, 1, None, "retry"),
        (409, 1, "14", "retry"),
        (429, 1, "3", "retry"),
        (500, 1, None, "retry"),
        (502, 1, None, "retry"),
        (503, 4, None, "retry"),
        (504, 1, None, "retry"),
        (None, 1, None, "retry"),  # no answer: a timeout, a connection error
        (503, 5, None, "dead_letter"),  # the last delivery
        (409, 5, "14", "dead_letter"),
    ],
)
def test_the_status_decides_what_a_transport_does(status, attempt, retry_after, action):
    verdict = delivery.decide(status, attempt=attempt, max_deliver=5, retry_after=retry_after)

    assert verdict.action == action


def test_a_retry_honours_the_announced_wait_and_otherwise_backs_off():
    announced = delivery.decide(409, attempt=1, max_deliver=5, retry_after="14")
    backoff = delivery.decide(503, attempt=1, max_deliver=5)

    assert (announced.delay_s, announced.announced) == (14.0, True)
    assert 0 <= backoff.delay_s <= 0.5 and not backoff.announced


def test_without_a_delivery_limit_the_transport_counts():
    assert delivery.decide(503, attempt=99).action == "retry"


def test_a_dead_letter_says_why_and_how_often_it_was_tried():
    assert delivery.decide(422, error="HTTP 422: invalid invocation: agent_id").reason == (
        "HTTP 422: invalid invocation: agent_id"
    )
    assert delivery.decide(503, attempt=5, max_deliver=5).reason == "HTTP 503; gave up after 5 attempts"


@pytest.mark.parametrize(
    ("kind", "retryable", "status"),
    [
        ("in_progress", True, 409),
        ("timeout", True, 504),
        ("unavailable", True, 503),
        ("bad_response", True, 502),
        ("unauthorized", False, 424),
        ("rejected", False, 424),
    ],
)
def test_an_outcome_maps_to_one_status_and_one_verdict(kind, retryable, status):
    outcome = failed(kind, retryable=retryable)

    assert delivery.http_status(outcome) == status
    assert delivery.verdict(outcome).action == ("retry" if retryable else "dead_letter")


def test_replied_and_skipped_are_acknowledged():
    for status in ("replied", "skipped"):
        outcome = Outcome(status=status, agent_id="agent:sofia")
        assert delivery.http_status(outcome) == 200 and delivery.verdict(outcome).action == "ack"


@pytest.mark.parametrize(("wait", "announced"), [(14.4, "15"), (14.0, "14"), (0.2, "1"), (119.01, "120")])
def test_an_announced_wait_is_rounded_up_never_down(wait, announced):
    """A retry that comes early finds the claim busy again and spends a delivery."""
    outcome = failed("in_progress", retryable=True, retry_after_s=wait)

    assert delivery.retry_headers(outcome) == {"Retry-After": announced}
    assert delivery.verdict(outcome).delay_s == float(announced)
