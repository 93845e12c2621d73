"""A vLLM replica killed (SIGKILL) mid-answer: every stream in flight ends promptly in an error the client
can retry (one whose every token had left before the kill landed is whole), never a hang or a silently
short answer, and so does a request sent while no replica runs; Serve starts a new replica, /health says
so, and the next request is answered.

Runs after the other serve tests (marker kills_replica): the app is down while the replica restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import psutil
import pytest
from served_app import ANSWER, KEY, MODEL, QUESTION, ask

STREAMS = 8
MAX_TOKENS = 64
# an upper bound on every request: a bug here fails the test instead of hanging the suite
CLIENT_TIMEOUT_S = 120
# Every request ends within this, on a loaded machine too: one the replica was answering, at once; one that
# Serve's router holds for a new replica (sent, or retried, after the kill), at the first check every
# ServeConfig.no_replica_timeout_s (10 s) after Serve's controller has seen the death (its health checks
# run every 10 s): within ~20 s.
PROMPT_END_S = 45
RESTART_DEADLINE_S = 420  # a replica takes 45-130 s to start on 2 idle cores, far longer on a loaded machine


def _replica_pid() -> int | None:
    """Pid of the running LLMServer replica actor,
    from the GCS actor table (the state API needs the dashboard)."""
    from ray._private import state

    pids = [actor["Pid"] for actor in state.actors(actor_state_name="ALIVE").values()
            if actor["ActorClassName"].endswith(f"LLMServer:{MODEL}")]
    return pids[0] if pids else None


async def _streams_with_kill(api_url: str, pid: int) -> list[tuple[float, object]]:
    """STREAMS greedy streams of MAX_TOKENS (ignore_eos); SIGKILL the replica when the first piece arrives.
    Each stream's (seconds it took, the number of tokens it said it generated or its error)."""
    first_piece = asyncio.Event()

    async def stream_one(aclient: openai.AsyncOpenAI) -> tuple[float, object]:
        started = time.monotonic()
        try:
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0,
                max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            generated = None
            async for chunk in stream:
                first_piece.set()
                generated = chunk.usage.completion_tokens if chunk.usage else generated
        except Exception as exc:  # noqa: BLE001 - the test checks which
            generated = exc
        return time.monotonic() - started, generated

    async def kill_on_first_piece():
        await first_piece.wait()
        os.kill(pid, signal.SIGKILL)

    async with openai.AsyncOpenAI(
        base_url=api_url, api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as aclient:
        killer = asyncio.create_task(kill_on_first_piece())
        results = await asyncio.gather(*(stream_one(aclient) for _ in range(STREAMS)))
        await asyncio.wait_for(killer, 5)
    return results


def _assert_retryable(error: BaseException) -> None:
    """An OpenAI error saying to retry: an error event ending a stream, or a 503 before any answer."""
    assert isinstance(error, openai.APIError), f"not an API error: {error!r}"
    assert "retry the request" in error.message, f"not a retryable failure: {error!r}"
    if isinstance(error, openai.APIStatusError):
        assert error.status_code == 503, f"not 503: {error!r}"


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still alive; a zombie counts as gone (its parent died;
    who reaps it is up to the container)."""
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for_new_replica(api_url: str, old_pid: int) -> float:
    """Seconds until /health says ok with a replica other than the killed one."""
    started = time.monotonic()
    while time.monotonic() - started < RESTART_DEADLINE_S:
        health = httpx.get(f"{api_url.removesuffix('/v1')}/health", timeout=30)
        if health.status_code == 200 and _replica_pid() not in (None, old_pid):
            return time.monotonic() - started
        time.sleep(3)
    pytest.fail(f"no healthy replica {RESTART_DEADLINE_S} s after the kill; last /health: {health.text}")


@pytest.mark.kills_replica
def test_killed_replica_promptly_fails_requests_in_flight_and_waiting_then_serve_restarts_it(api_url, client):
    pid = _replica_pid()
    engine_processes = psutil.Process(pid).children(recursive=True)  # vLLM's EngineCore and its worker
    assert engine_processes, "expected vLLM's engine process under the replica"

    ended = asyncio.run(_streams_with_kill(api_url, pid))
    print(f"\n{STREAMS} streams ended after {[round(seconds, 1) for seconds, _ in ended]} s: "
          f"{[type(r).__name__ + ': ' + str(r)[:80] for _, r in ended]}")
    assert max(seconds for seconds, _ in ended) < PROMPT_END_S, ended
    results = [result for _, result in ended]
    # A stream whose every token left before the kill landed is whole, not silently short.
    errors = [result for result in results if isinstance(result, BaseException)]
    assert all(result == MAX_TOKENS for result in results if not isinstance(result, BaseException)), results
    for result in errors:  # the streams being answered: an error event; those still waiting: 503
        _assert_retryable(result)
    assert any("while generating" in result.message for result in errors), "no stream failed midway"

    # Sent while no replica runs (Serve queues it for the one that is starting): a prompt 503, or an answer.
    started = time.monotonic()
    try:
        answered = ask(client, stream=False, timeout=CLIENT_TIMEOUT_S).choices[0].message.content
    except openai.APIError as exc:
        answered = exc
    took = time.monotonic() - started
    print(f"a request sent while the replica was down ended after {took:.1f} s: {answered!r}")
    assert took < PROMPT_END_S, f"a request sent while the replica was down took {took:.0f} s: {answered!r}"
    if isinstance(answered, BaseException):
        _assert_retryable(answered)
    else:
        assert answered == ANSWER

    deadline = time.monotonic() + 30
    while _running(engine_processes) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _running(engine_processes), "vLLM processes of the killed replica are still running"

    waited = _wait_for_new_replica(api_url, pid)
    print(f"new replica healthy {waited:.0f} s later")
    answer = ask(client, stream=False, timeout=CLIENT_TIMEOUT_S)
    assert answer.choices[0].message.content == ANSWER
