"""The chaos soak, small: the same script with fewer invocations, every crash included."""

from __future__ import annotations

from tests.soak.run import soak


async def test_small_chaos_soak_answers_every_invocation_exactly_once(tmp_path):
    summary = await soak(120, 24, rate=40.0, settle_timeout_s=60.0, workdir=str(tmp_path))
    print(summary.table())
    assert len(summary.chaos) == 3  # a functions process, a runner and the nats-server were killed
    assert summary.published == 120
    assert summary.answered == 120, summary.table()
    assert summary.answered_twice == 0, summary.table()
    assert summary.pending == 0 and summary.dead_letters == 0, summary.table()
