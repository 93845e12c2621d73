"""The order training reads its rows in (train/data.py): a shuffle fixed by seed and epoch,
dealt out to ranks."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.train import data as train_data
from lmforge.train.data import TrainData, share_epoch_order, worker_epoch_dataset

ROWS = 1000


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> TrainData:
    """Prepared rows with ids 0..999 (only the id column matters to the order)."""
    path = tmp_path_factory.mktemp("rows") / "rows-00000.parquet"
    pq.write_table(pa.table({"row": np.arange(ROWS, dtype=np.int64)}), path)
    return TrainData(
        kind="sft",
        files=(str(path),),
        rows=ROWS,
        sequence_length=8,
        vocab_size=16,
        eos_token_id=0,
        pad_token_id=0,
        tokenizer_dir=str(path.parent),
        chat_template=None,
    )


@pytest.fixture(scope="module")
def epoch_order(rows):
    """epoch_order(seed, epoch, eval_rows=0): the row ids of one epoch in reading order (each read once)."""
    return functools.cache(lambda seed, epoch, eval_rows=0: _read_order(rows, seed, epoch, eval_rows))


def _read_order(rows: TrainData, seed: int, epoch: int, eval_rows: int = 0) -> np.ndarray:
    return train_data.epoch_order(rows, epoch, seed, eval_rows)


def _position_of_each_id(order: np.ndarray) -> np.ndarray:
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return position


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_an_epoch_reads_every_row_once_in_the_same_order_for_the_same_seed_and_epoch(rows, epoch_order):
    order = epoch_order(seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(ROWS))
    assert np.array_equal(order, _read_order(rows, seed=0, epoch=0))


def test_held_out_rows_are_never_in_an_epoch(epoch_order):
    order = epoch_order(seed=0, epoch=0, eval_rows=100)
    assert sorted(order.tolist()) == list(range(ROWS - 100))


def test_the_epoch_order_looks_random_even_for_neighbouring_ids(epoch_order):
    position = _position_of_each_id(epoch_order(seed=0, epoch=0))
    assert abs(_correlation(np.arange(ROWS), position)) < 0.1
    # A weak mix (a Weyl sequence id * golden) keeps neighbours a few fixed distances apart.
    assert abs(_correlation(position[:-1], position[1:])) < 0.1
    assert np.unique(np.diff(position)).size > ROWS // 2


def test_other_epochs_and_seeds_give_unrelated_orders(epoch_order):
    first = _position_of_each_id(epoch_order(seed=0, epoch=0))
    assert abs(_correlation(first, _position_of_each_id(epoch_order(seed=0, epoch=1)))) < 0.1
    assert abs(_correlation(first, _position_of_each_id(epoch_order(seed=1, epoch=0)))) < 0.1


@pytest.mark.parametrize("world, micro", [(2, 2), (3, 4)])
@pytest.mark.usefixtures("ray_local")
def test_each_rank_reads_its_micro_batches_of_the_epoch_order_and_only_whole_global_batches(
        rows, epoch_order, world, micro):
    order = epoch_order(seed=0, epoch=0, eval_rows=10)
    shared = share_epoch_order(order)
    per_rank = [worker_epoch_dataset(rows, shared, rank, world, micro).to_pandas()["row"].to_numpy()
                for rank in range(world)]
    steps = order.size // (world * micro)
    assert all(ids.size == steps * micro for ids in per_rank)
    interleaved = np.stack([ids.reshape(steps, micro) for ids in per_rank], axis=1).reshape(-1)
    assert np.array_equal(interleaved, order[: steps * world * micro])
