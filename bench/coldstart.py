"""Cold start: process start → first invocation answered, beside a bare functions-framework hello world.

    .venv/bin/python bench/coldstart.py              # 7 rounds, alternating
    .venv/bin/python bench/coldstart.py --rounds 11
    .venv/bin/python bench/coldstart.py --tracing    # and, in the same rounds, with traces on

Each round starts ``functions-framework --target agent_runtime --asgi`` and times process start →
the first ``POST /invoke`` (a valid invocation, its downstream calls answered by the fakes of
bench/fakes.py) answered 200; and ``functions-framework --target hello --asgi`` (bench/hello/main.py,
same flags) to its first ``GET`` answered. The targets alternate within and across rounds, so drift
on a shared machine hits them alike; a ratio is the median of the per-round ratios. The second and
later requests are timed too: a cold start made cheaper by moving its cost onto them would show.

The function runs from a copy of the repository taken at the start, as deployed: the files a deploy
uploads (.gcloudignore), with what the deploy's build step makes (docs/deployment.md): the bytecode
(``python -m compileall --invalidation-mode checked-hash main.py handlers shared``, which also holds
after an upload changes the files' times) and the compiled blueprint files (``python -m
shared.blueprints``); and, for comparison, from a copy without either (bare sources: Python compiles
the runtime's own modules and reads the blueprints' YAML at each start, as a deploy skipping that
step would).
Installed packages have their bytecode in both. With ``--tracing``, each round also starts the
deployed copy with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (every invocation traced, its spans exported
to a collector on loopback that discards them).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import py_compile
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "bench" / "hello"
FF = [sys.executable, "-m", "functions_framework"]
TARGET = 1.6
START_TIMEOUT_S = 30.0
POLL_S = 0.002
LATER_REQUESTS = 8  # after the second: what a warm request costs, for comparison
NOT_DEPLOYED = (
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "tests",
    ".compiled.json*",
)
BUILT = ("main.py", "handlers", "shared")  # what the deploy's build step compiles


@dataclass
class ColdStart:
    """Seconds per round: each target's first answer, and agent_runtime's later requests."""

    runtime: list[float] = field(default_factory=list)  # as deployed: its build step's output shipped
    source: list[float] = field(default_factory=list)  # from bare sources: compiled and parsed at start
    hello: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)  # agent_runtime's second request
    warm: list[float] = field(default_factory=list)  # its requests after the second, all rounds
    hello_second: list[float] = field(default_factory=list)
    traced: list[float] = field(default_factory=list)  # as deployed, with traces on

    @property
    def ratios(self) -> list[float]:
        return [r / h for r, h in zip(self.runtime, self.hello, strict=True)]

    @property
    def source_ratios(self) -> list[float]:
        return [r / h for r, h in zip(self.source, self.hello, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def source_ratio(self) -> float:
        return statistics.median(self.source_ratios)

    @property
    def traced_ratio(self) -> float:
        return statistics.median(r / h for r, h in zip(self.traced, self.hello, strict=True))

    @property
    def ok(self) -> bool:
        return self.ratio <= TARGET

    def table_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """Rows for bench/run.py's table: measurement, figure, reference, ratio, target, verdict."""
        rows = [
            (
                "   process start → first POST /invoke 200",
                ms(self.runtime),
                f"hello world {ms(self.hello)}",
                f"{self.ratio:.2f}",
                f"≤ {TARGET:.2f}",
                "PASS" if self.ok else "MISS",
            ),
            ("   ratio per round", f"{min(self.ratios):.2f} … {max(self.ratios):.2f}", "", "median", "", ""),
            ("   the same from bare sources (no build step)", ms(self.source), "", f"{self.source_ratio:.2f}", "", ""),
            ("   second POST /invoke; requests 3–10", f"{ms(self.second)}; {ms(self.warm)}", "", "", "", ""),
        ]
        if self.traced:
            rows.append(("   the same, tracing on", ms(self.traced), "", f"{self.traced_ratio:.2f}", "", ""))
        return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invocation() -> dict:
    """A fresh channel's message for agent:sofia (the fakes answer any channel)."""
    return {
        "agent_id": "agent:sofia",
        "entrypoint": "channel_message",
        "payload": {"channel_id": str(uuid.uuid4()), "microdao_id": "microdao:daarion"},
    }


