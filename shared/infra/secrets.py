"""Secrets from AWS Secrets Manager: each ``X_SECRET_ARN`` in the environment becomes ``X_SECRET``.

shared/settings.py calls this while loading, and settings are loaded once per process, so each
secret is read once per container. A secret's value goes into the settings only: an error names
the variable and the AWS error code, never a value. The secret is a plain SecretString.
"""

from __future__ import annotations

from typing import Any


class SecretUnavailable(RuntimeError):
    """A configured secret could not be read; the message names the variable, not the value."""


def resolve_arns(environ: dict[str, str]) -> dict[str, str]:
    """A copy of ``environ`` with every ``*_SECRET_ARN`` resolved into its ``*_SECRET``."""
    wanted = {name: arn for name, arn in environ.items() if name.endswith("_SECRET_ARN") and arn}
    resolved = dict(environ)
    clients: dict[str | None, Any] = {}
    for name, arn in wanted.items():
        region = _region(arn)
        if region not in clients:
            clients[region] = _client(region)
        resolved[name.removesuffix("_ARN")] = _read(clients[region], name, arn)
    return resolved


def _region(arn: str) -> str | None:
    # arn:aws:secretsmanager:<region>:<account>:secret:<name>; a bare name uses the default region
    parts = arn.split(":")
    return parts[3] if len(parts) > 6 and parts[0] == "arn" else None


def _client(region: str | None) -> Any:
    import boto3

    return boto3.client("secretsmanager", region_name=region)


def _read(client: Any, name: str, arn: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretUnavailable(f"{name}: Secrets Manager answered {code}") from None
    except BotoCoreError as exc:
        raise SecretUnavailable(f"{name}: Secrets Manager unreachable ({type(exc).__name__})") from None
    value = answer.get("SecretString")
    if not value:
        raise SecretUnavailable(f"{name}: the secret has no SecretString")
    return value
