"""On-prem entry point: bridge NATS invocations to the HTTP invoke function.

    python local_runner.py [options]          run the bridge (and, without --function-url, the
                                              agent_runtime function and the local stack)
    python local_runner.py say "привіт"       talk to the agent of the running local stack

Every option is also settable in config.yaml (section ``runner``) and by environment variable
(``AGENT_RUNTIME__RUNNER__<OPTION>``; ``NATS_URL`` for --nats-url).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from shared.infra import settings as settings_module
from shared.infra.settings import LlmSettings, MemorySettings, MessagingSettings, NatsSettings, Settings
from standins.messaging import DEMO_CHANNEL

log = logging.getLogger("agent_runtime.runner")


def run_parser(s: Settings) -> argparse.ArgumentParser:
    r = s.runner
    p = argparse.ArgumentParser(prog="local_runner.py", description="NATS-to-HTTP bridge of the agent runtime.")
    p.add_argument("--nats-url", default=s.nats.url, help="NATS server(s), comma-separated (NATS_URL)")
    p.add_argument("--subject", default=s.nats.invocation_subject)
    p.add_argument("--mode", choices=["core", "jetstream"], default=r.mode)
    p.add_argument("--queue-group", default=r.queue_group)
    p.add_argument(
        "--function-url",
        default=r.function_url,
        help="the invoke endpoint; omitted: serve agent_runtime here on --function-port",
    )
    p.add_argument("--function-port", type=int, default=r.function_port)
    p.add_argument("--max-in-flight", type=int, default=r.max_in_flight)
    p.add_argument("--max-deliver", type=int, default=r.max_deliver)
    p.add_argument("--port", type=int, default=r.port, help="the runner's own /health and /metrics")
    p.add_argument(
        "--embedded-nats",
        action="store_true",
        default=r.embedded_nats,
        help="start a private nats-server (the local stack does too when nothing answers at the default URL)",
    )
    p.add_argument("--stream", default=r.stream)
    p.add_argument("--durable", default=r.durable)
    p.add_argument("--dlq-subject", default=r.dlq_subject)
    p.add_argument("--drain-timeout", type=float, default=r.drain_timeout_s)
    return p


def say_parser(s: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="local_runner.py say", description="Talk to the agent of the local stack.")
    p.add_argument("text")
    p.add_argument("--agent", default="agent:sofia")
    p.add_argument("--channel", default=None)
    p.add_argument("--nats-url", default=None)
    p.add_argument("--messaging-url", default=None)
    p.add_argument("--subject", default=s.nats.invocation_subject)
    p.add_argument("--timeout", type=float, default=60.0)
    return p


async def run(args: argparse.Namespace, s: Settings) -> int:
    from runner import embedded, serve
    from runner.bridge import Bridge, BridgeConfig
    from shared import runtime
    from shared.clients import http
    from shared.infra.observability import redact_url

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    cleanup: list = []
    try:
        nats_url = args.nats_url
        # The local stack (no function URL, NATS left at its default) brings its own nats-server when
        # none answers. A configured deployment never does: it waits for its NATS to come back.
        local_stack = not args.function_url and nats_url == NatsSettings().url
        if args.embedded_nats or (local_stack and not await embedded.reachable(nats_url.split(",")[0])):
            nats_server = await embedded.NatsServer().start()
            cleanup.append(nats_server.stop)
            nats_url = nats_server.url
            log.info("embedded nats-server started", extra={"fields": {"url": nats_url}})

        function_url = args.function_url
        if not function_url:
            # Serve the function here. Stand-ins replace the services whose URL is still the default.
            standins = embedded.StandIns(
                messaging=s.messaging.url == MessagingSettings().url, memory=s.memory.url == MemorySettings().url
            )
            cleanup.append(standins.stop)
            updates = {"nats": s.nats.model_copy(update={"url": nats_url})}
            if "messaging" in standins.urls:
                updates["messaging"] = s.messaging.model_copy(update={"url": standins.urls["messaging"]})
            if "memory" in standins.urls:
                updates["memory"] = s.memory.model_copy(update={"url": standins.urls["memory"]})
            if s.llm.url == LlmSettings().url:
                updates["llm"] = s.llm.model_copy(update={"url": ""})  # the keyword mock answers
            fs = s.model_copy(update=updates)
            runtime.install(runtime.Runtime.from_settings(fs))
            function = await serve.Serving.start(serve.function_app(), "127.0.0.1", args.function_port)
            cleanup.append(function.stop)
            function_url = f"http://127.0.0.1:{function.port}/invoke"
            if standins.messaging is not None:
                embedded.write_state(
                    nats_url=nats_url,
                    messaging_url=standins.urls["messaging"],
                    channel=DEMO_CHANNEL,
                    function_url=function_url,
                )
                cleanup.append(embedded.clear_state)
            log.info(
                "agent_runtime served",
                extra={"fields": {"url": function_url, **standins.urls, "llm": fs.llm.url or "mock"}},
            )

        secret = s.runtime.secret.get_secret_value() if s.runtime.secret else None
        bridge = Bridge(
            BridgeConfig(
                nats_servers=nats_url.split(","),
                subject=args.subject,
                function_url=function_url,
                mode=args.mode,
                queue_group=args.queue_group,
                max_in_flight=args.max_in_flight,
                max_deliver=args.max_deliver,
                request_timeout_s=s.runner.request_timeout_s,
                ack_wait_s=s.runner.ack_wait_s,
                drain_timeout_s=args.drain_timeout,
                stream=args.stream,
                durable=args.durable,
                dlq_subject=args.dlq_subject,
                function_secret=secret,
                max_body_bytes=s.runtime.max_body_bytes,
            )
        )
        status = await serve.Serving.start(serve.status_app(bridge.health), "127.0.0.1", args.port)
        cleanup.append(status.stop)
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
        print(
            f"agent-runtime runner: {args.mode} mode on {args.subject} via "
            f"{','.join(redact_url(u) for u in nats_url.split(','))}; forwarding to {redact_url(function_url)}; "
            f"health and metrics on http://127.0.0.1:{status.port}",
            flush=True,
        )
        await stopping
        log.info("stopping: draining invocations in flight")
        finished = await bridge.stop()
        return 0 if finished else 1
    finally:
        for step in reversed(cleanup):
            result = step()
            if asyncio.iscoroutine(result):
                await result
        await http.aclose()


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
        from runner.say import say

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
    return run_loop(run(run_parser(s).parse_args(argv), s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