Request = Callable[..., Awaitable[int]]


async def _invoke(session, base: str) -> int:
    async with session.post(f"{base}/invoke", json=invocation()) as r:
        outcome = await r.json()
    if r.status == 200 and outcome.get("status") != "replied":
        raise RuntimeError(f"the invocation was not replied to: {outcome}")
    return r.status


async def _hello(session, base: str) -> int:
    async with session.get(f"{base}/") as r:
        await r.read()
    return r.status


async def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)


def _spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, subprocess.Popen]:
    """The process started (its output appended to ``log``), and when: the clock starts before the fork."""
    with open(log, "ab") as out:
        started = time.perf_counter()
        return started, subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=out)


async def first_answer(
    target: str, cwd: Path, env: dict[str, str], request: Request, later: int, log: Path
) -> tuple[float, list[float]]:
    """Seconds from process start to ``request`` answered 200, then each of ``later`` more requests' seconds."""
    import aiohttp

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*FF, "--target", target, "--asgi", "--host", "127.0.0.1", "--port", str(port)]
    timeout = aiohttp.ClientTimeout(total=START_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started, process = _spawn(argv, cwd, env, log)
        try:
            while True:
                try:
                    status = await request(session, base)
                except aiohttp.ClientConnectionError:
                    status = 0  # not listening yet
                if status == 200:
                    break
                if status:
                    raise RuntimeError(f"{target} answered {status}; see {log}")
                if process.poll() is not None or time.perf_counter() - started > START_TIMEOUT_S:
                    raise RuntimeError(f"{target} did not answer within {START_TIMEOUT_S}s; see {log}")
                await asyncio.sleep(POLL_S)
            first = time.perf_counter() - started
            times = []
            for _ in range(later):
                began = time.perf_counter()
                if (status := await request(session, base)) != 200:
                    raise RuntimeError(f"{target} answered {status}; see {log}")
                times.append(time.perf_counter() - began)
            return first, times
        finally:
            await _stop(process)


def deployed_copy(to: Path, *, built: bool) -> Path:
    """The repository as a function deploys it (no caches, no tests), after the deploy's build step or not."""
    shutil.copytree(ROOT, to, ignore=shutil.ignore_patterns(*NOT_DEPLOYED), symlinks=True)
    if built:
        mode = py_compile.PycInvalidationMode.CHECKED_HASH
        for name in BUILT:
            path = to / name
            compiled = (
                compileall.compile_dir(path, quiet=1, invalidation_mode=mode)
                if path.is_dir()
                else compileall.compile_file(path, quiet=1, invalidation_mode=mode)
            )
            if not compiled:
                raise RuntimeError(f"{path}: compileall failed")
        # the blueprints' step as documented, in the copy (whose settings it reads)
        subprocess.run([sys.executable, "-m", "shared.blueprints"], cwd=to, check=True, stdout=subprocess.DEVNULL)
    return to


async def measure(
    env: dict[str, str], rounds: int = 7, logs: Path | None = None, traced_env: dict[str, str] | None = None
) -> ColdStart:
    """``rounds`` alternating cold starts of agent_runtime (as deployed, and from bare sources) and hello; ``env``
    points at running fakes. Given ``traced_env`` (``env`` with traces on), the deployed copy starts
    with it too, in the same rounds."""
    logs = logs or Path(tempfile.mkdtemp(prefix="agent-runtime-coldstart-"))
    # the copies' bytecode stays as it is: neither written during the rounds nor read from elsewhere
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    traced = {**traced_env, "PYTHONDONTWRITEBYTECODE": "1"} if traced_env else None
    result = ColdStart()
    with tempfile.TemporaryDirectory(prefix="agent-runtime-deployed-") as tmp:
        deployed = deployed_copy(Path(tmp) / "deployed", built=True)
        source = deployed_copy(Path(tmp) / "source", built=False)

        async def runtime(tree: Path, into: list[float], with_env: dict[str, str] = env) -> None:
            first, later = await first_answer(
                "agent_runtime", tree, with_env, _invoke, 1 + LATER_REQUESTS, logs / f"runtime-{tree.name}.log"
            )
            into.append(first)
            if into is result.runtime:
                result.second.append(later[0])
                result.warm.extend(later[1:])

        async def hello() -> None:
            first, later = await first_answer("hello", HELLO, env, _hello, 1, logs / "hello.log")
            result.hello.append(first)
            result.hello_second.extend(later)

        for i in range(rounds):
            steps = [lambda: runtime(deployed, result.runtime), hello, lambda: runtime(source, result.source)]
            if traced:
                steps.append(lambda: runtime(deployed, result.traced, traced))
            for step in steps if i % 2 == 0 else reversed(steps):
                await step()
            print(
                f"  round {i + 1}/{rounds}: agent_runtime {result.runtime[-1] * 1000:.0f} ms"
                f" (bare sources {result.source[-1] * 1000:.0f} ms"
                + (f", traced {result.traced[-1] * 1000:.0f} ms" if traced else "")
                + f"), hello {result.hello[-1] * 1000:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    return result


def ms(values: list[float]) -> str:
    """Median (min–max), in ms."""
    return f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}–{max(values) * 1000:.0f})"


