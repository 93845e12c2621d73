"""Generation and scoring on `ray.data.llm`'s vLLM engine actors, for every inference stage.

    requests (Ray Dataset): id, prompt_ids (list<int>), max_tokens, score_from (-1: do not score)
      -> ray.data.llm vLLMEngineProcessor (autoscaled engine actors, `engine.min/max_engines`)
      -> results: id, text, prompt_tokens, generated_tokens, finish_reason, logprob, error

Prompts arrive tokenized (see `PromptTokenizer`), so the processor's chat-template, tokenize and
detokenize stages are off: ray.data.llm's tokenize stage calls the tokenizer with its default
add_special_tokens=True, which can put a BOS where prepare-sft's rendering had none, and the prompt a
model sees must be token for token the prompt it was trained on.

Scoring (score_from = k >= 0) sums the log-probabilities vLLM reports for prompt tokens k.. (the
continuation being scored). vLLM takes `prompt_logprobs` from each row's sampling params, but Ray
Data turns a column of ints mixed with nulls into floats that vLLM rejects, so one pass either
scores every row or none: `scoring=True` asks every row for prompt log-probabilities (a generated
row's are computed and ignored; cheap next to an engine start).

A row the engine refuses (prompt longer than max_model_len, any engine error) comes back with
`error` set ("too_long: ..." or "engine_error: ...") and the job goes on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ray.data

from lmforge.config.infer import EngineConfig, SamplingConfig

RESULT_COLUMNS = ("id", "text", "prompt_tokens", "generated_tokens", "finish_reason", "logprob", "error")
_TOO_LONG = "maximum context length"


def model_limits(model_dir: str | Path, engine: EngineConfig) -> tuple[int, list[int]]:
    """(max_model_len the engine will use, EOS ids generation stops at) from the model directory."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json); run lmforge convert")
    config = json.loads((model_dir / "config.json").read_text())
    max_len = engine.engine_kwargs.get("max_model_len") or config.get("max_position_embeddings") or 2048
    generation = model_dir / "generation_config.json"
    eos = json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
    eos = eos if eos is not None else config.get("eos_token_id")
    return int(max_len), [eos] if isinstance(eos, int) else list(eos or [])


