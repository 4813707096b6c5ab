"""The Lambda entry points, called exactly as template.yaml names them, against moto and the stand-ins.

The handlers are synchronous (Lambda calls them so) and run the core on their container's own
event loop, so these tests are synchronous too.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from handlers import aws_lambda, sqs
from shared import runtime
from shared.clients import http as shared_http
from shared.idempotency import record_key
from shared.idempotency.dynamodb import DynamoDbStore
from shared.infra import settings
from shared.infra.observability import JsonFormatter
from shared.infra.secrets import SecretUnavailable
from standins.server import Fault
from tests.aws import create_table, handler, mocked_aws, template
from tests.conftest import ROOT, invocation

SEED_ROUTES = {
    ("GET", "/health"): "HealthFunction",
    ("POST", "/invoke"): "InvokeFunction",
    ("POST", "/internal/agent-runtime/test-channel"): "TestChannelFunction",
}
CONTEXT = SimpleNamespace(aws_request_id="req-1", function_name="agent-runtime")


def http_routes() -> dict[tuple[str, str], str]:
    """(method, path) → function, from the template's HttpApi events."""
    return {
        (event["Properties"]["Method"], event["Properties"]["Path"]): name
        for name, resource in template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "HttpApi"
    }


def api_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    encode: bool = False,
) -> dict[str, Any]:
    """An API Gateway HTTP API event, payload format 2.0 (header names lower-case)."""
    raw = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    if isinstance(raw, bytes):
        raw = raw.decode()
    if encode and raw is not None:
        raw = base64.b64encode(raw.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}},
        "queryStringParameters": query,
        "requestContext": {"http": {"method": method, "path": path}, "requestId": "api-req-1", "stage": "$default"},
        "body": raw,
        "isBase64Encoded": encode,
    }