def rows(result: ColdStart) -> list[tuple[str, str]]:
    """The figures, labelled."""
    return [
        ("agent_runtime: start → first POST /invoke 200", ms(result.runtime)),
        ("hello world: start → first GET 200", ms(result.hello)),
        (
            "ratio (median of per-round ratios)",
            f"{result.ratio:.2f} ({min(result.ratios):.2f}–{max(result.ratios):.2f}),"
            f" target ≤ {TARGET:.2f}: {'PASS' if result.ok else 'MISS'}",
        ),
        ("agent_runtime from bare sources (no build step)", ms(result.source)),
        ("   its ratio", f"{result.source_ratio:.2f} (informational)"),
        ("agent_runtime: second POST /invoke", ms(result.second)),
        (f"agent_runtime: requests 3–{2 + LATER_REQUESTS}", ms(result.warm)),
        ("hello world: second GET", ms(result.hello_second)),
        *(
            [
                ("agent_runtime, tracing on: start → first POST /invoke 200", ms(result.traced)),
                ("   its ratio", f"{result.traced_ratio:.2f} (informational)"),
            ]
            if result.traced
            else []
        ),
    ]


def print_table(result: ColdStart) -> None:
    table = rows(result)
    width = max(len(k) for k, _ in table)
    print(f"\ncold start, {len(result.runtime)} alternating rounds ({os.cpu_count()} cores)\n")
    for what, figure in table:
        print(f"  {what.ljust(width)}  {figure}")


async def _main(rounds: int, tracing: bool) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from run import Fakes, Processes

    procs = Processes()
    fakes = Fakes(procs)
    try:
        for name in ("messaging", "memory", "llm", *(["otlp"] if tracing else [])):
            await fakes.start(name)
        result = await measure(fakes.env(), rounds, procs.logs, fakes.tracing_env() if tracing else None)
    finally:
        procs.stop_all()
    print_table(result)
    print(f"\nprocess logs in {procs.logs}")
    return 0 if result.ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="cold starts of each, alternating")
    ap.add_argument(
        "--tracing", action="store_true", help="also start agent_runtime with traces on, in the same rounds"
    )
    args = ap.parse_args()
    return asyncio.run(_main(args.rounds, args.tracing))


if __name__ == "__main__":
    sys.exit(main())
