"""Traces: OpenTelemetry spans exported over OTLP/HTTP to a real receiver on loopback, which decodes
them (opentelemetry-proto); nothing imported when no endpoint is configured."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers import aws_lambda
from shared.infra import telemetry
from standins.server import Served
from tests.conftest import ROOT, free_port, invocation
from tests.runner_support import FunctionProcess, bridge, eventually

TEXT = "таємне питання про бюджет 4417"  # what no span may carry
UPSTREAM_TRACE, UPSTREAM_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
SERVER, CLIENT, CONSUMER = 2, 3, 5  # the protocol's SpanKind values


@dataclass
class Exported:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class Receiver:
    """An OTLP/HTTP receiver: ``POST /v1/traces``, an ExportTraceServiceRequest in protobuf, decoded."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.bodies: list[bytes] = []
        self.app = Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    async def traces(self, request: Request) -> Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            service = {a.key: _value(a.value) for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        Exported(
                            service,
                            s.name,
                            s.kind,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in s.attributes},
                            s.status.code == 2,  # STATUS_CODE_ERROR
                        )
                    )
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def named(self, name: str, trace_id: str | None = None) -> list[Exported]:
        return [s for s in self.spans if s.name == name and trace_id in (None, s.trace_id)]

    def one(self, name: str, trace_id: str | None = None) -> Exported:
        [found] = self.named(name, trace_id)
        return found

    def children(self, parent: Exported) -> list[Exported]:
        return [s for s in self.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]

    def child(self, parent: Exported, name: str) -> Exported:
        found = [s for s in self.children(parent) if s.name == name]
        assert len(found) == 1, (name, [s.name for s in self.children(parent)])
        return found[0]

    def carries(self, text: str) -> bool:
        return any(text.encode() in body for body in self.bodies)


@pytest.fixture
def receiver(monkeypatch):
    """The receiver, with the standard environment pointing this process (and its children) at it."""
    found = Receiver()
    served = Served(found.app)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", served.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: spans leave at once
    telemetry.shutdown()
    yield found
    telemetry.shutdown()
    served.stop()


def _ask(stack) -> tuple[str, dict]:
    channel = stack.channel()
    message = stack.messaging.add_message(channel, TEXT)
    return channel, invocation(channel, message_id=message["id"])


def _expected_llm_span(chat: Exported, provider: str) -> None:
    attributes = chat.attributes
    assert chat.kind == CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == provider
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "gpt-4"
    assert attributes["gen_ai.agent.id"] == "agent:sofia"
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes


# --- off --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "console,otlp"}, True),
    ],
)
def test_traces_are_on_only_with_an_otlp_endpoint(environ, wanted):
    assert telemetry.wanted(environ) is wanted


