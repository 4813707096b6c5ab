"""Blueprints: agents-service, then files, then the built-in agent; the cache; variants."""

from __future__ import annotations

import datetime
import hashlib
import shutil
import subprocess
import sys

import pytest

from shared.blueprints import COMPILED, BlueprintChain, _parse, pick_variant
from shared.contracts import Blueprint
from shared.infra import jsoncodec, settings
from shared.infra.deadline import Deadline
from standins.server import Fault
from tests.conftest import ROOT, invocation


async def _ask(stack, client, agent_id: str, channel: str | None = None) -> dict:
    channel = channel or stack.channel()
    stack.messaging.add_message(channel, "hello")
    return (await client.post("/invoke", json=invocation(channel, agent_id=agent_id))).json()


async def test_agents_service_record_is_mapped(stack, client):
    stack.agents.add_agent(
        "agent:nova",
        name="Nova",
        system_prompt="You are Nova, a DAO historian.",
        model="deepseek-r1",
        tools_enabled=["create_task"],
    )

    outcome = await _ask(stack, client, "agent:nova")

    assert outcome["status"] == "replied" and outcome["blueprint_source"] == "agents-service"
    [request] = stack.llm.requests
    assert request["model"] == "deepseek-r1"
    assert request["messages"][0]["content"].startswith("You are Nova, a DAO historian.")


async def test_an_agent_unknown_to_the_service_comes_from_its_file(stack, client):
    outcome = await _ask(stack, client, "agent:helion")

    assert outcome["blueprint_source"] == "file" and outcome["notes"] == []
    [request] = stack.llm.requests
    assert request["temperature"] == 0.2 and request["max_tokens"] == 600  # helion.yaml
    assert "You are Helion" in request["messages"][0]["content"]
    assert stack.memory.queries[0]["limit"] == 8


async def test_an_agent_known_nowhere_is_not_answered(stack, client):
    channel = stack.channel()
    outcome = await _ask(stack, client, "agent:quiet-owl", channel)

    assert outcome["status"] == "skipped" and outcome["reason"] == "unknown_agent"
    assert stack.llm.requests == [] and stack.messaging.replies_to(channel) == []


@pytest.mark.parametrize(
    "setting",
    [{"AGENT_RUNTIME__AGENTS__ALLOW_UNKNOWN": "true"}, {"AGENT_RUNTIME__AGENTS__KNOWN": '["agent:quiet-owl"]'}],
)
async def test_an_agent_listed_in_config_or_any_when_allowed_is_the_built_in_one(stack, configure, client, setting):
    configure(**setting)
    outcome = await _ask(stack, client, "agent:quiet-owl")

    assert outcome["status"] == "replied" and outcome["blueprint_source"] == "default"
    assert stack.llm.requests[0]["messages"][0]["content"].startswith("You are Quiet Owl")


async def test_service_down_and_no_blueprint_known_fails_retryably(stack, client):
    stack.agents.faults.set("agent", Fault(status=503))

    response = await client.post("/invoke", json=invocation(stack.channel(), agent_id="agent:never-seen"))

    assert response.status_code == 503 and response.json()["step"] == "blueprint"


async def test_service_down_a_file_agent_is_still_answered(stack, client):
    stack.agents.faults.set("agent", Fault(status=503))

    outcome = await _ask(stack, client, "agent:helion")

    assert outcome["status"] == "replied" and outcome["blueprint_source"] == "file"


async def test_the_blueprint_cache_is_bounded(stack, configure):
    rt = configure(AGENT_RUNTIME__AGENTS__CACHE_SIZE="16", AGENT_RUNTIME__AGENTS__ALLOW_UNKNOWN="true")
    for i in range(100):
        await rt.blueprints.load(f"agent:flood-{i}", Deadline(5))

    assert len(rt.blueprints._cache) == 16 and "agent:flood-99" in rt.blueprints._cache


async def test_the_answer_is_cached_for_the_ttl(stack, client):
    stack.agents.add_agent("agent:nova", system_prompt="You are Nova.")

    await _ask(stack, client, "agent:nova")
    await _ask(stack, client, "agent:nova")

    assert stack.agents.faults.calls["agent"] == 1


