"""The DynamoDB idempotency store (moto): its states, owner tokens, expiry and TTL attribute."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from shared import idempotency
from shared.errors import DependencyError
from shared.idempotency import ClaimState
from shared.idempotency.dynamodb import IN_PROGRESS_GRACE_S, TTL_ATTRIBUTE, DynamoDbStore
from shared.infra import settings
from tests.aws import Clock, create_table, mocked_aws, properties

KEY = "agent:sofia/6f1c5c1e-6b43-4c4e-9c53-5f8a4c1f2d10"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(monkeypatch, clock):
    with mocked_aws(monkeypatch):
        yield DynamoDbStore(create_table(), clock=clock)


async def test_claim_then_complete_then_duplicate(store):
    first = await store.claim(KEY, 120)
    assert first.state is ClaimState.NEW and first.token

    assert (await store.claim(KEY, 120)).state is ClaimState.IN_PROGRESS

    await store.complete(KEY, first.token, {"message_id": "m-1", "llm_source": "llm"}, 3600)
    again = await store.claim(KEY, 120)
    assert again.state is ClaimState.COMPLETE
    assert again.result == {"message_id": "m-1", "llm_source": "llm"}
    assert again.token is None


async def test_an_expired_claim_is_taken_over_and_the_old_owner_loses_it(store, clock):
    crashed = await store.claim(KEY, 120)
    clock.advance(119)
    assert (await store.claim(KEY, 120)).state is ClaimState.IN_PROGRESS

    clock.advance(2)  # past the in-progress expiry: a crashed worker's invocation runs again
    retry = await store.claim(KEY, 120)
    assert retry.state is ClaimState.NEW and retry.token != crashed.token

    # the crashed worker wakes up: it can neither complete nor release what is no longer its own
    await store.complete(KEY, crashed.token, {"message_id": "stale"}, 3600)
    await store.release(KEY, crashed.token)
    assert (await store.claim(KEY, 120)).state is ClaimState.IN_PROGRESS

    await store.complete(KEY, retry.token, {"message_id": "m-2"}, 3600)
    assert (await store.claim(KEY, 120)).result == {"message_id": "m-2"}


async def test_taking_over_a_claim_whose_owner_began_posting_says_which_reply(store, clock):
    other = KEY.replace("6f1c", "0000")
    crashed = await store.claim(KEY, 120)
    clock.advance(100)
    assert await store.posting(KEY, crashed.token, 120, "digest-1")  # renewed: live 120 s from now
    unclaimed = await store.claim(other, 120)
    assert not await store.posting(other, "not-the-owner", 120, "digest-2")
    clock.advance(100)
    assert (await store.claim(KEY, 120)).state is ClaimState.IN_PROGRESS  # the renewal holds
    clock.advance(21)

    taken = await store.claim(KEY, 120)
    assert taken.state is ClaimState.NEW and taken.posted == ("digest-1",)
    assert not await store.posting(KEY, crashed.token, 120, "late")  # taken over: must not post
    # expired but nobody took it over: still the owner's, renewed
    assert await store.posting(other, unclaimed.token, 120, "digest-2")
    assert (await store.claim(other, 120)).state is ClaimState.IN_PROGRESS
    # the marker belongs to the crashed owner's record, not to the new one
    await store.complete(KEY, taken.token, {"message_id": "m-1"}, 3600)
    clock.advance(3601)
    assert (await store.claim(KEY, 120)).posted == ()


async def test_an_item_written_before_live_until_expires_by_its_ttl_attribute(store, clock):
    boto3.client("dynamodb").put_item(
        TableName=store.table,
        Item={
            "key": {"S": KEY},
            "state": {"S": "in_progress"},
            "token": {"S": "old"},
            TTL_ATTRIBUTE: {"N": str(int(clock.now) + 60)},
        },
    )
    busy = await store.claim(KEY, 120)
    assert busy.state is ClaimState.IN_PROGRESS and 59 <= busy.expires_in_s <= 60
    clock.advance(61)
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW


async def test_release_frees_the_record_for_its_owner_only(store):
    claim = await store.claim(KEY, 120)
    await store.release(KEY, "someone-else")
    assert (await store.claim(KEY, 120)).state is ClaimState.IN_PROGRESS

    await store.release(KEY, claim.token)
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW


async def test_a_complete_record_expires_after_its_ttl(store, clock):
    claim = await store.claim(KEY, 120)
    await store.complete(KEY, claim.token, {"message_id": "m-1"}, 3600)
    clock.advance(3599)
    assert (await store.claim(KEY, 120)).state is ClaimState.COMPLETE
    clock.advance(2)
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW


async def test_items_expire_through_the_templates_ttl_attribute(store, clock):
    declared = properties("IdempotencyTable")["TimeToLiveSpecification"]
    assert declared == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}

    claim = await store.claim(KEY, 120)
    client = boto3.client("dynamodb")
    item = client.get_item(TableName=store.table, Key={"key": {"S": KEY}}, ConsistentRead=True)["Item"]
    # epoch seconds, as TTL requires; an in-progress record outlives its expiry, so that the run
    # taking it over still reads whether its owner was posting
    assert item[TTL_ATTRIBUTE] == {"N": str(int(clock.now) + 120 + IN_PROGRESS_GRACE_S)}

    await store.complete(KEY, claim.token, {"message_id": "m-1"}, 7 * 24 * 3600)
    item = client.get_item(TableName=store.table, Key={"key": {"S": KEY}}, ConsistentRead=True)["Item"]
    assert item[TTL_ATTRIBUTE] == {"N": str(int(clock.now) + 7 * 24 * 3600)}
    assert item["state"] == {"S": "complete"}


async def test_a_missing_table_is_a_failure_no_retry_fixes(monkeypatch):
    with mocked_aws(monkeypatch):
        with pytest.raises(DependencyError) as failure:
            await DynamoDbStore("no-such-table").claim(KEY, 120)
    assert failure.value.retryable is False and failure.value.kind == "rejected"
    assert "ResourceNotFoundException" in str(failure.value)


def test_settings_choose_the_dynamodb_store_without_touching_aws():
    s = settings.load(
        {"AGENT_RUNTIME__IDEMPOTENCY__BACKEND": "dynamodb", "AGENT_RUNTIME__IDEMPOTENCY__DYNAMODB_TABLE": "records"}
    )
    store = idempotency.build(s)
    assert isinstance(store, DynamoDbStore) and store.table == "records"
    assert store._client is None  # the client is made on the first claim, not at cold start


async def test_a_claim_is_free_the_moment_it_expires(store, clock):
    """At exactly its expiry a claim counts as expired, as in the other backends (a retry timed by the
    Retry-After of the claim's 409 may land on that very instant)."""
    await store.claim(KEY, 120)
    clock.advance(120)
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW


async def test_an_old_items_ttl_attribute_frees_it_at_that_instant_too(store, clock):
    boto3.client("dynamodb").put_item(
        TableName=store.table,
        Item={
            "key": {"S": KEY},
            "state": {"S": "in_progress"},
            "token": {"S": "old"},
            TTL_ATTRIBUTE: {"N": "1700000060"},
        },
    )
    clock.now = 1_700_000_060
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "PutItem"), "unavailable"),
        (ClientError({"Error": {"Code": "ThrottlingException"}}, "PutItem"), "unavailable"),
        (ClientError({"Error": {"Code": "RequestLimitExceeded"}}, "PutItem"), "unavailable"),
        (ClientError({"Error": {"Code": "InternalServerError"}}, "PutItem"), "unavailable"),
        (ReadTimeoutError(endpoint_url="https://dynamodb.eu-central-1.amazonaws.com"), "timeout"),
        (ConnectTimeoutError(endpoint_url="https://dynamodb.eu-central-1.amazonaws.com"), "timeout"),
        (EndpointConnectionError(endpoint_url="https://dynamodb.eu-central-1.amazonaws.com"), "unavailable"),
    ],
)
async def test_throttling_and_timeouts_are_failures_a_retry_can_help(store, failure, kind):
    """What botocore raises once its own retries are spent: the run fails retryable (503/504), and
    health learns the store is failing; the next answered call clears it."""
    client = store._boto()

    def fail(**_: object) -> None:
        raise failure

    if isinstance(failure, ClientError):
        stub = Stubber(client)
        stub.add_client_error("put_item", service_error_code=failure.response["Error"]["Code"])
        stub.activate()
    else:
        client.meta.events.register_first("before-send.dynamodb.PutItem", fail)
    try:
        with pytest.raises(DependencyError) as raised:
            await store.claim(KEY, 120)
    finally:
        if isinstance(failure, ClientError):
            stub.deactivate()
        else:
            client.meta.events.unregister("before-send.dynamodb.PutItem", fail)
    assert raised.value.retryable is True and raised.value.kind == kind
    if isinstance(failure, ClientError):
        assert failure.response["Error"]["Code"] in str(raised.value)
    assert store.failing == kind
    assert (await store.claim(KEY, 120)).state is ClaimState.NEW
    assert store.failing is None
