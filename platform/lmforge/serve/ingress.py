"""The OpenAI ingress of ray.serve.llm with API keys and request limits checked before the engine.

`GuardedIngress` subclasses ray 2.60's `OpenAiIngress` (an internal module: ray is pinned) and
exposes only /v1/models, /v1/models/{id}, /v1/completions and /v1/chat/completions. A request
without a valid `Authorization: Bearer <key>` gets 401; a prompt over `max_prompt_tokens` or a
`max_tokens` over `max_tokens_limit` gets 400. Neither reaches the vLLM replica. A request
without `max_tokens` gets `max_tokens_limit` (vLLM's default would be the rest of the context).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress

ENDPOINTS = {name: DEFAULT_ENDPOINTS[name] for name in ("models", "model_data", "completions", "chat")}


def openai_error(status: int, message: str, kind: str) -> JSONResponse:
    """An error body in the OpenAI shape, which the openai client turns into AuthenticationError etc."""
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


class GuardedIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, api_keys: list[str] = (),
                 max_prompt_tokens: int | None = None, max_tokens_limit: int | None = None,
                 tokenizer_dir: str | None = None):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._api_keys = [key.encode() for key in api_keys]
        self._max_prompt_tokens = max_prompt_tokens
        self._max_tokens_limit = max_tokens_limit
        self._tokenizer = None
        if max_prompt_tokens is not None:
            import transformers

            self._tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)

    async def models(self, request: Request):
        return self._unauthorized(request) or await super().models()

    async def model_data(self, model: str, request: Request):
        return self._unauthorized(request) or await super().model_data(model)

    async def completions(self, body: CompletionRequest, request: Request):
        rejected = self._unauthorized(request) or self._apply_limits(body, self._prompt_tokens(body.prompt))
        return rejected or await super().completions(body, request)

    async def chat(self, body: ChatCompletionRequest, request: Request):
        rejected = self._unauthorized(request) or self._apply_limits(body, self._chat_tokens(body.messages))
        return rejected or await super().chat(body, request)

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if not self._api_keys:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        # compare_digest against every key: the time taken does not tell how much of a key matched
        if scheme.lower() == "bearer" and any(hmac.compare_digest(key.strip().encode(), k) for k in self._api_keys):
            return None
        return openai_error(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                            "authentication_error")

    def _apply_limits(self, body, prompt_tokens) -> JSONResponse | None:
        """A 400 response for a request over the limits, else None (max_tokens filled in when absent)."""
        limit = self._max_tokens_limit
        asked = [n for n in (body.max_tokens, getattr(body, "max_completion_tokens", None)) if n is not None]
        if limit is not None and any(n > limit for n in asked):
            return openai_error(400, f"max_tokens {max(asked)} is above this server's limit of {limit}.",
                                "invalid_request_error")
        if limit is not None and not asked:
            body.max_tokens = limit
        if self._max_prompt_tokens is not None:
            n = prompt_tokens()
            if n > self._max_prompt_tokens:
                return openai_error(400, f"The prompt has {n} tokens, more than this server's limit of "
                                    f"{self._max_prompt_tokens}; shorten it.", "invalid_request_error")
        return None

    def _prompt_tokens(self, prompt: Any):
        """A callable counting the longest prompt of a completions request (text, texts, ids or id lists)."""
        def count() -> int:
            prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            return max(len(p) if isinstance(p, list) else len(self._tokenizer(p)["input_ids"]) for p in prompts)
        return count

    def _chat_tokens(self, messages: list[dict]):
        """A callable counting the chat prompt as the engine sees it: messages in the model's chat template."""
        def count() -> int:
            plain = [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]
            ids = self._tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return count


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
