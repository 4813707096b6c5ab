"""Instructions per invocation, counted by valgrind (callgrind): figures that do not move with the
machine's other load, for judging a change to the hot path. Needs valgrind.

    .venv/bin/python bench/instructions.py        # ≈ 1 minute on 2 cores

The agent_runtime target is driven in process, as functions-framework ``--asgi`` builds it
(concurrency 32, no socket on the caller's side, so uvicorn's own HTTP parsing is not counted),
against the fakes of bench/fakes.py on loopback. The floor's client (bench/run.py) is counted the
same way. Each runs twice, for a few and for more invocations; the difference of the two counts
over the difference of the invocations leaves start-up and imports out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONCURRENCY, PY, ROOT, Fakes, Processes, drive, floor_call, invocation, pooled_session

FEW, MORE = 100, 500


async def drive_app(n: int) -> None:
    """n POST /invoke through the ASGI app functions-framework builds, with no server around it."""
    from functions_framework.aio import create_asgi_app

    app = create_asgi_app("agent_runtime", str(ROOT / "main.py"))

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


def count(what: str, n: int, env: dict[str, str]) -> subprocess.Popen:
    out = tempfile.NamedTemporaryFile(prefix=f"callgrind-{what}-{n}-", delete=False).name
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PY, __file__, "--drive", what, str(n)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process.out_file = out  # type: ignore[attr-defined]
    return process


def total(process: subprocess.Popen) -> int:
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{process.args}: exit {process.returncode}\n{err.decode()[-2000:]}")
    path = Path(process.out_file)  # type: ignore[attr-defined]
    try:
        return next(int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("totals:"))
    finally:
        path.unlink()


async def main() -> int:
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    procs = Processes()
    fakes = Fakes(procs)
    try:
        for name in ("messaging", "memory", "llm"):
            await fakes.start(name)
        env = fakes.env()
        per: dict[str, float] = {}
        for what in ("app", "floor"):
            print(f"counting {what} …", file=sys.stderr, flush=True)
            few, more = count(what, FEW, env), count(what, MORE, env)  # one per core
            per[what] = (total(more) - total(few)) / (MORE - FEW)
    finally:
        procs.stop_all()
    print(f"agent_runtime app: {per['app'] / 1e6:.2f} M instructions per invocation")
    print(f"floor's client:    {per['floor'] / 1e6:.2f} M instructions per invocation (its five calls)")
    print(f"ratio:             {per['app'] / per['floor']:.2f}")
    return 0


def driven(what: str, n: int) -> None:
    """The process valgrind counts."""
    import uvloop

    uvloop.run(drive_app(n) if what == "app" else drive_floor(n))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drive", nargs=2, metavar=("app|floor", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        driven(args.drive[0], int(args.drive[1]))
        sys.exit(0)
    sys.exit(asyncio.run(main()))
