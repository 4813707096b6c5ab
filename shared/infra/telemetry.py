"""Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), or nothing at all.

Configured by the standard environment: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` turns it on; ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*`` … are read by the SDK
itself; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turns it off.

This is the facade the runtime calls. With no endpoint the SDK is never imported: ``span()``
answers one shared span that does nothing, after one check, and its ``inject()`` gives the headers
back as they were. With one, ``configure()`` loads otel.py, the SDK's side, and hands every call to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

SERVER, CLIENT, CONSUMER, INTERNAL = "server", "client", "consumer", "internal"

log = logging.getLogger("agent_runtime.telemetry")

_sdk: Any = None  # shared.infra.otel once tracing is on
_configured = False


class Span:
    """A span that records nothing: what ``span()`` answers when tracing is off (otel.py's records)."""

    recording = False

    def __enter__(self) -> Span:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        return None

    def fail(self, error_type: str) -> None:
        return None

    def rename(self, name: str) -> None:
        return None

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        return headers


NO_SPAN = Span()


def span(name: str, kind: str = INTERNAL, *, parent: Any = None) -> Span:
    """A span to enter (``with``): a child of the current span, or, given ``parent`` (anything with
    ``.get(name)``: request headers, NATS headers, SQS attributes, a CloudEvent), of the trace
    context it carries (``traceparent``, ``tracestate``), else the root of a new trace."""
    if _sdk is None:
        return NO_SPAN
    return _sdk.span(name, kind, parent)


def ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (hex), for log lines; None when there is none."""
    return None if _sdk is None else _sdk.ids()


def wanted(environ: Mapping[str, str]) -> bool:
    """Does this environment ask for traces: an OTLP endpoint, and neither the SDK nor the exporter off?"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")}
    if "otlp" not in exporters:
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(service: str) -> bool:
    """Start tracing, once per process, if the environment asks (``wanted``); True when it is on.
    ``service`` is the service name unless ``OTEL_SERVICE_NAME`` says otherwise."""
    global _sdk, _configured
    if _configured:
        return _sdk is not None
    _configured = True
    if not wanted(os.environ):
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: traces are sent as http/protobuf (port 4318)")
    from shared.infra import otel

    otel.start(os.environ.get("OTEL_SERVICE_NAME") or service)
    _sdk = otel
    return True


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still waiting (a Lambda container is frozen between invocations)."""
    if _sdk is not None:
        _sdk.flush(timeout_s)


def shutdown() -> None:
    """Export what is left and stop tracing; ``configure`` may start it again (tests)."""
    global _sdk, _configured
    if _sdk is not None:
        _sdk.shutdown()
    _sdk, _configured = None, False