def call(method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Invoke the function template.yaml routes (method, path) to, as API Gateway would."""
    answer = handler(http_routes()[(method, path)])(api_event(method, path, body, **kw), CONTEXT)
    return answer["statusCode"], json.loads(answer["body"]), answer["headers"]


@pytest.fixture
def aws(monkeypatch, configure):
    """moto for the test; installs a runtime (env overrides allowed) on a table made from the template."""
    with mocked_aws(monkeypatch):
        table = create_table()

        def on_aws(**env: str) -> runtime.Runtime:
            rt = configure(**env)
            rt.idempotency = DynamoDbStore(table)
            return rt

        on_aws()
        yield on_aws
    aws_lambda.run(shared_http.aclose())  # the container loop's pooled session


def test_the_template_serves_the_seeds_paths_on_named_handlers():
    assert http_routes() == SEED_ROUTES
    for function in SEED_ROUTES.values():
        assert callable(handler(function))


@pytest.mark.parametrize(("method", "path"), list(SEED_ROUTES))
def test_every_route_answers(stack, aws, method, path):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    status, body, _ = call(method, path, invocation(channel) if method == "POST" else None)

    assert status == 200, body
    if method == "GET":
        assert body == {"status": "ok", "service": "agent-runtime", "version": "1.0.0", "nats_connected": None}
    else:
        assert body["status"] == "replied"
        assert [p["message_id"] for p in stack.messaging.replies_to(channel)] == [body["message_id"]]


def test_deep_health_asks_the_dependencies(stack, aws):
    status, body, _ = call("GET", "/health", query={"deep": "1"})
    assert status == 200 and set(body["dependencies"]) == {"messaging", "memory", "llm"}
    assert all(d["ok"] for d in body["dependencies"].values())


def test_base64_body_and_exactly_one_reply_through_dynamodb(stack, aws):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    first = call("POST", "/invoke", invocation(channel), encode=True)
    again = call("POST", "/invoke", invocation(channel), encode=True)

    assert (first[0], first[1]["status"]) == (200, "replied")
    assert (again[0], again[1]["status"], again[1]["reason"]) == (200, "skipped", "duplicate")
    assert again[1]["message_id"] == first[1]["message_id"]
    assert len(stack.messaging.replies_to(channel)) == 1


@pytest.mark.parametrize(
    ("body", "encode", "status", "error"),
    [
        ("{not json", False, 400, "not JSON"),
        ("%%% not base64 %%%", None, 400, "base64"),
        ({"agent_id": "agent:sofia", "payload": {"channel_id": "../../admin"}}, False, 422, "payload.channel_id"),
        ({"agent_id": "sofia", "payload": {"channel_id": str(uuid.uuid4())}}, True, 422, "agent_id"),
        (invocation(str(uuid.uuid4()), padding="x" * 300_000), False, 413, "262144"),
    ],
)
def test_bad_input_is_refused_before_any_dependency(stack, aws, body, encode, status, error):
    event = api_event("POST", "/invoke", body, encode=bool(encode))
    if encode is None:  # declared base64, but is not
        event["isBase64Encoded"] = True
    answer = handler("InvokeFunction")(event, CONTEXT)
    assert answer["statusCode"] == status
    assert error in json.loads(answer["body"])["error"]
    assert stack.messaging.faults.calls == {}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Internal-Secret": "wrong"}, 403),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"X-Internal-Secret": "runtime-s3cret"}, 200),
        ({"Authorization": "Bearer runtime-s3cret"}, 200),
    ],
)
def test_auth_with_the_secret_from_secrets_manager(stack, aws, logs, headers, status):
    arn = boto3.client("secretsmanager").create_secret(Name="agent-runtime", SecretString="runtime-s3cret")["ARN"]
    aws(AGENT_RUNTIME_SECRET_ARN=arn)
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    for path in ("/invoke", "/internal/agent-runtime/test-channel"):
        code, body, _ = call("POST", path, invocation(channel), headers=headers)
        assert code == status
        assert "runtime-s3cret" not in json.dumps(body)
    assert call("GET", "/health")[0] == 200  # health stays open
    assert len(stack.messaging.replies_to(channel)) == (1 if status == 200 else 0)
    lines = [JsonFormatter().format(r) for r in logs.records]
    assert not any("runtime-s3cret" in line for line in lines)


def test_dependency_secrets_come_from_secrets_manager(stack, aws):
    client = boto3.client("secretsmanager")
    llm_arn = client.create_secret(Name="llm-proxy", SecretString="llm-s3cret")["ARN"]
    memory_arn = client.create_secret(Name="memory", SecretString="memory-s3cret")["ARN"]
    stack.llm.secret = "llm-s3cret"  # the stand-in answers 401 to anything else
    rt = aws(LLM_PROXY_SECRET_ARN=llm_arn, MEMORY_ORCHESTRATOR_SECRET_ARN=memory_arn, MESSAGING_SERVICE_SECRET_ARN="")
    assert rt.settings.memory.secret.get_secret_value() == "memory-s3cret"
    assert rt.settings.messaging.secret is None  # an empty ARN is not a secret
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    status, body, _ = call("POST", "/invoke", invocation(channel))

    assert status == 200 and body["llm_source"] == "llm"


def test_an_unreadable_secret_names_the_variable(monkeypatch):
    with mocked_aws(monkeypatch):
        arn = boto3.client("secretsmanager").create_secret(Name="gone", SecretString="old-value")["ARN"]
        boto3.client("secretsmanager").delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        with pytest.raises(SecretUnavailable) as failure:
            settings.load({"LLM_PROXY_SECRET_ARN": arn})
    assert "LLM_PROXY_SECRET_ARN" in str(failure.value) and "ResourceNotFoundException" in str(failure.value)
    assert "old-value" not in str(failure.value)


def test_secrets_are_read_once_per_container(monkeypatch):
    with mocked_aws(monkeypatch):
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="runtime", SecretString="first")["ARN"]
        monkeypatch.setenv("AGENT_RUNTIME_SECRET_ARN", arn)
        settings.get.cache_clear()
        try:
            assert settings.get().runtime.secret.get_secret_value() == "first"
            client.put_secret_value(SecretId=arn, SecretString="rotated")
            assert settings.get().runtime.secret.get_secret_value() == "first"
        finally:
            settings.get.cache_clear()


def answering_elsewhere(message: dict[str, Any]) -> None:
    """Another container claims the message: it is being answered right now."""
    aws_lambda.run(runtime.get().idempotency.claim(record_key("agent:sofia", message["id"]), 120))


@pytest.mark.parametrize(
    ("case", "status", "retry_after"),
    [
        ("history_unavailable", 503, None),  # a retry can help
        ("answering_elsewhere", 409, ("118", "119", "120", "121")),  # once the 120 s claim could expire
        ("not_a_member", 424, None),  # no retry fixes it
    ],
)
def test_dependency_failures_map_like_the_http_functions(stack, aws, case, status, retry_after):
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    if case == "history_unavailable":
        stack.messaging.faults.set("history", Fault(status=503))
    elif case == "answering_elsewhere":
        answering_elsewhere(message)
    else:
        stack.messaging.members = {}

    code, body, headers = call("POST", "/invoke", invocation(channel))

    assert (code, body["status"]) == (status, "failed")
    assert headers.get("Retry-After") in (retry_after if isinstance(retry_after, tuple) else (retry_after,))


def test_the_log_line_carries_the_trace_for_both_clouds(stack, aws, logs, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "daarion-prod")
    channel = stack.channel()
    stack.messaging.add_message(channel, "a private question")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    call("POST", "/invoke", invocation(channel), headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    call("POST", "/invoke", invocation(channel), headers={"X-Cloud-Trace-Context": f"{'a' * 32}/1;o=1"})

    lines = [json.loads(JsonFormatter().format(r)) for r in logs.records if r.getMessage().startswith("invocation ")]
    assert [line["trace_id"] for line in lines] == [trace, "a" * 32]
    first = lines[0]
    assert first["severity"] == "INFO" and first["message"] == "invocation replied"
    assert first["logging.googleapis.com/trace"] == f"projects/daarion-prod/traces/{trace}"
    assert first["channel_id"] == channel and first["request_id"] == "req-1"
    assert "a private question" not in json.dumps(lines)


# --- SQS ---------------------------------------------------------------------------------------


@pytest.fixture
def queues(aws, monkeypatch):
    """The invocation queue and its dead-letter queue, with the template's redrive."""
    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName="dead-letters")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = template()["Resources"]["InvocationQueue"]["Properties"]["RedrivePolicy"]
    main = sqs.create_queue(
        QueueName="invocations",
        Attributes={
            "VisibilityTimeout": "540",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": redrive["maxReceiveCount"]}
            ),
        },
    )["QueueUrl"]
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", dlq)
    monkeypatch.setenv("INVOCATION_QUEUE_URL", main)
    return SimpleNamespace(sqs=sqs, main=main, dlq=dlq)


