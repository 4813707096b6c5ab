"""The NATS JetStream KV idempotency store against a real nats-server, and shared by two functions."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from shared.errors import DependencyError
from shared.idempotency import ClaimState
from shared.idempotency.nats import NatsKvStore
from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess, bridge, eventually


@pytest.fixture
async def stores(nats_server):
    made = [NatsKvStore([nats_server.url], "idem_test", 3600), NatsKvStore([nats_server.url], "idem_test", 3600)]
    yield made
    for store in made:
        await store.close()


async def test_claim_complete_duplicate_across_stores(stores):
    first, second = stores
    claim = await first.claim("agent:sofia/m1", 60)
    assert claim.state is ClaimState.NEW
    assert (await second.claim("agent:sofia/m1", 60)).state is ClaimState.IN_PROGRESS
    await first.complete("agent:sofia/m1", claim.token, {"message_id": "r1"}, 3600)
    done = await second.claim("agent:sofia/m1", 60)
    assert done.state is ClaimState.COMPLETE and done.result == {"message_id": "r1"}
    assert first.nats_connected


async def test_release_gives_the_message_back_to_its_owner_only(stores):
    first, second = stores
    claim = await first.claim("agent:sofia/m2", 60)
    await second.release("agent:sofia/m2", "not-the-owner")
    assert (await second.claim("agent:sofia/m2", 60)).state is ClaimState.IN_PROGRESS
    await first.release("agent:sofia/m2", claim.token)
    assert (await second.claim("agent:sofia/m2", 60)).state is ClaimState.NEW


async def test_an_expired_claim_is_taken_over_and_the_old_owner_loses_it(stores):
    first, second = stores
    crashed = await first.claim("agent:sofia/m3", 0.05)
    await asyncio.sleep(0.1)  # let the in-progress record expire (the wait is the behaviour under test)
    taken = await second.claim("agent:sofia/m3", 60)
    assert taken.state is ClaimState.NEW
    await first.complete("agent:sofia/m3", crashed.token, {"message_id": "stale"}, 3600)  # ignored
    assert (await first.claim("agent:sofia/m3", 60)).state is ClaimState.IN_PROGRESS


async def test_an_old_owner_neither_marks_nor_frees_a_record_taken_over(stores):
    first, second = stores
    crashed = await first.claim("agent:sofia/m7", 0.05)
    await asyncio.sleep(0.1)
    taken = await second.claim("agent:sofia/m7", 60)

    assert not await first.posting("agent:sofia/m7", crashed.token, 60, "late")  # taken over: not marked
    await first.release("agent:sofia/m7", crashed.token)  # at its stale revision: the new claim stays

    assert (await first.claim("agent:sofia/m7", 60)).state is ClaimState.IN_PROGRESS
    await second.complete("agent:sofia/m7", taken.token, {"message_id": "r7"}, 3600)
    assert (await first.claim("agent:sofia/m7", 60)).result == {"message_id": "r7"}
    assert first._owned == {} and second._owned == {}  # nothing kept past complete or release


async def test_taking_over_a_claim_whose_owner_began_posting_says_which_reply(stores):
    first, second = stores
    unclaimed = await first.claim("agent:sofia/m5", 0.05)
    posting = await first.claim("agent:sofia/m6", 60)
    assert await first.posting("agent:sofia/m6", posting.token, 0.05, "digest-6")  # renews for 0.05 s
    assert not await second.posting("agent:sofia/m5", "not-the-owner", 60, "digest-5")
    await asyncio.sleep(0.1)  # both expire

    taken = await second.claim("agent:sofia/m6", 60)
    assert taken.state is ClaimState.NEW and taken.posted == ("digest-6",)
    assert not await first.posting("agent:sofia/m6", posting.token, 60, "late")  # taken over: must not post
    # expired but nobody took it over: still the owner's, renewed
    assert await first.posting("agent:sofia/m5", unclaimed.token, 60, "digest-5")
    assert (await second.claim("agent:sofia/m5", 60)).state is ClaimState.IN_PROGRESS


async def test_nats_down_is_a_retryable_dependency_error(nats_server):
    store = NatsKvStore([f"nats://127.0.0.1:{free_port()}"], "idem_test", 3600)
    with pytest.raises(DependencyError) as failure:
        await store.claim("agent:sofia/m4", 60)
    assert failure.value.retryable and failure.value.kind == "unavailable"


async def test_a_run_with_the_store_down_fails_retryable_and_posts_nothing(stack, configure, client):
    configure(AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats", NATS_URL=f"nats://127.0.0.1:{free_port()}")
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    response = await client.post("/invoke", json=invocation(channel))

    assert response.status_code == 503
    assert response.json()["step"] == "idempotency" and response.json()["retryable"] is True
    assert stack.messaging.posts == [] and stack.llm.requests == []


async def test_two_runners_sharing_the_kv_store_never_double_post(stack, nats_server):
    """Two runners, each with its own function process, get every invocation twice (redelivery)."""
    env = stack.env(
        AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats",
        NATS_URL=nats_server.url,
        AGENT_RUNTIME__IDEMPOTENCY__NATS_BUCKET="shared_idem",
        # a busy duplicate is retried when the claim could have expired: keep that short here
        AGENT_RUNTIME__RUNTIME__DEADLINE_S="3",
        AGENT_RUNTIME__RUNTIME__IDEMPOTENCY_IN_PROGRESS_TTL_S="4",
    )
    functions = [FunctionProcess(free_port(), env) for _ in range(2)]
    # two durable consumers: each runner sees every invocation, as after a redelivery
    bridges = [
        bridge(nats_server.url, f"{f.url}/invoke", mode="jetstream", durable=f"runner-{i}")
        for i, f in enumerate(functions)
    ]
    try:
        for f in functions:
            await f.start()
        for b in bridges:
            await b.start()
        channels = [stack.channel() for _ in range(5)]
        messages = [stack.messaging.add_message(c, f"q{i}") for i, c in enumerate(channels * 2)]
        import nats

        nc = await nats.connect(nats_server.url)
        for m in messages:
            await nc.publish(
                "router.invoke.agent", json.dumps(invocation(m["channel_id"], message_id=m["id"])).encode()
            )
        await nc.flush()
        # each message reaches both runners; one answers, the other finds it answered (or in progress, then answered)
        await eventually(lambda: len(stack.messaging.posts) >= 10, timeout_s=30, what="the replies")
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while True:
            infos = [await js.consumer_info("AGENT_INVOCATIONS", f"runner-{i}") for i in range(2)]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                break  # both runners have had, and acknowledged, every invocation
            assert time.monotonic() < deadline, "the runners did not finish"
            await asyncio.sleep(0.05)
        await nc.close()
        for b in bridges:
            assert await b.stop()
    finally:
        for f in functions:
            await f.kill()
    texts = sorted(p["text"] for p in stack.messaging.posts)
    assert texts == sorted(f"LLM reply to: q{i}" for i in range(10))  # one reply per message, never two


async def test_two_runs_taking_over_one_expired_claim_at_once_cannot_both_win(stores):
    """Both read the expired record before either writes: only the compare-and-set on the revision
    they read lets exactly one of them take it over."""
    first, second = stores
    await first.claim("agent:sofia/m8", 0.05)
    await asyncio.sleep(0.1)  # the claim expires (the wait is the behaviour under test)
    both_read = asyncio.Barrier(2)
    for store in stores:
        kv = await store._kv()
        read = kv.get

        async def get_then_wait(key, *args, _read=read, **kwargs):
            entry = await _read(key, *args, **kwargs)
            await asyncio.wait_for(both_read.wait(), 5)
            return entry

        kv.get = get_then_wait

    claims = await asyncio.gather(first.claim("agent:sofia/m8", 60), second.claim("agent:sofia/m8", 60))

    assert sorted(c.state.value for c in claims) == ["in_progress", "new"]


async def test_an_old_owner_that_marked_and_lost_its_record_releases_quietly(stores):
    first, second = stores
    mine = await first.claim("agent:sofia/m9", 60)
    assert await first.posting("agent:sofia/m9", mine.token, 0.05, "digest")  # the post stalls past its TTL
    await asyncio.sleep(0.1)
    taken = await second.claim("agent:sofia/m9", 60)
    assert taken.state is ClaimState.NEW and taken.posted

    await first.release("agent:sofia/m9", mine.token)  # its post failed: nothing to free, no error

    assert (await first.claim("agent:sofia/m9", 60)).state is ClaimState.IN_PROGRESS  # still the taker's


async def test_a_claim_whose_answer_was_lost_is_still_its_own(stores):
    """The create was done, its answer lost (a leader dying just after it replicated): the repeat
    finds the record, and it is this claim's own, not another run's."""
    import nats.errors

    first, second = stores
    bucket = (await first._kv())._target  # under the store's patience: its repeat is what is tested
    create = bucket.create
    answers: list[int] = []

    async def done_then_lost(*args, **kwargs):
        answers.append(await create(*args, **kwargs))
        if len(answers) == 1:
            raise nats.errors.TimeoutError
        return answers[-1]

    bucket.create = done_then_lost
    claim = await first.claim("agent:sofia/m9", 60)

    assert claim.state is ClaimState.NEW and len(answers) == 1  # repeated, found done
    assert (await second.claim("agent:sofia/m9", 60)).state is ClaimState.IN_PROGRESS
    await first.complete("agent:sofia/m9", claim.token, {"message_id": "r9"}, 3600)
    assert (await second.claim("agent:sofia/m9", 60)).result == {"message_id": "r9"}
