"""The runtime's errors: one small typed family, raised by clients and the pipeline, mapped once
to an outcome (``Failure``) or to an HTTP status (``BadInput``). None ever carries a secret."""

from __future__ import annotations

from typing import Any

from shared.contracts import FailureKind


class Failure(Exception):
    """A run could not finish: ``kind`` says why, ``retryable`` whether a later try can help."""

    dependency = "runtime"

    def __init__(self, kind: FailureKind, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(f"{self.dependency}: {message}")
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after  # seconds a retry should wait, when known


class DependencyError(Failure):
    """A dependency call that did not give a usable answer."""

    def __init__(
        self,
        dependency: str,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retryable: bool,
        sent: bool = True,
        retry_after: float | None = None,
        uncertain: bool = False,
    ) -> None:
        self.dependency = dependency
        super().__init__(kind, message, retryable=retryable, retry_after=retry_after)
        self.status = status
        self.sent = sent  # False only when the request provably never reached the service
        self.uncertain = uncertain  # it may have taken effect though the answer does not say so


class Busy(Failure):
    """Another run owns the message right now; retry once its claim could have expired."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__("in_progress", message, retryable=True, retry_after=retry_after)


class BadInput(Exception):
    """Input no retry can fix; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail or []

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail} if self.detail else {"error": self.error}
