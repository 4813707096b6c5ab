"""On-prem entry point: bridge NATS invocations to the HTTP invoke function.

    python local_runner.py [options]          the bridge, as deployed: waits for its configured NATS;
                                              without a function_url it serves agent_runtime itself
    python local_runner.py local [options]    the local developer stack (./dev run): the same bridge,
                                              plus a private nats-server and stand-ins (localstack/)
    python local_runner.py say "привіт"       talk to the agent of the running local stack

Every option is a field of the ``runner`` settings (also ``runner.<option>`` in config.yaml and
``AGENT_RUNTIME__RUNNER__<OPTION>`` in the environment), plus ``--nats-url`` (``NATS_URL``) and
``--subject``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from shared.infra import settings as settings_module
from shared.infra.settings import NatsSettings, RunnerSettings, Settings

log = logging.getLogger("agent_runtime.runner")

USAGE = """local_runner.py [options]            the NATS-to-HTTP bridge, as deployed
       local_runner.py local [options]      the local developer stack (./dev run)
       local_runner.py say TEXT [options]   talk to the agent of the running local stack"""
BRIDGE = (
    "The NATS-to-HTTP bridge, as deployed: it waits for its configured NATS, and serves agent_runtime "
    "itself when no function URL is given. No stand-ins, no private nats-server: those are `local`."
)
LOCAL = (
    "The local developer stack: the bridge and agent_runtime, plus a private nats-server when nothing "
    "answers at the NATS URL, stand-ins for messaging-service and agent-memory left at their default "
    "URLs and for toolcore and pdp-service left unset (localstack/policy.yaml says which tools each agent "
    "may run), and the keyword mock when the LLM's URL is the default."
)


def add_option(p: argparse.ArgumentParser, flag: str, model: type[BaseModel], name: str, default: Any) -> None:
    """``--flag`` for the field ``name`` of ``model``: its type or choices, and its description as help."""
    field = model.model_fields[name]
    kind = field.annotation
    options: dict[str, Any] = {"default": default, "help": field.description, "dest": name}
    if get_origin(kind) is Literal:
        options["choices"] = get_args(kind)
    elif kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    else:  # a scalar, or an optional one
        options["type"] = next((t for t in get_args(kind) if t is not type(None)), kind)
        options["metavar"] = flag.removeprefix("--").upper().replace("-", "_")
    p.add_argument(flag, **options)


def run_parser(s: Settings, *, local: bool = False) -> argparse.ArgumentParser:
    """The bridge's options, one per runner setting; defaults are the configured values."""
    p = argparse.ArgumentParser(
        prog="local_runner.py local" if local else "local_runner.py",
        usage=None if local else USAGE,
        description=LOCAL if local else BRIDGE,
        epilog="Each option is also runner.<option> in config.yaml and AGENT_RUNTIME__RUNNER__<OPTION> in the "
        "environment; --nats-url is NATS_URL, --subject nats.invocation_subject.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_option(p, "--nats-url", NatsSettings, "url", s.nats.url)
    add_option(p, "--subject", NatsSettings, "invocation_subject", s.nats.invocation_subject)
    for name in RunnerSettings.model_fields:
        add_option(p, "--" + name.replace("_", "-"), RunnerSettings, name, getattr(s.runner, name))
    return p


def with_options(s: Settings, p: argparse.ArgumentParser, argv: list[str]) -> Settings:
    """The settings with the command line's options over them (validated like any other source)."""
    args = vars(p.parse_args(argv))
    try:
        runner = RunnerSettings.model_validate({name: args[name] for name in RunnerSettings.model_fields})
        given = {"url": args["url"], "invocation_subject": args["invocation_subject"]}
        nats = NatsSettings.model_validate(s.nats.model_dump() | given)  # credentials and TLS kept
    except ValidationError as exc:
        p.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    return s.model_copy(update={"runner": runner, "nats": nats})


def say_parser(s: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="local_runner.py say",
        description="Talk to the agent of the running local stack (./dev run): post TEXT into the demo "
        "channel, invoke the agent as the router does, and print its reply, or why there is none.",
    )
    p.add_argument("text", help="what you say")
    p.add_argument(
        "--agent", default="agent:sofia", help="the agent's id; a bare name means agent:<name> (default: agent:sofia)"
    )
    p.add_argument("--channel", default=None, help="the channel; default: the local stack's demo channel")
    p.add_argument("--nats-url", default=None, help="default: the running local stack's")
    p.add_argument("--messaging-url", default=None, help="default: the running local stack's")
    p.add_argument(
        "--subject", default=s.nats.invocation_subject, help="where the router publishes (default: %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome (default: %(default)s)")
    return p


async def run(s: Settings, *, local: bool) -> int:
    """The bridge (and the function, without a function_url) until SIGTERM/SIGINT; ``local``: the local stack too."""
    from runner import serve
    from runner.bridge import Bridge
    from runner.console.app import Console
    from runner.console.feed import Feed
    from shared import runtime
    from shared.clients import http
    from shared.infra.observability import redact_url

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(http.aclose)
        if local:
            from localstack import stack

            s = await stack.start(s, cleanup)
        function_url = s.runner.function_url
        if not function_url:  # serve the function here, with these settings (a container runs both)
            rt = runtime.Runtime.from_settings(s)
            runtime.install(rt)
            cleanup.push_async_callback(rt.aclose)  # after the function stopped: runs in flight may still hand off
            function = await serve.Serving.start(serve.function_app(), s.runner.host, s.runner.function_port)
            cleanup.push_async_callback(function.stop)
            function_url = f"http://127.0.0.1:{function.port}/invoke"
            log.info("agent_runtime served", extra={"fields": {"url": function_url}})

        bridge = Bridge(s, function_url)
        secret = s.runtime.secret.get_secret_value() if s.runtime.secret else None
        feed = Feed()
        bridge.on_answer = feed.record
        console = Console.for_bridge(bridge, s, feed)
        app = serve.status_app(bridge.health, secret=secret, console=console)
        status = await serve.Serving.start(app, s.runner.host, s.runner.port)
        cleanup.push_async_callback(status.stop)
        cleanup.callback(feed.close)  # first: an open event stream would hold the server's stop
        starting = asyncio.create_task(bridge.start())  # waits as long as NATS is away
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # asked to stop before NATS ever answered: nothing was taken
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        starting.result()
        runtime.settle_gc()  # everything the bridge (and a served function) runs with is loaded now
        servers = ",".join(redact_url(u) for u in bridge.servers)
        print(
            f"agent-runtime runner: {s.runner.mode} mode on {bridge.subject} via {servers}; forwarding to "
            f"{redact_url(function_url)}; console, health and metrics on http://127.0.0.1:{status.port}",
            flush=True,
        )
        await stopping
        log.info("stopping: draining invocations in flight")
        finished = await bridge.stop()
        return 0 if finished else 1


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (uvicorn[standard] brings it everywhere but Windows): the loop
    the function's uvicorn workers run too."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str]) -> int:
    from shared.infra import observability

    s = settings_module.get()
    observability.configure(s.runtime.log_format)
    if argv[:1] == ["say"]:
        from localstack.say import say

        a = say_parser(s).parse_args(argv[1:])
        return run_loop(
            say(
                a.text,
                agent_id=a.agent,
                nats_url=a.nats_url,
                messaging_url=a.messaging_url,
                channel=a.channel,
                subject=a.subject,
                timeout_s=a.timeout,
            )
        )
    from shared.infra.nats_connect import NatsRefused

    try:
        if argv[:1] == ["local"]:
            return run_loop(run(with_options(s, run_parser(s, local=True), argv[1:]), local=True))
        return run_loop(run(with_options(s, run_parser(s), argv), local=False))
    except NatsRefused as exc:  # logged where it happened; no retry helps, and no traceback says more
        print(f"local_runner.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
