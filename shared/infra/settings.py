"""Settings: built-in defaults < config.yaml < environment variables, loaded once per process.

The defaults are declared here, once; config.yaml is a commented reference of them. Every key can
be set from the environment as ``AGENT_RUNTIME__<SECTION>__<KEY>`` (any case; for example
``AGENT_RUNTIME__LLM__MOCK_FALLBACK=false``; JSON for mappings), and the seed's variable names and
the secrets' names from contracts.md are kept as aliases (``ENV_ALIASES``). A variable that is set
counts even when it is empty: ``LLM_PROXY_URL=`` means no LLM, the keyword mock answers.
"""

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

CONFIG_ENV = "AGENT_RUNTIME_CONFIG"
ENV_PREFIX = "AGENT_RUNTIME__"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceSettings(_Section):
    url: str
    secret: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)  # reads only; posting a reply is never blindly retried


class MessagingSettings(ServiceSettings):
    url: str = Field("http://messaging-service:7004", min_length=1)  # required: replies go there
    history_limit: int = Field(50, ge=1, le=200)
    # auto: the deployed form first, the other once on a 422 (nothing was posted), then whichever worked
    post_style: Literal["auto", "body", "query"] = "auto"  # body: the seed's form | query: the deployed service's
    # a post whose fate is unknown keeps its message busy this long past its timeout, so the retry
    # looks for the reply once it could be in the channel
    post_settle_s: float = Field(2.0, ge=0)


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


class ModelPrice(_Section):
    """What a model costs per million tokens, in the price table's currency."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class LlmSettings(ServiceSettings):
    provider: str = "proxy"  # a name in shared/llm PROVIDERS: proxy, openai, anthropic
    url: str = "http://llm-proxy:7007"  # llm-proxy (provider: proxy); empty: the keyword mock answers
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
    mock_pace_s: float = Field(0.0, ge=0, le=1)  # a streamed mock reply: the pause between its words (the demo)
    default_limits: ModelLimits = ModelLimits()  # for a model not listed in ``models``
    models: dict[str, ModelLimits] = Field(
        default_factory=lambda: {
            "gpt-4": ModelLimits(context_window=8192, reply_reserve=1000),
            "gpt-4o": ModelLimits(context_window=128000, reply_reserve=4000),
            "gpt-4.1-mini": ModelLimits(context_window=1047576, reply_reserve=4000),
            "deepseek-r1": ModelLimits(context_window=65536, reply_reserve=8000),
            "dagi-local-8b": ModelLimits(context_window=8192, reply_reserve=1000),
            "claude-sonnet-4-5": ModelLimits(context_window=200000, reply_reserve=4000),
        }
    )

    # factories are lambdas, not list/dict: pydantic reads a factory's signature, a builtin's only by
    # compiling the tokenizer's patterns, at each cold start; a literal default is deep-copied per instance

    # cost is counted for the models priced here (the answering model's name, else the one asked for)
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: {})
    daily_token_budget: int | None = Field(None, ge=0)  # tokens an agent may spend a UTC day; none: no limit
    agent_budgets: dict[str, NonNegativeInt] = Field(default_factory=lambda: {})  # agent id -> its own daily budget

    def limits(self, model: str) -> ModelLimits:
        return self.models.get(model, self.default_limits)

    def budget(self, agent_id: str) -> int | None:
        """The agent's daily token budget; None: no limit."""
        return self.agent_budgets.get(agent_id, self.daily_token_budget)


class AgentsSettings(ServiceSettings):
    """Blueprints: agents-service, then the files in ``blueprints_dir``, then the built-in agent."""

    url: str = ""  # agents-service; empty: not asked
    timeout_s: float = Field(3.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)
    blueprints_dir: str = "blueprints"  # relative to the project root unless absolute
    cache_ttl_s: float = Field(300.0, ge=0)
    cache_size: int = Field(1024, ge=1)  # blueprints kept (LRU)
    known: list[str] = Field(default_factory=lambda: [])  # ids answered by the built-in agent with no blueprint
    allow_unknown: bool = False  # answer any other id with the built-in agent too
    max_handoffs: int = Field(2, ge=0, le=10)  # hops a message may be handed on; past them the tool is not offered


class ToolsSettings(ServiceSettings):
    """toolcore runs the tools; pdp-service permits each call (anything but a permit denies)."""

    url: str = ""  # toolcore; empty: every toolcore tool answers an error
    timeout_s: float = Field(10.0, gt=0)
    attempts: int = Field(2, ge=1, le=10)  # a call is repeated only when it never left this process
    pdp_url: str = ""  # pdp-service; empty: every call is denied
    pdp_secret: SecretStr | None = None
    pdp_timeout_s: float = Field(2.0, gt=0)
    max_tool_steps: int = Field(3, ge=0, le=10)
    max_calls_per_turn: int = Field(3, ge=1)  # tool calls the LLM may make in one answer
    max_calls_per_run: int = Field(5, ge=1)  # and in one invocation, all rounds together
    max_result_chars: int = Field(4000, ge=100)
    # agent-facing name -> toolcore id; summarize_channel is built in and needs no entry
    toolcore_ids: dict[str, str] = Field(
        default_factory=lambda: {
            "create_task": "task.create",
            "create_followup": "followup.create",
            "list_projects": "projects.list",
        }
    )


