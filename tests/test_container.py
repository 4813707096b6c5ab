"""The image and the compose stack, for real: podman builds the Containerfile on a local stand-in
for python:3.x-slim (../shared/tools/container-setup: no registry is needed), the container
bridges NATS to a posted reply beside a nats-server and the stand-ins (host networking, loopback
only), as a non-root user, with secrets from files, passes its health check and drains on stop;
the compose file is validated (the images it names are not pulled here)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from standins.server import Fault
from tests.conftest import ROOT, free_port, invocation
from tests.runner_support import eventually

SETUP = ROOT.parent / "shared" / "tools" / "container-setup"
IMAGE = f"localhost/agent-runtime:test-{os.getpid()}"  # this session's own tag: others may build too
SUBJECT = "router.invoke.agent"


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}… exited {done.returncode}: {done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def base_image() -> str:
    """The base image container-setup prints, after installing podman when needed (idempotent)."""
    if not SETUP.is_file():
        pytest.skip(f"podman cannot be installed: {SETUP} (from the shared tools beside the clone) is missing")
    done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if shutil.which("podman") is None:
        pytest.skip(f"podman cannot be installed here: {SETUP} exited {done.returncode}: {done.stderr[-500:]}")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    """The Containerfile, built as a user would (podman's docker format keeps the HEALTHCHECK)."""
    started = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
        "-t", IMAGE, str(ROOT), timeout_s=900,
    )  # fmt: skip
    built_in_s = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    base = int(podman("image", "inspect", "--format", "{{.Size}}", base_image).stdout)
    # the runtime's layers over the base: its venv and code, nothing of the build or the tests
    assert size - base < 120_000_000, f"image {size / 1e6:.0f} MB, {(size - base) / 1e6:.0f} MB over the base"
    print(
        f"\n{IMAGE}: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over {base_image}), built in {built_in_s:.0f} s"
    )
    yield IMAGE
    podman("rmi", "--force", IMAGE, check=False)


class Container:
    """``podman run -d --network host`` of the image, removed at the end whatever happened."""

    def __init__(self, image: str, env: dict[str, str], *args: str, volumes: dict[Path, str] | None = None) -> None:
        self.name = f"agent-runtime-test-{uuid.uuid4().hex[:10]}"
        options = [f"--env={k}={v}" for k, v in env.items()]
        options += [f"--volume={host}:{inside}:ro" for host, inside in (volumes or {}).items()]
        podman("run", "--detach", "--name", self.name, "--network", "host", *options, image, *args)

    def healthy(self) -> bool:
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    async def until_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self.healthy):
            assert await asyncio.to_thread(self.running), f"the container exited:\n{self.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"the health check never passed:\n{self.logs()[-3000:]}"
            await asyncio.sleep(0.5)

    def remove(self) -> None:
        podman("rm", "--force", self.name, check=False)


@pytest.mark.slow
async def test_the_image_bridges_nats_to_a_reply_as_non_root_and_drains_on_stop(image, stack, nats_server, tmp_path):
    # secrets as files, as Docker and Kubernetes mount them; the stand-ins refuse calls without them
    stack.llm.secret = "llm-" + uuid.uuid4().hex
    runtime_secret = "runtime-" + uuid.uuid4().hex  # the bridge must send it to the function it serves
    (tmp_path / "llm").write_text(stack.llm.secret + "\n")
    (tmp_path / "runtime").write_text(runtime_secret + "\n")
    env = {
        **stack.env(),
        "NATS_URL": nats_server.url,
        "AGENT_RUNTIME__RUNNER__HOST": "127.0.0.1",  # host networking: keep it on loopback
        "AGENT_RUNTIME__RUNNER__PORT": str(free_port()),
        "AGENT_RUNTIME__RUNNER__FUNCTION_PORT": str(free_port()),
        "LLM_PROXY_SECRET_FILE": "/run/secrets/llm",
        "AGENT_RUNTIME_SECRET_FILE": "/run/secrets/runtime",
    }
    volumes = {tmp_path / "llm": "/run/secrets/llm", tmp_path / "runtime": "/run/secrets/runtime"}
    container = await asyncio.to_thread(Container, image, env, volumes=volumes)
    nc = None
    try:
        await container.until_healthy()  # the image's HEALTHCHECK: the runner's /health, NATS connected
        assert (await asyncio.to_thread(podman, "exec", container.name, "id", "-u")).stdout.strip() != "0"
        listing = (await asyncio.to_thread(podman, "exec", container.name, "ls", "/app")).stdout.split()
        assert "shared" in listing and not {"tests", "bench", "docs", ".git", ".venv"} & set(listing)

        nc = await nats.connect(nats_server.url)
        channel = stack.channel()
        asked = stack.messaging.add_message(channel, "привіт")
        await nc.publish(SUBJECT, json.dumps(invocation(channel, message_id=asked["id"])).encode())
        await eventually(lambda: len(stack.messaging.replies_to(channel)) == 1, 60, "the agent's reply")
        assert len(stack.llm.requests) == 1  # the LLM answered: its secret was read from the file

        # an invocation in flight when the container is stopped is finished before the process exits
        stack.llm.faults.set("proxy", Fault(delay_s=3.0, times=1))
        second = stack.channel()
        asked = stack.messaging.add_message(second, "are you still there?")
        await nc.publish(SUBJECT, json.dumps(invocation(second, message_id=asked["id"])).encode())
        await eventually(lambda: stack.llm.faults.calls.get("proxy", 0) == 2, 60, "the second call in flight")
        await asyncio.to_thread(podman, "stop", "--time", "40", container.name, timeout_s=60)
        assert len(stack.messaging.replies_to(second)) == 1
        state = await asyncio.to_thread(podman, "inspect", "--format", "{{.State.ExitCode}}", container.name)
        assert state.stdout.strip() == "0"
        logs = await asyncio.to_thread(container.logs)
        assert "draining" in logs and stack.llm.secret not in logs and runtime_secret not in logs
    finally:
        if nc is not None:
            await nc.close()
        await asyncio.to_thread(container.remove)