def test_with_no_endpoint_an_invocation_imports_no_opentelemetry(stack):
    """A whole invocation, in a fresh interpreter with the standard variables unset."""
    probe = f"""
import asyncio, json, sys
from shared.infra import settings
from shared import runtime
runtime.install(runtime.Runtime.from_settings(settings.load({json.dumps(stack.env())})))
from handlers import accept
from shared.infra import telemetry
assert telemetry.configure("agent-runtime") is False
body = {json.dumps(_ask(stack)[1])}
async def main():
    return await accept.run(lambda: asyncio.sleep(0, body), authenticate=False)
answer = asyncio.run(main())
assert telemetry.span("x") is telemetry.NO_SPAN
print(answer.status, sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=1) == ["200", "[]\n"]


# --- one process ------------------------------------------------------------------------------


async def test_an_http_invocation_is_one_trace_joined_by_the_services_it_calls(
    stack, configure, client, receiver, logs
):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")
    assert telemetry.configure("agent-runtime")
    _, body = _ask(stack)

    response = await client.post("/invoke", json=body, headers={"traceparent": UPSTREAM})
    telemetry.flush()

    assert response.json()["status"] == "replied"
    server = receiver.one("invoke_agent agent:sofia", UPSTREAM_TRACE)
    assert server.kind == SERVER and server.parent_id == UPSTREAM_SPAN and server.service == "agent-runtime"
    assert server.attributes["http.response.status_code"] == 200
    assert (
        server.attributes["gen_ai.usage.input_tokens"] == 21 and server.attributes["agent_runtime.outcome"] == "replied"
    )
    steps = {s.name for s in receiver.children(server)}
    assert {"blueprint", "history", "idempotency", "memory", "llm", "post", "store"} <= steps
    assert receiver.child(receiver.child(server, "history"), "GET messaging").kind == CLIENT
    chat = receiver.child(receiver.child(server, "llm"), "chat gpt-4")
    _expected_llm_span(chat, "openai")
    assert chat.attributes["gen_ai.usage.input_tokens"] == 21 and chat.attributes["gen_ai.usage.output_tokens"] == 7
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    call = receiver.child(chat, "POST llm")
    assert call.attributes["http.response.status_code"] == 200
    # the provider got this call's span as its parent: it joins the trace
    assert stack.openai.headers[0]["traceparent"] == f"00-{UPSTREAM_TRACE}-{call.span_id}-01"
    assert not receiver.carries(TEXT)
    [line] = [r for r in logs.records if r.getMessage() == "invocation replied"]
    assert line.fields["trace_id"] == UPSTREAM_TRACE and line.fields["span_id"] == server.span_id


async def test_a_trace_the_caller_did_not_sample_is_carried_on_and_not_recorded(stack, configure, client, receiver):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")
    assert telemetry.configure("agent-runtime")
    _, body = _ask(stack)

    response = await client.post(
        "/invoke", json=body, headers={"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-00"}
    )
    telemetry.flush()

    assert response.json()["status"] == "replied" and receiver.spans == []
    # the provider is told the trace and that it is not sampled, so it records nothing either
    version, trace_id, _, flags = stack.openai.headers[0]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", UPSTREAM_TRACE, "00")


async def test_a_failed_dependency_call_marks_its_span(stack, configure, client, receiver):
    from standins.server import Fault

    configure(AGENT_RUNTIME__LLM__MOCK_FALLBACK="true")
    assert telemetry.configure("agent-runtime")
    stack.llm.faults.set("proxy", Fault(status=500))
    _, body = _ask(stack)

    outcome = (await client.post("/invoke", json=body, headers={"traceparent": UPSTREAM})).json()
    telemetry.flush()

    assert outcome["llm_source"] == "mock"
    llm = receiver.child(receiver.one("invoke_agent agent:sofia", UPSTREAM_TRACE), "llm")
    assert llm.error and llm.attributes["error.type"] == "unavailable"  # an optional step: noted, still marked
    calls = receiver.children(receiver.child(llm, "chat gpt-4"))
    assert calls and all(c.error and c.attributes["http.response.status_code"] == 500 for c in calls)


async def test_message_text_is_recorded_only_when_asked(stack, configure, client, receiver):
    configure(AGENT_RUNTIME__TELEMETRY__RECORD_CONTENT="true")
    assert telemetry.configure("agent-runtime")
    _, body = _ask(stack)

    await client.post("/invoke", json=body)
    telemetry.flush()

    [chat] = receiver.named("chat gpt-4")
    assert TEXT in chat.attributes["gen_ai.input.messages"] and TEXT in chat.attributes["gen_ai.output.messages"]


async def test_sqs_attributes_and_cloudevent_extensions_carry_the_parent(stack, configure, receiver):
    assert telemetry.configure("agent-runtime")
    _, body = _ask(stack)
    record = {
        "messageId": "m-1",
        "body": json.dumps(body),
        "messageAttributes": {"traceparent": {"stringValue": UPSTREAM, "dataType": "String"}},
    }
    assert await aws_lambda.sqs_batch([record], None) == {"batchItemFailures": []}

    from functions_framework.aio import create_asgi_app

    app = create_asgi_app(target="invoke_event", source=str(ROOT / "main.py"))
    other_trace = uuid.uuid4().hex
    _, event = _ask(stack)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": "//daarion/router",
        "ce-type": "com.daarion.agent.invoke",
        "ce-traceparent": f"00-{other_trace}-{UPSTREAM_SPAN}-01",
        "content-type": "application/json",
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://fn") as fn:
        assert (await fn.post("/", content=json.dumps(event), headers=headers)).status_code == 200
    telemetry.flush()

    for trace_id in (UPSTREAM_TRACE, other_trace):
        server = receiver.one("invoke_agent agent:sofia", trace_id)
        assert server.parent_id == UPSTREAM_SPAN and server.attributes["agent_runtime.outcome"] == "replied"


# --- on-prem: NATS → bridge → function → stand-ins --------------------------------------------


async def test_one_invocation_through_the_bridge_is_one_trace(stack, nats_server, receiver):
    function = FunctionProcess(free_port(), stack.env(OTEL_SERVICE_NAME="agent-runtime-function"))
    b = bridge(nats_server.url, f"{function.url}/invoke")  # its environment turns tracing on in this process
    nc = None
    try:
        await function.start()
        await b.start()
        channel, body = _ask(stack)
        nc = await nats.connect(nats_server.url)
        await nc.publish("router.invoke.agent", json.dumps(body).encode(), headers={"traceparent": UPSTREAM})
        await eventually(lambda: stack.messaging.replies_to(channel), what="the reply")
        await eventually(lambda: receiver.named("store", UPSTREAM_TRACE), what="the function's spans")
        await eventually(lambda: receiver.named("process router.invoke.agent"), what="the bridge's spans")
    finally:
        if nc is not None:
            await nc.close()
        await b.stop()
        await function.stop()

    consumer = receiver.one("process router.invoke.agent", UPSTREAM_TRACE)
    assert consumer.kind == CONSUMER and consumer.parent_id == UPSTREAM_SPAN
    assert consumer.service == "agent-runtime-bridge" and consumer.attributes["messaging.system"] == "nats"
    forward = receiver.child(consumer, "POST")
    assert forward.kind == CLIENT and forward.attributes["http.response.status_code"] == 200
    server = receiver.child(forward, "invoke_agent agent:sofia")
    assert server.kind == SERVER and server.service == "agent-runtime-function"
    for step, call in (("history", "GET messaging"), ("memory", "POST memory"), ("post", "POST messaging")):
        assert receiver.child(receiver.child(server, step), call).kind == CLIENT
    chat = receiver.child(receiver.child(server, "llm"), "chat gpt-4")
    _expected_llm_span(chat, "llm-proxy")
    assert (chat.attributes["gen_ai.usage.input_tokens"], chat.attributes["gen_ai.usage.output_tokens"]) == (10, 5)
    assert receiver.child(chat, "POST llm").kind == CLIENT
    assert {s.trace_id for s in receiver.spans} == {UPSTREAM_TRACE}  # one trace, nothing else
    assert not receiver.carries(TEXT)  # neither the member's message nor the reply that echoes it


async def test_each_tool_call_is_an_execute_tool_span_without_its_arguments(stack, configure, client, receiver):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")
    assert telemetry.configure("agent-runtime")
    stack.pdp.policy = {"agent:sofia": {"task.create"}}  # followup.create is denied
    stack.openai.script = [
        [("create_task", {"title": "secret plan"}), ("create_followup", {"text": "later"})],
        "Done.",
    ]
    _, body = _ask(stack)

    response = await client.post("/invoke", json=body, headers={"traceparent": UPSTREAM})
    telemetry.flush()

    assert response.json()["tool_calls"] == [
        {"tool": "create_task", "result": "ok"},
        {"tool": "create_followup", "result": "denied"},
    ]
    tools = receiver.child(receiver.one("invoke_agent agent:sofia", UPSTREAM_TRACE), "tools")
    task = receiver.child(tools, "execute_tool create_task")
    assert task.attributes["gen_ai.operation.name"] == "execute_tool"
    assert task.attributes["gen_ai.tool.name"] == "create_task" and task.attributes["gen_ai.tool.call.id"] == "call_0"
    assert not task.error and receiver.child(task, "POST toolcore").kind == CLIENT
    followup = receiver.child(tools, "execute_tool create_followup")
    assert followup.error and followup.attributes["error.type"] == "denied"
    assert not receiver.carries("secret plan")
