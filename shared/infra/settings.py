"""Settings: built-in defaults < config.yaml < environment variables, loaded once per process.

Every key can be set from the environment as ``AGENT_RUNTIME__<SECTION>__<KEY>``
(for example ``AGENT_RUNTIME__LLM__MOCK_FALLBACK=false``). The seed's variable names and the
secrets' names from contracts.md are kept as aliases (see ``ENV_ALIASES``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

CONFIG_ENV = "AGENT_RUNTIME_CONFIG"
ENV_PREFIX = "AGENT_RUNTIME__"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


def _json_if_text(value: Any) -> Any:
    """A mapping set from the environment arrives as JSON text."""
    return json.loads(value) if isinstance(value, str) else value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceSettings(_Section):
    url: str
    secret: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)  # reads only; posting a reply is never blindly retried


class MessagingSettings(ServiceSettings):
    url: str = "http://messaging-service:7004"
    history_limit: int = Field(50, ge=1, le=200)
    post_style: Literal["body", "query"] = "body"  # seed form | deployed form


class MemorySettings(ServiceSettings):
    url: str = "http://agent-memory:7008"
    timeout_s: float = Field(3.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)
    query_top_k: int = Field(5, ge=1, le=50)
    enable_writeback: bool = True


class ModelLimits(_Section):
    """What a model can take: its context window, and how much of it a reply may use."""

    context_window: int = Field(8192, ge=256)
    reply_reserve: int = Field(1000, ge=16)


class LlmSettings(ServiceSettings):
    provider: Literal["proxy", "openai", "anthropic"] = "proxy"
    url: str = "http://llm-proxy:7007"  # llm-proxy (provider: proxy)
    openai_url: str = "https://api.openai.com/v1"  # any Chat Completions server: DeepSeek, vLLM, Ollama, LiteLLM
    openai_api_key: SecretStr | None = None
    anthropic_url: str = "https://api.anthropic.com"
    anthropic_api_key: SecretStr | None = None
    anthropic_version: str = "2023-06-01"
    timeout_s: float = Field(30.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)
    default_model: str = "gpt-4"
    max_tokens: int = Field(1000, ge=1, le=32000)
    temperature: float = Field(0.7, ge=0, le=2)
    mock_fallback: bool = True
    # for a model not listed in ``models``
    default_limits: Annotated[ModelLimits, BeforeValidator(_json_if_text)] = ModelLimits()
    models: Annotated[dict[str, ModelLimits], BeforeValidator(_json_if_text)] = Field(
        default_factory=lambda: {
            "gpt-4": ModelLimits(context_window=8192, reply_reserve=1000),
            "gpt-4o": ModelLimits(context_window=128000, reply_reserve=4000),
            "gpt-4.1-mini": ModelLimits(context_window=1047576, reply_reserve=4000),
            "deepseek-r1": ModelLimits(context_window=65536, reply_reserve=8000),
            "dagi-local-8b": ModelLimits(context_window=8192, reply_reserve=1000),
            "claude-sonnet-4-5": ModelLimits(context_window=200000, reply_reserve=4000),
        }
    )

    def limits(self, model: str) -> ModelLimits:
        return self.models.get(model, self.default_limits)


class AgentsSettings(ServiceSettings):
    """Blueprints: agents-service, then the files in ``blueprints_dir``, then the built-in agent."""

    url: str = ""  # agents-service; empty: not asked
    timeout_s: float = Field(3.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)
    blueprints_dir: str = "blueprints"  # relative to the project root unless absolute
    cache_ttl_s: float = Field(300.0, ge=0)


class ToolsSettings(ServiceSettings):
    """toolcore runs the tools; pdp-service permits each call (anything but a permit denies)."""

    url: str = ""  # toolcore; empty: every toolcore tool answers an error
    timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)  # a call is repeated only when it never left this process
    pdp_url: str = ""  # pdp-service; empty: every call is denied
    pdp_secret: SecretStr | None = None
    pdp_timeout_s: float = Field(2.0, gt=0)
    max_tool_steps: int = Field(3, ge=0, le=10)
    max_result_chars: int = Field(4000, ge=100)
    # agent-facing name -> toolcore id; summarize_channel is built in and needs no entry
    toolcore_ids: Annotated[dict[str, str], BeforeValidator(_json_if_text)] = Field(
        default_factory=lambda: {
            "create_task": "task.create",
            "create_followup": "followup.create",
            "list_projects": "projects.list",
        }
    )


class NatsSettings(_Section):
    url: str = "nats://nats:4222"
    invocation_subject: str = "router.invoke.agent"


class RuntimeSettings(_Section):
    secret: SecretStr | None = None  # inbound: required on every endpoint but health when set
    deadline_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_text_chars: int = Field(4000, ge=100)  # per message in the prompt
    max_reply_chars: int = Field(8000, ge=100)
    history_window: int = Field(10, ge=1, le=50)  # messages sent to the LLM, trigger included
    default_microdao_id: str = "microdao:daarion"
    idempotency_in_progress_ttl_s: float = Field(120.0, gt=0)
    idempotency_complete_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)
    log_format: Literal["auto", "json", "text"] = "auto"

    @model_validator(mode="after")
    def _ttl_outlives_deadline(self) -> RuntimeSettings:
        # a record that expired while its run was still going would let a duplicate in
        if self.idempotency_in_progress_ttl_s <= self.deadline_s:
            raise ValueError("idempotency_in_progress_ttl_s must be longer than deadline_s")
        return self


class IdempotencySettings(_Section):
    """Where the exactly-once records live: one process, NATS JetStream KV (on-prem), DynamoDB (Lambda)."""

    backend: Literal["memory", "nats", "dynamodb"] = "memory"
    nats_bucket: str = "agent_runtime_idempotency"
    dynamodb_table: str = "agent-runtime-idempotency"


class RunnerSettings(_Section):
    """local_runner.py: the NATS-to-HTTP bridge."""

    mode: Literal["core", "jetstream"] = "core"
    queue_group: str = "agent-runtime"
    function_url: str | None = None  # the invoke endpoint; None: serve agent_runtime in-process
    function_port: int = Field(7006, ge=1, le=65535)
    port: int = Field(9106, ge=0, le=65535)  # the runner's own /health and /metrics
    max_in_flight: int = Field(64, ge=1, le=10000)
    max_deliver: int = Field(5, ge=1)
    request_timeout_s: float = Field(90.0, gt=0)
    ack_wait_s: float = Field(120.0, gt=0)
    drain_timeout_s: float = Field(30.0, gt=0)
    stream: str = "AGENT_INVOCATIONS"
    durable: str = "agent-runtime"
    dlq_subject: str | None = None  # None: <subject>.dlq
    embedded_nats: bool = False


class Settings(_Section):
    service: str = "agent-runtime"
    version: str = "1.0.0"
    nats: NatsSettings = NatsSettings()
    messaging: MessagingSettings = MessagingSettings()
    memory: MemorySettings = MemorySettings()
    llm: LlmSettings = LlmSettings()
    agents: AgentsSettings = AgentsSettings()
    tools: ToolsSettings = ToolsSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    runner: RunnerSettings = RunnerSettings()


# The seed's and contracts.md's variable names, each mapped to its key.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "NATS_URL": ("nats", "url"),
    "MESSAGING_SERVICE_URL": ("messaging", "url"),
    "MESSAGING_SERVICE_SECRET": ("messaging", "secret"),
    "AGENT_MEMORY_URL": ("memory", "url"),
    "MEMORY_ORCHESTRATOR_SECRET": ("memory", "secret"),
    "LLM_PROXY_URL": ("llm", "url"),
    "LLM_PROXY_SECRET": ("llm", "secret"),
    "AGENT_RUNTIME_SECRET": ("runtime", "secret"),
    "OPENAI_API_KEY": ("llm", "openai_api_key"),
    "OPENAI_BASE_URL": ("llm", "openai_url"),
    "ANTHROPIC_API_KEY": ("llm", "anthropic_api_key"),
    "ANTHROPIC_BASE_URL": ("llm", "anthropic_url"),
    "AGENTS_SERVICE_URL": ("agents", "url"),
    "AGENTS_SERVICE_SECRET": ("agents", "secret"),
    "TOOLCORE_URL": ("tools", "url"),
    "TOOLCORE_SECRET": ("tools", "secret"),
    "PDP_SERVICE_URL": ("tools", "pdp_url"),
    "PDP_SERVICE_SECRET": ("tools", "pdp_secret"),
}


def env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The keys set by the environment, as nested sections (aliases first, prefixed names win)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (section, key) in ENV_ALIASES.items():
        if environ.get(name):
            out.setdefault(section, {})[key] = environ[name]
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
            if key:
                out.setdefault(section, {})[key] = value
            else:
                out[section] = value
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(environ: dict[str, str] | None = None, config_path: str | os.PathLike | None = None) -> Settings:
    """Build settings from the config file and the environment (both optional)."""
    environ = dict(os.environ if environ is None else environ)
    if any(name.endswith("_SECRET_ARN") and value for name, value in environ.items()):
        from shared.infra.secrets import resolve_arns  # boto3 only where secrets live in Secrets Manager

        environ = resolve_arns(environ)
    path = Path(config_path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    data: dict[str, Any] = {}
    if path.is_file():
        import yaml  # only when there is a file to read

        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    elif config_path or environ.get(CONFIG_ENV):
        raise FileNotFoundError(f"config file not found: {path}")
    return Settings.model_validate(deep_merge(data, env_overrides(environ)))


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return load()
