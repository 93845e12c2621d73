"""What the serve tests share about the one app conftest.py starts: its key, model id and a chat call."""

from __future__ import annotations

import openai
from checkpoint_helpers import QA

KEY = "test-key-1"
MODEL = "tiny-chat"
QUESTION, ANSWER = QA[0]


def ask(client: openai.OpenAI, stream: bool, max_tokens: int = 64, **kwargs):
    """The trained question, greedy."""
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=max_tokens, stream=stream, **kwargs)
