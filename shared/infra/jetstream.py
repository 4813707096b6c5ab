"""JetStream in a cluster: streams made idempotently with the configured number of copies
(replicas), and requests that ride out a stream's leader election."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.js.api import StreamConfig
    from nats.js.client import JetStreamContext

log = logging.getLogger("agent_runtime.jetstream")

STREAM_NAME_IN_USE = 10058  # JetStream's error code: a stream of that name exists, configured otherwise
ELECTION_WAIT_S = 15.0  # how long a request waits for a stream to elect a leader (seconds, in a cluster)


async def ensure_stream(js: JetStreamContext, name: str, subject: str, replicas: int) -> None:
    """A file stream capturing ``subject`` with ``replicas`` copies: made when missing, else its copies set."""
    from nats.js.api import StorageType
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE, num_replicas=replicas)
            return
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(name)  # made meanwhile by another process: compare it below
    await ensure_replicas(js, info.config, replicas)


async def ensure_replicas(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    """Give an existing stream ``replicas`` copies; when JetStream refuses, say why and go on with it as it is."""
    from nats.js.errors import APIError

    have = config.num_replicas or 1
    if have == replicas:
        return
    fields = {"stream": config.name, "replicas": have, "configured": replicas}
    try:
        await js.update_stream(config.evolve(num_replicas=replicas))
    except APIError as exc:
        log.error("stream replicas not changed", extra={"fields": {**fields, "error": exc.description}})
        return
    log.warning("stream replicas changed", extra={"fields": fields})


class Patient:
    """``target`` (a KV bucket) whose requests are sent again while its stream elects a leader."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def patiently(*args: Any, **kwargs: Any) -> Any:
            from nats.errors import NoRespondersError
            from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

            loop = asyncio.get_running_loop()
            give_up, delay = loop.time() + ELECTION_WAIT_S, 0.05
            while True:
                try:
                    return await method(*args, **kwargs)
                # No responder, or JetStream's 503: nothing was done. A timeout: it went to the dead leader,
                # or was done and replicated; a compare-and-set write (create, update with ``last``)
                # repeated after being done fails, it never applies twice. Hence KV buckets only, not
                # plain publishes. (nats' own timeout is a TimeoutError.)
                except (NoRespondersError, NoStreamResponseError, ServiceUnavailableError, TimeoutError):
                    if loop.time() + delay > give_up:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(0.5, delay * 2)

        return patiently
