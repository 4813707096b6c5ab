"""Instructions per invocation, counted by valgrind (callgrind): figures that do not move with the
machine's other load, for judging a change to the hot path. Needs valgrind.

    .venv/bin/python bench/instructions.py        # ≈ 1 minute on 2 cores
    .venv/bin/python bench/instructions.py --tracing   # and the app with every invocation traced
    .venv/bin/python bench/instructions.py --cold      # and the first invocation of a fresh process

The agent_runtime target is driven in process, as functions-framework ``--asgi`` builds it
(concurrency 32, no socket on the caller's side, so uvicorn's own HTTP parsing is not counted),
against the fakes of bench/fakes.py on loopback. The floor's client (bench/run.py) is counted the
same way. Each runs twice, for a few and for more invocations; the difference of the two counts
over the difference of the invocations leaves start-up and imports out.

With --cold, also what a cold start adds to the first invocation: a fresh process serving the
repository as deployed (bench/coldstart.py's copy, after the deploy's build step) counted with one
invocation and with none; the difference is the first request's imports, settings, models and run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coldstart import deployed_copy
from run import CONCURRENCY, PY, ROOT, Fakes, Processes, drive, floor_call, invocation, pooled_session

FEW, MORE = 100, 500


async def drive_app(n: int, tree: Path = ROOT) -> None:
    """n POST /invoke through the ASGI app functions-framework builds from ``tree``, with no server around it."""
    from functions_framework.aio import create_asgi_app

    app = create_asgi_app("agent_runtime", str(tree / "main.py"))

    async def one() -> None:
        body = json.dumps(invocation(str(uuid.uuid4()))).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/invoke",
            "raw_path": b"/invoke",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0].get("status") != 200 or b'"replied"' not in sent[-1].get("body", b""):
            raise RuntimeError(f"not a reply: {sent}")

    await drive(n, CONCURRENCY, one)


async def drive_floor(n: int) -> None:
    """n times the floor's five calls, to the fakes named in the environment (Fakes.env)."""
    urls = (os.environ["MESSAGING_SERVICE_URL"], os.environ["AGENT_MEMORY_URL"], os.environ["LLM_PROXY_URL"])
    async with pooled_session() as s:
        await drive(n, CONCURRENCY, floor_call(s, *urls))


def counted(what: str, ns: tuple[int, ...], env: dict[str, str], work: Path, cwd: Path = ROOT) -> list[int]:
    """Total instructions of ``--drive what n`` in ``cwd`` for each n, the runs side by side (one per core)."""
    runs = []
    try:
        for n in ns:
            out, log = work / f"callgrind-{what}-{n}.out", work / f"{what}-{n}.log"
            argv = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                PY,
                __file__,
                "--drive",
                what,
                str(n),
            ]
            with log.open("wb") as err:
                runs.append((subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err), out, log))
        totals = []
        for process, out, log in runs:
            if process.wait() != 0:
                raise RuntimeError(f"{' '.join(process.args)}: exit {process.returncode}; see {log}")
            totals.append(next(int(line.split()[1]) for line in out.open() if line.startswith("totals:")))
        return totals
    finally:
        for process, _, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()


async def main(tracing: bool, cold: bool) -> int:
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    procs = Processes()
    fakes = Fakes(procs)
    per: dict[str, float] = {}
    try:
        for name in ("messaging", "memory", "llm", *(["otlp"] if tracing else [])):
            await fakes.start(name)
        # traced: spans exported to a collector on loopback that discards them, often enough to count
        runs = [("app", fakes.env()), ("floor", fakes.env())]
        if tracing:
            runs.append(("traced", {**fakes.tracing_env(), "OTEL_BSP_SCHEDULE_DELAY": "200"}))
        for name, env in runs:
            print(f"counting {name} …", file=sys.stderr, flush=True)
            what = "floor" if name == "floor" else "app"
            few, more = await asyncio.to_thread(counted, what, (FEW, MORE), env, procs.logs)
            per[name] = (more - few) / (MORE - FEW)
        if cold:
            print("counting the first invocation of a fresh process …", file=sys.stderr, flush=True)
            tree = deployed_copy(procs.logs / "deployed", built=True)
            # the copy's bytecode as built: neither rewritten nor read from elsewhere
            env = {**fakes.env(), "PYTHONDONTWRITEBYTECODE": "1"}
            none, one = await asyncio.to_thread(counted, "cold", (0, 1), env, procs.logs, tree)
            per["cold"] = one - none
    finally:
        procs.stop_all()
    shutil.rmtree(procs.logs, ignore_errors=True)  # kept on failure: the error names the log
    print(f"agent_runtime app: {per['app'] / 1e6:.2f} M instructions per invocation")
    print(f"floor's client:    {per['floor'] / 1e6:.2f} M instructions per invocation (its five calls)")
    print(f"ratio:             {per['app'] / per['floor']:.2f}")
    if tracing:
        print(f"traced app:        {per['traced'] / 1e6:.2f} M instructions per invocation")
    if cold:
        print(f"first invocation of a fresh process, as deployed: {per['cold'] / 1e6:.0f} M instructions")
    return 0


def driven(what: str, n: int) -> None:
    """The process valgrind counts; ``cold``: the app of the tree it runs in, its modules first on the path."""
    import uvloop

    if what == "cold":
        sys.path.insert(0, os.getcwd())
        uvloop.run(drive_app(n, Path.cwd()))
    else:
        uvloop.run(drive_app(n) if what == "app" else drive_floor(n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drive", nargs=2, metavar=("app|floor|cold", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--tracing", action="store_true", help="also count the app with every invocation traced")
    ap.add_argument("--cold", action="store_true", help="also count the first invocation of a fresh process")
    args = ap.parse_args()
    if args.drive:
        driven(args.drive[0], int(args.drive[1]))
        sys.exit(0)
    sys.exit(asyncio.run(main(args.tracing, args.cold)))
