"""`lmforge generate MODEL_DIR "question"`: ask a converted model one question, in its chat template.

hf: transformers `generate` runs in a thread and a TextIteratorStreamer hands text to the terminal as
tokens arrive; greedy; stops at the model's EOS (generation_config.json). vllm: the offline `LLM` API on
CPU returns the whole completion at once, so it is printed when done.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

VLLM_DTYPES = ("float32", "bfloat16", "float16")


def chat_prompt(tokenizer, question: str) -> str:
    """`question` as one user turn in the model's chat template, ending where the answer starts."""
    if not tokenizer.chat_template:
        raise ValueError(
            f"{tokenizer.name_or_path}: the tokenizer has no chat template; convert writes the run's "
            "template into the model directory"
        )
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def stream_hf(model_dir: str | Path, question: str, max_new_tokens: int = 256) -> Iterator[str]:
    """Pieces of the greedy answer as transformers produces them (EOS and other special tokens dropped)."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", use_safetensors=True
    ).eval()
    # add_special_tokens=False: the template already holds whatever BOS the model expects
    inputs = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
    streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**inputs, "streamer": streamer, "max_new_tokens": max_new_tokens, "do_sample": False}
    errors: list[Exception] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except Exception as exc:  # noqa: BLE001  (re-raised in the caller's thread below)
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    yield from (piece for piece in streamer if piece)  # '' while a character's bytes are incomplete
    thread.join()
    if errors:
        raise errors[0]


def complete_vllm(model_dir: str | Path, question: str, max_new_tokens: int = 256) -> str:
    """The greedy answer from vLLM on CPU (whole, not streamed). Call under `if __name__ == "__main__":`."""
    # GiB; unset, vLLM reserves most of the RAM and refuses
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory: never ask the Hub
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the answer
    from vllm import LLM, SamplingParams

    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")  # vLLM's "auto" would downcast fp32 models
    llm = LLM(model=str(model_dir), dtype=dtype if dtype in VLLM_DTYPES else "auto", enforce_eager=True,
              max_model_len=min(config.get("max_position_embeddings") or 2048, 4096))
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    [output] = llm.chat([{"role": "user", "content": question}], params, use_tqdm=False)
    return output.outputs[0].text


def run_generate(model_dir: str, question: str, engine: str = "hf", max_new_tokens: int = 256) -> None:
    """The CLI: print the answer to stdout, streamed for hf, whole for vllm."""
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json); run lmforge convert")
    if engine == "vllm":
        print(complete_vllm(model_dir, question, max_new_tokens), flush=True)
        return
    for piece in stream_hf(model_dir, question, max_new_tokens):
        print(piece, end="", flush=True)
    print()