async def test_service_down_uses_the_stale_cached_blueprint(stack, configure, client):
    configure(AGENT_RUNTIME__AGENTS__CACHE_TTL_S="0")
    stack.agents.add_agent("agent:nova", system_prompt="You are Nova.")
    assert (await _ask(stack, client, "agent:nova"))["blueprint_source"] == "agents-service"
    stack.agents.faults.set("agent", Fault(status=500))

    outcome = await _ask(stack, client, "agent:nova")

    assert outcome["blueprint_source"] == "cache" and "blueprint_degraded: unavailable" in outcome["notes"]
    assert stack.llm.requests[-1]["messages"][0]["content"].startswith("You are Nova.")


async def test_an_inactive_agent_is_skipped(stack, client):
    stack.agents.add_agent("agent:nova", is_active=False)

    outcome = await _ask(stack, client, "agent:nova")

    assert outcome["status"] == "skipped" and outcome["reason"] == "agent_inactive"
    assert stack.llm.requests == [] and stack.messaging.posts == []


async def test_a_channel_keeps_its_variant(stack, client):
    channel = stack.channel()
    first = await _ask(stack, client, "agent:sofia", channel)
    second = await _ask(stack, client, "agent:sofia", channel)

    assert first["variant"] == second["variant"] in ("warm", "concise")
    sofia = (await _chain().load("agent:sofia", Deadline(5))).blueprint
    chosen = pick_variant(sofia, channel)
    assert first["variant"] == chosen.name
    assert all(r["messages"][0]["content"].startswith(chosen.instructions.strip()) for r in stack.llm.requests)


def _chain(directory=None) -> BlueprintChain:
    from shared.runtime import Runtime

    s = settings.load({})
    return BlueprintChain(s, None, directory) if directory else Runtime.from_settings(s).blueprints


def test_variant_assignment_is_stable_and_follows_the_weights():
    blueprint = Blueprint.model_validate(
        {
            "id": "agent:x",
            "name": "X",
            "model": "m",
            "instructions": "base",
            "variants": [
                {"name": "a", "weight": 3, "instructions": "A"},
                {"name": "b", "weight": 1, "instructions": "B"},
            ],
        }
    )
    channels = [f"00000000-0000-4000-8000-{i:012d}" for i in range(400)]
    picks = [pick_variant(blueprint, c).name for c in channels]

    assert picks == [pick_variant(blueprint, c).name for c in channels]  # the same channel, the same variant
    assert 0.65 < picks.count("a") / len(picks) < 0.85  # about 3 in 4
    assert pick_variant(blueprint.model_copy(update={"variants": []}), channels[0]) is None


@pytest.mark.parametrize("bad", ["id: agent:broken\ntemperature: 9\n", "- not\n- a mapping\n", "id: [unclosed\n"])
async def test_a_bad_blueprint_file_is_left_out(tmp_path, bad):
    (tmp_path / "broken.yaml").write_text(bad)
    (tmp_path / "good.yaml").write_text("id: agent:good\nname: Goodie\ninstructions: Be good.\n")
    chain = _chain(tmp_path)

    assert set(chain.files()) == {"agent:good"}
    loaded = await chain.load("agent:good", Deadline(5))
    assert loaded.source == "file" and loaded.blueprint.name == "Goodie"
    assert not (await chain.load("agent:broken", Deadline(5))).known


def test_shipped_blueprints_are_valid():
    files = _chain().files()
    assert {"agent:sofia", "agent:helion"} <= set(files)


async def test_unknown_agents_share_one_metric_label(stack, client):
    for i in range(3):
        await _ask(stack, client, f"agent:stranger-{i}")

    text = (await client.get("/metrics")).text

    assert "stranger" not in text
    assert 'agent_runtime_invocations_total{agent_id="unknown",entrypoint="channel_message",outcome="skipped"}' in text


