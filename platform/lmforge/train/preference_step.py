"""One micro batch of `lmforge align`: packed rows of whole pairs -> the policy's per-sequence log-probs,
the reference's -> the configured preference loss (lmforge.train.preference) and its statistics.

    row       c1 c1 c1 r1 r1 c2 c2 r2 r2 r2 pad      kinds [0, 1, 0, 1], pair_keys [k1, k1, k2, k2]
    policy    forward(packed row, no labels) -> logits -> sum of log p(answer token) per sequence
    reference the data's ref_logps (precomputed by prepare-preference), or in the loop:
              LoRA: the same forward with the adapters disabled; full: a frozen copy of the starting model
              (partitioned by ZeRO like the policy, no optimizer state)

A pair is whole in one row, so chosen and rejected always land in the same micro batch and rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from lmforge.config import AlignTrainConfig
from lmforge.train.batches import IGNORE_INDEX, packed_row_inputs, rows_of
from lmforge.train.preference import kto_local_kl, metric_means, preference_loss, sequence_logps

ReferenceKind = Literal["none", "precomputed", "adapters_disabled", "frozen_copy"]


def reference_kind(cfg: AlignTrainConfig, data) -> ReferenceKind:
    """Where this run's reference log-probs come from (run.py has checked that precomputed ones exist)."""
    if not cfg.preference.needs_reference:
        return "none"
    if cfg.reference == "precomputed" or (cfg.reference == "auto" and data.reference_logps):
        return "precomputed"
    return "adapters_disabled" if cfg.lora.enabled else "frozen_copy"


@dataclass
class Reference:
    kind: ReferenceKind
    engine: Any = None  # frozen_copy: a DeepSpeed engine of the starting model, in eval mode

    def logps(self, policy_engine, inputs: dict, labels: torch.Tensor, boundaries,
              batch) -> torch.Tensor | None:
        """Per-sequence summed log-probs of the reference, flattened in row order like the policy's."""
        if self.kind == "none":
            return None
        if self.kind == "precomputed":
            return torch.as_tensor(np.concatenate([np.asarray(r, np.float64) for r in batch["ref_logps"]]),
                                   dtype=torch.float32)
        with torch.no_grad():
            if self.kind == "adapters_disabled":
                with policy_engine.module.disable_adapter():
                    logits = policy_engine(**inputs).logits
            else:
                logits = self.engine(**inputs).logits
        return sequence_logps(logits, labels, boundaries).sum


def build_reference(kind: ReferenceKind, cfg: AlignTrainConfig, data, ds_config: dict) -> Reference:
    """The in-loop frozen copy for full fine-tuning; nothing to build for the other kinds."""
    if kind != "frozen_copy":
        return Reference(kind)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from lmforge.train.model import build_model

    # TRL's prepare_deepspeed does the same: the policy's ZeRO config without optimizer or scheduler, so
    # under ZeRO-3 each worker holds 1/world of the reference and no optimizer state for it.
    config = {key: value for key, value in ds_config.items() if key not in ("optimizer", "scheduler")}
    stage = config["zero_optimization"]["stage"]
    config["zero_optimization"] = {"stage": 3 if stage == 3 else 0}
    hf_config = HfDeepSpeedConfig(config) if stage == 3 else None
    model = build_model(cfg.model, data.vocab_size, cfg.seed)  # the policy's starting weights
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    engine.hf_deepspeed_config = hf_config  # transformers holds it weakly: it must live as long as the engine
    return Reference(kind, engine)


def preference_micro_batch(
    engine, reference: Reference, batch: dict[str, np.ndarray], data, cfg: AlignTrainConfig, model_type: str,
    all_ranks: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """(loss to backpropagate, metric sums, trained tokens) of one micro batch of packed rows.

    all_ranks: every rank runs this micro batch in step (training), so KTO's KL estimate is averaged over
    them; evaluation, whose ranks may hold different numbers of batches, uses the rank's own estimate.
    """
    inputs, boundaries = packed_row_inputs(rows_of(batch), data.sequence_length, data.pad_token_id,
                                           model_type)
    labels = inputs.pop("labels")
    kinds = torch.as_tensor(np.concatenate([np.asarray(r, np.int64) for r in batch["kinds"]]))

    policy = sequence_logps(engine(**inputs).logits, labels, boundaries)
    reference_sums = reference.logps(engine, inputs, labels, boundaries, batch)
    kl = None
    if cfg.preference.loss == "kto":
        kl = kto_local_kl(policy, reference_sums, kinds)
        if all_ranks and dist.is_initialized():  # TRL gathers each process's mean and averages them
            dist.all_reduce(kl)
            kl = kl / dist.get_world_size()
    loss, sums = preference_loss(cfg.preference, policy, reference_sums, kinds, kl=kl)
    return loss, sums, int((labels != IGNORE_INDEX).sum())


def statistics_means(micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The metrics of a step (or an evaluation): the micro batches' sums added up over every rank, as means.

    A collective: every rank calls it, with the same keys (a rank without batches passes [] and adds
    zeros, so evaluation shards of different sizes cannot hang it)."""
    names = sorted({name for sums in micro_batches for name in sums})
    if dist.is_initialized():  # the loss decides the names, but a rank without batches has none yet
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = sorted({name for found in gathered for name in found})
    totals = torch.zeros(len(names), dtype=torch.float64)
    for sums in micro_batches:
        for i, name in enumerate(names):
            if name in sums:
                totals[i] += float(sums[name])
    if dist.is_initialized():
        dist.all_reduce(totals)
    return metric_means(dict(zip(names, totals.tolist(), strict=True)))
