"""Logs: one structured line per invocation; JSON for machines, readable text in a terminal.

Never logs message text or secrets: only ids, outcome, per-step milliseconds and sources.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from shared.contracts import Outcome
from shared.infra import jsoncodec

log = logging.getLogger("agent_runtime")
_configured = False


class JsonFormatter(logging.Formatter):
    """One JSON object a line (what Cloud Logging and CloudWatch parse)."""

    _second, _stamp = -1, ""  # the time, formatted once a second

    def format(self, record: logging.LogRecord) -> str:
        if int(record.created) != self._second:
            self._second, self._stamp = int(record.created), self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z")
        line: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": self._stamp,
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return jsoncodec.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, [], {}))
        text = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()} {tail}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    """Install the handler for the ``agent_runtime`` loggers, once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    text = log_format == "text" or (log_format == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def redact_url(url: str) -> str:
    """A URL fit for a log line: no user:password@ (a NATS URL may carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else "")))


def log_outcome(outcome: Outcome, **extra: Any) -> None:
    fields = outcome.model_dump(exclude_none=True)
    fields.update({k: v for k, v in extra.items() if v is not None})
    level = logging.WARNING if outcome.status == "failed" else logging.INFO
    log.log(level, f"invocation {outcome.status}", extra={"fields": fields})


class StepTimer:
    """Per-step milliseconds of one run."""

    def __init__(self) -> None:
        self.timings_ms: dict[str, float] = {}
        self._started = time.perf_counter()

    def add(self, name: str, started: float) -> float:
        """Add the time since ``started`` (perf_counter) to a step (LLM and tool rounds add up); the
        milliseconds added."""
        spent = (time.perf_counter() - started) * 1000
        self.timings_ms[name] = round(self.timings_ms.get(name, 0.0) + spent, 2)
        return spent

    def total(self) -> dict[str, float]:
        return {**self.timings_ms, "total": round((time.perf_counter() - self._started) * 1000, 2)}
