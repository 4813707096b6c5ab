"""Handoffs on-prem: the invocation published on the invocation subject, as the router publishes it.

The header ``Nats-Msg-Id`` carries the key (the bridge forwards it as ``Idempotency-Key``). In
jetstream mode the publish waits for the stream's acknowledgement, so stored is sent, and the same
key again within the stream's duplicate window is stored once. In core mode it is published and
flushed: the server has it. The connection is made on the first send with the ``nats`` settings'
credentials and TLS (shared/infra/nats_connect.py); nats-py is imported only then.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shared.errors import DependencyError
from shared.handoff.base import DEPENDENCY, InvocationSink
from shared.infra import jsoncodec
from shared.infra.nats_connect import NatsRefused, connect, connect_options
from shared.infra.observability import redact_url

if TYPE_CHECKING:
    from nats.aio.client import Client

    from shared.infra.deadline import Deadline
    from shared.infra.settings import Settings


class NatsSink(InvocationSink):
    name = "nats"

    def __init__(
        self,
        servers: list[str],
        subject: str,
        *,
        jetstream: bool,
        timeout_s: float,
        auth: dict[str, Any] | None = None,
    ) -> None:
        self.servers = servers
        self.subject = subject
        self.jetstream = jetstream  # the runners consume a stream: publish into it and wait for its ack
        self.timeout_s = timeout_s
        self.auth = auth or {}  # credentials and TLS: nats_connect.connect_options
        self._nc: Client | None = None
        self._opening = asyncio.Lock()  # one connection, however many first sends race for it

    @classmethod
    def from_settings(cls, s: Settings) -> NatsSink:
        return cls(
            s.nats.url.split(","),
            s.handoff.subject or s.nats.invocation_subject,
            jetstream=s.runner.mode == "jetstream",
            timeout_s=s.handoff.timeout_s,
            auth=connect_options(s.nats),
        )

    async def send(self, invocation: dict[str, Any], key: str, deadline: Deadline) -> None:
        import nats.errors
        from nats.js.errors import APIError, NoStreamResponseError

        nc = await self._client(deadline)
        body = jsoncodec.dumps(invocation)
        headers = {"Nats-Msg-Id": key}
        timeout = deadline.timeout_for(DEPENDENCY, self.timeout_s)
        left = False  # core mode: the publish is in the client's hands, bound for the server
        try:
            if self.jetstream:
                await nc.jetstream().publish(self.subject, body, timeout=timeout, headers=headers)
            else:
                await nc.publish(self.subject, body, headers=headers)
                left = True
                await nc.flush(timeout)
        except NoStreamResponseError:  # nobody listens on the subject: nothing received it
            raise DependencyError(
                DEPENDENCY, "unavailable", f"NATS: no stream captures {self.subject}", retryable=True, sent=False
            ) from None
        except APIError as exc:  # the stream answered, and did not store it
            retryable = (exc.code or 0) >= 500
            raise DependencyError(
                DEPENDENCY,
                "unavailable" if retryable else "rejected",
                f"NATS JetStream refused the invocation: {exc.description}",
                retryable=retryable,
            ) from None
        except nats.errors.TimeoutError:  # it may be stored, or go out from the client's buffer on reconnection
            raise DependencyError(
                DEPENDENCY, "timeout", "NATS did not acknowledge the invocation", retryable=True, uncertain=True
            ) from None
        except (nats.errors.MaxPayloadError, nats.errors.BadSubjectError) as exc:
            raise DependencyError(
                DEPENDENCY, "rejected", f"NATS: {type(exc).__name__}", retryable=False, sent=False
            ) from None
        except nats.errors.Error as exc:  # refused by the client before it wrote anything, unless flushing
            raise DependencyError(
                DEPENDENCY, "unavailable", f"NATS: {type(exc).__name__}", retryable=True, sent=left, uncertain=left
            ) from None

    async def aclose(self) -> None:
        async with self._opening:
            await super().aclose()
            nc, self._nc = self._nc, None
        if nc is None:
            return
        import nats.errors

        try:
            await nc.drain()  # what is still buffered goes out first
        except nats.errors.Error:  # not connected now (reconnecting): nothing more can go out
            await nc.close()

    async def _client(self, deadline: Deadline) -> Client:
        async with self._opening:
            self._check_open()
            if self._nc is None:
                self._nc = await self._connect(deadline.timeout_for(DEPENDENCY, self.timeout_s))
            return self._nc

    async def _connect(self, wait_s: float) -> Client:
        import nats.errors

        try:
            return await asyncio.wait_for(  # a server that is down is waited for only this long
                connect(
                    self.servers,
                    self.auth,
                    max_reconnect_attempts=-1,  # once connected, ride out a restart of the server
                    connect_timeout=wait_s,
                    name="agent-runtime-handoff",
                ),
                wait_s,
            )
        except NatsRefused as exc:  # wrong credentials or TLS: its message names the settings, no secret
            raise DependencyError(DEPENDENCY, "unauthorized", str(exc), retryable=False, sent=False) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            where = ", ".join(redact_url(s) for s in self.servers)
            raise DependencyError(
                DEPENDENCY,
                "unavailable",
                f"NATS at {where} not reachable ({type(exc).__name__})",
                retryable=True,
                sent=False,
            ) from None
