"""Packed batches: the loss of a packed batch equals the losses of its samples computed one by one."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.steps.row_packing import pack_samples
from lmforge.train.batches import block_causal_mask, model_inputs, pretrain_batch, sft_batch
from lmforge.train.model import TINY_CONFIGS, build_model

VOCAB = 97
ARCHITECTURES = ["llama", "qwen2", "bloom"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny_model(request):
    # initializer_range 0.2 (not 0.02) so attention really depends on context: see the leak test
    cfg = ModelConfig(
        architecture=request.param, config={**TINY_CONFIGS[request.param], "initializer_range": 0.2}
    )
    return request.param, build_model(cfg, VOCAB, seed=0).eval()


def _tokens(shape, seed):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _pretrain_rows():
    doc_lens = [[5, 11, 16], [1, 19, 12]]
    return _tokens((2, 32), seed=1).numpy(), doc_lens


def _sft_rows():
    rng = np.random.default_rng(2)
    samples = []
    for key, (prompt, answer) in enumerate([(4, 6), (7, 3), (2, 9), (5, 5), (3, 1)]):
        ids = rng.integers(0, VOCAB, prompt + answer).tolist()
        samples.append({"key": key, "input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    rows = pack_samples(pa.Table.from_pylist(samples, schema=pa.schema([
        ("key", pa.int64()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])),
        capacity=24, mode="packed").to_pylist()
    return samples, rows


def _loss_one_by_one(model, samples) -> float:
    """Token-weighted mean of each sample's loss, each run alone (labels shift inside the model)."""
    total, targets = 0.0, 0
    with torch.no_grad():
        for ids, labels in samples:
            count = int((labels[1:] != -100).sum())
            if count:
                loss = model(input_ids=ids[None], labels=labels[None], use_cache=False).loss
                total, targets = total + loss.item() * count, targets + count
    return total / targets


def test_pretrain_batch_restarts_positions_and_ignores_each_pieces_first_label():
    batch = pretrain_batch(np.array([[11, 12, 13, 14, 15, 16, 17]]), [[4, 3]])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 12, 13, 14, -100, 16, 17]]
    assert batch["input_ids"].dtype == torch.long


def test_pretrain_batch_refuses_doc_lens_that_do_not_fill_the_block():
    with pytest.raises(
        ValueError, match=r"pretrain row 0: doc_lens \[4, 2\] do not add up to the block size 7"
    ):
        pretrain_batch(np.zeros((1, 7), dtype=np.int32), [[4, 2]])


def test_sft_batch_pads_with_a_sample_of_its_own():
    row = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2], "boundaries": [3]}
    batch = sft_batch([row], max_length=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2]]
    with pytest.raises(ValueError, match="sft row 0 has 3 tokens > max_length 2"):
        sft_batch([row], max_length=2, pad_id=0)


def test_block_causal_mask_is_causal_within_samples_and_closed_across_them():
    allowed = block_causal_mask([[2, 1]], length=4)[0, 0] == 0  # 1 token of padding: a sample of its own
    assert allowed.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_packed_pretrain_loss_equals_the_documents_one_by_one(tiny_model):
    model_type, model = tiny_model
    ids, doc_lens = _pretrain_rows()
    batch = pretrain_batch(ids, doc_lens)
    with torch.no_grad():
        packed = model(**model_inputs(model_type, batch, doc_lens)).loss.item()
    samples = [(piece, piece) for row, lens in enumerate(doc_lens)
               for piece in torch.split(batch["input_ids"][row], lens)]
    assert abs(packed - _loss_one_by_one(model, samples)) < TOLERANCE


def test_packed_sft_loss_with_padding_equals_the_samples_one_by_one(tiny_model):
    model_type, model = tiny_model
    samples, rows = _sft_rows()
    assert max(len(r["boundaries"]) for r in rows) > 1 and min(len(r["input_ids"]) for r in rows) < 24
    batch = sft_batch(rows, max_length=24, pad_id=0)
    boundaries = [r["boundaries"] for r in rows]
    with torch.no_grad():
        packed = model(**model_inputs(model_type, batch, boundaries)).loss.item()
    alone = [(torch.tensor(s["input_ids"]), torch.tensor(s["labels"])) for s in samples]
    assert abs(packed - _loss_one_by_one(model, alone)) < TOLERANCE


def test_without_packing_inputs_samples_leak_into_each_other(tiny_model):
    """The check above can fail: a plain causal forward over the same rows is far off."""
    model_type, model = tiny_model
    ids, doc_lens = _pretrain_rows()
    batch = pretrain_batch(ids, doc_lens)
    with torch.no_grad():
        packed = model(**model_inputs(model_type, batch, doc_lens)).loss.item()
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss.item()
    assert abs(packed - leaky) > 10 * TOLERANCE


def test_unverified_model_types_are_refused():
    batch = pretrain_batch(np.zeros((1, 4), dtype=np.int32), [[4]])
    with pytest.raises(ValueError, match="model type 'gpt2': packed batches are only verified for"):
        model_inputs("gpt2", batch, [[4]])
