"""Serving throughput: (a) our Serve app over HTTP, (b) vLLM in-process (AsyncLLM, no HTTP, no Ray), (c) plain
transformers `generate` with a `TextIteratorStreamer` in a thread per request (how the API before lmforge
served), on the same converted model, at concurrency 1, 8 and 32.

Model: a Llama built from a config (hidden 768, 8 layers, 12 heads, vocabulary 8000: ~70M parameters, fp32),
trained 2 steps with ZeRO-3 by the convert tests' recipe (tests/convert/checkpoint_helpers.py) and converted
by `lmforge convert`'s `run_convert`, so every engine loads the same HF directory with the chat template
convert wrote. Big enough that a decode step costs real compute (the 0.3M-parameter test model measures only
overhead), small enough that the three engines finish in ~15 minutes on 2 cores. Its weights are near random,
so every request makes exactly `max_tokens` tokens with EOS suppressed (vLLM: min_tokens + ignore_eos;
transformers: min_new_tokens), checked per request, and special tokens are printed as text
(skip_special_tokens off) so that every token shows up in the stream.

Each level starts `concurrency` requests together, greedy, after a warm-up request.
TTFT: request start to its first token (vLLM, Serve: first non-empty text piece; transformers: first token
handed to the streamer, as TextIteratorStreamer holds text back until a word ends). Per request tok/s:
tokens / (last token - first token), the speed a reader sees once the answer started. Total tok/s: all
tokens of the level / the level's wall time.

    PYTHONPATH=platform .venv/bin/python bench/serve_throughput.py [--quick]

Writes bench/results/serve_throughput.txt; the last line printed is the RESULT line:
vllm_vs_hf_at_32 = total tok/s of (a) / (c) at concurrency 32; serve_overhead = (b) / (a) at 32.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lmforge import REPO_DIR as REPO  # the checkout

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work" / "serve_throughput"
RESULTS = REPO / "bench" / "results" / "serve_throughput.txt"
MODEL_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 512,
}
ENGINE_KWARGS = {"max_model_len": 512, "enforce_eager": True, "dtype": "float32"}
CONCURRENCY = (1, 8, 32)
QUESTION = "头痛怎么办？"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Timing:
    started: float
    first_piece: float
    last_piece: float
    tokens: int


def build_model() -> Path:
    """WORK/model: the bench model, trained 2 steps and converted (reused when present)."""
    model_dir = WORK / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    sys.path.insert(0, str(REPO / "tests" / "convert"))
    from checkpoint_helpers import make_run, single_process_group

    from lmforge.config import ConvertConfig, SourceConfig, TokenizerTrainConfig
    from lmforge.convert.convert import run_convert
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    train_tokenizer(TokenizerTrainConfig(
        sources=[SourceConfig(path=str(SHARED_DATA / "pretrain" / name)) for name in
                 ("fever.txt", "c4_demo.jsonl", "wiki_demo.txt")],
        output_dir=str(WORK / "tokenizer"), vocab_size=8000))
    with single_process_group(WORK):
        run = make_run(WORK / "sft", WORK / "tokenizer", architecture="llama", config=MODEL_CONFIG, steps=2,
                       save_at=(2,))
    run_convert(ConvertConfig(checkpoint=str(run), output_dir=str(model_dir), dtype="fp32"))
    return model_dir


def prompt_ids(model_dir: Path) -> list[int]:
    """The question in the model's chat template, as ids: what the Serve app's chat endpoint feeds vLLM."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def run_levels(name: str, run_level, max_tokens: int) -> dict[int, dict]:
    """Every concurrency level of one engine: `concurrency` requests started together."""
    run_level(1)  # warm-up: first-request allocations and caches are not what a serving benchmark measures
    stats = {}
    for concurrency in CONCURRENCY:
        started = time.perf_counter()
        timings = run_level(concurrency)
        wall = time.perf_counter() - started
        if any(t.tokens != max_tokens or t.first_piece is None for t in timings):
            raise RuntimeError(
                f"{name}: token counts {sorted({t.tokens for t in timings})} (expected {max_tokens}) "
                f"or a request without any text"
            )
        stats[concurrency] = {
            "ttft_p50_s": statistics.median(t.first_piece - t.started for t in timings),
            "request_tok_s": statistics.median(
                t.tokens / max(t.last_piece - t.first_piece, 1e-9) for t in timings
            ),
            "total_tok_s": sum(t.tokens for t in timings) / wall,
        }
        print(f"  {name} concurrency {concurrency}: {stats[concurrency]}", flush=True)
    return stats


def bench_transformers(model_dir: Path, ids: list[int], max_tokens: int) -> dict[int, dict]:
    """(c) model.generate in a thread per request,
    its TextIteratorStreamer read by the request's own thread."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # One intra-op thread per generate: with requests in parallel threads (and other jobs on the machine)
    # torch's default of one per core was 3x slower here even for a single request.
    torch.set_num_threads(1)
    input_ids = torch.tensor([ids])

    class TimedStreamer(transformers.TextIteratorStreamer):
        """The original API's streamer, also noting when generate hands it each new token."""

        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)
            self.token_times = []

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.token_times.append(time.perf_counter())
            super().put(value)

    def one_request() -> Timing:
        started = time.perf_counter()
        streamer = TimedStreamer()
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "streamer": streamer,
                  "max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
        generate = threading.Thread(target=model.generate, kwargs=kwargs)
        generate.start()
        "".join(streamer)  # what the API sent to its client, piece by piece
        generate.join()
        return Timing(started, streamer.token_times[0], streamer.token_times[-1], len(streamer.token_times))

    def run_level(concurrency: int) -> list[Timing]:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda _: one_request(), range(concurrency)))

    with torch.inference_mode():
        return run_levels("transformers", run_level, max_tokens)


