"""How long the ingress lets a request wait for its first token (no_replica_timeout_s), without Ray: the
Serve controller's answer is given, the waiting is real. test_replica_fault.py checks it on a killed replica.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.responses import JSONResponse

from lmforge.serve.ingress import GuardedIngress

CHECK_S = 0.05


def _ingress(health) -> GuardedIngress:
    """An ingress serving no model whose Serve controller answers `health()` (a dict, or raises)."""
    ingress = GuardedIngress({}, {}, no_replica_timeout_s=CHECK_S)

    async def models_health():
        return health()

    ingress._models_health = models_health
    return ingress


def test_a_request_waiting_while_no_replica_runs_gets_503_and_leaves_serves_queue():
    cancelled = asyncio.Event()

    async def held_by_serve():  # what Serve's router does with a request while no replica runs
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def ask():
        response = await _ingress(lambda: {"m": {"ready": False}})._engine_response(held_by_serve())
        await asyncio.wait_for(cancelled.wait(), 1)
        return response

    response = asyncio.run(asyncio.wait_for(ask(), 5))
    assert response.status_code == 503
    assert "retry the request" in json.loads(response.body)["error"]["message"]


@pytest.mark.parametrize("health", [lambda: {"m": {"ready": True}}, lambda: 1 / 0],
                         ids=["replica running", "controller unreachable"])
def test_a_slow_answer_is_not_cut_while_a_replica_runs_or_nothing_says_none_does(health):
    async def slow_answer():
        await asyncio.sleep(10 * CHECK_S)
        return JSONResponse({"answer": 42})

    response = asyncio.run(_ingress(health)._engine_response(slow_answer()))
    assert json.loads(response.body) == {"answer": 42}