@pytest.mark.slow
async def test_the_image_serves_the_function_alone(image, stack):
    port = free_port()
    env = {**stack.env(), "HEALTHCHECK_URL": f"http://127.0.0.1:{port}/health"}
    command = ("functions-framework", "--target", "agent_runtime", "--asgi", "--host", "127.0.0.1", "--port", str(port))
    container = await asyncio.to_thread(Container, image, env, *command)
    try:
        await container.until_healthy()
        channel = stack.channel()
        stack.messaging.add_message(channel, "привіт")
        async with httpx.AsyncClient(timeout=30) as client:  # the seed's manual test, as its README shows it
            answer = await client.post(
                f"http://127.0.0.1:{port}/internal/agent-runtime/test-channel", json=invocation(channel)
            )
        assert answer.status_code == 200 and answer.json()["status"] == "replied", answer.text
        assert len(stack.messaging.replies_to(channel)) == 1
    finally:
        await asyncio.to_thread(container.remove)


# --- the files themselves -----------------------------------------------------------------------


def test_the_containerfile_is_the_dockerfile_and_builds_lean():
    assert (ROOT / "Containerfile").is_symlink() and os.readlink(ROOT / "Containerfile") == "Dockerfile"
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ${BASE_IMAGE}") == 2 and "ARG BASE_IMAGE=python:3.12-slim" in text  # two stages
    assert "--no-cache-dir" in text and "\nUSER 10001:10001" in text and "\nEXPOSE 7006" in text
    assert '\nCMD ["python", "local_runner.py"]' in text and "\nHEALTHCHECK " in text  # exec form: python is PID 1
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :].count("!tests") == 0 and "!shared" in ignored


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_compose_stack_is_nats_with_jetstream_and_two_replicas_sharing_it():
    services = compose()["services"]
    assert set(services) == {"nats", "agent-runtime", "standins"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD" and service["restart"] == "unless-stopped", name

    nats_service = services["nats"]
    assert "--jetstream" in nats_service["command"] and "nats-data:/data" in nats_service["volumes"]
    assert "nats-data" in compose()["volumes"]

    runtime = services["agent-runtime"]
    env = runtime["environment"]
    assert runtime["deploy"]["replicas"] == 2 and runtime["build"]["context"] == "."
    assert env["AGENT_RUNTIME__IDEMPOTENCY__BACKEND"] == "nats" and env["AGENT_RUNTIME__RUNNER__MODE"] == "jetstream"
    assert env["NATS_URL"] == "${NATS_URL:-nats://nats:4222}"  # DAARION's names: nats, messaging-service, ...
    assert "messaging-service:7004" in env["MESSAGING_SERVICE_URL"] and "agent-memory:7008" in env["AGENT_MEMORY_URL"]
    assert runtime["depends_on"]["nats"]["condition"] == "service_healthy"
    assert int(runtime["stop_grace_period"].removesuffix("s")) > 30  # longer than the drain timeout

    standins = services["standins"]
    assert standins["profiles"] == ["local"] and standins["command"][:3] == ["python", "-m", "standins"]
    assert set(standins["networks"]["default"]["aliases"]) == {"messaging-service", "agent-memory"}


@pytest.mark.parametrize("profile", [[], ["--profile", "local"]])
def test_podman_compose_reads_the_compose_file(profile):
    tool = str(Path(sys.executable).with_name("podman-compose"))  # requirements-dev.txt installs it beside python
    done = subprocess.run(
        [tool, *profile, "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert ("standins" in services) == bool(profile) and services["agent-runtime"]["deploy"]["replicas"] == 2
