"""Tokenize documents in Ray Data actors: the fast tokenizer is loaded once per actor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from transformers import AutoTokenizer


def load_fast_tokenizer(path: str):
    """AutoTokenizer from a local directory; it must be a fast tokenizer with an EOS token."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer: {path} is not a directory; point it at a local model or "
                                "tokenizer directory (or run `lmforge train-tokenizer` first)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {path}: a fast (Rust) tokenizer is needed, got {type(tokenizer).__name__}")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {path}: has no EOS token; documents must end with one")
    return tokenizer


class DocumentTokenizer:
    """Ray Data callable class: `text` -> `input_ids` (list<int32>, ending in EOS) and `n_tokens`."""

    def __init__(self, tokenizer_path: str, add_bos: bool = False, threads: int = 1):
        # The Rust tokenizer sizes its thread pool from these on first use; one thread per actor
        # lets Ray's worker count decide the parallelism instead of oversubscribing the cores.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        tokenizer = load_fast_tokenizer(tokenizer_path)
        self._backend = tokenizer.backend_tokenizer
        self._eos = tokenizer.eos_token_id
        self._bos = tokenizer.bos_token_id if add_bos else None
        if add_bos and self._bos is None:
            raise ValueError(f"tokenizer {tokenizer_path}: add_bos is set but it has no BOS token")

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
        extra = (self._bos is not None) + 1
        lengths = np.fromiter((len(e.ids) + extra for e in encodings), dtype=np.int32, count=len(encodings))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(offsets[-1], dtype=np.int32)
        for encoding, start, end in zip(encodings, offsets[:-1], offsets[1:]):
            if self._bos is not None:
                flat[start] = self._bos
            flat[end - len(encoding.ids) - 1 : end - 1] = encoding.ids
            flat[end - 1] = self._eos
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return batch.drop_columns(["text"]).append_column("input_ids", ids).append_column(
            "n_tokens", pa.array(lengths.astype(np.int64))
        )
