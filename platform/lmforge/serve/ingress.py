"""The OpenAI ingress of ray.serve.llm with API keys and request limits checked before the engine.

`GuardedIngress` subclasses ray 2.60's `OpenAiIngress` (an internal module: ray is pinned) and
exposes only /v1/models, /v1/models/{id}, /v1/completions and /v1/chat/completions, plus GET
/health. A request without a valid `Authorization: Bearer <key>` gets 401; a prompt over
`max_prompt_tokens` or a `max_tokens` over `max_tokens_limit` gets 400. Neither reaches the vLLM
replica. A request without `max_tokens` gets `max_tokens_limit` (vLLM's default would be the rest
of the context). A stream whose replica fails midway ends with an OpenAI error event (the openai
client raises APIError) instead of stopping silently as if the answer were complete. A request still
unanswered while its model has no RUNNING replica gets 503 after `no_replica_timeout_s`: Serve's
router would hold it until a new replica has started (ray/serve/_private/router.py:
`route_and_send_request` retries a request whose replica died before accepting it, and waits).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress

log = logging.getLogger(__name__)
ENDPOINTS = {
    **{name: DEFAULT_ENDPOINTS[name] for name in ("models", "model_data", "completions", "chat")},
    "health": lambda app: app.get("/health"),
}


def openai_error(status: int, message: str, kind: str) -> JSONResponse:
    """An error body in the OpenAI shape, which the openai client turns into AuthenticationError etc."""
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "code": status}}
    )


class GuardedIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, api_keys: list[str] = (),
                 max_prompt_tokens: int | None = None, max_tokens_limit: int | None = None,
                 tokenizer_dir: str | None = None, health_timeout_s: float = 5.0,
                 no_replica_timeout_s: float = 10.0):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._health_timeout_s = health_timeout_s
        self._no_replica_timeout_s = no_replica_timeout_s
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
        return rejected or await self._engine_response(super().completions(body, request))

    async def chat(self, body: ChatCompletionRequest, request: Request):
        rejected = self._unauthorized(request) or self._apply_limits(body, self._chat_tokens(body.messages))
        return rejected or await self._engine_response(super().chat(body, request))

    async def health(self) -> JSONResponse:
        """GET /health, open (load balancers carry no key): 200 when every model has a RUNNING replica,
        else 503.

        RUNNING means the replica passed Serve's last health check, which asks the vLLM engine
        (every health_check_period_s, 10 s). Read from Serve's controller, not by sending the
        replica a request: a replica busy with max_ongoing_requests is healthy, not down.
        """
        try:
            models = await self._models_health()
        except Exception as exc:  # noqa: BLE001 - a controller we cannot reach vouches for nothing
            return JSONResponse(status_code=503, content={"status": "unavailable",
                                                          "error": f"Serve status unavailable: {exc!r}"})
        ready = all(model["ready"] for model in models.values())
        return JSONResponse(status_code=200 if ready else 503,
                            content={"status": "ok" if ready else "unavailable", "models": models})

    async def _models_health(self) -> dict[str, dict]:
        """Each model's replica states as Serve's controller reports them; raises if it takes longer than
        health_timeout_s."""
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), self._health_timeout_s)
        return {model_id: _deployment_health(status, handle)
                for model_id, handle in self._default_serve_handles.items()}

    async def _engine_response(self, response: Awaitable):
        """The engine's response; 503 (retryable) if its replica died before answering or no replica is
        running to answer it; a stream that fails later ends with an OpenAI error event."""
        waiting = asyncio.ensure_future(response)
        try:
            while not (await asyncio.wait({waiting}, timeout=self._no_replica_timeout_s))[0]:
                if not await self._replica_running():
                    return openai_error(503, "No replica of the model is running (it is starting); "
                                        "retry the request.", "server_error")
            response = waiting.result()
        except RayActorError as exc:  # without this, Ray's middleware answers a bare 500
            return openai_error(503, f"The model replica failed ({type(exc).__name__}); retry the request.",
                                "server_error")
        finally:
            waiting.cancel()  # a no-op once answered; else it takes the request out of Serve's queue
        if isinstance(response, StreamingResponse):
            response.body_iterator = _error_event_on_failure(response.body_iterator)
        return response

    async def _replica_running(self) -> bool:
        """False only when Serve's controller says a model has no RUNNING replica (what /health reports);
        a controller too slow to answer vouches for nothing, and the request keeps waiting."""
        try:
            models = await self._models_health()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("Serve status unavailable, the request keeps waiting: %r", exc)
            return True
        return all(model["ready"] for model in models.values())

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if not self._api_keys:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        # compare_digest against every key: the time taken does not tell how much of a key matched
        if scheme.lower() == "bearer" and any(
            hmac.compare_digest(key.strip().encode(), k) for k in self._api_keys
        ):
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
            prompts = (
                prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            )
            return max(
                len(p) if isinstance(p, list) else len(self._tokenizer(p)["input_ids"]) for p in prompts
            )

        return count

    def _chat_tokens(self, messages: list[dict]):
        """A callable counting the chat prompt as the engine sees it:
        messages in the model's chat template."""

        def count() -> int:
            plain = [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]
            ids = self._tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return count


def _deployment_health(status, handle) -> dict:
    """Replica states of the model's deployment; ready with a RUNNING replica,
    or none on purpose (scaled to zero)."""
    app = status.applications.get(handle.app_name)
    deployment = app.deployments.get(handle.deployment_name) if app else None
    if deployment is None:
        return {"ready": False, "deployment": handle.deployment_name, "status": "NOT_FOUND", "replicas": {}}
    replicas = {getattr(state, "value", state): n for state, n in deployment.replica_states.items() if n}
    deployment_status = getattr(deployment.status, "value", deployment.status)
    ready = replicas.get("RUNNING", 0) > 0 or (not replicas and deployment_status == "HEALTHY")
    return {
        "ready": ready,
        "deployment": handle.deployment_name,
        "status": deployment_status,
        "replicas": replicas,
    }


async def _error_event_on_failure(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    # Without this a replica that dies mid-answer ends the stream like a finished one (no [DONE],
    # but clients do not check); vLLM's own server sends the same error event then [DONE].
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - any failure of the replica or its engine ends this stream
        log.warning("stream failed midway: %r", exc)
        error = {
            "message": f"The model replica failed while generating ({type(exc).__name__}); "
            "retry the request.",
            "type": "server_error",
            "code": 503,
        }
        yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
