"""functions-framework source file: every target of the agent runtime.

    functions-framework --target agent_runtime --asgi --port 7006

Handlers are imported on the first request, so a cold start pays only for what it serves.
"""

import gc

from functions_framework import aio

# functions-framework imports this file in gunicorn's master, before the worker is forked: what is
# loaded by now lives as long as the process. Frozen, it is left out of every later collection, so
# the full collection the first request's imports set off walks only what they allocated (and the
# worker's pages stay shared with the master's).
gc.freeze()


@aio.http
async def invoke(request):
    """POST an invocation (the router's JSON); answers with the outcome."""
    from handlers import http

    return await http.invoke(request)


@aio.http
async def test_channel(request):
    """The seed's manual entry point: POST an invocation, get the outcome."""
    from handlers import http

    return await http.test_channel(request)


@aio.http
async def health(request):
    """GET: the service's health; ?deep=1 asks every dependency."""
    from handlers import http

    return await http.health(request)


@aio.cloud_event
async def invoke_event(event):
    """An invocation as a CloudEvent: the event's data, or a Pub/Sub message (base64 message.data) carrying it."""
    from handlers import cloudevent

    await cloudevent.invoke_event(event)


@aio.http
async def agent_runtime(request):
    """The seed's paths in one process: /health, /invoke, /internal/agent-runtime/test-channel."""
    from handlers import http

    return await http.agent_runtime(request)
