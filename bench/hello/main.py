"""The cold-start reference: a bare functions-framework ASGI hello world."""

from functions_framework import aio


@aio.http
async def hello(request):
    return "ok"