class NatsSettings(_Section):
    url: str = Field("nats://nats:4222", min_length=1, description="NATS server(s), comma-separated")
    invocation_subject: str = Field("router.invoke.agent", min_length=1, description="where the router publishes")
    # Credentials and TLS as deployed (shared/infra/nats_connect.py); a URL may carry user:password@ or token@ too.
    user: str | None = Field(None, description="user name, with password")
    password: SecretStr | None = Field(None, description="the user's password")
    token: SecretStr | None = Field(None, description="an authentication token")
    creds_file: str | None = Field(None, description="a .creds file: the user's JWT and NKey seed (decentralised auth)")
    nkey_seed_file: str | None = Field(None, description="a file holding the user's NKey seed")
    tls_ca_file: str | None = Field(None, description="CA certificate(s) the server's certificate must chain to")
    tls_cert_file: str | None = Field(None, description="client certificate, when the server verifies clients")
    tls_key_file: str | None = Field(None, description="the client certificate's private key")


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
    def _ttl_outlives_deadline(self) -> Self:
        # a record that expired while its run was still going would let a duplicate in
        if self.idempotency_in_progress_ttl_s <= self.deadline_s:
            raise ValueError("idempotency_in_progress_ttl_s must be longer than deadline_s")
        return self


class TelemetrySettings(_Section):
    """Traces are configured by the standard OTEL_* environment (shared/infra/telemetry.py); this is what they hold."""

    record_content: bool = False  # message text on the LLM span (gen_ai.input/output.messages); never by default


class IdempotencySettings(_Section):
    """Where the exactly-once records live: one process, NATS JetStream KV (on-prem), DynamoDB (Lambda)."""

    backend: str = "memory"  # a name in shared/idempotency BACKENDS: memory, nats, dynamodb
    nats_bucket: str = "agent_runtime_idempotency"
    nats_replicas: int = Field(1, ge=1, le=5)  # copies of the bucket in a NATS cluster: 3 there
    dynamodb_table: str = "agent-runtime-idempotency"


class HandoffSettings(_Section):
    """Where a handoff sends the target agent's invocation: the way invocations arrive on the platform."""

    sink: str = "none"  # a name in shared/handoff SINKS: none (no handoff offered), nats, sqs, pubsub
    subject: str | None = None  # nats: where to publish; none: nats.invocation_subject
    sqs_queue_url: str = ""  # sqs: the invocation queue
    pubsub_topic: str = ""  # pubsub: projects/<project>/topics/<topic>
    pubsub_url: str = "https://pubsub.googleapis.com"  # pubsub: the API (an emulator's URL in tests)
    timeout_s: float = Field(5.0, gt=0)


class RunnerSettings(_Section):
    """local_runner.py, the NATS-to-HTTP bridge: each field is also its command-line option."""

    mode: Literal["core", "jetstream"] = Field(
        "core", description="core: a queue-group subscription; jetstream: a durable pull consumer"
    )
    queue_group: str = Field("agent-runtime", description="the core-mode queue group runners share")
    function_url: str | None = Field(
        None, description="the invoke endpoint; none: serve agent_runtime in this process on function_port"
    )
    function_port: int = Field(7006, ge=1, le=65535, description="where agent_runtime is served in this process")
    port: int = Field(9106, ge=0, le=65535, description="the runner's own /health and /metrics")
    host: str = Field(
        "127.0.0.1", description="the address function_port and port listen on; 0.0.0.0 in a container, to publish them"
    )
    max_in_flight: int = Field(64, ge=1, le=10000, description="calls of the function at once")
    max_deliver: int = Field(5, ge=1, description="attempts per invocation before it is dead-lettered")
    request_timeout_s: float = Field(90.0, gt=0, description="one call of the function")
    ack_wait_s: float = Field(120.0, gt=0, description="jetstream: redelivery after this long unacknowledged")
    drain_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long invocations in flight may finish")
    stream: str = Field("AGENT_INVOCATIONS", description="jetstream: the stream capturing the subject")
    durable: str = Field("agent-runtime", description="jetstream: the durable consumer runners share")
    stream_replicas: int = Field(
        1, ge=1, le=5, description="jetstream: copies of the stream and its dead letters (3 in a NATS cluster)"
    )
    dlq_subject: str | None = Field(None, description="where dead letters go; none: <subject>.dlq")
    stream_subject: str | None = Field(
        None, description="publish each reply's text as it is typed on <subject>.<agent>.<channel>; none: no stream"
    )