def _compile(directory) -> subprocess.CompletedProcess:
    """The deploy's build step for blueprint files, as documented."""
    return subprocess.run(
        [sys.executable, "-m", "shared.blueprints", str(directory)], cwd=ROOT, capture_output=True, text=True
    )


def test_compiled_blueprints_are_read_without_a_yaml_parser(tmp_path):
    shutil.copytree(ROOT / "blueprints", tmp_path, dirs_exist_ok=True)
    (tmp_path / COMPILED).unlink(missing_ok=True)
    assert _compile(tmp_path).returncode == 0
    # a fresh process, as a cold start: the files' data, and no YAML module imported for it
    probe = (
        "import sys; from shared.blueprints import BlueprintChain; from shared.infra import settings;"
        f"files = BlueprintChain(settings.load({{}}), None, __import__('pathlib').Path({str(tmp_path)!r})).files();"
        "print(sorted(files), 'yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['agent:helion',", "'agent:sofia']", "False"]
    from_yaml = {f"agent:{p.stem}": _parse(p.read_bytes()) for p in tmp_path.glob("*.yaml")}
    assert repr(_chain(tmp_path).files()) == repr(dict(sorted(from_yaml.items())))  # the YAML's data, types and all


def test_a_file_changed_after_compiling_is_read_from_its_yaml(tmp_path):
    (tmp_path / "good.yaml").write_text("id: agent:good\nname: Goodie\ninstructions: Be good.\n")
    assert _compile(tmp_path).returncode == 0
    (tmp_path / "good.yaml").write_text("id: agent:good\nname: Better\ninstructions: Be better.\n")
    (tmp_path / "new.yaml").write_text("name: Newcomer\n")

    files = _chain(tmp_path).files()
    assert files["agent:good"]["name"] == "Better" and files["agent:new"]["name"] == "Newcomer"


def test_compiling_refuses_a_bad_blueprint_by_name(tmp_path):
    (tmp_path / "good.yaml").write_text("id: agent:good\nname: Goodie\n")
    (tmp_path / "broken.yaml").write_text("id: agent:broken\ntemperature: 9\n")

    result = _compile(tmp_path)
    assert result.returncode == 1 and "broken.yaml" in result.stderr and "temperature" in result.stderr
    assert not (tmp_path / COMPILED).exists()


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ("since: 2024-05-01", {"since": datetime.date(2024, 5, 1)}),  # JSON: a string
        ("days: {7: lucky}", {"days": {7: "lucky"}}),  # JSON: a string key
        ("quota: 100000000000000000000", {"quota": 10**20}),  # JSON, as read back: a float
    ],
)
def test_data_json_cannot_hold_is_left_to_the_yaml(tmp_path, capabilities, expected):
    (tmp_path / "odd.yaml").write_text(f"id: agent:odd\ncapabilities:\n  {capabilities}\n")
    (tmp_path / "plain.yaml").write_text("id: agent:plain\n")
    assert _compile(tmp_path).returncode == 0
    assert list(jsoncodec.loads((tmp_path / COMPILED).read_bytes())) == ["plain.yaml"]

    read = _chain(tmp_path).files()["agent:odd"]["capabilities"]
    assert repr(read) == repr(expected)


def test_compiling_refuses_two_files_for_one_agent(tmp_path):
    (tmp_path / "a.yaml").write_text("id: agent:same\n")
    (tmp_path / "b.yaml").write_text("id: agent:same\n")

    result = _compile(tmp_path)
    assert result.returncode == 1 and "a.yaml" in result.stderr and "b.yaml" in result.stderr


GOOD = b"id: agent:good\nname: Goodie\n"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"good.yaml": {"sha256": 1}}',
        b'{"good.yaml": {"sha256": "%s", "data": null}}' % hashlib.sha256(GOOD).hexdigest().encode(),
    ],
)
def test_an_unreadable_compiled_file_is_not_trusted(tmp_path, content):
    (tmp_path / "good.yaml").write_bytes(GOOD)
    (tmp_path / COMPILED).write_bytes(content)

    assert _chain(tmp_path).files()["agent:good"]["name"] == "Goodie"
