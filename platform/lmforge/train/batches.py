"""Rows from the data stages -> model inputs in which packed samples never see each other.

    row (pretrain doc_lens [4, 3] + SFT padding alike):  a a a a b b b
    input_ids      a a a a b b b
    position_ids   0 1 2 3 0 1 2        restart at every sample (padding is one more sample)
    labels         - a a a - b b        "-" = -100: the model scores position t on labels[t + 1],
                                        so a sample's first label would be predicted from the previous one

Llama and Qwen2 get `position_ids`, `attention_mask=None`, `use_cache=False`: transformers 5.19 then
builds the block-causal mask itself from where the position ids restart (DESIGN.md).

Bloom has no position ids (ALiBi) and its forward only takes a 2D padding mask, so it gets an explicit
4D additive mask (0 = may attend, dtype min = may not), block-causal over the same samples:

          a a a a b b b
        a 0 - - - - - -
        a 0 0 - - - - -
        a 0 0 0 - - - -
        a 0 0 0 0 - - -
        b - - - - 0 - -
        b - - - - 0 0 -
        b - - - - 0 0 0

and `pack_aware_alibi` (applied by `build_model`) lets its ALiBi bias accept that mask, taking each
key's distance from its own sample's start, so a packed sample sees exactly the bias it sees alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmforge.data.text.chat_render import IGNORE_INDEX

POSITION_ID_MODELS = ("llama", "qwen2")
ALIBI_MODELS = ("bloom",)


def pretrain_batch(
    input_ids: np.ndarray | list, doc_lens: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """(micro_batch, block) token ids + each row's document piece lengths -> input_ids, labels,
    position_ids."""
    ids = torch.as_tensor(np.stack([np.asarray(row) for row in input_ids]), dtype=torch.long)
    positions = torch.stack(
        [_positions(lens, ids.shape[1], f"pretrain row {i}") for i, lens in enumerate(doc_lens)]
    )
    labels = ids.masked_fill(positions == 0, IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def sft_batch(rows: Sequence[dict], max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """SFT rows (input_ids, labels, position_ids, boundaries) padded to `max_length`.

    Padding gets pad_id, label -100 and position ids restarting at 0: a sample of its own.
    """
    ids = torch.full((len(rows), max_length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), max_length), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        if n > max_length:
            raise ValueError(f"sft row {i} has {n} tokens > max_length {max_length}: raise max_length to the "
                             "pack capacity of prepare-sft")
        ids[i, :n] = torch.as_tensor(np.asarray(row["input_ids"]), dtype=torch.long)
        labels[i, :n] = torch.as_tensor(np.asarray(row["labels"]), dtype=torch.long)
        positions[i, :n] = torch.as_tensor(np.asarray(row["position_ids"]), dtype=torch.long)
        positions[i, n:] = torch.arange(max_length - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def packed_row_inputs(rows: Sequence[dict], max_length: int, pad_id: int,
                      model_type: str) -> tuple[dict, list[list[int]]]:
    """SFT or preference rows (input_ids, labels, position_ids, boundaries) -> (`model(**inputs)` keyword
    arguments with labels, each row's sample lengths without the padding)."""
    boundaries = [[int(b) for b in row["boundaries"]] for row in rows]
    return model_inputs(model_type, sft_batch(rows, max_length, pad_id), boundaries), boundaries


def rows_of(batch: dict, names: Sequence[str] = ("input_ids", "labels", "position_ids", "boundaries")
            ) -> list[dict]:
    """A Ray Data numpy batch (column -> array of rows) as one dict per row."""
    return [{name: batch[name][i] for name in names} for i in range(len(batch["input_ids"]))]


def model_inputs(
    model_type: str, batch: dict[str, torch.Tensor], boundaries: Sequence[Sequence[int]]
) -> dict:
    """Keyword arguments for `model(**inputs)` (labels included) that keep packed samples apart.

    `boundaries`: each row's sample lengths (pretrain doc_lens, SFT boundaries); tokens after the last
    sample (padding) form one more sample. Bloom needs a model from `build_model` (see the module doc).
    """
    common = {"input_ids": batch["input_ids"], "labels": batch["labels"], "use_cache": False}
    if model_type in POSITION_ID_MODELS:
        return {**common, "position_ids": batch["position_ids"], "attention_mask": None}
    if model_type in ALIBI_MODELS:
        return {**common, "attention_mask": block_causal_mask(boundaries, batch["input_ids"].shape[1])}
    raise ValueError(f"model type {model_type!r}: packed batches are only verified for "
                     f"{POSITION_ID_MODELS + ALIBI_MODELS}")


def block_causal_mask(boundaries: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """(rows, 1, length, length) additive float32 mask: causal within each sample, closed across samples."""
    samples = torch.stack([_sample_ids(lens, length, f"row {i}") for i, lens in enumerate(boundaries)])
    allowed = (samples[:, :, None] == samples[:, None, :]) & torch.ones(
        length, length, dtype=torch.bool
    ).tril()
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )
    return mask[:, None]


def pack_aware_alibi(model: torch.nn.Module) -> None:
    """Let a Bloom model's ALiBi take a 4D block-causal mask: each key's bias from its position in its sample.

    Bloom builds ALiBi from the 2D mask's cumulative sum (slope * key index). With a 4D mask the key's
    position is the number of keys its own (causal, in-sample) query row may see, minus one.
    """
    transformer = model.transformer
    build_2d = transformer.build_alibi_tensor

    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        if attention_mask.dim() != 4:
            return build_2d(attention_mask, num_heads, dtype)
        rows, length = attention_mask.shape[0], attention_mask.shape[-1]
        positions = (attention_mask[:, 0] == 0).sum(-1) - 1  # (rows, length): query row j sees keys start..j
        slopes = build_2d(torch.ones(rows, 2, device=attention_mask.device), num_heads, torch.float32)[..., 1]
        alibi = slopes.view(rows, num_heads, 1) * positions[:, None, :]  # build_2d gives 0, slope per head
        return alibi.reshape(rows * num_heads, 1, length).to(dtype)

    transformer.build_alibi_tensor = build_alibi_tensor


def _sample_ids(lens: Sequence[int], length: int, where: str) -> torch.Tensor:
    """Sample index of every token of a row; tokens past the last sample (padding) get one more index."""
    lens = np.asarray(lens, dtype=np.int64)
    if lens.sum() > length or (lens < 0).any():
        raise ValueError(f"{where}: sample lengths {lens.tolist()} do not fit a row of {length} tokens")
    ids = np.repeat(np.arange(lens.size), lens)
    return torch.as_tensor(np.concatenate([ids, np.full(length - ids.size, lens.size)]))


def _positions(lens: Sequence[int], length: int, where: str) -> torch.Tensor:
    """Position ids restarting at 0 at every document piece of a full pretraining block."""
    lens = np.asarray(lens, dtype=np.int64)
    if lens.sum() != length or (lens < 0).any():
        raise ValueError(f"{where}: doc_lens {lens.tolist()} do not add up to the block size {length}")
    return torch.as_tensor(np.arange(length) - np.repeat(np.cumsum(lens) - lens, lens))