def run_requests(
    requests: ray.data.Dataset,
    model_dir: str | Path,
    engine: EngineConfig,
    sampling: SamplingConfig,
    scoring: bool = False,
    carry: tuple[str, ...] = (),
) -> ray.data.Dataset:
    """Results of `requests` (see the module docstring), plus the request columns named in `carry`.
    Lazy: nothing runs until the dataset is consumed."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    max_len, eos_ids = model_limits(model_dir, engine)
    placement = (
        {"bundles": [{"CPU": 1}]}
        if engine.accelerator == "cpu"
        else {"bundles": [{"GPU": 1, "CPU": 1}] * engine.engine_kwargs.get("tensor_parallel_size", 1)}
    )
    config = vLLMEngineProcessorConfig(
        model_source=str(Path(model_dir).resolve()),
        engine_kwargs={**engine.engine_kwargs, "max_model_len": max_len},
        concurrency=(engine.min_engines, engine.max_engines),
        batch_size=engine.batch_size,
        max_concurrent_batches=engine.max_concurrent_batches,
        accelerator_type=engine.accelerator_type,
        # CPU: without a bundle ray.data.llm asks for one GPU per engine actor (DESIGN.md).
        placement_group_config=placement,
        runtime_env={"env_vars": dict(engine.env)},
        should_continue_on_error=True,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        log_engine_metrics=False,
    )
    params = {"temperature": sampling.temperature, "top_p": sampling.top_p,
              "repetition_penalty": sampling.repetition_penalty, "seed": sampling.seed}
    if scoring:
        params["prompt_logprobs"] = 0  # the prompt token's own log-probability, no alternatives
    processor = build_processor(
        config,
        preprocess=_EngineRequest(params),
        postprocess=_EngineResult(max_len, eos_ids, carry),
    )
    return processor(requests).map(_normalise_row, fn_kwargs={"carry": carry})


def run_request_list(
    requests: list[dict],
    model_dir: str | Path,
    engine: EngineConfig,
    sampling: SamplingConfig,
    scoring: bool = False,
) -> dict[str, dict]:
    """Results by id for a list of requests small enough for the driver (synth items, eval sets).

    A prompt with no room left for one generated token fails here as too_long, without an engine;
    when nothing fits, no engine starts."""
    max_len, _ = model_limits(model_dir, engine)
    fitting = [r for r in requests if len(r["prompt_ids"]) < max_len]
    results = {r["id"]: too_long_result(r["id"], len(r["prompt_ids"]), max_len)
               for r in requests if len(r["prompt_ids"]) >= max_len}
    if fitting:
        done = run_requests(ray.data.from_items(fitting), model_dir, engine, sampling, scoring).take_all()
        results.update((row["id"], row) for row in done)
    return results


def too_long_result(request_id: str, prompt_tokens: int, max_len: int) -> dict:
    return {
        "id": request_id,
        "text": "",
        "prompt_tokens": prompt_tokens,
        "generated_tokens": 0,
        "finish_reason": "error",
        "logprob": math.nan,
        "error": f"too_long: the prompt has {prompt_tokens} tokens; the engine's max_model_len is {max_len}",
    }


class _EngineRequest:
    """Row -> the engine's inputs (a class, not a closure, so Ray ships it by value)."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def __call__(self, row: dict) -> dict:
        return {"tokenized_prompt": [int(t) for t in row["prompt_ids"]],
                "sampling_params": {**self.params, "max_tokens": int(row["max_tokens"])}}


class _EngineResult:
    """Engine output row -> our result columns (runs next to the engine; big logprob lists stay there)."""

    def __init__(self, max_len: int, eos_ids: list[int], carry: tuple[str, ...]):
        self.max_len, self.eos_ids, self.carry = max_len, set(eos_ids), carry

    def __call__(self, row: dict) -> dict:
        generated = [int(t) for t in row["generated_tokens"]]
        prompt_tokens = int(row["num_input_tokens"])
        if generated and generated[-1] in self.eos_ids:
            finish = "stop"
        elif len(generated) >= int(row["max_tokens"]) or prompt_tokens + len(generated) >= self.max_len:
            finish = "length"
        else:
            finish = "stop"  # a stop token other than the EOS
        return {"id": row["id"], "text": row["generated_text"], "prompt_tokens": prompt_tokens,
                "generated_tokens": len(generated), "finish_reason": finish,
                "logprob": _continuation_logprob(row), "error": "", **{key: row[key] for key in self.carry}}


def _continuation_logprob(row: dict) -> float:
    start = int(row["score_from"])
    logprobs = row.get("prompt_logprobs")
    if start < 0 or logprobs is None:
        return math.nan
    ids = [int(t) for t in row["prompt_ids"]]
    # Position i holds {token id: {"logprob": ...}} for prompt token i (None for the first token).
    return float(sum(logprobs[i][ids[i]]["logprob"] for i in range(max(start, 1), len(ids))))


def _normalise_row(row: dict, carry: tuple[str, ...]) -> dict:
    """Error rows skip the postprocess and hold the request's columns: give every row the same columns."""
    error = row.get("__inference_error__") or ""
    if not error:
        return {key: row[key] for key in (*RESULT_COLUMNS, *carry)}
    kind = "too_long" if _TOO_LONG in error else "engine_error"
    return {"id": row["id"], "text": "", "prompt_tokens": len(row["prompt_ids"]), "generated_tokens": 0,
            "finish_reason": "error", "logprob": math.nan, "error": f"{kind}: {error[:500]}",
            **{key: row[key] for key in carry}}