class Settings(BaseSettings):
    """Every setting; ``Settings()`` is the built-in defaults, ``load()`` adds the file and the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False)

    service: str = "agent-runtime"
    version: str = "1.0.0"
    nats: NatsSettings = NatsSettings()
    messaging: MessagingSettings = MessagingSettings()
    memory: MemorySettings = MemorySettings()
    llm: LlmSettings = LlmSettings()
    agents: AgentsSettings = AgentsSettings()
    tools: ToolsSettings = ToolsSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    handoff: HandoffSettings = HandoffSettings()
    runner: RunnerSettings = RunnerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the file and the environment are load()'s sources


# The seed's and contracts.md's variable names, each mapped to its key.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "NATS_URL": ("nats", "url"),
    "NATS_USER": ("nats", "user"),  # NATS_* as the nats CLI reads them
    "NATS_PASSWORD": ("nats", "password"),
    "NATS_TOKEN": ("nats", "token"),
    "NATS_CREDS": ("nats", "creds_file"),
    "NATS_NKEY": ("nats", "nkey_seed_file"),
    "NATS_CA": ("nats", "tls_ca_file"),
    "NATS_CERT": ("nats", "tls_cert_file"),
    "NATS_KEY": ("nats", "tls_key_file"),
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
    "INVOCATION_QUEUE_URL": ("handoff", "sqs_queue_url"),
}


class EnvironmentSource(EnvSettingsSource):
    """``AGENT_RUNTIME__<SECTION>__<KEY>`` from the given environment, not necessarily the process's."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        unknown = sorted(
            name
            for name in self._environ
            if name.upper().startswith(ENV_PREFIX)
            and name[len(ENV_PREFIX) :].partition("__")[0].lower() not in Settings.model_fields
        )
        if unknown:
            raise ValueError(f"{unknown[0]}: no such setting")
        return {name.lower(): value for name, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            raise ValueError(f"{field_name}: expected JSON ({exc})") from None


class SeedNamesSource(PydanticBaseSettingsSource):
    """The seed's names (``ENV_ALIASES``), each set into its key."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(Settings)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ maps whole names

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for name, (section, key) in ENV_ALIASES.items():
            if name in self._environ:
                out.setdefault(section, {})[key] = self._environ[name]
        return out


class ConfigFileSource(PydanticBaseSettingsSource):
    """config.yaml; a file of nothing but comments is not parsed (no yaml import at start-up)."""

    def __init__(self, path: Path) -> None:
        super().__init__(Settings)
        self._path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        text = self._path.read_text(encoding="utf-8")
        if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
            return {}
        import yaml

        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self._path}: expected a mapping at the top level")
        return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mappings merged key by key."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def secret_variables() -> set[str]:
    """The variables holding a secret: ``AGENT_RUNTIME__<SECTION>__<KEY>`` of each SecretStr key, and its seed name."""
    keys = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key, inner in model.model_fields.items():
                if inner.annotation is SecretStr or SecretStr in get_args(inner.annotation):
                    keys.add((section, key))
    prefixed = {f"{ENV_PREFIX}{section}__{key}".upper() for section, key in keys}
    return prefixed | {name for name, where in ENV_ALIASES.items() if where in keys}


def read_secret_files(environ: dict[str, str]) -> dict[str, str]:
    """A copy of ``environ`` with each secret's ``<NAME>_FILE`` read into ``<NAME>`` unless that is set.

    Docker and Kubernetes hand secrets over as files. The trailing newline an editor leaves is
    dropped; a file that cannot be read is an error naming the variable, never a value.
    """
    secrets = secret_variables()
    given = {name.upper() for name in environ}
    resolved = dict(environ)
    for variable, path in environ.items():
        name = variable[: -len("_FILE")]
        if not variable.upper().endswith("_FILE") or name.upper() not in secrets:
            continue
        del resolved[variable]  # AGENT_RUNTIME__<SECTION>__<KEY>_FILE is no setting of its own
        if not path or name.upper() in given:
            continue
        try:
            resolved[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{variable}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    # An empty secret is no secret: a manifest whose secret went missing must not switch auth off
    # over the one config.yaml sets.
    return {name: value for name, value in resolved.items() if value or name.upper() not in secrets}


def load(environ: Mapping[str, str] | None = None, config_path: str | os.PathLike | None = None) -> Settings:
    """Build settings from the config file and the environment (both optional)."""
    environ = dict(os.environ if environ is None else environ)
    if any(name.endswith("_SECRET_ARN") and value for name, value in environ.items()):
        from shared.infra.secrets import resolve_arns  # boto3 only where secrets live in Secrets Manager

        environ = resolve_arns(environ)
    environ = read_secret_files(environ)
    named = config_path or environ.get(CONFIG_ENV)
    path = Path(named or DEFAULT_CONFIG)
    if named and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    sources: tuple[PydanticBaseSettingsSource, ...] = (EnvironmentSource(environ), SeedNamesSource(environ))
    if path.is_file():
        sources += (ConfigFileSource(path),)
    try:
        return Settings(_build_sources=(sources, {}))
    except SettingsError as exc:  # pydantic-settings names the section; its cause, the key and why
        raise ValueError(f"{exc}: {exc.__cause__}") from None


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return load()
