"""JetStream streams made idempotently, with the configured number of copies (replicas) in a cluster."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.js.api import StreamConfig
    from nats.js.client import JetStreamContext

log = logging.getLogger("agent_runtime.jetstream")

STREAM_NAME_IN_USE = 10058  # JetStream's error code: a stream of that name exists, configured otherwise


async def ensure_stream(js: JetStreamContext, name: str, subject: str, replicas: int) -> None:
    """A file-backed stream capturing ``subject``: made when missing (another process may be making it
    too), given ``replicas`` copies when it has another count."""
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
            info = await js.stream_info(name)  # made meanwhile by someone else: compare it below
    await ensure_replicas(js, info.config, replicas)


async def ensure_replicas(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    """Give an existing stream ``replicas`` copies (JetStream moves the data); when it refuses (a lone
    server cannot hold three), say so in one line and go on with the stream as it is."""
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