def receive_as_lambda(queues: SimpleNamespace, bodies: list[str]) -> list[dict[str, Any]]:
    """Send the bodies, receive them back, and shape them as Lambda's SQS event records."""
    for body in bodies:
        queues.sqs.send_message(QueueUrl=queues.main, MessageBody=body)
    received = queues.sqs.receive_message(QueueUrl=queues.main, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    messages = {m["Body"]: m for m in received["Messages"]}
    assert len(messages) == len(set(bodies))
    return [
        {
            "messageId": messages[body]["MessageId"],
            "receiptHandle": messages[body]["ReceiptHandle"],
            "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:invocations",
        }
        for body in bodies
    ]


def dead_letters(queues: SimpleNamespace) -> list[dict[str, Any]]:
    answer = queues.sqs.receive_message(QueueUrl=queues.dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    return answer.get("Messages", [])


def test_an_sqs_batch_reports_exactly_the_records_worth_retrying(stack, aws, queues):
    good, busy, refused = stack.channel(), stack.channel(), stack.channel()
    stack.messaging.members = {good: {"agent:sofia"}, busy: {"agent:sofia"}}  # not a member of `refused`
    stack.messaging.add_message(good, "hello")
    busy_message = stack.messaging.add_message(busy, "are you there?")
    stack.messaging.add_message(refused, "hello?")
    answering_elsewhere(busy_message)

    bodies = {
        "good": json.dumps(invocation(good)),
        "not_json": "{not json",
        "invalid": json.dumps({"agent_id": "sofia", "payload": {"channel_id": good}}),
        "busy": json.dumps(invocation(busy)),
        "refused": json.dumps(invocation(refused)),
    }
    batch = receive_as_lambda(queues, list(bodies.values()))
    ids = dict(zip(bodies, (r["messageId"] for r in batch), strict=True))
    visibility: list[dict[str, Any]] = []
    sqs.client().meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibility", lambda params, **_: visibility.append(params)
    )

    answer = handler("InvokeFunction")({"Records": batch}, CONTEXT)

    assert answer == {"batchItemFailures": [{"itemIdentifier": ids["busy"]}]}
    assert len(stack.messaging.replies_to(good)) == 1 and stack.messaging.replies_to(refused) == []
    # the busy record comes back when its outcome says (Retry-After), not after the queue's 540 s
    [(handle, seconds)] = [(v["ReceiptHandle"], v["VisibilityTimeout"]) for v in visibility]
    assert handle == batch[3]["receiptHandle"] and 118 <= seconds <= 121  # when the 120 s claim could expire
    parked = {m["MessageAttributes"]["source_message_id"]["StringValue"]: m for m in dead_letters(queues)}
    assert set(parked) == {ids["not_json"], ids["invalid"], ids["refused"]}
    reasons = {
        name: (parked[ids[name]]["MessageAttributes"]["status"]["StringValue"], parked[ids[name]]["Body"])
        for name in ("not_json", "invalid", "refused")
    }
    assert reasons == {
        "not_json": ("400", bodies["not_json"]),
        "invalid": ("422", bodies["invalid"]),
        "refused": ("424", bodies["refused"]),
    }
    assert "agent_id" in parked[ids["invalid"]]["MessageAttributes"]["reason"]["StringValue"]


def test_duplicated_records_in_a_batch_get_one_reply(stack, aws, queues):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    body = json.dumps(invocation(channel))
    [record] = receive_as_lambda(queues, [body])
    twin = {**record, "messageId": str(uuid.uuid4())}  # at-least-once: the same invocation twice

    answer = handler("InvokeFunction")({"Records": [record, twin]}, CONTEXT)

    assert answer == {"batchItemFailures": []}
    assert len(stack.messaging.replies_to(channel)) == 1
    assert dead_letters(queues) == []


def test_a_record_that_cannot_be_dead_lettered_stays_on_the_queue(stack, aws, queues, monkeypatch):
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", queues.dlq.replace("dead-letters", "no-such-queue"))
    [record] = receive_as_lambda(queues, ["{not json"])

    answer = handler("InvokeFunction")({"Records": [record]}, CONTEXT)

    assert answer == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}


