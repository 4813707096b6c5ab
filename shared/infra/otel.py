"""The OpenTelemetry SDK behind telemetry.py: imported only once traces are on, so that a process
without them neither imports the SDK nor compiles this module."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.infra.telemetry import CLIENT, CONSUMER, INTERNAL, NO_SPAN, SERVER, Span

log = logging.getLogger("agent_runtime.telemetry")

KINDS = {
    SERVER: trace.SpanKind.SERVER,
    CLIENT: trace.SpanKind.CLIENT,
    CONSUMER: trace.SpanKind.CONSUMER,
    INTERNAL: trace.SpanKind.INTERNAL,
}
_extract = TraceContextTextMapPropagator().extract
_provider: TracerProvider
_tracer: trace.Tracer


class Recording(Span):
    """A span of the SDK, the current one while entered; a failure sets ``error.type``, never a message."""

    __slots__ = ("_span", "_token", "recording")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.recording = span.is_recording()  # False when the sampler dropped the trace

    def __enter__(self) -> Recording:
        self._token = context_api.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.fail(getattr(exc, "kind", None) or type(exc).__qualname__)
        context_api.detach(self._token)
        self._span.end()

    def set(self, key: str, value: Any) -> None:
        """One attribute; None is left out."""
        if value is not None:
            self._span.set_attribute(key, value)

    def fail(self, error_type: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(trace.StatusCode.ERROR)

    def rename(self, name: str) -> None:
        self._span.update_name(name)

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """A copy of ``headers`` carrying this span's context (W3C), so the service called joins the trace."""
        context = self._span.get_span_context()
        out = {
            **headers,
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}",
        }
        if context.trace_state:
            out["tracestate"] = context.trace_state.to_header()
        return out


class Unsampled(Span):
    """What a span would be under one the sampler dropped: nothing is made, and the calls it would
    have traced carry the dropped span's context on, so downstream drops the trace too."""

    __slots__ = ("_context",)

    def __init__(self, context: trace.SpanContext) -> None:
        self._context = context

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        context = self._context
        return {
            **headers,
            "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}",
        }


class _Exporter:
    """The OTLP/HTTP exporter, made on its first export: in the batch processor's thread, so the first
    request does not wait for its imports (requests, protobuf). Exports run one at a time (the
    processor's lock), so it is made once."""

    def __init__(self) -> None:
        self._otlp: Any = None

    def export(self, spans: Any) -> Any:
        if self._otlp is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._otlp = OTLPSpanExporter()  # the endpoint, headers, timeout … from OTEL_EXPORTER_OTLP_*
        return self._otlp.export(spans)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        if self._otlp is not None:
            self._otlp.shutdown()


def start(service: str) -> None:
    """A tracer provider of this module's own (the process's global one is left alone), its spans
    exported in batches from the processor's thread; the sampler from OTEL_TRACES_SAMPLER."""
    global _provider, _tracer
    _provider = TracerProvider(resource=Resource.create({"service.name": service}))
    _provider.add_span_processor(BatchSpanProcessor(_Exporter()))  # type: ignore[arg-type]
    _tracer = _provider.get_tracer("agent_runtime")
    log.info("tracing on", extra={"fields": {"service": service}})


def span(name: str, kind: str, parent: Any) -> Span:
    """telemetry.span(): a new trace's root or a remote parent's child as the sampler decides; a
    child of the current span only when that one records (the sampler dropped the rest of its trace)."""
    if parent is not None:
        return Recording(_tracer.start_span(name, _extract(parent), KINDS[kind]))
    current = trace.get_current_span().get_span_context()
    if not current.is_valid:
        return NO_SPAN  # outside any trace (a deep health probe, say)
    if not current.trace_flags.sampled:
        return Unsampled(current)
    return Recording(_tracer.start_span(name, None, KINDS[kind]))


def ids() -> tuple[str, str] | None:
    """telemetry.ids(): the current span's, if any."""
    context = trace.get_current_span().get_span_context()
    return (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None


def flush(timeout_s: float) -> None:
    """Export every span that ended, now."""
    _provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Export what is left; no span is recorded after."""
    _provider.shutdown()
