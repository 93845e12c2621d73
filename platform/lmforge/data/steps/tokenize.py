"""Tokenize documents in Ray Data tasks: the fast tokenizer is built once per worker process.

Tasks, not an actor pool: actors hold their CPUs for the whole stage, and on a small Ray
(2 CPUs, 2 actors) the tasks that feed them never get a CPU, so the stage waits forever.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa


def load_fast_tokenizer(path: str):
    """AutoTokenizer from a local directory; it must be a fast tokenizer with an EOS token."""
    from transformers import AutoTokenizer  # slow to import: only where a full tokenizer is needed

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer: {path} is not a directory; point it at a local model or "
                                "tokenizer directory (or run `lmforge train-tokenizer` first)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise ValueError(
            f"tokenizer {path}: a fast (Rust) tokenizer is needed, got {type(tokenizer).__name__}"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {path}: has no EOS token; documents must end with one")
    return tokenizer


# tokenizer_config classes that leave tokenizer.json as it is; other classes may change it or add tokens.
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer directory read with the `tokenizers` library alone (importing transformers takes seconds).

    `read` gives it only when the files settle every id the way AutoTokenizer would, otherwise None;
    `load` then asks AutoTokenizer. The workers' spec and the manifest's identity both come from `load`."""

    backend_json: str
    tokenizer_class: str
    vocab_size: int  # with added tokens, as len(AutoTokenizer)
    special_ids: dict[str, int | None]  # bos, eos, pad

    @classmethod
    def load(cls, path: str) -> TokenizerFiles:
        """The files read directly where they settle every id; else what AutoTokenizer makes of them (which
        also says why a directory is no fast tokenizer with an EOS)."""
        if (files := cls.read(path)) is not None:
            return files
        tokenizer = load_fast_tokenizer(path)
        return cls(tokenizer.backend_tokenizer.to_str(), type(tokenizer).__name__, len(tokenizer),
                   {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                    "pad": tokenizer.pad_token_id})

    @classmethod
    def read(cls, path: str) -> TokenizerFiles | None:
        from tokenizers import Tokenizer

        directory = Path(path)
        if not all((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            return None
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        named = {k: _content(v) for k, v in config.items() if k.endswith("_token") and v is not None}
        if (directory / "special_tokens_map.json").is_file():
            extra = json.loads((directory / "special_tokens_map.json").read_text(encoding="utf-8"))
            for key, value in extra.items():
                if key.endswith("_token") and named.setdefault(key, _content(value)) != _content(value):
                    return None  # which one wins is AutoTokenizer's business
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        ids = {key: backend.token_to_id(token) for key, token in named.items()}
        declared = {int(i): _content(t) for i, t in (config.get("added_tokens_decoder") or {}).items()}
        if (config.get("tokenizer_class") not in _PLAIN_CLASSES or "eos_token" not in named
                or None in ids.values() or config.get("split_special_tokens")
                or config.get("extra_special_tokens") or config.get("additional_special_tokens")
                or any(backend.token_to_id(t) != i for i, t in declared.items())):
            return None  # AutoTokenizer would add tokens, change the backend or default the EOS
        size = backend.get_vocab_size(with_added_tokens=True)
        return cls(backend.to_str(), config["tokenizer_class"], size,
                   {k: ids.get(f"{k}_token") for k in ("bos", "eos", "pad")})


def _content(token) -> str:
    return token["content"] if isinstance(token, dict) else token


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizing worker needs: the Rust tokenizer's
    JSON and the special ids (no transformers import)."""

    backend_json: str
    eos_id: int
    bos_id: int | None

    @classmethod
    def from_directory(cls, path: str, add_bos: bool = False) -> TokenizerSpec:
        files = TokenizerFiles.load(path)
        bos_id = files.special_ids["bos"]
        if add_bos and bos_id is None:
            raise ValueError(f"tokenizer {path}: add_bos is set but it has no BOS token")
        return cls(files.backend_json, files.special_ids["eos"], bos_id if add_bos else None)


def tokenize_batch(batch: pa.Table, spec: TokenizerSpec, threads: int = 1) -> pa.Table:
    """Ray Data task body: `text` -> `input_ids` and `n_tokens` (DocumentTokenizer, cached per process)."""
    return _document_tokenizer(spec, threads)(batch)


@functools.lru_cache(maxsize=2)
def _document_tokenizer(spec: TokenizerSpec, threads: int) -> DocumentTokenizer:
    # Ray reuses a worker process for the stage's tasks, so this builds the tokenizer once per process.
    return DocumentTokenizer(spec, threads)


class DocumentTokenizer:
    """`text` -> `input_ids` (list<int32>, ending in EOS) and `n_tokens`, for a batch of documents."""

    def __init__(self, spec: TokenizerSpec, threads: int = 1):
        # The Rust tokenizer sizes its thread pool from these on first use; one thread per worker
        # lets Ray's worker count decide the parallelism instead of oversubscribing the cores.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(spec.backend_json)
        self._eos, self._bos = spec.eos_id, spec.bos_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
        extra = (self._bos is not None) + 1
        lengths = np.fromiter((len(e.ids) + extra for e in encodings), dtype=np.int32, count=len(encodings))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.empty(offsets[-1], dtype=np.int32)
        for encoding, start, end in zip(encodings, offsets[:-1], offsets[1:], strict=True):
            if self._bos is not None:
                flat[start] = self._bos
            flat[end - len(encoding.ids) - 1 : end - 1] = encoding.ids
            flat[end - 1] = self._eos
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return batch.drop_columns(["text"]).append_column("input_ids", ids).append_column(
            "n_tokens", pa.array(lengths.astype(np.int64))
        )
