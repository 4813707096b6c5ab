"""Turning raw bytes into an invocation, with an error that names the field. Shared by every trigger."""

from __future__ import annotations

import hmac
import json
from typing import Any

from pydantic import ValidationError

from shared.contracts import Invocation
from shared.errors import BadInput


def parse_invocation(raw: bytes | str | dict[str, Any] | Invocation, max_bytes: int) -> Invocation:
    if isinstance(raw, Invocation):  # parsed already (a streamed run is checked before its stream opens)
        return raw
    if isinstance(raw, (bytes, str)):
        # a str counts in UTF-8 bytes: 256 Ki characters of emoji are a megabyte
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise BadInput(413, f"body larger than {max_bytes} bytes")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise BadInput(400, f"body is not JSON: {exc}") from None
        except RecursionError:  # "[[[[…" a few thousand deep: bad input, not a defect
            raise BadInput(400, "body is not JSON: nested too deeply") from None
    try:
        return Invocation.model_validate(raw)
    except ValidationError as exc:
        detail = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        fields = ", ".join(d["field"] for d in detail)
        raise BadInput(422, f"invalid invocation: {fields}", detail) from None


def authorized(secret: str | None, headers: Any) -> bool | None:
    """True when no secret is configured or the right one is given; None when none is given."""
    if not secret:
        return True
    given = headers.get("x-internal-secret")
    if given is None:
        auth = headers.get("authorization") or ""
        given = auth[7:] if auth[:7].lower() == "bearer " else None
    if given is None:
        return None
    return hmac.compare_digest(given.encode(), secret.encode())


def check_auth(secret: str | None, headers: Any) -> None:
    verdict = authorized(secret, headers)
    if verdict is None:
        raise BadInput(401, "missing credentials: send X-Internal-Secret or Authorization: Bearer")
    if verdict is False:
        raise BadInput(403, "wrong credentials")
