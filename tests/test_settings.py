"""Settings, declared once: precedence, the environment's names and empties, the commented config.yaml,
the runner's command line derived from them, and the production bridge apart from the local stack."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr

import local_runner
from shared import idempotency, llm
from shared.infra import settings
from shared.infra.settings import RunnerSettings, Settings
from tests.conftest import ROOT, free_port, invocation
from tests.runner_support import FunctionProcess, runner_waiting_for_nats


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# --- precedence -------------------------------------------------------------------------------


def test_defaults_then_file_then_environment(tmp_path):
    path = config(tmp_path, "llm:\n  max_tokens: 200\n  temperature: 0.1\nnats:\n  url: nats://file:4222\n")
    loaded = settings.load({"AGENT_RUNTIME__LLM__MAX_TOKENS": "300", "NATS_URL": "nats://env:4222"}, path)
    assert loaded.llm.max_tokens == 300  # environment over file
    assert loaded.llm.temperature == 0.1  # file over default
    assert loaded.nats.url == "nats://env:4222"  # the seed's name over the file
    assert loaded.llm.default_model == "gpt-4"  # default


def test_prefixed_names_are_case_insensitive_and_beat_the_seeds_names():
    loaded = settings.load(
        {"agent_runtime__Messaging__URL": "http://prefixed:1", "MESSAGING_SERVICE_URL": "http://seed:1"}
    )
    assert loaded.messaging.url == "http://prefixed:1"


@pytest.mark.parametrize(("name", "where"), settings.ENV_ALIASES.items())
def test_every_seed_name_sets_its_key(name, where):
    section, key = where
    value = getattr(getattr(settings.load({name: "http://by-name:1"}), section), key)
    assert (value.get_secret_value() if isinstance(value, SecretStr) else value) == "http://by-name:1"


def test_the_config_file_named_by_the_environment(tmp_path):
    path = config(tmp_path, "runner:\n  mode: jetstream\n")
    assert settings.load({settings.CONFIG_ENV: str(path)}).runner.mode == "jetstream"
    with pytest.raises(FileNotFoundError):
        settings.load({settings.CONFIG_ENV: str(tmp_path / "missing.yaml")})


# --- the environment's values -----------------------------------------------------------------


def test_mappings_from_the_environment_are_json():
    loaded = settings.load(
        {
            "AGENT_RUNTIME__LLM__MODELS": json.dumps({"local-70b": {"context_window": 32768, "reply_reserve": 2000}}),
            "AGENT_RUNTIME__LLM__DEFAULT_LIMITS": '{"context_window": 4096}',
            "AGENT_RUNTIME__TOOLS__TOOLCORE_IDS": '{"create_task": "tasks.new"}',
        }
    )
    assert loaded.llm.limits("local-70b").context_window == 32768
    assert loaded.llm.default_limits.context_window == 4096 and loaded.llm.default_limits.reply_reserve == 1000
    assert loaded.tools.toolcore_ids == {"create_task": "tasks.new"}


def test_an_empty_value_counts():
    loaded = settings.load({"LLM_PROXY_URL": "", "AGENTS_SERVICE_URL": "", "AGENT_RUNTIME_SECRET": ""})
    assert loaded.llm.url == ""  # no LLM: the keyword mock answers
    assert loaded.agents.url == ""  # not asked
    assert not loaded.runtime.secret  # no inbound auth, as when unset


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"AGENT_RUNTIME__RUNNER__MAX_DELIVER": "often"}, "runner.max_deliver"),
        ({"AGENT_RUNTIME__MESSAGING__POST_STYLE": "carrier-pigeon"}, "messaging.post_style"),
        ({"AGENT_RUNTIME__LLM__MODELS": "{not json"}, "models"),
        ({"AGENT_RUNTIME__LLM__MODELS": '{"m": {"context_window": 1}}'}, "llm.models.m.context_window"),
        ({"AGENT_RUNTIME__LLM__TEMPERATUR": "0.2"}, "llm.temperatur"),
        ({"AGENT_RUNTIME__LMM__URL": "http://x"}, "AGENT_RUNTIME__LMM__URL"),
        ({"MESSAGING_SERVICE_URL": ""}, "messaging.url"),  # required: the replies go there
        ({"NATS_URL": ""}, "nats.url"),
    ],
)
def test_a_bad_value_names_its_setting(environ, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        settings.load(environ)


def test_provider_and_backend_are_named_by_their_registries():
    s = settings.load({"AGENT_RUNTIME__LLM__PROVIDER": "oracle", "AGENT_RUNTIME__IDEMPOTENCY__BACKEND": "floppy"})
    with pytest.raises(ValueError, match=r"llm\.provider: unknown provider 'oracle'"):
        llm.build(s.llm)
    with pytest.raises(ValueError, match=r"idempotency\.backend: unknown backend 'floppy'"):
        idempotency.build(s)


# --- config.yaml: a commented reference of the defaults ---------------------------------------


def test_config_yaml_lists_every_key_at_its_default():
    header, _, body = settings.DEFAULT_CONFIG.read_text(encoding="utf-8").partition("\n\n")
    assert all(line.startswith("#") for line in (header + body).splitlines())  # nothing is set there
    uncommented = "\n".join(line.removeprefix("#").removeprefix(" ") for line in body.splitlines())
    assert yaml.safe_load(uncommented) == Settings().model_dump(mode="json")


def test_the_shipped_config_loads_the_defaults_without_yaml():
    code = (
        "import sys; from shared.infra import settings; "
        "print(settings.get() == settings.Settings(), 'yaml' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUNTIME") and k not in settings.ENV_ALIASES}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# --- an empty LLM_PROXY_URL, through the real function process --------------------------------


async def test_an_empty_llm_proxy_url_means_the_mock(stack, tmp_path):
    """The file points llm.url at a live LLM; LLM_PROXY_URL="" in the environment must still mean no LLM."""
    path = config(tmp_path, f"llm:\n  url: {stack.url('llm')}\n")
    env = stack.env(LLM_PROXY_URL="", AGENT_RUNTIME_CONFIG=str(path), AGENT_RUNTIME__RUNTIME__LOG_FORMAT="json")
    function = await FunctionProcess(free_port(), env).start()
    try:
        channel = stack.channel()
        stack.messaging.add_message(channel, "hello")
        async with httpx.AsyncClient(base_url=function.url, timeout=30) as http:
            response = await http.post("/invoke", json=invocation(channel))
    finally:
        await function.stop()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "replied" and response.json()["llm_source"] == "mock"
    assert stack.llm.faults.calls == {} and stack.llm.requests == []  # never asked


# --- the runner's command line, derived from RunnerSettings -----------------------------------


def test_every_runner_setting_is_an_option_with_its_description():
    parser = local_runner.run_parser(Settings())
    flags = {a.dest: a for a in parser._actions}
    for name, field in RunnerSettings.model_fields.items():
        assert field.description, name
        assert flags[name].option_strings == ["--" + name.replace("_", "-")]
        assert flags[name].help == field.description and flags[name].default == field.default
    assert flags["mode"].choices == ("core", "jetstream")


def test_options_override_the_settings_and_are_validated():
    s = settings.load({"AGENT_RUNTIME__RUNNER__MAX_IN_FLIGHT": "8", "NATS_URL": "nats://env:4222"})
    parser = local_runner.run_parser(s)
    assert parser.get_default("max_in_flight") == 8  # the configured value is the default
    given = local_runner.with_options(
        s, parser, ["--mode", "jetstream", "--ack-wait-s", "2.5", "--nats-url", "nats://a:1,nats://b:2"]
    )
    assert given.runner.mode == "jetstream" and given.runner.ack_wait_s == 2.5 and given.runner.max_in_flight == 8
    assert given.nats.url == "nats://a:1,nats://b:2" and given.llm == s.llm
    with pytest.raises(SystemExit):
        local_runner.with_options(s, parser, ["--max-in-flight", "0"])


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "local_runner.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "local_runner.py local" in out.stdout and "local_runner.py say" in out.stdout


# --- the production bridge never loads the local stack ----------------------------------------


def test_runner_never_imports_the_local_stack():
    for path in sorted((ROOT / "runner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in ("standins", "localstack")], path


async def test_the_bridge_as_deployed_serves_the_function_and_waits_for_its_nats():
    """No subcommand, no function URL: the function is served here, but no stand-in and no private NATS."""
    function_port = free_port()
    async with runner_waiting_for_nats("--function-port", str(function_port)) as (process, seen):
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{function_port}/health")).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert any(b"agent_runtime served" in line for line in seen)
    assert not any(b"embedded nats-server" in line or b"local stack" in line for line in seen)


def test_an_empty_secret_does_not_switch_auth_off_over_the_config_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("runtime:\n  secret: from-config\nllm:\n  secret: llm-from-config\n")

    loaded = settings.load({"AGENT_RUNTIME_SECRET": "", "AGENT_RUNTIME__LLM__SECRET": ""}, config)

    assert loaded.runtime.secret.get_secret_value() == "from-config"
    assert loaded.llm.secret.get_secret_value() == "llm-from-config"
