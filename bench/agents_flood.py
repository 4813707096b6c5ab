"""Per-agent state under a flood of distinct agent ids: RSS and /metrics stay flat, /health stays quick.

    .venv/bin/python bench/agents_flood.py                   # 20,000 invocations, unknown agents skipped
    .venv/bin/python bench/agents_flood.py --allow-unknown   # the same, each one answered by the built-in agent

Anyone who can publish an invocation chooses its agent_id. The function's worker (functions-framework,
fakes on loopback as in bench/run.py) gets ``--total`` invocations, each for a new agent; after each
quarter the table shows the worker's RSS, the size of /metrics, and /health's latency while a
/metrics scrape is under way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONCURRENCY, Fakes, Processes, children, drive, memory_mb, pooled_session, serve_function


async def health_during_scrape(session, base: str, rounds: int = 5) -> tuple[float, int]:
    """The slowest /health answer while /metrics is being scraped, and the scrape's size in bytes."""
    slowest, size = 0.0, 0
    for _ in range(rounds):
        scrape = asyncio.ensure_future(session.get(f"{base}/metrics"))
        await asyncio.sleep(0.001)  # the scrape is in the worker before /health arrives
        started = time.perf_counter()
        async with session.get(f"{base}/health") as r:
            await r.read()
        slowest = max(slowest, time.perf_counter() - started)
        async with await scrape as r:
            size = len(await r.read())
    return slowest, size


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--allow-unknown", action="store_true", help="answer unknown agents (the built-in one)")
    args = parser.parse_args()
    procs = Processes()
    try:
        fakes = Fakes(procs)
        for name in ("messaging", "memory", "llm"):
            await fakes.start(name)
        env = fakes.env()
        if args.allow_unknown:
            env["AGENT_RUNTIME__AGENTS__ALLOW_UNKNOWN"] = "true"
        function, base = await serve_function(procs, env)
        worker = children(function.pid)[0]
        statuses: dict[str, int] = {}
        async with pooled_session() as session:

            async def one() -> None:
                agent = f"agent:flood-{uuid.uuid4().hex[:12]}"
                body = {"agent_id": agent, "payload": {"channel_id": str(uuid.uuid4())}}
                async with session.post(f"{base}/invoke", json=body) as r:
                    answer = await r.json()
                    status = answer.get("reason") or answer.get("status")
                    statuses[status] = statuses.get(status, 0) + 1

            rows = []
            slowest, size = await health_during_scrape(session, base)
            rows.append((0, memory_mb(worker), size, slowest))
            quarter = args.total // 4
            for done in range(quarter, args.total + 1, quarter):
                await drive(quarter, CONCURRENCY, one)
                slowest, size = await health_during_scrape(session, base)
                rows.append((done, memory_mb(worker), size, slowest))
        print(f"{args.total} invocations, each for a new agent_id ({'answered' if args.allow_unknown else 'default'})")
        print(f"outcomes: {statuses}")
        print(f"{'invocations':>12} {'worker RSS MB':>14} {'/metrics bytes':>15} {'/health during scrape ms':>25}")
        for done, rss, size, slow in rows:
            print(f"{done:>12} {rss:>14.1f} {size:>15} {slow * 1000:>25.1f}")
        growth = rows[-1][1] - rows[1][1]
        print(f"RSS growth after the first quarter: {growth:+.1f} MB; /metrics {rows[1][2]} → {rows[-1][2]} bytes")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