def bench_vllm_in_process(model_dir: Path, ids: list[int], max_tokens: int) -> dict[int, dict]:
    """(b) vLLM's AsyncLLM in this process: the engine the Serve replica runs, without Ray, Serve or HTTP."""
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model_dir), **ENGINE_KWARGS))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                            skip_special_tokens=False, output_kind=RequestOutputKind.DELTA)
    counter = iter(range(10**9))

    async def one_request() -> Timing:
        started, first, last, tokens = time.perf_counter(), None, None, 0
        async for output in engine.generate({"prompt_token_ids": ids}, params, request_id=str(next(counter))):
            tokens += len(output.outputs[0].token_ids)
            if output.outputs[0].text:
                first = first or time.perf_counter()
                last = time.perf_counter()
        return Timing(started, first, last, tokens)

    async def level(concurrency: int) -> list[Timing]:
        return list(await asyncio.gather(*(one_request() for _ in range(concurrency))))

    loop = asyncio.new_event_loop()
    try:
        return run_levels("vLLM in-process", lambda c: loop.run_until_complete(level(c)), max_tokens)
    finally:
        engine.shutdown()
        loop.run_until_complete(asyncio.sleep(0.1))  # let the engine's output task see its cancellation
        loop.close()


def bench_serve(model_dir: Path, max_tokens: int) -> tuple[dict[int, dict], float]:
    """(a) the lmforge Serve app (Ray Serve LLM + our ingress) on a local Ray,
    streamed over HTTP with httpx."""
    import httpx
    import ray
    from ray import serve

    from lmforge.config import ServeConfig
    from lmforge.serve.run import start_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model_dir=str(model_dir), model_id="bench", output_dir=str(WORK / "serve"), port=port,
                      engine_kwargs=ENGINE_KWARGS)
    # Ray runs its workers (the replicas and their vLLM processes) at nice 15; the other two engines run in
    # this process at nice 0. On a machine shared with other jobs that alone would decide the comparison.
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    started = time.perf_counter()
    url = start_app(cfg)
    healthy_after = time.perf_counter() - started
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "skip_special_tokens": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def one_request(client: httpx.AsyncClient) -> Timing:
        started, first, last, tokens = time.perf_counter(), None, None, 0
        async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    last = time.perf_counter()
        return Timing(started, first, last, tokens)

    async def level(concurrency: int) -> list[Timing]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            return list(await asyncio.gather(*(one_request(client) for _ in range(concurrency))))

    try:
        return run_levels("Serve app", lambda c: asyncio.run(level(c)), max_tokens), healthy_after
    finally:
        serve.shutdown()
        ray.shutdown()


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 - safe_open is not iterable
    return total


def table(results: dict[str, dict[int, dict]]) -> list[str]:
    lines = [f"{'engine':<30} {'conc':>4} {'TTFT p50 s':>10} {'tok/s per req':>13} {'total tok/s':>11}"]
    for name, stats in results.items():
        for concurrency, row in stats.items():
            lines.append(
                f"{name:<30} {concurrency:>4} {row['ttft_p50_s']:>10.3f} {row['request_tok_s']:>13.1f} "
                f"{row['total_tok_s']:>11.1f}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens per request instead of 128")
    args = parser.parse_args()
    max_tokens = 32 if args.quick else 128

    started = time.perf_counter()
    model_dir = build_model()
    ids = prompt_ids(model_dir)
    n_params = parameter_count(model_dir)
    load_before = os.getloadavg()
    print(f"model {model_dir}: {n_params / 1e6:.1f}M parameters, prompt {len(ids)} tokens, {max_tokens} new "
          f"tokens per request", flush=True)
    serve_stats, healthy_after = bench_serve(model_dir, max_tokens)  # first: Ray is gone for the rest
    results = {
        "(a) lmforge Serve app": serve_stats,
        "(b) vLLM in-process": bench_vllm_in_process(model_dir, ids, max_tokens),
        "(c) transformers generate": bench_transformers(model_dir, ids, max_tokens),
    }

    vllm_vs_hf = serve_stats[32]["total_tok_s"] / results["(c) transformers generate"][32]["total_tok_s"]
    overhead = results["(b) vLLM in-process"][32]["total_tok_s"] / serve_stats[32]["total_tok_s"]
    lines = [
        (
            f"# bench/serve_throughput.py{' --quick' if args.quick else ''}, {datetime.date.today()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, load average {load_before[0]:.1f} at start / "
            f"{os.getloadavg()[0]:.1f} at end (other jobs share this machine)"
        ),
        (
            f"# model: Llama {MODEL_CONFIG}, vocabulary 8000, {n_params / 1e6:.1f}M parameters, fp32; prompt "
            f"{len(ids)} tokens; {max_tokens} new tokens per request (greedy, EOS ignored)"
        ),
        (
            f"# vLLM engine (b and a): {ENGINE_KWARGS}, VLLM_CPU_KVCACHE_SPACE=1; Serve app healthy "
            f"{healthy_after:.0f} s after serve.run (not in the timings)"
        ),
        *table(results),
        (
            f"# at concurrency 32: Serve / transformers = {vllm_vs_hf:.2f}x (target >= 5), "
            f"vLLM in-process / Serve = {overhead:.2f} (target <= 1.25); "
            f"{time.perf_counter() - started:.0f} s in all"
        ),
        f"RESULT vllm_vs_hf_at_32={vllm_vs_hf:.2f} serve_overhead={overhead:.2f}",
    ]
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