def test_importing_the_functions_does_not_import_boto3():
    """Cold start: boto3 is imported only when a request needs AWS."""
    code = (
        "import sys, main, handlers.aws_lambda, handlers.cloudevent, shared.runtime, "
        "shared.idempotency.dynamodb, shared.infra.secrets; assert 'boto3' not in sys.modules, 'boto3 imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_a_handoff_lands_on_the_invocation_queue_and_the_target_answers_it_from_there(stack, aws, queues):
    aws(LLM_PROXY_URL="", AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL=queues.main)
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "ask Helion: how much is in the treasury?")

    status, outcome, _ = call("POST", "/invoke", invocation(channel, message_id=message["id"]))

    assert status == 200 and outcome["status"] == "handed_off" and outcome["handed_off_to"] == "agent:helion"
    [queued] = queues.sqs.receive_message(QueueUrl=queues.main, MaxNumberOfMessages=10)["Messages"]
    sent = json.loads(queued["Body"])
    assert sent["agent_id"] == "agent:helion" and sent["payload"]["message_id"] == message["id"]
    assert sent["payload"]["handoff"]["from_agent"] == "agent:sofia"
    record = {
        "messageId": queued["MessageId"],
        "receiptHandle": queued["ReceiptHandle"],
        "body": queued["Body"],
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:invocations",
    }
    assert handler("InvokeFunction")({"Records": [record]}, CONTEXT) == {"batchItemFailures": []}
    said = [m["sender_id"] for m in stack.messaging.channels[channel] if m["sender_id"].startswith("agent:")]
    assert said == ["agent:sofia", "agent:helion"]  # Sofia's note, then Helion's one reply


def test_a_stream_is_not_available_behind_api_gateway_the_json_outcome_is(stack, aws):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    status, outcome, headers = call("POST", "/invoke", invocation(channel), headers={"Accept": "text/event-stream"})
    assert status == 200 and outcome["status"] == "replied"
    assert headers["content-type"] == "application/json"
