"""In embedded mode a user's group comes only from ``members`` lists (the server extension's
caller carries no hub groups): the job record keeps the group the user was in at submit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller


def test_groups_come_from_members_lists_only(tmp_path: Path) -> None:
    cfg = QueueConfig.model_validate({
        "pools": {"default": {"nodes": {"local": 1}}},
        "groups": {"ml": {}, "team": {"members": ["bob"]}},
        "warm_imports": [],
    })

    async def scenario() -> dict[str, str]:
        svc = QueueService(tmp_path / "state", cfg, gpus=1)
        await svc.start()
        try:
            req = SubmitRequest(spec=JobSpec(kind="command", gpus=0, command=["true"]))
            return {u: (await svc.submit(Caller(u), req))[0].group or "" for u in ("alice", "bob")}
        finally:
            await svc.stop()

    assert asyncio.run(scenario()) == {"alice": "", "bob": "team"}
