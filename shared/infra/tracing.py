"""The trace id of a request, as log fields that CloudWatch and Cloud Logging both index.

With tracing on (telemetry.py) it is the current span's, with its span id. Else it comes from W3C
``traceparent`` (``00-<32 hex>-<16 hex>-<flags>``) or Google's ``X-Cloud-Trace-Context``
(``<32 hex>/<span>;o=1``). Cloud Logging links a line to its trace
through ``logging.googleapis.com/trace``, which needs the project: set ``GOOGLE_CLOUD_PROJECT``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from shared.infra import telemetry

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # W3C, use with fullmatch


def trace_id(headers: Any) -> str | None:
    """From anything with ``.get(name)``: request headers (lower-case names), a CloudEvent."""
    traceparent = (headers.get("traceparent") or "").strip().lower()
    if TRACEPARENT.fullmatch(traceparent) and traceparent[3:35] != "0" * 32:
        return traceparent[3:35]
    cloud = (headers.get("x-cloud-trace-context") or "").strip().lower().split("/")[0]
    return cloud if _TRACE_ID.fullmatch(cloud) else None


def log_fields(headers: Any) -> dict[str, str]:
    current = telemetry.ids()
    found, span_id = current if current else (trace_id(headers), None)
    if found is None:
        return {}
    fields = {"trace_id": found}
    if span_id:
        fields["span_id"] = span_id
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project:
        fields["logging.googleapis.com/trace"] = f"projects/{project}/traces/{found}"
        if span_id:
            fields["logging.googleapis.com/spanId"] = span_id
    return fields
