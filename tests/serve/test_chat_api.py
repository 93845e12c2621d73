"""lmforge serve: a real Ray Serve app with vLLM on CPU,
through the openai client (the app of conftest.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from checkpoint_helpers import QA
from served_app import ANSWER, KEY, MODEL, QUESTION, ask


def test_models_lists_the_model_id(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_answers_in_the_trained_template_and_stops_at_eos(client):
    choice = ask(client, stream=False).choices[0]
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"  # the EOS, long before max_tokens=64


def test_streamed_chat_arrives_piece_by_piece_and_equals_the_plain_answer(client):
    chunks = [c for c in ask(client, stream=True) if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == ask(client, stream=False).choices[0].message.content == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_endpoint_generates_from_a_raw_prompt(client):
    answer = client.completions.create(model=MODEL, prompt=QUESTION, temperature=0, max_tokens=8)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens >= 1


def test_request_without_a_key_gets_401(api_url):
    response = httpx.post(f"{api_url}/chat/completions", json={"model": MODEL, "messages": []}, timeout=30)
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    assert httpx.get(f"{api_url}/models", timeout=30).status_code == 401


def test_request_with_a_wrong_key_gets_401(api_url):
    wrong = openai.OpenAI(base_url=api_url, api_key="not-" + KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(wrong, stream=True)


def test_prompt_over_max_prompt_tokens_gets_400_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError, match="more than this server's limit of 48"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION * 30}],
                                       max_tokens=4)


def test_max_tokens_above_the_limit_gets_400(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens 65 is above this server's limit of 64"):
        ask(client, stream=False, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="above this server's limit"):
        client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=1000)


def test_a_request_without_max_tokens_is_capped_at_the_limit(client):
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                            extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 64  # not the 256-token context minus the prompt


def test_32_concurrent_streams_all_complete_with_the_greedy_answers(api_url, client):
    alone = [
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=32
        )
        .choices[0]
        .message.content
        for q, _ in QA
    ]

    async def stream_one(aclient: openai.AsyncOpenAI, i: int) -> str:
        question = QA[i % len(QA)][0]
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=32,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=api_url, api_key=KEY, max_retries=0, timeout=300) as aclient:
            return await asyncio.gather(*(stream_one(aclient, i) for i in range(32)))

    started = time.perf_counter()
    answers = asyncio.run(run_all())
    print(f"\n32 concurrent streams in {time.perf_counter() - started:.1f} s")
    assert answers == [alone[i % len(QA)] for i in range(32)]  # batching does not change a greedy answer
