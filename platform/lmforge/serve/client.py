"""A minimal streaming client of the chat API (what `lmforge serve ask_once=...` prints with).

It speaks the OpenAI wire format over plain HTTP (server-sent events), so it needs no `openai` package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests


def stream_chat(base_url: str, model: str, question: str, api_key: str | None = None,
                max_tokens: int = 128, timeout_s: float = 120.0) -> Iterator[str]:
    """Yield the answer's text pieces as the server streams them; an HTTP error raises with its message."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0}
    with requests.post(f"{base_url}/chat/completions", json=body, headers=headers, stream=True,
                       timeout=timeout_s) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"{base_url}/chat/completions answered {response.status_code}: {response.text[:500]}"
            )
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                return
            for choice in json.loads(data).get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    yield piece
